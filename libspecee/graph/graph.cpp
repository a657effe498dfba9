// graph.cpp — the Llama-family decoder as a ggml graph: llama, qwen2 (Q/K/V
// biases), qwen3 (per-head Q/K RMSNorm), phi3 (fused QKV and gate/up).
// ref: llama.cpp src/models/{llama,qwen2,qwen3,phi3}.cpp (graph shapes).
#include "graph/graph.h"
#include "graph/graph_parts.h"
#include "graph/packed_product.h"
#include "graph/exact_attention.h"

#include "api/error.h"

#include <cmath>

namespace specee {

// RMSNorm with a learned scale: x / rms(x) * w
ggml_tensor * rms_norm(ggml_context * ctx0, ggml_tensor * x, ggml_tensor * w, float eps) {
    return ggml_mul(ctx0, ggml_rms_norm(ctx0, x, eps), w);
}

// The last column of a [ne0, n] tensor, as [ne0, 1].
static ggml_tensor * last_column(ggml_context * ctx0, ggml_tensor * t) {
    return ggml_view_2d(ctx0, t, t->ne[0], 1, t->nb[1], size_t(t->ne[1] - 1) * t->nb[1]);
}

// y = W x (+ b)
// final_norm(x) . the candidates' lm_head rows: what an exit check sees
// (ref: SpecEE sec. 4, the predictor's inputs). [n_cand, 1].
static ggml_tensor * candidate_logits(ggml_context * ctx0, const model & m, ggml_tensor * cand_rows, ggml_tensor * x) {
    return ggml_mul_mat(ctx0, cand_rows, rms_norm(ctx0, x, m.output_norm, m.hp.rms_eps));
}

// How many columns of x one product plane may hold so that ggml computes
// each column exactly as a one-column product: 3 for a repacked matrix
// (its gemm starts at four columns, below that it runs its gemv column by
// column), else 1 (llamafile's sgemm takes F32/F16/BF16/Q8_0/Q4_0/... from
// two columns on, and the K-quants were measured to differ too; ggml's own
// loops still read each block of W once for all planes).
static int64_t exact_plane_width(const ggml_tensor * w) {
    const bool repacked = w->buffer != nullptr && ggml_backend_buffer_is_host(w->buffer) &&
                          ggml_backend_buffer_get_type(w->buffer) != ggml_backend_cpu_buffer_type();
    return repacked ? 3 : 1;
}

// W's packed copy when specee's kernels take this product (x: [k, n] with
// n <= max_packed_columns), else nullptr.
static const model::packed_weight * packed_for_product(const model & m, const ggml_tensor * w, const ggml_tensor * x) {
    const model::packed_weight * pw = m.packed_for(w);
    return pw && x->ne[1] <= max_packed_columns && x->ne[2] == 1 ? pw : nullptr;
}

ggml_tensor * product(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * x, bool as_steps) {
    const int64_t n     = x->ne[1];
    if (const model::packed_weight * pw = packed_for_product(m, w, x)) {
        return packed_product(ctx0, *pw, w, x);  // every column as a one-column step, no planes needed
    }
    const int64_t width = as_steps ? exact_plane_width(w) : n;
    if (n <= width) {
        return ggml_mul_mat(ctx0, w, x);
    }
    if (!ggml_is_contiguous(x)) {
        x = ggml_cont(ctx0, x);
    }
    const int64_t padded = (n + width - 1) / width * width;
    if (padded != n) {
        x = ggml_pad(ctx0, x, 0, int(padded - n), 0, 0);  // zero columns, dropped below
    }
    ggml_tensor * y = ggml_mul_mat(ctx0, w, ggml_reshape_3d(ctx0, x, x->ne[0], width, padded / width));
    y = ggml_reshape_2d(ctx0, y, y->ne[0], padded);                    // [m, padded]
    return padded == n ? y : ggml_view_2d(ctx0, y, y->ne[0], n, y->nb[1], 0);
}

ggml_tensor * product_plus(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * x,
                           ggml_tensor * residual, bool as_steps) {
    if (const model::packed_weight * pw = packed_for_product(m, w, x)) {
        return packed_product(ctx0, *pw, w, x, residual);
    }
    return ggml_add(ctx0, residual, product(ctx0, m, w, x, as_steps));
}

static ggml_tensor * with_bias(ggml_context * ctx0, ggml_tensor * y, ggml_tensor * b) {
    return b ? ggml_add(ctx0, y, b) : y;
}

ggml_tensor * linear(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * b, ggml_tensor * x,
                     bool as_steps) {
    return with_bias(ctx0, product(ctx0, m, w, x, as_steps), b);
}

rope_params model_rope(const model & m, const kv_cache & kv) {
    const hparams & hp = m.hp;
    return {hp.n_rot, hp.rope_mode, hp.n_ctx_orig, hp.rope_base, hp.rope_freq_scale, hp.rope_attn_factor,
            m.rope_factors(kv.n_ctx())};
}

// The draft head is trained with plain RoPE over whole heads (train/draft.py).
static rope_params draft_rope(const hparams & hp) {
    return {hp.n_embd_head, hp.rope_mode, hp.n_ctx_train, hp.rope_base, 1.0f, 1.0f, nullptr};
}

// x: [head size, heads, n]; ext_factor 0 (no YaRN), beta values unused then.
static ggml_tensor * rope(ggml_context * ctx0, ggml_tensor * x, ggml_tensor * positions, const rope_params & r) {
    return ggml_rope_ext(ctx0, x, positions, r.factors, r.n_dims, r.mode, r.n_ctx_orig, r.base, r.freq_scale,
                         0.0f, r.attn_factor, 32.0f, 1.0f);
}

qkv_heads project_qkv(ggml_context * ctx0, const model & m, const layer_weights & L, const rope_params & r,
                      ggml_tensor * positions, int64_t n, ggml_tensor * cur /* [n_embd, n] */, bool want_q,
                      bool as_steps) {
    const hparams & hp = m.hp;
    const int64_t hd = hp.n_embd_head, Q = hp.n_embd_q(), KV = hp.n_embd_kv();
    qkv_heads out;
    ggml_tensor * q = nullptr;
    ggml_tensor * k;
    if (L.wqkv) {
        // one product, then views of its row ranges: Q, K, V (phi3)
        ggml_tensor * qkv = product(ctx0, m, L.wqkv, cur, as_steps);      // [Q + 2 KV, n]
        const size_t  es  = ggml_element_size(qkv);
        q      = ggml_view_3d(ctx0, qkv, hd, hp.n_head,    n, hd * es, qkv->nb[1], 0);
        k      = ggml_view_3d(ctx0, qkv, hd, hp.n_head_kv, n, hd * es, qkv->nb[1], size_t(Q) * es);
        out.v  = ggml_cont(ctx0, ggml_view_2d(ctx0, qkv, KV, n, qkv->nb[1], size_t(Q + KV) * es));
    } else if (const model::packed_set * set = want_q && n <= max_packed_columns ? m.packed_set_for(L.wq) : nullptr) {
        // Q, K and V after one quantization of cur, as one node (with their
        // biases, when all three have one: qwen2)
        const bool biased = L.bq && L.bk && L.bv;
        const std::vector<ggml_tensor *> y =
            packed_products(ctx0, *set, {L.wq, L.wk, L.wv}, cur, biased ? std::vector<ggml_tensor *>{L.bq, L.bk, L.bv}
                                                                        : std::vector<ggml_tensor *>{});
        ggml_tensor * bq = biased ? nullptr : L.bq, * bk = biased ? nullptr : L.bk, * bv = biased ? nullptr : L.bv;
        q     = ggml_reshape_3d(ctx0, with_bias(ctx0, y[0], bq), hd, hp.n_head, n);
        k     = ggml_reshape_3d(ctx0, with_bias(ctx0, y[1], bk), hd, hp.n_head_kv, n);
        out.v = with_bias(ctx0, y[2], bv);
    } else {
        if (want_q) {
            q = ggml_reshape_3d(ctx0, linear(ctx0, m, L.wq, L.bq, cur, as_steps), hd, hp.n_head, n);
        }
        k     = ggml_reshape_3d(ctx0, linear(ctx0, m, L.wk, L.bk, cur, as_steps), hd, hp.n_head_kv, n);
        out.v = linear(ctx0, m, L.wv, L.bv, cur, as_steps);
    }
    if (L.k_norm) {  // qwen3: RMSNorm over each head, before RoPE
        k = rms_norm(ctx0, k, L.k_norm, hp.rms_eps);
    }
    out.k = rope(ctx0, k, positions, r);
    if (want_q) {
        if (L.q_norm) {
            q = rms_norm(ctx0, q, L.q_norm, hp.rms_eps);
        }
        out.q = rope(ctx0, q, positions, r);
    }
    return out;
}

// This batch's K ([n_embd_kv, n]) and V ([n_embd_kv, n]) of layer il
// written to the cells k_idx / v_idx name; expanded now so the writes come
// before any reads of the cache in graph order. Indices are inputs, so the
// graph does not depend on the position.
void store_kv(ggml_context * ctx0, ggml_cgraph * gf, const hparams & hp, const kv_cache & kv, int il,
              ggml_tensor * k_idx, ggml_tensor * v_idx, int64_t n, ggml_tensor * k, ggml_tensor * v) {
    const int64_t n_kv_embd = hp.n_embd_kv();
    ggml_tensor * k_cache = kv.k(il);                                // [n_embd_kv, n_ctx] F16
    ggml_tensor * v_cache = kv.v(il);
    ggml_build_forward_expand(gf, ggml_set_rows(ctx0, k_cache, ggml_reshape_2d(ctx0, k, n_kv_embd, n), k_idx));
    if (kv.v_trans()) {
        // v_cache is [n_ctx, n_embd_kv]: write element by element, one
        // "row" of 1 value each, at d * n_ctx + cell (see v_idx)
        ggml_tensor * dst = ggml_reshape_2d(ctx0, v_cache, 1, ggml_nelements(v_cache));
        ggml_build_forward_expand(gf, ggml_set_rows(ctx0, dst, ggml_reshape_2d(ctx0, v, 1, n_kv_embd * n), v_idx));
    } else {                                                         // v_cache: [n_embd_kv, n_ctx]
        ggml_build_forward_expand(gf, ggml_set_rows(ctx0, v_cache, v, v_idx));
    }
}

static void store_kv(ggml_context * ctx0, ggml_cgraph * gf, const hparams & hp, const kv_cache & kv, int il,
                     const forward_graph & g, int64_t n, const qkv_heads & h) {
    store_kv(ctx0, gf, hp, kv, il, g.k_idx, g.v_idx, n, h.k, h.v);
}

// Attention of queries q ([hd, n_head, n], rotated) over cells [0, n_kv) of
// layer il of the cache under `kq_mask` ([n_kv, n]): [n_embd_q, n], before
// the output projection.
ggml_tensor * attend(ggml_context * ctx0, const model & m, const kv_cache & kv, int il, uint32_t n_kv,
                     ggml_tensor * kq_mask, ggml_tensor * q, int64_t n, bool as_steps) {
    const hparams & hp = m.hp;
    const int64_t hd = hp.n_embd_head;
    ggml_tensor * k_cache = kv.k(il);
    ggml_tensor * v_cache = kv.v(il);
    if (m.specee_attention && !kv.v_trans()) {
        // each row over the cells it sees, in their order: tree rows are steps
        return exact_attention(ctx0, m, q, k_cache, v_cache, kq_mask);
    }
    const float   scale = 1.0f / std::sqrt(float(hd));
    const size_t  head  = ggml_row_size(k_cache->type, hd);          // bytes per head within a cell
    ggml_tensor * ks = ggml_view_3d(ctx0, k_cache, hd, n_kv, hp.n_head_kv, k_cache->nb[1], head, 0);  // [hd, n_kv, n_head_kv]
    ggml_tensor * qp = ggml_permute(ctx0, q, 0, 2, 1, 3);            // [hd, n, n_head]
    if (kv.v_trans()) {
        // unfused: softmax(K^T q * scale + mask), then V^T times it; the
        // graph llama.cpp builds when flash attention is off (its default)
        ggml_tensor * vs = ggml_view_3d(ctx0, v_cache, n_kv, hd, hp.n_head_kv,
                                        v_cache->nb[1], v_cache->nb[1] * hd, 0);  // [n_kv, hd, n_head_kv]
        if (as_steps && n > 1) {
            // every query its own plane, [., 1, n_head, n]: one-column products, as a step has
            ggml_tensor * kq = ggml_mul_mat(ctx0, ks, ggml_reshape_4d(ctx0, q, hd, 1, hp.n_head, n));  // [n_kv, 1, n_head, n]
            kq = ggml_cont(ctx0, ggml_permute(ctx0, kq, 0, 3, 2, 1));                                   // [n_kv, n, n_head]
            kq = ggml_soft_max_ext(ctx0, kq, kq_mask, scale, 0.0f);
            kq = ggml_cont(ctx0, ggml_permute(ctx0, kq, 0, 3, 2, 1));                                   // [n_kv, 1, n_head, n]
            return ggml_reshape_2d(ctx0, ggml_mul_mat(ctx0, vs, kq), hp.n_embd_q(), n);                 // [n_embd_q, n]
        }
        ggml_tensor * kq = ggml_mul_mat(ctx0, ks, qp);               // [n_kv, n, n_head]
        kq = ggml_soft_max_ext(ctx0, kq, kq_mask, scale, 0.0f);
        ggml_tensor * kqv = ggml_mul_mat(ctx0, vs, kq);              // [hd, n, n_head]
        return ggml_cont_2d(ctx0, ggml_permute(ctx0, kqv, 0, 2, 1, 3), hp.n_embd_q(), n);  // [n_embd_q, n]
    }
    ggml_tensor * vs = ggml_view_3d(ctx0, v_cache, hd, n_kv, hp.n_head_kv, v_cache->nb[1], head, 0);  // [hd, n_kv, n_head_kv]
    ggml_tensor * o = ggml_flash_attn_ext(ctx0, qp, ks, vs, kq_mask, scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);                  // [hd, n_head, n]
    return ggml_reshape_2d(ctx0, o, hp.n_embd_q(), n);               // [n_embd_q, n]
}

// The inputs of the rows a layer computes: every row of the pass, or, when
// rows enter late (forward_plan::entry_layers), its last n.
struct layer_rows {
    int64_t       n         = 0;
    ggml_tensor * positions = nullptr;  // [n] I32
    ggml_tensor * k_idx     = nullptr;  // [n] I64
    ggml_tensor * v_idx     = nullptr;  // [n * n_embd_kv] I64 if V is transposed, else k_idx
    ggml_tensor * mask      = nullptr;  // [n_kv, n]
};

static layer_rows all_rows(const forward_graph & g, int64_t n, ggml_tensor * mask) {
    return {n, g.positions, g.k_idx, g.v_idx, mask};
}

// Rows [first, first + n) of a pass's n_total rows: views of its inputs
// (each row's entries are contiguous in them, so the views are too).
static layer_rows row_span(ggml_context * ctx0, const hparams & hp, const forward_graph & g, int64_t n_total,
                           int64_t first, int64_t n, ggml_tensor * mask) {
    if (n == n_total) {
        return all_rows(g, n, mask);
    }
    layer_rows rows;
    rows.n         = n;
    rows.positions = ggml_view_1d(ctx0, g.positions, n, size_t(first) * g.positions->nb[0]);
    rows.k_idx     = ggml_view_1d(ctx0, g.k_idx, n, size_t(first) * g.k_idx->nb[0]);
    rows.v_idx     = g.v_idx == g.k_idx ? rows.k_idx
                                        : ggml_view_1d(ctx0, g.v_idx, n * hp.n_embd_kv(),
                                                       size_t(first * hp.n_embd_kv()) * g.v_idx->nb[0]);
    rows.mask      = ggml_view_2d(ctx0, mask, mask->ne[0], n, mask->nb[1], size_t(first) * mask->nb[1]);
    return rows;
}

// Self-attention with weights L over layer il of the cache for `rows`;
// writes their K/V first. Plus `residual` when given.
static ggml_tensor * attention(ggml_context * ctx0, ggml_cgraph * gf, const model & m, const layer_weights & L,
                               const rope_params & r, const kv_cache & kv, int il, const forward_plan & plan,
                               const layer_rows & rows, ggml_tensor * cur /* [n_embd, rows.n] */,
                               ggml_tensor * residual = nullptr) {
    const hparams & hp = m.hp;
    const int64_t   n  = rows.n;
    const qkv_heads h  = project_qkv(ctx0, m, L, r, rows.positions, n, cur, /*want_q=*/true, plan.as_steps);
    store_kv(ctx0, gf, hp, kv, il, rows.k_idx, rows.v_idx, n, h.k, h.v);
    ggml_tensor * a = attend(ctx0, m, kv, il, plan.n_kv, rows.mask, h.q, n, plan.as_steps);
    return residual ? product_plus(ctx0, m, L.wo, a, residual, plan.as_steps)
                    : product(ctx0, m, L.wo, a, plan.as_steps);  // [n_embd, n]
}

// SwiGLU feed-forward: down(silu(gate x) * up x) (+ residual)
ggml_tensor * feed_forward(ggml_context * ctx0, const model & m, const layer_weights & L, ggml_tensor * cur,
                           bool as_steps, ggml_tensor * residual) {
    auto down = [&](ggml_tensor * h) {
        return residual ? product_plus(ctx0, m, L.ffn_down, h, residual, as_steps)
                        : product(ctx0, m, L.ffn_down, h, as_steps);  // [n_embd, n]
    };
    if (L.ffn_gate == nullptr) {
        // phi3: one product gives [gate x; up x], ggml_swiglu splits it in halves
        return down(ggml_swiglu(ctx0, product(ctx0, m, L.ffn_up, cur, as_steps)));
    }
    if (const model::packed_set * set = cur->ne[1] <= max_packed_columns ? m.packed_set_for(L.ffn_gate) : nullptr) {
        // gate and up after one quantization of cur, as one node
        const std::vector<ggml_tensor *> y = packed_products(ctx0, *set, {L.ffn_gate, L.ffn_up}, cur);
        return down(ggml_swiglu_split(ctx0, y[0], y[1]));
    }
    ggml_tensor * gate = product(ctx0, m, L.ffn_gate, cur, as_steps);   // [n_ff, n]
    ggml_tensor * up   = product(ctx0, m, L.ffn_up,   cur, as_steps);   // [n_ff, n]
    return down(ggml_swiglu_split(ctx0, gate, up));
}

ggml_tensor * mark_output(ggml_cgraph * gf, ggml_tensor * t, const char * name) {
    ggml_set_name(t, name);
    ggml_set_output(t);
    ggml_build_forward_expand(gf, t);
    return t;
}

void set_input(ggml_tensor * t, const void * data, size_t offset, size_t size) {
    if (t->buffer != nullptr || t->data != nullptr) {
        ggml_backend_tensor_set(t, data, offset, size);
    }
}

void set_mask_input(ggml_tensor * t, const float * mask, size_t n, std::vector<ggml_fp16_t> & scratch) {
    if (t->type == GGML_TYPE_F16) {
        scratch.resize(n);
        ggml_fp32_to_fp16_row(mask, scratch.data(), int64_t(n));
        set_input(t, scratch.data(), 0, n * sizeof(ggml_fp16_t));
    } else {
        set_input(t, mask, 0, n * sizeof(float));
    }
}

// Positions and the cells K/V go to: every graph that writes the cache has them.
static void add_position_inputs(ggml_context * ctx0, const hparams & hp, const kv_cache & kv, int64_t n,
                                forward_graph & g) {
    g.positions = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n);
    ggml_set_name(g.positions, "inp_pos");
    ggml_set_input(g.positions);
    g.k_idx = ggml_new_tensor_1d(ctx0, GGML_TYPE_I64, n);
    ggml_set_name(g.k_idx, "inp_k_idx");
    ggml_set_input(g.k_idx);
    if (kv.v_trans()) {
        g.v_idx = ggml_new_tensor_1d(ctx0, GGML_TYPE_I64, n * hp.n_embd_kv());
        ggml_set_name(g.v_idx, "inp_v_idx");
        ggml_set_input(g.v_idx);
    } else {
        g.v_idx = g.k_idx;
    }
}

