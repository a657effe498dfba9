// packed_product.cpp — the two custom operations of packed_product().
#include "graph/packed_product.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace specee {

namespace {

// The activations' type for a weight type: Q8_K for the k-quants, Q8_0 else.
ggml_type activation_type(kernels::weight_type t) { return kernels::takes_q8_k(t) ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0; }

// Blocks [b0, b1) of x [k, n] F32 (columns `stride` bytes apart) as ggml's
// activation blocks of `type` (block i: column i / (k / block), in order)
// into out. A block's quantization does not depend on which thread does it,
// or with which others.
void quantize_blocks(const void * x, int64_t k, size_t stride, ggml_type type, int64_t b0, int64_t b1, char * out) {
    const int64_t per   = ggml_blck_size(type);
    const size_t  bytes = ggml_type_size(type);
    const int64_t nb    = k / per;
    const auto    quant = ggml_get_type_traits_cpu(type)->from_float;
    for (int64_t i = b0; i < b1; ++i) {
        const int64_t col = i / nb, b = i % nb;
        const float * src = reinterpret_cast<const float *>(static_cast<const char *>(x) + col * stride) + b * per;
        quant(src, out + i * bytes, per);
    }
}

void quantize_blocks(const ggml_tensor * x, ggml_type type, int64_t b0, int64_t b1, char * out) {
    quantize_blocks(x->data, x->ne[0], x->nb[1], type, b0, b1, out);
}

int64_t n_blocks(const ggml_tensor * x, ggml_type type) { return x->ne[0] / ggml_blck_size(type) * x->ne[1]; }

// x [k, n] F32 -> ggml's activation blocks, n rows of them, as a node:
// threads split the blocks. userdata: a packed weight whose activation type this is.
void quantize(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto &        pw    = *static_cast<const model::packed_weight *>(userdata);
    const ggml_type     type  = activation_type(pw.matrix.type);
    const ggml_tensor * x     = dst->src[0];
    const int64_t       total = n_blocks(x, type);
    quantize_blocks(x, type, total * ith / nth, total * (ith + 1) / nth, static_cast<char *>(dst->data));
}

// y = x / rms(x) * w for one row of k, each float step as ggml's CPU
// rms_norm followed by its mul (fused or not) takes it: the squares summed in
// double in order, mean and scale in float, then (x * scale) * w. So a node
// that norms its own input computes exactly what the two nodes did.
void rms_norm_row(const float * x, const float * w, int64_t k, float eps, float * y) {
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
        sum += double(x[i] * x[i]);
    }
    const float mean  = float(sum / double(k));
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < k; ++i) {
        y[i] = x[i] * scale * w[i];
    }
}

// Small inputs are quantized inside the product node, by every thread for
// itself: a few microseconds of redundant work instead of a node and a
// thread barrier (a decode step of SmolLM2-135M has 120 of them).
constexpr int64_t max_inline_quantize = 16384;  // elements of x

bool quantize_inline(const ggml_tensor * x) { return ggml_nelements(x) <= max_inline_quantize; }

// The product's activation blocks: src[0] itself, or, when it is still
// F32, this thread's own quantization of it; of rms_norm(x) * norm_w when a
// norm weight is given (a set's node that norms its own input).
const void * activations(const ggml_tensor * x, ggml_type type, const ggml_tensor * norm_w = nullptr,
                         float eps = 0.0f) {
    if (x->type != GGML_TYPE_F32) {
        return x->data;
    }
    thread_local std::vector<char>  buffer;
    thread_local std::vector<float> normed;
    const int64_t total = n_blocks(x, type);
    buffer.resize(size_t(total) * ggml_type_size(type));
    if (norm_w == nullptr) {
        quantize_blocks(x, type, 0, total, buffer.data());
        return buffer.data();
    }
    const int64_t k = x->ne[0];
    normed.resize(size_t(k * x->ne[1]));
    for (int64_t c = 0; c < x->ne[1]; ++c) {
        rms_norm_row(reinterpret_cast<const float *>(static_cast<const char *>(x->data) + c * x->nb[1]),
                     static_cast<const float *>(norm_w->data), k, eps, normed.data() + c * k);
    }
    quantize_blocks(normed.data(), k, size_t(k) * sizeof(float), type, 0, total, buffer.data());
    return buffer.data();
}

// y[:, rows [r0, r1)] += t: a residual [m, n], or a bias [m] added to
// every column (the same one float addition as ggml_add(t, y), whose order
// does not matter).
void add_rows(const ggml_tensor * t, float * y, int64_t ldy, int64_t n, int64_t r0, int64_t r1) {
    const size_t stride = t->ne[1] > 1 ? t->nb[1] : 0;
    for (int64_t c = 0; c < n; ++c) {
        const float * r = reinterpret_cast<const float *>(static_cast<const char *>(t->data) + c * stride);
        float *       o = y + c * ldy;
        for (int64_t i = r0; i < r1; ++i) {
            o[i] += r[i];
        }
    }
}

