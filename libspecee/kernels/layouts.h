// layouts.h — the repacked k-quant blocks: 16 rows x 256 weights each.
//
// Weights are grouped in "quads" of 4 consecutive k. A 64-byte line holds
// one quad of all 16 rows, row r at bytes [4r, 4r + 4): the operand layout
// of vpdpbusd, which multiplies 4 bytes by 4 bytes into each 32-bit lane.
#pragma once

#include "kernels/kernels.h"

namespace specee::kernels {

// Q6_K: quads 2p and 2p + 1 share line lo[p] (low nibble, high nibble);
// the 2 high bits of quads 4g..4g+3 (sub-block g) share line hi[g] at bits
// 2j..2j+1 for quad 4g + j. The same 6.5625 bits a weight as ggml's block.
struct block_q6_k_r16 {
    uint8_t  lo[32][64];
    uint8_t  hi[16][64];
    int8_t   scales[16][ROW_GROUP];  // [sub-block][row]
    uint16_t d[ROW_GROUP];           // fp16
};
static_assert(sizeof(block_q6_k_r16) == ROW_GROUP * sizeof(block_q6_k), "Q6_K_R16 keeps Q6_K's size");

// Q4_K: quads 2p and 2p + 1 share line lo[p]; scales and mins unpacked to
// bytes (6 bits each in ggml's block: 64 bytes more a block, 2.8%).
struct block_q4_k_r16 {
    uint8_t  lo[32][64];
    uint8_t  scales[8][ROW_GROUP];  // [sub-block][row]
    uint8_t  mins[8][ROW_GROUP];
    uint16_t d[ROW_GROUP];          // fp16
    uint16_t dmin[ROW_GROUP];
};
static_assert(sizeof(block_q4_k_r16) == 2368, "Q4_K_R16 size");

// The 32-weight types: one block of ggml's (32 weights) of 16 rows a
// repacked block, so any row length that is a multiple of 32 fits (SmolLM2's
// 576, Qwen2.5-Coder-0.5B's 896). Line j holds quad j. Same bytes a weight
// as ggml's blocks.
struct block_q8_0_r16 {  // q + 128 as unsigned bytes
    uint8_t  q[8][64];
    uint16_t d[ROW_GROUP];  // fp16
};
struct block_q5_0_r16 {  // lo[p]: quads 2p (low nibbles) and 2p + 1 (high); hi: bit j, quad j's 5th bits
    uint8_t  lo[4][64];
    uint8_t  hi[64];
    uint16_t d[ROW_GROUP];
};
struct block_q4_1_r16 {
    uint8_t  lo[4][64];
    uint16_t d[ROW_GROUP];
    uint16_t m[ROW_GROUP];
};
static_assert(sizeof(block_q8_0_r16) == ROW_GROUP * sizeof(block_q8_0), "Q8_0_R16 keeps Q8_0's size");
static_assert(sizeof(block_q5_0_r16) == ROW_GROUP * sizeof(block_q5_0), "Q5_0_R16 keeps Q5_0's size");
static_assert(sizeof(block_q4_1_r16) == ROW_GROUP * sizeof(block_q4_1), "Q4_1_R16 keeps Q4_1's size");

// Sums of each Q8_0 activation block's 32 values, [n_x][n_cols / 32]: the
// 32-weight kernels take their offsets (Q8_0's 128, Q5_0's 16) and Q4_1's
// minimum with them. Exact integers, whoever computes them.
void q8_0_sums(const block_q8_0 * x, int64_t n_blocks, int32_t * out);

// One column's sums over a Q8_K block: 16-weight sums (Q6_K sub-blocks) or 32 (Q4_K).
inline int32_t bsum32(const block_q8_k & x, int j) { return x.bsums[2 * j] + x.bsums[2 * j + 1]; }

// The kernels for each ISA (mul_mat dispatches); the reference is plain C++.
void mul_mat_q32_reference(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                           int64_t ldy, int64_t row_begin, int64_t row_end);
void mul_mat_q32_avx512_vnni(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                             int64_t ldy, int64_t row_begin, int64_t row_end);
void mul_mat_q32_avx2(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                      int64_t ldy, int64_t row_begin, int64_t row_end);
void mul_mat_q6_k_reference(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                            int64_t row_begin, int64_t row_end);
void mul_mat_q4_k_reference(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                            int64_t row_begin, int64_t row_end);
void mul_mat_q6_k_avx512_vnni(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                              int64_t row_begin, int64_t row_end);
void mul_mat_q6_k_avx2(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                       int64_t row_begin, int64_t row_end);
void mul_mat_q4_k_avx2(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                       int64_t row_begin, int64_t row_end);
void mul_mat_q4_k_avx512_vnni(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                              int64_t row_begin, int64_t row_end);

} // namespace specee::kernels
