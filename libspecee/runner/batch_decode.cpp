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
        forward_plan plan;
        plan.pos       = c->kv_.n_past();
        plan.n_tokens  = 1;
        plan.n_kv      = c->padded_n_kv(plan.pos + 1);
        plan.layer_end = m.hp.n_layer;
        plans.push_back(plan);
        kvs.push_back(&c->kv_);
        want_hidden = want_hidden || c->has_draft();
    }

    const int64_t t_start = ggml_time_us();
    // The graph depends on which contexts take part, their cells read and
    // which of their layers share a mask; positions, cells written and masks
    // are inputs. The same batch step after step reuses it.
    std::vector<int64_t> key = {int64_t(want_hidden)};
    for (int32_t s = 0; s < n; s++) {
        key.push_back(int64_t(contexts[s]->id_));
        key.push_back(int64_t(plans[size_t(s)].n_kv));
        for (int u : assign_masks(*kvs[size_t(s)], plans[size_t(s)], m.hp.n_layer)) {
            key.push_back(u);
        }
    }
    graph_slot & slot = lead.batch_slot_;
    if (!slot.ready || key != lead.batch_key_) {
        const int size = batch_graph_size(m, n);
        slot.reset(size, /*with_galloc=*/true);
        lead.batch_graph_ = build_batch_forward(slot.ctx, m, kvs, plans, want_hidden, size);
        if (!slot.allocate(lead.batch_graph_.gf)) {
            fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate the compute graph");
        }
        slot.ready      = true;
        lead.batch_key_ = std::move(key);
        lead.perf_.n_graph_builds++;
    }
    const batch_graph & g = lead.batch_graph_;

    // ---- inputs ----
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int32_t s = 0; s < n; s++) {
        pos[size_t(s)] = int32_t(plans[size_t(s)].pos);
    }
    ggml_backend_tensor_set(g.tokens, tokens, 0, size_t(n) * sizeof(int32_t));
    ggml_backend_tensor_set(g.positions, pos.data(), 0, pos.size() * sizeof(int32_t));
    std::vector<float>       mask;
    std::vector<ggml_fp16_t> mask_f16;
    std::vector<int64_t>     v_idx;
    for (size_t s = 0; s < size_t(n); s++) {
        const batch_graph::sequence & q = g.seqs[s];
        const kv_cache & kv = *kvs[s];
        const int64_t cell = plans[s].pos;
        ggml_backend_tensor_set(q.k_idx, &cell, 0, sizeof cell);
        if (q.v_idx != q.k_idx) {
            kv.v_indices(&cell, 1, v_idx);
            ggml_backend_tensor_set(q.v_idx, v_idx.data(), 0, v_idx.size() * sizeof(int64_t));
        }
        mask.resize(plans[s].n_kv);
        for (size_t u = 0; u < q.masks.size(); u++) {
            kv.build_mask(q.mask_layer[u], plans[s].pos, 1, plans[s].n_kv, mask.data());
            set_mask_input(q.masks[u], mask.data(), mask.size(), mask_f16);
        }
    }

    const int64_t t_compute = ggml_time_us();
    const ggml_status st = ggml_backend_graph_compute(lead.backend_, g.gf);
    lead.perf_.t_compute_us += ggml_time_us() - t_compute;
    lead.perf_.n_graph_runs++;
    if (st != GGML_STATUS_SUCCESS) {
        fail(SPECEE_STATUS_COMPUTE_FAILED, "ggml graph compute failed with status %d", int(st));
    }

    // ---- outputs, into each context as its own decode would leave them ----
    const size_t n_vocab = size_t(m.hp.n_vocab), n_embd = size_t(m.hp.n_embd);
    for (int32_t s = 0; s < n; s++) {
        context & c = *contexts[s];
        c.logits_.resize(n_vocab);
        ggml_backend_tensor_get(g.logits, c.logits_.data(), size_t(s) * g.logits->nb[1], n_vocab * sizeof(float));
        c.n_outputs_ = 1;
        c.hidden_.clear();
        c.n_hidden_ = 0;
        c.kv_.commit(plans[size_t(s)].pos, 1, m.hp.n_layer);
        if (c.has_draft()) {
            c.hidden_.resize(n_embd);
            ggml_backend_tensor_get(g.hidden, c.hidden_.data(), size_t(s) * g.hidden->nb[1], n_embd * sizeof(float));
            c.n_hidden_ = 1;
            c.keep_pending(tokens + s, 1);
        }
    }
    lead.perf_.t_run_us += ggml_time_us() - t_start;
}

} // namespace specee
