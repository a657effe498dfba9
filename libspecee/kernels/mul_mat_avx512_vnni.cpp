// mul_mat_avx512_vnni.cpp — Q4_K and Q6_K kernels over the 16-row layouts
// (layouts.h) with AVX-512 VNNI. Compiled with those instructions enabled
// (CMakeLists.txt) and only called when the CPU has them (best_isa()).
//
// Shape of the work: a tile is 16 rows x NC columns. For every 64-byte line
// of weights (one quad of 16 rows) the weights are unpacked once and each
// column adds its 4 activation bytes to its own 16 lanes (vpdpbusd). Each
// column's accumulators and steps are the same for every NC: one template,
// every column count, no one-column special case, so a column of a batched
// call equals the one-column call bit for bit. Only fused multiply-adds
// touch the floats (this file is built with -ffp-contract=off as well).
#include "kernels/layouts.h"
#include "kernels/tiles.h"

#include <immintrin.h>

namespace specee::kernels {

namespace {

// columns a tile keeps in registers: 8, one pass over a row group's weights
// for an 8-token verification. The k-quants' sub-block sums are scaled in
// floats (no int32 accumulators per column), which freed the registers: on a
// 2-core Xeon, 2 threads, Q4_K's 8-column pass went from 2.15 one-column
// passes (tiles of 4, int32 scaling; tiles of 8 then spilled) to 1.68,
// Qwen2.5-Coder-1.5B's exact 8-token pass from 98.9 to 87.4 ms, and
// Qwen2.5-Coder-0.5B's (Q5_0/Q8_0) from 1.87-1.91 to 1.79-1.81 steps
constexpr int MAX_TILE = 8;
// blocks ahead that the loop asks the memory for: the hardware prefetcher
// alone left one thread at about 60% of its read bandwidth (Q6_K 8.0 -> 11.0
// GB/s with 1 thread, 13.7 -> 24.0 with 2, on a 2-core Xeon)
constexpr int PREFETCH_BLOCKS = 2;

inline void prefetch(const void * p) { _mm_prefetch(static_cast<const char *>(p), _MM_HINT_T0); }

inline __m512 load_fp16x16(const uint16_t * p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}

inline __m512i bcast_quad(const int8_t * p) {
    int32_t v;
    __builtin_memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

template <int NC>
void q6_k_tile(const block_q6_k_r16 * blocks, int64_t nb, const block_q8_k * const * x, float * const * y) {
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    __m512        acc[NC];
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
        const block_q6_k_r16 & B = blocks[b];
        __m512                 fs[NC];  // scaled in floats, as Q4_K below
        for (int c = 0; c < NC; ++c) {
            fs[c] = _mm512_setzero_ps();
        }
        const block_q6_k_r16 & P = blocks[b + PREFETCH_BLOCKS < nb ? b + PREFETCH_BLOCKS : b];
        for (int s = 0; s < 16; ++s) {
            prefetch(P.lo[2 * s]);
            prefetch(P.lo[2 * s + 1]);
            prefetch(P.hi[s]);
            if (s < 5) prefetch(reinterpret_cast<const uint8_t *>(P.scales) + 64 * s);
            const __m512i h  = _mm512_loadu_si512(B.hi[s]);
            const __m512i l0 = _mm512_loadu_si512(B.lo[2 * s]);
            const __m512i l1 = _mm512_loadu_si512(B.lo[2 * s + 1]);
            // q = low nibble | (high 2 bits << 4); 0xF8: A | (B & C)
            const __m512i w0 = _mm512_ternarylogic_epi32(_mm512_and_si512(l0, m0f), _mm512_slli_epi16(h, 4), m30, 0xF8);
            const __m512i w1 = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m0f),
                                                         _mm512_slli_epi16(h, 2), m30, 0xF8);
            const __m512i w2 = _mm512_ternarylogic_epi32(_mm512_and_si512(l1, m0f), h, m30, 0xF8);
            const __m512i w3 = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m0f),
                                                         _mm512_srli_epi16(h, 2), m30, 0xF8);
            const __m512 sc =
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(B.scales[s]))));
            for (int c = 0; c < NC; ++c) {
                const int8_t * q = x[c][b].qs + 16 * s;
                __m512i        d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, bcast_quad(q));
                d                = _mm512_dpbusd_epi32(d, w1, bcast_quad(q + 4));
                d                = _mm512_dpbusd_epi32(d, w2, bcast_quad(q + 8));
                d                = _mm512_dpbusd_epi32(d, w3, bcast_quad(q + 12));
                d                = _mm512_sub_epi32(d, _mm512_set1_epi32(32 * x[c][b].bsums[s]));
                fs[c]            = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, fs[c]);
            }
        }
        const __m512 dw = load_fp16x16(B.d);
        for (int c = 0; c < NC; ++c) {
            acc[c] = _mm512_fmadd_ps(fs[c], _mm512_mul_ps(dw, _mm512_set1_ps(x[c][b].d)), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        _mm512_storeu_ps(y[c], acc[c]);
    }
}

