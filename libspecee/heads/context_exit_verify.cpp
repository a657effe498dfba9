// context_exit_verify.cpp — exact early exit: the token an exit chose is a
// draft, and one pass checks it. The exited token's row enters that pass at
// its exit layer, from the hidden state it stopped at, and runs the layers it
// skipped; the draft's row runs every layer beside it. Above the exit layer
// the two rows share each weight read, which is the whole gain
// (docs/exact-specee.md has the design and the bound).
#include "runner/context.h"

#include "api/error.h"

namespace specee {

void context::require_no_pending_exit() const {
    if (early_exit_.pending.active()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "an exact early exit at position %u waits for its verification: call specee_verify_exit "
             "(or truncate to at most %u) first", early_exit_.pending.pos, early_exit_.pending.pos);
    }
}

void context::verify_exit(int32_t draft) {
    const hparams & hp = model_.hp;
    require_no_tree();
    const pending_exit & pe = early_exit_.pending;
    if (!pe.active()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "no early exit waits for verification (an exact early-exit step that exited comes first)");
    }
    if (kv_.n_past() != pe.pos + 1) {
        fail(SPECEE_STATUS_INTERNAL, "the cache moved since the exit it is to verify");
    }
    if (draft < 0 || draft >= hp.n_vocab) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "draft token %d is outside the vocabulary [0, %d)", draft, hp.n_vocab);
    }
    if (uint64_t(pe.pos) + 2 > kv_.n_ctx()) {
        fail(SPECEE_STATUS_CONTEXT_FULL, "context is full: the draft after position %u needs a cell of n_ctx = %u",
             pe.pos, kv_.n_ctx());
    }
    forward_plan plan;
    plan.pos          = pe.pos;
    plan.n_tokens     = 2;
    plan.n_kv         = padded_n_kv(pe.pos + 2);
    plan.layer_end    = hp.n_layer;
    plan.n_logits     = 2;
    plan.entry_layers = {pe.layer};
    plan.as_steps     = exact_verify_;  // each row as a one-token step computes it: greedy keeps plain output
    ask_hidden(plan);
    const int32_t tokens[2] = {pe.token, draft};
    clear_outputs();
    try {
        run(tokens, plan, nullptr, pe.state.data());
    } catch (...) {
        kv_.truncate(pe.pos + 1);  // the draft's cell never happened; the exit still waits
        clear_outputs();
        throw;
    }
    kv_.commit(pe.pos, 2, hp.n_layer);
    if (has_draft()) {
        keep_pending(tokens, 2);  // full-depth features of both positions, for the draft head's next sync
    }
    early_exit_.verified_draft_cell = pe.pos + 1;  // after clear_outputs(): it lasts until the next pass
    early_exit_.pending             = pending_exit();  // (pe refers to it)
}

} // namespace specee