std::vector<int> assign_masks(const kv_cache & kv, const forward_plan & plan, int n_layer) {
    std::vector<int> of_layer(size_t(n_layer), -1);
    std::vector<int> representative;  // a layer per mask
    for (int il = plan.layer_begin; il < plan.layer_end; il++) {
        for (size_t u = 0; u < representative.size() && of_layer[size_t(il)] < 0; u++) {
            if (kv.same_validity(il, representative[u], plan.pos)) {
                of_layer[size_t(il)] = int(u);
            }
        }
        if (of_layer[size_t(il)] < 0) {
            of_layer[size_t(il)] = int(representative.size());
            representative.push_back(il);
        }
    }
    return of_layer;
}

forward_graph build_forward(ggml_context * ctx0, const model & m, const kv_cache & kv,
                            ggml_tensor * state, const forward_plan & plan, int graph_size) {
    const hparams & hp = m.hp;
    const int64_t   n  = plan.n_tokens;
    forward_graph   g;
    g.gf = ggml_new_graph_custom(ctx0, graph_size, false);

    const rope_params r = model_rope(m, kv);

    // ---- inputs ----
    add_position_inputs(ctx0, hp, kv, n, g);
    const ggml_type mask_type = kv.v_trans() ? GGML_TYPE_F32 : GGML_TYPE_F16;  // the fused kernel wants F16

    g.mask_of_layer = assign_masks(kv, plan, hp.n_layer);
    for (int il = plan.layer_begin; il < plan.layer_end; il++) {
        const size_t u = size_t(g.mask_of_layer[size_t(il)]);
        if (u == g.masks.size()) {
            ggml_tensor * mask = ggml_new_tensor_2d(ctx0, mask_type, plan.n_kv, n);  // [n_kv, n]
            ggml_format_name(mask, "kq_mask_%zu", u);
            ggml_set_input(mask);
            g.masks.push_back(mask);
            g.mask_layer.push_back(il);
        }
    }

    // rows entering late (exact early exit): they join the residual stream
    // at their entry layers, in front of the rows already in it
    const int64_t n_late = int64_t(plan.entry_layers.size());
    if (n_late > 0) {
        if (plan.layer_begin != 0 || n_late > n || plan.save_state || plan.fill_kv || plan.trace ||
            plan.n_cand > 0 || plan.n_logits != int(n) || (plan.hidden_layer >= 0 && plan.hidden_layer != plan.layer_end)) {
            fail(SPECEE_STATUS_INTERNAL, "a pass with late rows starts at layer 0 and keeps every row's output only");
        }
        for (int64_t i = 0; i < n_late; i++) {
            const int32_t e = plan.entry_layers[size_t(i)];
            if (e < 1 || e >= plan.layer_end || (i > 0 && e > plan.entry_layers[size_t(i - 1)])) {
                fail(SPECEE_STATUS_INTERNAL, "late rows enter at layers in [1, %d) that never rise", plan.layer_end);
            }
        }
        g.entry_states = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, hp.n_embd, n_late);
        ggml_set_name(g.entry_states, "inp_entry_states");
        ggml_set_input(g.entry_states);
    }
    int64_t n_rows = n - n_late;                                     // rows in the residual stream

    // rows leaving early (SpaDec, lossy): each stops after its own depth
    const bool leaving = !plan.depths.empty();
    if (leaving) {
        if (plan.layer_begin != 0 || plan.layer_end != hp.n_layer || int64_t(plan.depths.size()) != n || n_late > 0 ||
            plan.save_state || plan.fill_kv || plan.trace || plan.n_cand > 0 || plan.n_logits != int(n) ||
            (plan.hidden_layer >= 0 && plan.hidden_layer != plan.layer_end)) {
            fail(SPECEE_STATUS_INTERNAL, "a pass with depths runs every layer and keeps every row's output only");
        }
        for (int64_t i = 0; i < n; i++) {
            const int32_t d = plan.depths[size_t(i)];
            if (d < 1 || d > hp.n_layer || (i > 0 && d > plan.depths[size_t(i - 1)])) {
                fail(SPECEE_STATUS_INTERNAL, "row depths are in [1, %d] and never rise along the rows", hp.n_layer);
            }
        }
    }
    std::vector<ggml_tensor *> left;  // the states of rows that left, in the order they left

    ggml_tensor * x = nullptr;                                       // [n_embd, n_rows] residual stream
    if (plan.layer_begin == 0 && n_rows == 0) {
        // every row enters late (a chain of exits whose last step chose nothing)
    } else if (plan.layer_begin == 0) {
        g.tokens = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_rows);
        ggml_set_name(g.tokens, "inp_tokens");
        ggml_set_input(g.tokens);
        x = ggml_get_rows(ctx0, m.tok_embd, g.tokens);
    } else {
        x = ggml_view_2d(ctx0, state, hp.n_embd, n, state->nb[1], 0);
    }

    auto keep_hidden = [&](ggml_tensor * h) {
        if (plan.hidden_norm) {
            h = rms_norm(ctx0, h, m.output_norm, hp.rms_eps);
        } else {
            h = ggml_cont(ctx0, h);  // a copy, so later in-place ops cannot touch it
        }
        g.hidden = mark_output(g.gf, h, "hidden_out");
    };

    // The last layer can skip every row but the last when nothing else
    // needs them.
    const bool last_only = plan.n_logits == 1 && n > 1 && !plan.save_state &&
                           plan.layer_end == hp.n_layer && plan.hidden_layer != hp.n_layer;
    const int  last_only_from = last_only ? hp.n_layer - 1 : -1;
    // Every row's hidden state wanted (a draft head's features) but only the
    // last token's logits: the last layer's FFN runs for every row and again
    // for the last row alone, whose result the logits take, so attaching a
    // draft head never changes what a prompt's last logits are.
    const bool last_apart = plan.n_logits == 1 && n > 1 && !plan.save_state && plan.layer_end == hp.n_layer &&
                            plan.hidden_layer == hp.n_layer && plan.entry_layers.empty();
    ggml_tensor * last_out = nullptr;  // [n_embd, 1] the last row after the last layer, with last_apart

    ggml_tensor * cand_rows = nullptr;  // [n_embd, n_cand] lm_head rows of the candidates
    if (plan.n_cand > 0) {
        g.cand_ids = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, plan.n_cand);
        ggml_set_name(g.cand_ids, "inp_cand_ids");
        ggml_set_input(g.cand_ids);
        cand_rows = ggml_get_rows(ctx0, m.output, g.cand_ids);
    }

    // ---- layers ----
    if (plan.fill_kv) {
        // K/V for layers an early exit skipped, from the exit hidden state
        // (docs/design.md#skipped-layers-kv-cache, the alternative to masking)
        for (int il = plan.layer_begin; il < plan.layer_end; il++) {
            const layer_weights & L = m.layer(il, n);
            ggml_tensor * cur = rms_norm(ctx0, x, L.attn_norm, hp.rms_eps);
            store_kv(ctx0, g.gf, hp, kv, il, g, n, project_qkv(ctx0, m, L, r, g.positions, n, cur, /*want_q=*/false));
        }
        return g;
    }
    for (int il = plan.layer_begin; il < plan.layer_end; il++) {
        if (plan.hidden_layer == il) {
            keep_hidden(x);
        }
        ggml_tensor * layer_input = x;
        if (plan.n_cand > 0 && !plan.trace && il == plan.layer_end - 1 && il > 0) {
            // the exit features' change term: the candidates' logits after layer il - 1
            g.cand_logits_prev = mark_output(
                g.gf, candidate_logits(ctx0, m, cand_rows, n_rows > 1 ? last_column(ctx0, x) : x), "cand_logits_prev");
        }
        if (leaving) {
            int64_t staying = n_rows;  // rows whose depth is above il: the first ones
            while (staying > 0 && plan.depths[size_t(staying - 1)] <= il) {
                staying--;
            }
            if (staying < n_rows) {
                left.push_back(ggml_view_2d(ctx0, x, hp.n_embd, n_rows - staying, x->nb[1], size_t(staying) * x->nb[1]));
                x      = staying > 0 ? ggml_view_2d(ctx0, x, hp.n_embd, staying, x->nb[1], 0) : nullptr;
                n_rows = staying;
            }
            if (n_rows == 0) {
                break;
            }
        }
        int64_t joining = 0;  // late rows whose entry layer this is
        while (n_late > 0 && n_rows + joining < n && plan.entry_layers[size_t(n - n_rows - joining - 1)] == il) {
            joining++;
        }
        if (joining > 0) {
            ggml_tensor * states = ggml_view_2d(ctx0, g.entry_states, hp.n_embd, joining, g.entry_states->nb[1],
                                                size_t(n - n_rows - joining) * g.entry_states->nb[1]);
            x      = x ? ggml_concat(ctx0, states, x, 1) : ggml_cont(ctx0, states);
            n_rows += joining;
            layer_input = x;
        }
        if (n_rows == 0) {
            continue;  // no row has entered yet
        }
        const layer_weights & L = m.layer(il, n_rows);
        ggml_tensor * mask = g.masks[size_t(g.mask_of_layer[size_t(il)])];

        ggml_tensor * cur = rms_norm(ctx0, x, L.attn_norm, hp.rms_eps);
        const layer_rows rows = row_span(ctx0, hp, g, n, n_late > 0 ? n - n_rows : 0, n_rows, mask);
        if (il == last_only_from) {
            // only the last token's output is wanted: its FFN alone, as
            // llama.cpp does (batch-size dependent kernels would otherwise
            // round differently from it)
            cur = last_column(ctx0, attention(ctx0, g.gf, m, L, r, kv, il, plan, rows, cur));  // [n_embd, 1]
            x   = ggml_add(ctx0, last_column(ctx0, x), cur);
            n_rows = 1;
        } else {
            x = attention(ctx0, g.gf, m, L, r, kv, il, plan, rows, cur, /*residual=*/x);
        }
        if (last_apart && il == hp.n_layer - 1) {
            ggml_tensor * xl = last_column(ctx0, x);
            last_out = ggml_add(ctx0, xl, feed_forward(ctx0, m, L, rms_norm(ctx0, xl, L.ffn_norm, hp.rms_eps),
                                                       plan.as_steps));
        }

        x = feed_forward(ctx0, m, L, rms_norm(ctx0, x, L.ffn_norm, hp.rms_eps), plan.as_steps, /*residual=*/x);

        if (plan.trace) {
            // training data for the exit predictors (ref: SpecEE sec. 4.3):
            // what a check after this layer would see, and what it would pick
            ggml_tensor * c = mark_output(g.gf, candidate_logits(ctx0, m, cand_rows, x), "trace_cand");  // [n_cand, 1]
            ggml_tensor * h = rms_norm(ctx0, x, m.output_norm, hp.rms_eps);  // [n_embd, 1]
            ggml_tensor * a = mark_output(g.gf, ggml_argmax(ctx0, ggml_mul_mat(ctx0, m.output_for(n), h)),
                                          "trace_argmax");  // [1] I32
            g.trace_cand.push_back(c);
            g.trace_argmax.push_back(a);
            g.trace_hidden.push_back(mark_output(g.gf, h, "trace_hidden"));
            // how much this layer still moved the residual stream: |x_l - x_(l-1)| / |x_l|
            ggml_tensor * moved = ggml_sqrt(ctx0, ggml_sum(ctx0, ggml_sqr(ctx0, ggml_sub(ctx0, x, layer_input))));
            ggml_tensor * size  = ggml_sqrt(ctx0, ggml_sum(ctx0, ggml_sqr(ctx0, x)));
            g.trace_change.push_back(mark_output(g.gf, ggml_div(ctx0, moved, size), "trace_change"));  // [1]
        }
    }
    for (auto it = left.rbegin(); it != left.rend(); ++it) {
        // back into row order: the rows that ran deepest come first
        x = x ? ggml_concat(ctx0, x, *it, 1) : *it;
    }
    if (plan.hidden_layer == plan.layer_end) {
        keep_hidden(x);
    }
    if (plan.save_state) {
        ggml_build_forward_expand(g.gf, ggml_cpy(ctx0, x, ggml_view_2d(ctx0, state, hp.n_embd, n, state->nb[1], 0)));
    }

    // ---- output ----
    if (plan.n_cand > 0 && !plan.trace) {
        // early-exit features: final_norm(h) . lm_head rows of the candidates
        // ref: SpecEE sec. 4 (predictor inputs); only the last token's row
        g.cand_logits = mark_output(g.gf, candidate_logits(ctx0, m, cand_rows, n_rows > 1 ? last_column(ctx0, x) : x),
                                    "cand_logits");
    }
    if (plan.n_logits > 0) {
        if (last_out != nullptr) {
            x = last_out;
        } else if (plan.n_logits == 1 && n_rows > 1) {
            x = last_column(ctx0, x);                                 // [n_embd, 1]
        }
        ggml_tensor * h = rms_norm(ctx0, x, m.output_norm, hp.rms_eps);
        g.logits = mark_output(g.gf, product(ctx0, m, m.output_for(n), h, plan.as_steps), "logits");  // [n_vocab, n_logits]
    }
    return g;
}

} // namespace specee