// Q4_K, per block of 256 weights and column: each sub-block's exact integer
// dot product is scaled in floats (cvt + fma: one multiply-port operation
// where vpmulld takes two; the products are below 2^22 and the sums of real
// blocks below 2^24, so this is the integer sum, and the reference takes the
// same float steps in any case); the mins term is one vpdpwssd a sub-block at
// the block's end: (min, min) pairs against the two 16-weight sums of the
// activations, the same int32 as min * (sum16 + sum16).
template <int NC>
void q4_k_tile(const block_q4_k_r16 * blocks, int64_t nb, const block_q8_k * const * x, float * const * y) {
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    __m512        acc[NC];
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
        const block_q4_k_r16 & B = blocks[b];
        __m512                 fs[NC];
        for (int c = 0; c < NC; ++c) {
            fs[c] = _mm512_setzero_ps();
        }
        const block_q4_k_r16 & P = blocks[b + PREFETCH_BLOCKS < nb ? b + PREFETCH_BLOCKS : b];
        for (int s = 0; s < 8; ++s) {
            for (int p = 0; p < 4; ++p) {
                prefetch(P.lo[4 * s + p]);
            }
            if (s < 5) prefetch(reinterpret_cast<const uint8_t *>(P.scales) + 64 * s);
            __m512i w[8];
            for (int p = 0; p < 4; ++p) {
                const __m512i l = _mm512_loadu_si512(B.lo[4 * s + p]);
                w[2 * p]        = _mm512_and_si512(l, m0f);
                w[2 * p + 1]    = _mm512_and_si512(_mm512_srli_epi16(l, 4), m0f);
            }
            const __m512 sc =
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(B.scales[s]))));
            for (int c = 0; c < NC; ++c) {
                const int8_t * q = x[c][b].qs + 32 * s;
                __m512i        d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast_quad(q));
                for (int j = 1; j < 8; ++j) {
                    d = _mm512_dpbusd_epi32(d, w[j], bcast_quad(q + 4 * j));
                }
                fs[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, fs[c]);
            }
        }
        __m512i mn[8];  // (min, min) as int16 pairs, one register a sub-block
        for (int s = 0; s < 8; ++s) {
            const __m512i m = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(B.mins[s])));
            mn[s]           = _mm512_or_si512(m, _mm512_slli_epi32(m, 16));
        }
        const __m512 dw = load_fp16x16(B.d);
        const __m512 mw = load_fp16x16(B.dmin);
        for (int c = 0; c < NC; ++c) {
            __m512i sm = _mm512_setzero_si512();
            for (int s = 0; s < 8; ++s) {
                sm = _mm512_dpwssd_epi32(sm, mn[s], bcast_quad(reinterpret_cast<const int8_t *>(x[c][b].bsums + 2 * s)));
            }
            const __m512 dx = _mm512_set1_ps(x[c][b].d);
            acc[c]          = _mm512_fmadd_ps(fs[c], _mm512_mul_ps(dw, dx), acc[c]);
            acc[c]          = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(sm), _mm512_mul_ps(mw, dx), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        _mm512_storeu_ps(y[c], acc[c]);
    }
}

} // namespace

