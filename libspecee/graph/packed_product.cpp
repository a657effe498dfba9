// packed_product.cpp — the two custom operations of packed_product().
#include "graph/packed_product.h"

#include "ggml-cpu.h"

namespace specee {

namespace {

// The activations' type for a weight type: Q8_K for the k-quants, Q8_0 else.
ggml_type activation_type(kernels::weight_type t) { return kernels::takes_q8_k(t) ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0; }

// x [k, n] F32 -> ggml's activation blocks, n rows of them. Threads split the
// blocks; a block's quantization does not depend on how they are split.
void quantize(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto &        pw    = *static_cast<const model::packed_weight *>(userdata);
    const ggml_type     type  = activation_type(pw.matrix.type);
    const ggml_tensor * x     = dst->src[0];
    const int64_t       per   = ggml_blck_size(type);
    const size_t        bytes = ggml_type_size(type);
    const int64_t       nb    = x->ne[0] / per;
    const int64_t       total = nb * x->ne[1];
    const auto          quant = ggml_get_type_traits_cpu(type)->from_float;
    for (int64_t i = total * ith / nth; i < total * (ith + 1) / nth; ++i) {
        const int64_t col = i / nb, b = i % nb;
        const float * src = reinterpret_cast<const float *>(static_cast<const char *>(x->data) + col * x->nb[1]) + b * per;
        quant(src, static_cast<char *>(dst->data) + i * bytes, per);
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
    kernels::mul_mat(pw.isa, pw.matrix, dst->src[0]->data, int(dst->ne[1]), static_cast<float *>(dst->data),
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
    void *        ud = const_cast<model::packed_weight *>(&pw);
    ggml_tensor * xq = ggml_custom_4d(ctx0, GGML_TYPE_I8, int64_t(ggml_row_size(activation_type(pw.matrix.type), x->ne[0])),
                                      n, 1, 1, &x, 1, quantize, GGML_N_TASKS_MAX, ud);  // [activation bytes, n]
    ggml_tensor * args[2] = {xq, w};  // w: only so that the graph knows what the node reads
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, pw.matrix.n_rows, n, 1, 1, args, 2, multiply, GGML_N_TASKS_MAX, ud);  // [m, n]
}

} // namespace specee
