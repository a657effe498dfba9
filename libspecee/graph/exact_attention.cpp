// exact_attention.cpp — the custom operation of exact_attention().
#include "graph/exact_attention.h"

#include "kernels/attention.h"

#include <cmath>

namespace specee {

namespace {

// dst [n_embd_q, n]; src: q, K, V, mask. Threads split rows x heads.
void attend_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    kernels::attention_problem p;
    p.head_dim  = int(q->ne[0]);
    p.n_head    = int(q->ne[1]);
    p.n_rows    = int(q->ne[2]);
    p.n_head_kv = int(k->ne[0] / q->ne[0]);
    p.n_kv      = int(mask->ne[0]);
    p.scale     = 1.0f / std::sqrt(float(p.head_dim));
    p.q         = static_cast<const char *>(q->data);
    p.q_head    = q->nb[1];
    p.q_row     = q->nb[2];
    p.k         = static_cast<const char *>(k->data);
    p.v         = static_cast<const char *>(v->data);
    p.k_cell    = k->nb[1];
    p.v_cell    = v->nb[1];
    p.mask      = static_cast<const char *>(mask->data);
    p.mask_row  = mask->nb[1];
    p.mask_f16  = mask->type == GGML_TYPE_F16;
    p.out       = static_cast<float *>(dst->data);
    p.out_row   = dst->nb[1] / sizeof(float);
    const int64_t tasks = int64_t(p.n_rows) * p.n_head;
    kernels::attend(*static_cast<const kernels::isa *>(userdata), p, tasks * ith / nth, tasks * (ith + 1) / nth);
}

} // namespace

ggml_tensor * exact_attention(ggml_context * ctx0, const model & m, ggml_tensor * q, ggml_tensor * k_cache,
                              ggml_tensor * v_cache, ggml_tensor * mask) {
    GGML_ASSERT(q->type == GGML_TYPE_F32 && q->nb[0] == sizeof(float) && q->ne[0] % kernels::ATTENTION_LANES == 0);
    GGML_ASSERT(k_cache->type == GGML_TYPE_F16 && v_cache->type == GGML_TYPE_F16);
    GGML_ASSERT(k_cache->ne[0] == v_cache->ne[0] && k_cache->ne[0] % q->ne[0] == 0);
    GGML_ASSERT(q->ne[1] % (k_cache->ne[0] / q->ne[0]) == 0);
    GGML_ASSERT(mask->ne[0] <= k_cache->ne[1] && mask->ne[1] >= q->ne[2]);
    GGML_ASSERT(mask->type == GGML_TYPE_F16 || mask->type == GGML_TYPE_F32);
    ggml_tensor * args[4] = {q, k_cache, v_cache, mask};
    void *        isa     = const_cast<kernels::isa *>(&m.attention_isa);  // the model outlives its graphs
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, q->ne[0] * q->ne[1], q->ne[2], 1, 1, args, 4, attend_op,
                          GGML_N_TASKS_MAX, isa);
}

} // namespace specee
