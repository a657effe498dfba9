// packed_product.h — y = W x through specee's own kernels (libspecee/kernels/),
// as two ggml custom operations, so ggml's graph, allocator and thread pool
// run them like any other node: quantize x (to Q8_K or Q8_0, the activation
// type ggml pairs with the weight type), then multiply.
#pragma once

#include "model/model.h"

namespace specee {

// Passes of up to this many tokens use specee's kernels; longer ones (prompt
// chunks) keep ggml's, whose matrix-matrix kernels are built for them.
constexpr int64_t max_packed_columns = 16;

// y = W x (+ residual, [rows of W, n] F32) for x = [k, n] F32 (n <=
// max_packed_columns), W given by its packed copy; `w` is the ggml tensor
// it was packed from. Every column of y is computed as a one-column call
// computes it; the residual is added as ggml_add would, in the same node.
ggml_tensor * packed_product(ggml_context * ctx0, const model::packed_weight & pw, ggml_tensor * w, ggml_tensor * x,
                             ggml_tensor * residual = nullptr);

// W_i x (+ b_i) for every matrix of a packed set (ws: the ggml tensors its
// parts were packed from; biases: none, or one per part), as one quantization of x and one multiplication: [rows of
// W_i, n] each, contiguous. Each column as packed_product's; a bias is
// added as ggml_add adds it.
std::vector<ggml_tensor *> packed_products(ggml_context * ctx0, const model::packed_set & set,
                                           const std::vector<ggml_tensor *> & ws, ggml_tensor * x,
                                           const std::vector<ggml_tensor *> & biases = {});

} // namespace specee
