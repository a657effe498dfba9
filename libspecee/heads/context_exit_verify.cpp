// context_exit_verify.cpp — exact early exit: the token an exit chose is a
// draft, and one pass checks it. Exits may chain (the draft's own step exits
// too, never above the last exit layer) and one pass then checks every
// draft of the chain. Each pending token's row enters that pass at its exit
// layer, from the hidden state it stopped at, and runs the layers it
// skipped; the last draft's row runs every layer beside them. Above the exit
// layers the rows share each weight read, which is the whole gain
// (docs/exact-specee.md has the design and the bound).
#include "runner/context.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

void context::require_no_pending_exit() const {
    const auto & chain = early_exit_.chain;
    if (!chain.empty()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "an exact early exit at position %u waits for its verification: call specee_verify_exit "
             "(or truncate to at most %u) first", chain.front().pos, chain.front().pos);
    }
}

int32_t context::chain_cap(int32_t token) const {
    const auto & chain = early_exit_.chain;
    if (chain.empty()) {
        return model_.hp.n_layer;
    }
    const pending_exit & last = chain.back();
    if (!early_exit_.params.exact || int32_t(chain.size()) >= early_exit_.params.max_chain || last.draft < 0) {
        require_no_pending_exit();  // this chain takes no more steps: it waits for its verification
    }
    if (token != last.draft) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "a chained exit step continues with the draft the last exit chose (%d), not %d", last.draft, token);
    }
    if (kv_.n_past() != last.pos + 1) {
        fail(SPECEE_STATUS_INTERNAL, "the cache moved since the exit the chain continues");
    }
    return last.layer;  // exit layers never rise along a chain: above it this token's inputs do not exist yet
}

void context::relearn_chain_exits(size_t n_kept) {
    chain_exits & learnt = early_exit_.learnt;
    early_exit_.schedule.recent = learnt.recent_before;
    learnt.exit_index.resize(std::min(n_kept, learnt.exit_index.size()));
    for (const int32_t il : learnt.exit_index) {
        if (il >= 0) {
            early_exit_.schedule.record_exit(il);
        }
    }
}

void context::verify_exit(int32_t draft) {
    const hparams & hp = model_.hp;
    require_no_tree();
    auto & chain = early_exit_.chain;
    if (chain.empty()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "no early exit waits for verification (an exact early-exit step that exited comes first)");
    }
    const pending_exit & first = chain.front();
    const pending_exit & last  = chain.back();
    if (kv_.n_past() != last.pos + 1) {
        fail(SPECEE_STATUS_INTERNAL, "the cache moved since the exit it is to verify");
    }
    if (draft != -1 || last.draft != -1) {
        if (draft < 0 || draft >= hp.n_vocab) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "draft token %d is outside the vocabulary [0, %d)", draft, hp.n_vocab);
        }
        if (draft != last.draft) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "draft %d is not the token the last exit chose (%d)", draft,
                 last.draft);
        }
    }
    // rows: every pending token from its exit layer, then the last draft from layer 0
    const uint32_t n_late = uint32_t(chain.size());
    const uint32_t n      = n_late + (draft >= 0 ? 1 : 0);
    if (uint64_t(first.pos) + n > kv_.n_ctx()) {
        fail(SPECEE_STATUS_CONTEXT_FULL, "context is full: the draft after position %u needs a cell of n_ctx = %u",
             last.pos, kv_.n_ctx());
    }
    forward_plan plan;
    plan.pos      = first.pos;
    plan.n_tokens = n;
    plan.n_kv     = padded_n_kv(first.pos + n);
    plan.layer_end = hp.n_layer;
    plan.n_logits  = int(n);
    plan.as_steps  = exact_verify_;  // each row as a one-token step computes it: greedy keeps plain output
    std::vector<int32_t> tokens;
    std::vector<float>   states;
    for (const pending_exit & pe : chain) {
        plan.entry_layers.push_back(pe.layer);
        tokens.push_back(pe.token);
        states.insert(states.end(), pe.state.begin(), pe.state.end());
    }
    if (draft >= 0) {
        tokens.push_back(draft);
    }
    ask_hidden(plan);
    clear_outputs();
    try {
        run(tokens.data(), plan, nullptr, states.data());
    } catch (...) {
        kv_.truncate(last.pos + 1);  // the draft's cell never happened; the chain still waits
        clear_outputs();
        throw;
    }
    kv_.commit(first.pos, n, hp.n_layer);
    if (has_draft()) {
        // the chain's draft-head steps ran on exit-layer features: they go, and
        // the draft head syncs on the full-depth features of every position
        draft_.kv->truncate(std::min(draft_.kv->n_past(), first.pos));
        keep_pending(tokens.data(), n);
    }
    chain.clear();  // (first and last refer to it); early_exit_.learnt lasts until the next pass
}

} // namespace specee