void mul_mat_q6_k_avx512_vnni(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                              int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const block_q6_k_r16 *>(w.bytes());
    for_each_tile<MAX_TILE, 1>(row_begin, row_end, n_x, [&](int64_t g, int, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q6_k_tile<nc>(blocks + g * nb, nb, columns<nc>(x, nb, c0).data(), columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

void mul_mat_q4_k_avx512_vnni(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                              int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const block_q4_k_r16 *>(w.bytes());
    for_each_tile<MAX_TILE, 1>(row_begin, row_end, n_x, [&](int64_t g, int, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q4_k_tile<nc>(blocks + g * nb, nb, columns<nc>(x, nb, c0).data(), columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

} // namespace specee::kernels

// ---- the 32-weight types (Q8_0, Q5_0, Q4_1): a repacked block is one block
// of 32 weights of 16 rows, with one scale each: one fused multiply-add per
// block and column

namespace specee::kernels {

namespace {

// The 8 quads of a block as unsigned bytes (16 rows each), its scales.
template <weight_type T> struct q32_block;

template <> struct q32_block<weight_type::q8_0> {
    using type = block_q8_0_r16;
    static constexpr int32_t offset = 128;
    static void load(const type & b, __m512i * w) {
        for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(b.q[j]);
    }
};

inline void load_nibble_lines(const uint8_t (*lo)[64], __m512i * w) {
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    for (int p = 0; p < 4; ++p) {
        const __m512i l = _mm512_loadu_si512(lo[p]);
        w[2 * p]        = _mm512_and_si512(l, m0f);
        w[2 * p + 1]    = _mm512_and_si512(_mm512_srli_epi16(l, 4), m0f);
    }
}

template <> struct q32_block<weight_type::q5_0> {
    using type = block_q5_0_r16;
    static constexpr int32_t offset = 16;
    static void load(const type & b, __m512i * w) {
        load_nibble_lines(b.lo, w);
        const __m512i m10 = _mm512_set1_epi8(0x10);
        const __m512i h   = _mm512_loadu_si512(b.hi);
        // bit j of h to bit 4 of quad j's bytes; 0xF8: A | (B & C)
        w[0] = _mm512_ternarylogic_epi32(w[0], _mm512_slli_epi16(h, 4), m10, 0xF8);
        w[1] = _mm512_ternarylogic_epi32(w[1], _mm512_slli_epi16(h, 3), m10, 0xF8);
        w[2] = _mm512_ternarylogic_epi32(w[2], _mm512_slli_epi16(h, 2), m10, 0xF8);
        w[3] = _mm512_ternarylogic_epi32(w[3], _mm512_slli_epi16(h, 1), m10, 0xF8);
        w[4] = _mm512_ternarylogic_epi32(w[4], h, m10, 0xF8);
        w[5] = _mm512_ternarylogic_epi32(w[5], _mm512_srli_epi16(h, 1), m10, 0xF8);
        w[6] = _mm512_ternarylogic_epi32(w[6], _mm512_srli_epi16(h, 2), m10, 0xF8);
        w[7] = _mm512_ternarylogic_epi32(w[7], _mm512_srli_epi16(h, 3), m10, 0xF8);
    }
};

template <> struct q32_block<weight_type::q4_1> {
    using type = block_q4_1_r16;
    static constexpr int32_t offset = 0;
    static void load(const type & b, __m512i * w) { load_nibble_lines(b.lo, w); }
};

template <weight_type T, int NC>
void q32_tile(const typename q32_block<T>::type * blocks, int64_t nb, const block_q8_0 * const * x,
              const int32_t * const * sums, float * const * y) {
    using B_t = typename q32_block<T>::type;
    constexpr int ahead = (PREFETCH_BLOCKS * 3360 + sizeof(B_t) - 1) / sizeof(B_t);  // as far ahead in bytes as the k-quants
    __m512 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const B_t & B = blocks[b];
        if (b + ahead < nb) {
            for (size_t off = 0; off < sizeof(B_t); off += 64) prefetch(reinterpret_cast<const char *>(&blocks[b + ahead]) + off);
        }
        __m512i w[8];
        q32_block<T>::load(B, w);
        const __m512 dw = load_fp16x16(B.d);
        for (int c = 0; c < NC; ++c) {
            const block_q8_0 & X  = x[c][b];
            const int32_t      xs = sums[c][b];
            __m512i            d  = _mm512_setzero_si512();
            for (int j = 0; j < 8; ++j) d = _mm512_dpbusd_epi32(d, w[j], bcast_quad(X.qs + 4 * j));
            if constexpr (q32_block<T>::offset != 0) {
                d = _mm512_sub_epi32(d, _mm512_set1_epi32(q32_block<T>::offset * xs));
            }
            const float dx = _cvtsh_ss(X.d);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[c]);
            if constexpr (T == weight_type::q4_1) {
                acc[c] = _mm512_fmadd_ps(load_fp16x16(B.m), _mm512_set1_ps(dx * (float) xs), acc[c]);
            }
        }
    }
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(y[c], acc[c]);
}

template <weight_type T>
void q32_run(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y, int64_t ldy,
             int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const typename q32_block<T>::type *>(w.bytes());
    for_each_tile<MAX_TILE, 1>(row_begin, row_end, n_x, [&](int64_t g, int, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q32_tile<T, nc>(blocks + g * nb, nb, columns<nc>(x, nb, c0).data(), columns<nc>(sums, nb, c0).data(),
                        columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

} // namespace

void mul_mat_q32_avx512_vnni(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                             int64_t ldy, int64_t row_begin, int64_t row_end) {
    with_q32_type(w.type, [&](auto type) {
        q32_run<decltype(type)::value>(w, x, sums, n_x, y, ldy, row_begin, row_end);
    });
}

} // namespace specee::kernels
