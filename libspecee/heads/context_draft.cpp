// context_draft.cpp — the draft head inside a context: its own one-layer KV
// cache, fed pairs (target feature at position i, token at i + 1), giving
// the top-k candidates for the token after. ref: EAGLE; docs/design.md#candidates.
#include "runner/context.h"

#include "api/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace specee {

void context::keep_pending(const int32_t * tokens, uint32_t n) {
    // the features of these positions are the hidden rows the pass kept
    const size_t n_embd = size_t(model_.hp.n_embd);
    if (size_t(n_hidden_) < n) {
        fail(SPECEE_STATUS_INTERNAL, "the pass kept no features for the draft head");
    }
    keep_pending(tokens, hidden_.data() + (size_t(n_hidden_) - n) * n_embd, n);
}

void context::keep_pending(const int32_t * tokens, const float * features, uint32_t n) {
    draft_.pending_tokens.insert(draft_.pending_tokens.end(), tokens, tokens + n);
    draft_.pending_features.insert(draft_.pending_features.end(), features, features + size_t(n) * size_t(model_.hp.n_embd));
}

std::vector<int32_t> context::draft_run(const int32_t * tokens, const float * features, uint32_t n) {
    const uint32_t pos = draft_.kv->n_past();
    if (uint64_t(pos) + n > draft_.kv->n_ctx()) {
        fail(SPECEE_STATUS_CONTEXT_FULL, "the draft head's context is full");
    }
    for (uint32_t done = 0; done < n;) {
        const uint32_t chunk = std::min(n_batch_, n - done);
        draft_pass(tokens + done, features + size_t(done) * size_t(model_.hp.n_embd), chunk, /*every_row=*/false);
        done += chunk;
    }
    return draft_top(0, size_t(early_exit_.attached->n_cand), nullptr);
}

std::vector<float> context::last_draft_probs() const {
    // on demand from the last pass's logits: the decode steps never pay for the softmax
    if (early_exit_.attached == nullptr || draft_.n_vocab == 0) {
        return {};
    }
    std::vector<float> probs(size_t(early_exit_.attached->n_cand));
    probs.resize(draft_top(0, probs.size(), probs.data()).size());
    return probs;
}

void context::draft_pass(const int32_t * tokens, const float * features, uint32_t n, bool every_row,
                         const row_layout * rows) {
    scoped_timer timer(perf_.t_draft_us);
    scoped_timer run_timer(perf_.t_run_us);  // a graph run like run()'s: t_host = t_run - t_compute covers it
    forward_plan plan;
    plan.pos       = draft_.kv->n_past();
    plan.n_tokens  = n;
    plan.n_kv      = padded_n_kv(plan.pos + n);
    plan.layer_end = 1;
    plan.n_logits  = every_row ? int(n) : 1;
    pass_inputs in;
    in.tokens   = tokens;
    in.features = features;
    const forward_graph & g =
        pass(graph_kind::draft_head, plan, rows ? *rows : row_layout::plain(plan.pos, n), *draft_.kv, in);
    draft_.kv->commit(plan.pos, n, 1);
    draft_.n_vocab = size_t(g.logits->ne[0]);
    draft_.logits.resize(size_t(ggml_nelements(g.logits)));
    ggml_backend_tensor_get(g.logits, draft_.logits.data(), 0, draft_.logits.size() * sizeof(float));
    draft_.hidden.resize(size_t(ggml_nelements(g.hidden)));
    ggml_backend_tensor_get(g.hidden, draft_.hidden.data(), 0, draft_.hidden.size() * sizeof(float));
}

std::vector<int32_t> context::draft_top(size_t row, size_t k, float * probs) const {
    // top-k of one row of the last draft logits, best first, mapped to token ids
    const draft_weights & d = early_exit_.attached->draft;
    const float * logits = draft_.logits.data() + row * draft_.n_vocab;
    k = std::min(k, draft_.n_vocab);
    std::vector<int32_t> idx(draft_.n_vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    double sum = 0.0;  // softmax over the draft's vocabulary, only when probabilities are asked for
    const float top = k > 0 ? logits[idx[0]] : 0.0f;
    for (size_t i = 0; probs && i < draft_.n_vocab; i++) {
        sum += std::exp(double(logits[i] - top));
    }
    std::vector<int32_t> out;
    for (size_t i = 0; i < k; i++) {
        out.push_back(d.vocab.empty() ? idx[i] : d.vocab[size_t(idx[i])]);
        if (probs) {
            probs[i] = float(std::exp(double(logits[idx[i]] - top)) / sum);
        }
    }
    return out;
}

void context::draft_chain(int32_t next_token, int32_t n_steps, int32_t k, int32_t * out_tokens, float * out_probs) {
    if (n_steps < 1 || k < 1 || out_tokens == nullptr || out_probs == nullptr) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "a draft chain needs n_steps >= 1, k >= 1 and its output arrays");
    }
    require_draft_k(k);
    draft_sync(next_token);  // checks the rest; the draft then predicts the token after next_token
    const uint32_t synced = draft_.kv->n_past();
    try {
        for (int32_t step = 0; step < n_steps; step++) {
            const std::vector<int32_t> top = draft_top(0, size_t(k), out_probs + size_t(step) * size_t(k));
            std::copy(top.begin(), top.end(), out_tokens + size_t(step) * size_t(k));
            if (step + 1 == n_steps) {
                break;
            }
            if (uint64_t(draft_.kv->n_past()) + 1 > draft_.kv->n_ctx()) {
                fail(SPECEE_STATUS_CONTEXT_FULL, "the draft head's context is full");
            }
            // the next pair: this step's predicted feature with its best token
            const std::vector<float> feature = draft_.hidden;
            draft_run(&top[0], feature.data(), 1);
        }
    } catch (...) {
        draft_.kv->truncate(synced);
        throw;
    }
    draft_.kv->truncate(synced);  // the chain was a guess: keep only what the target confirmed
}

void context::require_draft_k(int32_t k) const {
    if (!has_draft()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "no draft head is attached (the heads have none)");
    }
    const int64_t n_draft_vocab = early_exit_.attached->draft.output ? early_exit_.attached->draft.output->ne[1] : model_.hp.n_vocab;
    if (k > n_draft_vocab) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "k = %d is more than the draft's %lld tokens", k,
             (long long) n_draft_vocab);
    }
}

std::vector<int32_t> context::draft_sync(int32_t next_token) {
    if (!has_draft()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "no draft head is attached (the heads have none)");
    }
    check_tokens(&next_token, 0 + 1);
    if (draft_.pending_tokens.empty()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "the draft head has seen every position; run prefill or decode first");
    }
    // pairs (feature i, token i + 1): the tokens after the pending ones
    std::vector<int32_t> next(draft_.pending_tokens.begin() + 1, draft_.pending_tokens.end());
    next.push_back(next_token);
    const uint32_t start = draft_.kv->n_past();
    try {
        std::vector<int32_t> cands = draft_run(next.data(), draft_.pending_features.data(), uint32_t(next.size()));
        draft_.pending_tokens.clear();
        draft_.pending_features.clear();
        return cands;
    } catch (...) {
        draft_.kv->truncate(start);
        throw;
    }
}

} // namespace specee
