// batch_decode.cpp — one new token for each of several contexts of the same
// model in one graph (continuous batching, as a server's slots need): the
// weights are read once per step for all of them.
#include "graph/batch_graph.h"
#include "runner/context.h"
#include "graph/graph_parts.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

void context::decode_batch(context * const * contexts, const int32_t * tokens, int32_t n) {
    if (contexts == nullptr || tokens == nullptr || n < 1) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "batched decoding needs at least one context and its token");
    }
    context & lead = *contexts[0];  // its threads run the pass
    const model & m = lead.model_;
    std::vector<const kv_cache *> kvs;
    std::vector<forward_plan>     plans;
    bool want_hidden = false;
    for (int32_t s = 0; s < n; s++) {
        context * c = contexts[s];
        if (c == nullptr || std::find(contexts, contexts + s, c) != contexts + s) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "context %d is %s", s, c ? "given twice" : "NULL");
        }
        if (&c->model_ != &m || c->kv_.n_ctx() != lead.kv_.n_ctx()) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "context %d has another model or n_ctx than context 0", s);
        }
        if (c->has_offload()) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "batched decoding across contexts runs on the CPU only");
        }
        c->check_tokens(tokens + s, 1);
        forward_plan plan = c->plan_at_end(1);
        plan.layer_end    = m.hp.n_layer;
        plans.push_back(plan);
        kvs.push_back(&c->kv_);
        want_hidden = want_hidden || c->has_draft();
    }

    const int64_t t_start = ggml_time_us();
    // The graph depends on which contexts take part, their cells read and
    // which of their layers share a mask; positions, cells written and masks
    // are inputs. The same batch step after step reuses it.
    graph_key key;
    key.kind        = graph_kind::batch;
    key.want_hidden = want_hidden;
    for (int32_t s = 0; s < n; s++) {
        const graph_key one = forward_key(graph_kind::batch, plans[size_t(s)], *kvs[size_t(s)], m.hp.n_layer);
        key.plans.push_back(one.plans[0]);
        key.masks.insert(key.masks.end(), one.masks.begin(), one.masks.end());
        key.sequences.push_back(contexts[s]->id_);
    }
    const int size = batch_graph_size(m, n);
    const batch_graph & g = lead.runner_.graph_for(key, size, [&](ggml_context * ctx, graph_runner::slot & slot) {
        slot.batch = build_batch_forward(ctx, m, kvs, plans, want_hidden, size);
        return slot.batch.gf;
    }).batch;

    // ---- inputs ----
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int32_t s = 0; s < n; s++) {
        pos[size_t(s)] = int32_t(plans[size_t(s)].pos);
    }
    set_input(g.tokens, tokens, 0, size_t(n) * sizeof(int32_t));
    set_input(g.positions, pos.data(), 0, pos.size() * sizeof(int32_t));
    for (size_t s = 0; s < size_t(n); s++) {
        fill_attention_inputs(g.seqs[s], row_layout::plain(plans[s].pos, 1), *kvs[s], plans[s].n_kv, lead.scratch_);
    }
    lead.runner_.compute(g.gf);

    // ---- outputs: each context takes its row, as its own decode would leave it ----
    for (int32_t s = 0; s < n; s++) {
        contexts[s]->take_batch_row(g, size_t(s), tokens[s]);
    }
    lead.perf_.t_run_us += ggml_time_us() - t_start;
}

void context::take_batch_row(const batch_graph & g, size_t row, int32_t token) {
    const size_t n_vocab = size_t(model_.hp.n_vocab), n_embd = size_t(model_.hp.n_embd);
    clear_outputs();
    logits_.resize(n_vocab);
    ggml_backend_tensor_get(g.logits, logits_.data(), row * g.logits->nb[1], n_vocab * sizeof(float));
    n_outputs_ = 1;
    kv_.commit(kv_.n_past(), 1, model_.hp.n_layer);
    if (has_draft()) {
        hidden_.resize(n_embd);
        ggml_backend_tensor_get(g.hidden, hidden_.data(), row * g.hidden->nb[1], n_embd * sizeof(float));
        n_hidden_ = 1;
        keep_pending(&token, 1);
    }
}

} // namespace specee