// y = W_i xq for the groups [g0, g1) of 16 rows counted over all `parts`
// together, part i's [m_i, n] block of y after the earlier ones. `addends`:
// none, or one per part (add_rows: a bias or a residual), added to the rows
// computed here.
void multiply_groups(const model::packed_weight * const * parts, size_t n_parts, const void * xq, int64_t n,
                     float * y, int64_t g0, int64_t g1, ggml_tensor * const * addends) {
    int64_t first = 0;  // the part's first group among all
    for (size_t i = 0; i < n_parts && first < g1; ++i) {
        const model::packed_weight & pw = *parts[i];
        const int64_t groups = pw.matrix.n_rows / kernels::ROW_GROUP;
        const int64_t a = std::max(g0, first) - first, b = std::min(g1, first + groups) - first;
        if (a < b) {
            kernels::mul_mat(pw.isa, pw.matrix, xq, int(n), y, pw.matrix.n_rows, a * kernels::ROW_GROUP,
                             b * kernels::ROW_GROUP);
            if (addends != nullptr) {
                add_rows(addends[i], y, pw.matrix.n_rows, n, a * kernels::ROW_GROUP, b * kernels::ROW_GROUP);
            }
        }
        first += groups;
        y += pw.matrix.n_rows * n;
    }
}

// The first bytes of the rows this thread starts the next product node
// with, fetched towards its cache while it waits at the barrier and the
// small operations between products run: without it each node's weights
// start cold, and a node of a small model reads only 0.1-0.5 MB a thread.
// Of 32 KB to 512 KB, 64 KB and 128 KB measured best (about a thread's whole
// share evicts what the current node still reads). Decode: SmolLM2-135M
// 1.037x, the Qwen2.5-Coder models unchanged (docs/kernels.md, "Prefetching
// the next node").
constexpr size_t prefetch_bytes = 65536;

// Groups of 16 rows over all `parts` of a node.
int64_t total_groups(const model::packed_weight * const * parts, size_t n_parts) {
    int64_t total = 0;
    for (size_t i = 0; i < n_parts; ++i) {
        total += parts[i]->matrix.n_rows / kernels::ROW_GROUP;
    }
    return total;
}

// Thread ith's rows of a node: groups [total * ith / nth, total * (ith + 1) / nth).
int64_t first_group(int64_t total, int ith, int nth) { return total * ith / nth; }

void prefetch_share(const std::vector<const model::packed_weight *> & next, int ith, int nth) {
    int64_t g    = first_group(total_groups(next.data(), next.size()), ith, nth);
    size_t  left = prefetch_bytes;
    for (const model::packed_weight * pw : next) {
        const int64_t groups = pw->matrix.n_rows / kernels::ROW_GROUP;
        if (g >= groups) {
            g -= groups;
            continue;
        }
        const size_t group_bytes = size_t(pw->matrix.n_blocks()) * pw->matrix.block_bytes();
        const char * p           = reinterpret_cast<const char *>(pw->matrix.bytes()) + size_t(g) * group_bytes;
        const size_t n           = std::min(left, size_t(groups - g) * group_bytes);
        for (size_t off = 0; off < n; off += 64) {
            __builtin_prefetch(p + off, /*rw=*/0, /*locality=*/2);
        }
        left -= n;
        g = 0;
        if (left == 0) {
            break;
        }
    }
}

// y = W_i xq for each of `parts` in turn, part i's [m_i, n] block after the
// earlier ones: threads split the groups of 16 rows of all parts together
// (the small K and V matrices share a thread with Q's rows), never a dot
// product; then each prefetches its rows of the next node.
void multiply_parts(const model::packed_weight * const * parts, size_t n_parts, const void * xq, int64_t n,
                    float * y, int ith, int nth, ggml_tensor * const * addends = nullptr) {
    const int64_t total = total_groups(parts, n_parts);
    multiply_groups(parts, n_parts, xq, n, y, first_group(total, ith, nth), first_group(total, ith + 1, nth), addends);
    prefetch_share(parts[0]->next, ith, nth);
}

// dst [m, n] = W x (+ src[2], the residual); userdata: W's packed weight.
void multiply(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto * pw = static_cast<const model::packed_weight *>(userdata);
    multiply_parts(&pw, 1, activations(dst->src[0], activation_type(pw->matrix.type)), dst->ne[1],
                   static_cast<float *>(dst->data), ith, nth, dst->src[2] != nullptr ? dst->src + 2 : nullptr);
}

