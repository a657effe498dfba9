// exact_attention.h — attention through specee's kernel (kernels/attention.h)
// as one ggml custom operation, so ggml's graph and thread pool run it like
// any other node.
#pragma once

#include "model/model.h"

namespace specee {

// softmax(K^T q / sqrt(hd) + mask) V for q [hd, n_head, n] F32 over cells
// [0, mask->ne[0]) of the layer caches k, v ([n_embd_kv, n_ctx] F16, V not
// transposed) under mask [n_kv, n] (F16 or F32): [n_embd_q, n]. Each row
// depends only on the cells its mask shows it, in their order.
ggml_tensor * exact_attention(ggml_context * ctx0, const model & m, ggml_tensor * q, ggml_tensor * k_cache,
                              ggml_tensor * v_cache, ggml_tensor * mask);

} // namespace specee
