// attention.h — specee's attention kernel for decode steps and verification
// passes: softmax(q K^T * scale + mask) V of each query row over the cells of
// an F16 KV cache that its mask lets it see.
//
// Why not ggml's: ggml's attention sums a row's softmax and its V products in
// SIMD lanes given by a cell's index in the cache. A row of a token tree sees
// the cache, then its own ancestors with its siblings' cells masked in
// between, so its ancestors sit in other lanes than in a one-token step, and
// the row rounds differently from the step it stands for (greedy tree
// verification then departs from plain decoding on near ties). This kernel
// sums over the visible cells in their order, lanes given by a cell's rank
// among them, so a row's result depends only on what it sees: a tree row is
// its one-token step bit for bit, whatever lies between its cells, whatever
// the number of rows and threads. docs/kernels.md has the arithmetic.
//
// Every instruction set (reference, AVX2, AVX-512) performs the same float
// operations in the same order (attention_impl.h is the one algorithm), so
// their results are equal bit for bit too.
#pragma once

#include "kernels/kernels.h"

#include <cstddef>
#include <cstdint>

namespace specee::kernels {

// The head width the kernel takes: a multiple of this many floats.
constexpr int ATTENTION_LANES = 16;

struct attention_problem {
    int   n_rows = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    int   n_kv   = 0;          // cells [0, n_kv) of the cache are looked at
    float scale  = 1.0f;       // applied to q . k before the mask is added
    // q: head h of row i at q + i * q_row + h * q_head (bytes), head_dim F32
    const char * q = nullptr;
    size_t       q_row = 0, q_head = 0;
    // K, V: head g of cell c at k + c * k_cell + g * head_dim * 2 (bytes), F16
    const char * k = nullptr;
    const char * v = nullptr;
    size_t       k_cell = 0, v_cell = 0;
    // mask: row i, cell c at mask + i * mask_row (bytes), F16 or F32; -inf
    // hides the cell, any other value is added to its score
    const char * mask = nullptr;
    size_t       mask_row = 0;
    bool         mask_f16 = true;
    // out: head h of row i at out + i * out_row + h * head_dim (floats)
    float *      out = nullptr;
    size_t       out_row = 0;
};

// Rows x heads are the tasks (task t: row t / n_head, head t % n_head); a
// caller's threads split them. Each task is computed whole by one thread.
void attend(isa i, const attention_problem & p, int64_t task_begin, int64_t task_end);

// Per instruction set (attention_impl.h instantiated in its own file).
void attend_reference(const attention_problem & p, int64_t task_begin, int64_t task_end);
void attend_avx2(const attention_problem & p, int64_t task_begin, int64_t task_end);
void attend_avx512(const attention_problem & p, int64_t task_begin, int64_t task_end);

} // namespace specee::kernels
