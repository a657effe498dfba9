// graph_parts.h — the pieces of a decoder layer that graph.cpp's builders and
// batch_graph.cpp's multi-sequence builder share.
#pragma once

#include "kv/kv_cache.h"
#include "model/model.h"

#include <cstdint>
#include <vector>

namespace specee {

// RMSNorm with a learned scale: x / rms(x) * w
ggml_tensor * rms_norm(ggml_context * ctx0, ggml_tensor * x, ggml_tensor * w, float eps);

// W x for x = [k, n]. With `as_steps`, every column is computed exactly as
// a one-token step computes it: ggml's kernels for several columns
// (llamafile's sgemm, the repacked layouts' gemm) sum in another order than
// its one-column ones, so a verified draft token would otherwise see other
// logits than plain decoding gives it. The columns go in as planes of as
// many columns as W's kernels treat one by one (ggml broadcasts W over the
// planes), which keeps one-column kernels while W is still read once per
// pass.
// With a packed copy of W (model::packed_for: kernels = SPECEE_KERNELS_SPECEE)
// and at most max_packed_columns columns, specee's kernels compute it, every
// column as a one-column step in any case.
ggml_tensor * product(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * x, bool as_steps);

// residual + W x, as ggml_add(residual, product(...)) computes it; in the
// product's own node where specee's kernels run (one node and thread
// barrier fewer, the same bits).
ggml_tensor * product_plus(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * x,
                           ggml_tensor * residual, bool as_steps);

// y = W x (+ b)
ggml_tensor * linear(ggml_context * ctx0, const model & m, ggml_tensor * w, ggml_tensor * b, ggml_tensor * x,
                     bool as_steps = false);

// How a graph rotates Q and K: the model's RoPE (its rotary dimensions,
// scaling and frequency factors), or the draft head's plain one.
struct rope_params {
    int           n_dims      = 0;
    int           mode        = 0;
    int           n_ctx_orig  = 0;
    float         base        = 10000.0f;
    float         freq_scale  = 1.0f;
    float         attn_factor = 1.0f;
    ggml_tensor * factors     = nullptr;  // [n_dims / 2] or null
};
rope_params model_rope(const model & m, const kv_cache & kv);

// A layer's Q, K (per head, normed where the layer has Q/K norms, rotated)
// and V ([n_embd_kv, n], contiguous) for its normed input `cur`.
struct qkv_heads {
    ggml_tensor * q = nullptr;  // [hd, n_head, n]; null unless asked for
    ggml_tensor * k = nullptr;  // [hd, n_head_kv, n]
    ggml_tensor * v = nullptr;  // [n_embd_kv, n]
};
qkv_heads project_qkv(ggml_context * ctx0, const model & m, const layer_weights & L, const rope_params & r,
                      ggml_tensor * positions, int64_t n, ggml_tensor * cur, bool want_q, bool as_steps = false);

// Writes K and V of n tokens ([n_embd_kv, n] each, contiguous) into layer
// il's cells (k_idx: [n] I64; v_idx: the element indices if V is transposed).
void store_kv(ggml_context * ctx0, ggml_cgraph * gf, const hparams & hp, const kv_cache & kv, int il,
              ggml_tensor * k_idx, ggml_tensor * v_idx, int64_t n, ggml_tensor * k, ggml_tensor * v);

// Attention of q ([hd, n_head, n]) over cells [0, n_kv) of layer il under
// kq_mask ([n_kv, n]): [n_embd_q, n], before the output projection.
// `as_steps`: each query's products as a one-token step computes them.
// With m.specee_attention and V untransposed: specee's kernel
// (exact_attention.h), where every row is a one-token step's.
ggml_tensor * attend(ggml_context * ctx0, const model & m, const kv_cache & kv, int il, uint32_t n_kv,
                     ggml_tensor * kq_mask, ggml_tensor * q, int64_t n, bool as_steps = false);

// SwiGLU feed-forward: down(silu(gate x) * up x), plus `residual` when
// given (product_plus).
ggml_tensor * feed_forward(ggml_context * ctx0, const model & m, const layer_weights & L, ggml_tensor * cur,
                           bool as_steps = false, ggml_tensor * residual = nullptr);

// Names t, marks it as a graph output and adds it to gf; returns t.
ggml_tensor * mark_output(ggml_cgraph * gf, ggml_tensor * t, const char * name);

// Copies an input's data in, unless this graph does not use that input (a
// segment without layers reads no positions or masks: gallocr gave it no memory).
void set_input(ggml_tensor * t, const void * data, size_t offset, size_t size);

// Copies an attention mask ([n] floats: 0 or -inf) into its graph input,
// converted to F16 where the input is F16 (the fused kernel's), through
// `scratch`; like set_input, it skips an input the graph left without memory.
void set_mask_input(ggml_tensor * t, const float * mask, size_t n, std::vector<ggml_fp16_t> & scratch);

} // namespace specee