// dst (flat) = the set's products one after another; userdata: the set.
// src: x, the parts' weights, their biases (or nulls), then the weight of
// the RMSNorm to apply to x first (or null).
void multiply_set(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto &        set     = *static_cast<const model::packed_set *>(userdata);
    const size_t        n_parts = set.parts.size();
    const ggml_tensor * norm_w  = dst->src[1 + 2 * n_parts];
    multiply_parts(set.parts.data(), n_parts,
                   activations(dst->src[0], activation_type(set.parts[0]->matrix.type), norm_w, set.rms_eps),
                   dst->src[0]->ne[1], static_cast<float *>(dst->data), ith, nth,
                   dst->src[1 + n_parts] != nullptr ? dst->src + 1 + n_parts : nullptr);
}

// When t is rms_norm(x) * w as graph.cpp's rms_norm builds it, with the
// set's epsilon, x F32 and contiguous, w one F32 row: x and w, so that the
// set's node norms x itself (two nodes and their barriers fewer a layer);
// else nulls.
std::pair<ggml_tensor *, ggml_tensor *> norm_to_fold(const model::packed_set & set, ggml_tensor * t) {
    if (!set.fold_norm || t->op != GGML_OP_MUL || t->src[0]->op != GGML_OP_RMS_NORM) {
        return {nullptr, nullptr};
    }
    ggml_tensor * x = t->src[0]->src[0];
    ggml_tensor * w = t->src[1];
    float         eps;
    std::memcpy(&eps, t->src[0]->op_params, sizeof eps);
    const bool ok = eps == set.rms_eps && x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) &&
                    ggml_are_same_shape(x, t) && w->type == GGML_TYPE_F32 && ggml_is_contiguous(w) &&
                    ggml_nelements(w) == x->ne[0];
    return ok ? std::make_pair(x, w) : std::make_pair(nullptr, nullptr);
}

// x as the activation blocks of `pw`'s type: [activation bytes, n] I8; or
// x itself (F32), for the product node to quantize, when it is small.
ggml_tensor * quantized(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * x) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && x->ne[0] == pw.matrix.n_cols && x->ne[2] == 1 && x->ne[3] == 1);
    GGML_ASSERT(x->ne[1] <= max_packed_columns);
    if (!ggml_is_contiguous(x)) {
        x = ggml_cont(ctx0, x);
    }
    if (quantize_inline(x)) {
        return x;
    }
    return ggml_custom_4d(ctx0, GGML_TYPE_I8, int64_t(ggml_row_size(activation_type(pw.matrix.type), x->ne[0])),
                          x->ne[1], 1, 1, &x, 1, quantize, GGML_N_TASKS_MAX, const_cast<model::packed_weight *>(&pw));
}

} // namespace

std::vector<ggml_tensor *> packed_products(ggml_context * ctx0, const model::packed_set & set,
                                           const std::vector<ggml_tensor *> & ws, ggml_tensor * x,
                                           const std::vector<ggml_tensor *> & biases) {
    GGML_ASSERT(!set.parts.empty() && ws.size() == set.parts.size());
    GGML_ASSERT(biases.empty() || biases.size() == ws.size());
    const int64_t n = x->ne[1];
    // a small input that is a norm's output: this node norms it itself
    auto [unnormed, norm_w] = norm_to_fold(set, x);
    if (unnormed != nullptr && !quantize_inline(unnormed)) {
        unnormed = norm_w = nullptr;
    }
    ggml_tensor * xq   = unnormed != nullptr ? unnormed : quantized(ctx0, *set.parts[0], x);
    int64_t       rows = 0;
    std::vector<ggml_tensor *> args = {xq};
    for (size_t i = 0; i < ws.size(); ++i) {
        rows += set.parts[i]->matrix.n_rows;
        args.push_back(ws[i]);  // only so that the graph knows what the node reads
    }
    for (size_t i = 0; i < ws.size(); ++i) {
        GGML_ASSERT(biases.empty() || (biases[i] != nullptr && biases[i]->type == GGML_TYPE_F32 &&
                                       ggml_is_contiguous(biases[i]) &&
                                       ggml_nelements(biases[i]) == set.parts[i]->matrix.n_rows));
        args.push_back(biases.empty() ? nullptr : biases[i]);
    }
    args.push_back(norm_w);
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

ggml_tensor * packed_product(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * w, ggml_tensor * x,
                             ggml_tensor * residual) {
    ggml_tensor * xq = quantized(ctx0, pw, x);  // [activation bytes, n], or x
    if (residual != nullptr) {
        GGML_ASSERT(residual->type == GGML_TYPE_F32 && residual->ne[0] == pw.matrix.n_rows &&
                    residual->ne[1] == x->ne[1] && residual->nb[0] == sizeof(float));
    }
    ggml_tensor * args[3] = {xq, w, residual};  // w: only so that the graph knows what the node reads
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, pw.matrix.n_rows, x->ne[1], 1, 1, args, residual ? 3 : 2, multiply,
                          GGML_N_TASKS_MAX, const_cast<model::packed_weight *>(&pw));  // [m, n]
}

} // namespace specee
