// batch_graph.cpp — see batch_graph.h.
#include "graph/batch_graph.h"

#include "graph/graph_parts.h"

#include <algorithm>

namespace specee {

int batch_graph_size(const model & m, int n) {
    return std::max(1024, (48 + 16 * n) * m.hp.n_layer + 64);
}

static ggml_tensor * new_input(ggml_context * ctx0, ggml_type type, int64_t ne0, int64_t ne1, const char * name,
                               size_t s) {
    ggml_tensor * t = ggml_new_tensor_2d(ctx0, type, ne0, ne1);
    ggml_format_name(t, name, s);
    ggml_set_input(t);
    return t;
}

batch_graph build_batch_forward(ggml_context * ctx0, const model & m, const std::vector<const kv_cache *> & kvs,
                                const std::vector<forward_plan> & plans, bool want_hidden, int graph_size) {
    const hparams & hp = m.hp;
    const int64_t   n  = int64_t(kvs.size());
    const int64_t   hd = hp.n_embd_head, KV = hp.n_embd_kv();
    batch_graph     g;
    g.gf = ggml_new_graph_custom(ctx0, graph_size, false);

    // ---- inputs ----
    g.tokens    = new_input(ctx0, GGML_TYPE_I32, n, 1, "batch_tokens", 0);
    g.positions = new_input(ctx0, GGML_TYPE_I32, n, 1, "batch_pos", 0);
    g.seqs.resize(size_t(n));
    for (size_t s = 0; s < size_t(n); s++) {
        batch_graph::sequence & q = g.seqs[s];
        const kv_cache & kv = *kvs[s];
        q.k_idx = new_input(ctx0, GGML_TYPE_I64, 1, 1, "batch_k_idx_%zu", s);
        q.v_idx = kv.v_trans() ? new_input(ctx0, GGML_TYPE_I64, KV, 1, "batch_v_idx_%zu", s) : q.k_idx;
        q.mask_of_layer = assign_masks(kv, plans[s], hp.n_layer);
        const ggml_type mask_type = kv.v_trans() ? GGML_TYPE_F32 : GGML_TYPE_F16;  // the fused kernel wants F16
        for (int il = 0; il < hp.n_layer; il++) {
            if (size_t(q.mask_of_layer[size_t(il)]) == q.masks.size()) {
                q.masks.push_back(new_input(ctx0, mask_type, plans[s].n_kv, 1, "batch_mask_%zu", s));
                q.mask_layer.push_back(il);
            }
        }
    }

    // ---- layers: products over all tokens, attention per sequence ----
    const rope_params r = model_rope(m, *kvs[0]);  // the caller checks that every sequence's is the same
    ggml_tensor * x = ggml_get_rows(ctx0, m.tok_embd, g.tokens);          // [n_embd, n]
    for (int il = 0; il < hp.n_layer; il++) {
        const layer_weights & L = m.layers[size_t(il)];
        ggml_tensor * cur = rms_norm(ctx0, x, L.attn_norm, hp.rms_eps);
        const qkv_heads h = project_qkv(ctx0, m, L, r, g.positions, n, cur, /*want_q=*/true);
        ggml_tensor * o = nullptr;                                         // [n_embd_q, n]
        for (size_t s = 0; s < size_t(n); s++) {
            const batch_graph::sequence & q = g.seqs[s];
            ggml_tensor * k_s = ggml_view_2d(ctx0, h.k, KV, 1, h.k->nb[2], s * h.k->nb[2]);
            ggml_tensor * v_s = ggml_view_2d(ctx0, h.v, KV, 1, h.v->nb[1], s * h.v->nb[1]);
            ggml_tensor * q_s = ggml_view_3d(ctx0, h.q, hd, hp.n_head, 1, h.q->nb[1], h.q->nb[2], s * h.q->nb[2]);
            store_kv(ctx0, g.gf, hp, *kvs[s], il, q.k_idx, q.v_idx, 1, k_s, v_s);
            ggml_tensor * mask = q.masks[size_t(q.mask_of_layer[size_t(il)])];
            ggml_tensor * o_s  = attend(ctx0, m, *kvs[s], il, plans[s].n_kv, mask, q_s, 1);
            o = o ? ggml_concat(ctx0, o, o_s, 1) : o_s;
        }
        x = product_plus(ctx0, m, L.wo, o, x, false);
        x = feed_forward(ctx0, m, L, rms_norm(ctx0, x, L.ffn_norm, hp.rms_eps), false, /*residual=*/x);
    }

    // ---- output ----
    ggml_tensor * normed = rms_norm(ctx0, x, m.output_norm, hp.rms_eps);
    if (want_hidden) {
        g.hidden = mark_output(g.gf, ggml_cont(ctx0, normed), "batch_hidden");
    }
    g.logits = mark_output(g.gf, product(ctx0, m, m.output, normed, false), "batch_logits");  // [n_vocab, n]
    return g;
}

} // namespace specee
