// kernels.h — specee's own CPU matrix kernels for quantized weights.
//
// A weight matrix of n_rows x n_cols in one of ggml's block formats (Q4_K,
// Q6_K, Q8_0, Q5_0, Q4_1) is repacked once, at load, into a row-interleaved layout: 16 rows side by
// side, so that one 512-bit register holds 4 consecutive weights of 16 rows
// and a dot product over 4 activation bytes (VNNI vpdpbusd) advances 16 rows
// at once, with no horizontal sums (docs/kernels.md has the layouts).
//
// mul_mat computes y = W x for 1..n columns of activations quantized as
// ggml quantizes them for the weight type (Q8_K or Q8_0). Every column is computed by the same
// sequence of operations whatever the number of columns in the call: the
// weights of a tile are unpacked once and reused by every column, but each
// column has its own accumulators and the same order of integer and
// floating-point steps. A column of a batched call is therefore bit for bit
// the one-column result: verification rows equal one-token steps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace specee::kernels {

constexpr int QK        = 256;  // weights per k-quant block (ggml's QK_K)
constexpr int ROW_GROUP = 16;   // rows interleaved in a repacked block

// ggml's k-quant block layouts (ggml-common.h), read from the GGUF as bytes.
struct block_q4_k {  // 144 bytes: w = d * sc[j] * q - dmin * m[j], 8 sub-blocks of 32
    uint16_t d, dmin;     // fp16
    uint8_t  scales[12];  // 6-bit scales and mins, packed
    uint8_t  qs[128];     // 4-bit quants
};
struct block_q6_k {  // 210 bytes: w = d * sc[j] * (q - 32), 16 sub-blocks of 16
    uint8_t  ql[128];     // low 4 bits
    uint8_t  qh[64];      // high 2 bits
    int8_t   scales[16];
    uint16_t d;           // fp16
};
struct block_q8_k {  // activations: x = d * qs, bsums: sums of 16 qs
    float   d;
    int8_t  qs[QK];
    int16_t bsums[QK / 16];
};
// ggml's 32-weight blocks: w = d * q (Q8_0), d * (q - 16) (Q5_0), d * q + m (Q4_1)
struct block_q8_0 {  // 34 bytes; also the activations of these types (ggml's Q8_0 quantizer)
    uint16_t d;           // fp16
    int8_t   qs[32];
};
struct block_q5_0 {  // 22 bytes
    uint16_t d;
    uint8_t  qh[4];       // bit j: the 5th bit of weight j
    uint8_t  qs[16];      // weight j: low nibble of qs[j] (j < 16), high nibble of qs[j - 16]
};
struct block_q4_1 {  // 20 bytes
    uint16_t d, m;
    uint8_t  qs[16];
};
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block");
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block");
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block");
static_assert(sizeof(block_q4_k) == 144, "Q4_K block");
static_assert(sizeof(block_q6_k) == 210, "Q6_K block");
static_assert(sizeof(block_q8_k) == 292, "Q8_K block");

enum class weight_type { q4_k, q6_k, q8_0, q5_0, q4_1 };

// An fp16 value as a float, exactly; without ggml, so the kernels and their
// test drivers build alone.
float fp16_to_fp32(uint16_t h);

// k-quants take activations in ggml's Q8_K blocks (one scale per 256), the
// 32-weight types in ggml's Q8_0 blocks (one per 32), as ggml's own kernels do.
inline bool takes_q8_k(weight_type t) { return t == weight_type::q4_k || t == weight_type::q6_k; }
// bytes of one ggml block of this type, and weights in it
size_t      source_block_bytes(weight_type t);
int         source_block_weights(weight_type t);
enum class isa { reference, avx2, avx512_vnni };  // in order: a CPU with one runs those before it

// The best kernels this CPU runs, chosen at run time (not at build time);
// SPECEE_KERNELS_ISA=avx2 or =reference in the environment caps the choice
// (to test the AVX2 path on an AVX-512 machine).
isa best_isa();
const char * isa_name(isa i);
bool         cpu_has(isa i);

// A repacked matrix. n_rows must be a multiple of ROW_GROUP and n_cols of
// the type's block (256 weights for the k-quants, 32 for the others).
struct packed_matrix {
    weight_type          type   = weight_type::q4_k;
    int64_t              n_rows = 0;
    int64_t              n_cols = 0;
    std::vector<uint8_t> data;              // n_rows / 16 groups of n_blocks() repacked blocks, as repack wrote them
    const uint8_t *      placed = nullptr;  // the same bytes where their owner moved them (data is empty then)
    size_t  block_bytes() const;  // bytes of one repacked block (16 rows x one block of weights)
    int64_t n_blocks() const { return n_cols / source_block_weights(type); }  // blocks along a row
    size_t  n_bytes() const { return size_t(n_rows / ROW_GROUP * n_blocks()) * block_bytes(); }
    const uint8_t * bytes() const { return placed != nullptr ? placed : data.data(); }
};

// Repacks rows of ggml blocks (n_rows x n_cols / 256 blocks, row-major).
// Returns false (and says why) when the shape does not fit the layout.
bool repack(weight_type type, const void * blocks, int64_t n_rows, int64_t n_cols, packed_matrix & out,
            std::string * why = nullptr);

// y[c * ldy + r] = sum_k W[r, k] x_c[k] for rows [row_begin, row_end) (multiples
// of 16) and columns c < n_x; x holds n_x rows of activation blocks
// (takes_q8_k(w.type): n_cols / 256 Q8_K blocks, else n_cols / 32 Q8_0 blocks).
void mul_mat(isa i, const packed_matrix & w, const void * x, int n_x, float * y, int64_t ldy,
             int64_t row_begin, int64_t row_end);

} // namespace specee::kernels
