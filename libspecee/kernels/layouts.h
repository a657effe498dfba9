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

float fp16_to_fp32(uint16_t h);

// One column's sums over a Q8_K block: 16-weight sums (Q6_K sub-blocks) or 32 (Q4_K).
inline int32_t bsum32(const block_q8_k & x, int j) { return x.bsums[2 * j] + x.bsums[2 * j + 1]; }

// The kernels for each ISA (mul_mat dispatches); the reference is plain C++.
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