namespace specee {

forward_graph build_draft(ggml_context * ctx0, const model & m, const draft_weights & d, const kv_cache & kv,
                          const forward_plan & plan, int graph_size) {
    const hparams & hp = m.hp;
    const int64_t   n  = plan.n_tokens;
    forward_graph   g;
    g.gf = ggml_new_graph_custom(ctx0, graph_size, false);

    // ---- inputs ----
    add_position_inputs(ctx0, hp, kv, n, g);
    g.tokens   = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n);
    g.features = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, hp.n_embd, n);
    ggml_tensor * mask = ggml_new_tensor_2d(ctx0, kv.v_trans() ? GGML_TYPE_F32 : GGML_TYPE_F16, plan.n_kv, n);
    ggml_set_name(g.tokens, "draft_tokens");
    ggml_set_name(g.features, "draft_features");
    ggml_set_name(mask, "draft_kq_mask");
    for (ggml_tensor * t : {g.tokens, g.features, mask}) {
        ggml_set_input(t);
    }
    g.masks.push_back(mask);
    g.mask_layer.push_back(0);

    // ---- fc over [embed(token), feature] ----
    ggml_tensor * e = ggml_get_rows(ctx0, m.tok_embd, g.tokens);               // [n_embd, n]
    ggml_tensor * x = linear(ctx0, m, d.fc, d.fc_b, ggml_concat(ctx0, e, g.features, 0));  // [n_embd, n]

    // ---- one decoder layer ----
    const layer_weights & L = d.layer;
    ggml_tensor * cur = L.attn_norm ? rms_norm(ctx0, x, L.attn_norm, hp.rms_eps) : x;
    x = attention(ctx0, g.gf, m, L, draft_rope(hp), kv, 0, plan, all_rows(g, n, mask), cur, /*residual=*/x);
    x = feed_forward(ctx0, m, L, rms_norm(ctx0, x, L.ffn_norm, hp.rms_eps), false, /*residual=*/x);

    // ---- logits of the last pair, or of every pair (a draft tree's level):
    // the draft predicts the next feature, already final-normed like the
    // features it is trained on ----
    if (n > 1 && plan.n_logits != n) {
        x = last_column(ctx0, x);
    }
    // the predicted features: what further draft steps are fed (EAGLE)
    g.hidden = mark_output(g.gf, ggml_cont(ctx0, x), "draft_hidden");
    g.logits = mark_output(g.gf, ggml_mul_mat(ctx0, d.output ? d.output : m.output, x),
                           "draft_logits");  // [n_draft_vocab, 1 or n]
    return g;
}

} // namespace specee
