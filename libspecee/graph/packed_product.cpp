// packed_product.cpp — the two custom operations of packed_product().
#include "graph/packed_product.h"

#include "ggml-cpu.h"

#include <algorithm>

namespace specee {

namespace {

// x [k, n] F32 -> Q8_K blocks, n rows of k / 256 blocks. Threads split the
// blocks; a block's quantization does not depend on how they are split.
void quantize_q8_k(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * x      = dst->src[0];
    const int64_t       nb     = x->ne[0] / kernels::QK;
    const int64_t       total  = nb * x->ne[1];
    const int64_t       first  = total * ith / nth;
    const int64_t       last   = total * (ith + 1) / nth;
    const auto          quant  = ggml_get_type_traits_cpu(GGML_TYPE_Q8_K)->from_float;
    auto *              out    = static_cast<kernels::block_q8_k *>(dst->data);
    for (int64_t i = first; i < last; ++i) {
        const int64_t col = i / nb, b = i % nb;
        const float * src = reinterpret_cast<const float *>(static_cast<const char *>(x->data) + col * x->nb[1]) +
                            b * kernels::QK;
        quant(src, out + i, kernels::QK);
    }
}

// y [m, n] = W x: threads split W's groups of 16 rows, never a dot product.
void multiply(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto &  pw     = *static_cast<const model::packed_weight *>(userdata);
    const int64_t groups = pw.matrix.n_rows / kernels::ROW_GROUP;
    const int64_t g0 = groups * ith / nth, g1 = groups * (ith + 1) / nth;
    if (g0 == g1) {
        return;
    }
    const auto * xq = static_cast<const kernels::block_q8_k *>(dst->src[0]->data);
    kernels::mul_mat(pw.isa, pw.matrix, xq, int(dst->ne[1]), static_cast<float *>(dst->data),
                     dst->nb[1] / sizeof(float), g0 * kernels::ROW_GROUP, g1 * kernels::ROW_GROUP);
}

} // namespace

ggml_tensor * packed_product(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * w, ggml_tensor * x) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && x->ne[0] == pw.matrix.n_cols && x->ne[2] == 1 && x->ne[3] == 1);
    GGML_ASSERT(x->ne[1] <= max_packed_columns);
    if (!ggml_is_contiguous(x)) {
        x = ggml_cont(ctx0, x);
    }
    const int64_t n  = x->ne[1];
    const int64_t nb = x->ne[0] / kernels::QK;
    ggml_tensor * xq = ggml_custom_4d(ctx0, GGML_TYPE_I8, nb * int64_t(sizeof(kernels::block_q8_k)), n, 1, 1, &x, 1,
                                      quantize_q8_k, GGML_N_TASKS_MAX, nullptr);  // [Q8_K bytes, n]
    ggml_tensor * args[2] = {xq, w};  // w: only so that the graph knows what the node reads
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, pw.matrix.n_rows, n, 1, 1, args, 2, multiply, GGML_N_TASKS_MAX,
                          const_cast<model::packed_weight *>(&pw));  // [m, n]
}

} // namespace specee
