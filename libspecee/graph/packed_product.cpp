// packed_product.cpp — the two custom operations of packed_product().
#include "graph/packed_product.h"

#include "ggml-cpu.h"

#include <algorithm>

namespace specee {

namespace {

// The activations' type for a weight type: Q8_K for the k-quants, Q8_0 else.
ggml_type activation_type(kernels::weight_type t) { return kernels::takes_q8_k(t) ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0; }

// x [k, n] F32 -> ggml's activation blocks, n rows of them. Threads split the
// blocks; a block's quantization does not depend on how they are split.
// userdata: a packed weight whose activation type this is.
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

// y = W_i xq for each of `parts` in turn, part i's [m_i, n] block after the
// earlier ones: threads split the groups of 16 rows of all parts together
// (the small K and V matrices share a thread with Q's rows), never a dot
// product.
void multiply_parts(const model::packed_weight * const * parts, size_t n_parts, const void * xq, int64_t n,
                    float * y, int ith, int nth) {
    int64_t total = 0;
    for (size_t i = 0; i < n_parts; ++i) {
        total += parts[i]->matrix.n_rows / kernels::ROW_GROUP;
    }
    const int64_t g0 = total * ith / nth, g1 = total * (ith + 1) / nth;
    int64_t       first = 0;  // the part's first group among all
    for (size_t i = 0; i < n_parts; ++i) {
        const model::packed_weight & pw = *parts[i];
        const int64_t groups = pw.matrix.n_rows / kernels::ROW_GROUP;
        const int64_t a = std::max(g0, first) - first, b = std::min(g1, first + groups) - first;
        if (a < b) {
            kernels::mul_mat(pw.isa, pw.matrix, xq, int(n), y, pw.matrix.n_rows, a * kernels::ROW_GROUP,
                             b * kernels::ROW_GROUP);
        }
        first += groups;
        y += pw.matrix.n_rows * n;
    }
}

// dst [m, n] = W x; userdata: W's packed weight.
void multiply(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto * pw = static_cast<const model::packed_weight *>(userdata);
    multiply_parts(&pw, 1, dst->src[0]->data, dst->ne[1], static_cast<float *>(dst->data), ith, nth);
}

// dst (flat) = the set's products one after another; userdata: the set.
void multiply_set(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto & set = *static_cast<const model::packed_set *>(userdata);
    multiply_parts(set.parts.data(), set.parts.size(), dst->src[0]->data, dst->src[0]->ne[1],
                   static_cast<float *>(dst->data), ith, nth);
}

// x as the activation blocks of `pw`'s type: [activation bytes, n] I8.
ggml_tensor * quantized(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * x) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && x->ne[0] == pw.matrix.n_cols && x->ne[2] == 1 && x->ne[3] == 1);
    GGML_ASSERT(x->ne[1] <= max_packed_columns);
    if (!ggml_is_contiguous(x)) {
        x = ggml_cont(ctx0, x);
    }
    return ggml_custom_4d(ctx0, GGML_TYPE_I8, int64_t(ggml_row_size(activation_type(pw.matrix.type), x->ne[0])),
                          x->ne[1], 1, 1, &x, 1, quantize, GGML_N_TASKS_MAX, const_cast<model::packed_weight *>(&pw));
}

} // namespace

std::vector<ggml_tensor *> packed_products(ggml_context * ctx0, const model::packed_set & set,
                                           const std::vector<ggml_tensor *> & ws, ggml_tensor * x) {
    GGML_ASSERT(!set.parts.empty() && ws.size() == set.parts.size());
    ggml_tensor * xq = quantized(ctx0, *set.parts[0], x);
    const int64_t n  = x->ne[1];
    int64_t rows = 0;
    std::vector<ggml_tensor *> args = {xq};
    for (size_t i = 0; i < ws.size(); ++i) {
        rows += set.parts[i]->matrix.n_rows;
        args.push_back(ws[i]);  // only so that the graph knows what the node reads
    }
    ggml_tensor * all = ggml_custom_4d(ctx0, GGML_TYPE_F32, rows * n, 1, 1, 1, args.data(), int(args.size()),
                                       multiply_set, GGML_N_TASKS_MAX, const_cast<model::packed_set *>(&set));
    std::vector<ggml_tensor *> out;
    size_t offset = 0;
    for (const model::packed_weight * pw : set.parts) {
        const int64_t m = pw->matrix.n_rows;
        out.push_back(ggml_view_2d(ctx0, all, m, n, size_t(m) * sizeof(float), offset));
        offset += size_t(m * n) * sizeof(float);
    }
    return out;
}

ggml_tensor * packed_product(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * w, ggml_tensor * x) {
    ggml_tensor * xq      = quantized(ctx0, pw, x);  // [activation bytes, n]
    ggml_tensor * args[2] = {xq, w};                 // w: only so that the graph knows what the node reads
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, pw.matrix.n_rows, xq->ne[1], 1, 1, args, 2, multiply,
                          GGML_N_TASKS_MAX, const_cast<model::packed_weight *>(&pw));  // [m, n]
}

} // namespace specee
