// mul_mat_avx2.cpp — Q4_K and Q6_K kernels over the 16-row layouts
// (layouts.h) with AVX2, for CPUs without AVX-512 VNNI. Compiled with AVX2,
// FMA and F16C enabled (CMakeLists.txt), called only where the CPU has them.
//
// A 256-bit register holds half a 64-byte line: 8 rows x 4 weights. Without
// VNNI the 4-byte dot product is vpmaddubsw (pairs into 16 bits: at most
// 2 x 63 x 128, no saturation; Q8_0 goes signed, below) then vpmaddwd by
// ones (pairs into 32 bits):
// the same exact integer as vpdpbusd. The float steps are those of the
// AVX-512 kernel and of the reference, so all three agree bit for bit.
// Tiles are 8 rows x up to 2 columns (16 registers); the other half of a
// block's lines is read again from L1/L2 by the next half's pass.
#include "kernels/layouts.h"
#include "kernels/tiles.h"

#include <immintrin.h>

namespace specee::kernels {

namespace {

constexpr int MAX_TILE        = 2;
constexpr int PREFETCH_BLOCKS = 2;  // as in the AVX-512 kernel

inline __m256i load_half(const uint8_t * line, int half) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(line + 32 * half));
}

inline __m256i bcast_quad(const int8_t * p) {
    int32_t v;
    __builtin_memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

// sum of 4 u8 x s8 products in each 32-bit lane
inline __m256i dot4(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}

inline __m256 load_fp16x8(const uint16_t * p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}

inline __m256i load_i8x8(const int8_t * p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
}

inline __m256i load_u8x8(const uint8_t * p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
}

template <int NC>
void q6_k_tile(const block_q6_k_r16 * blocks, int64_t nb, int half, const block_q8_k * const * x, float * const * y) {
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    __m256        acc[NC];
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
        const block_q6_k_r16 & B = blocks[b];
        if (half == 0 && b + PREFETCH_BLOCKS < nb) {
            const auto * p = reinterpret_cast<const char *>(&blocks[b + PREFETCH_BLOCKS]);
            for (size_t off = 0; off < sizeof(block_q6_k_r16); off += 64) {
                _mm_prefetch(p + off, _MM_HINT_T0);
            }
        }
        __m256 fs[NC];  // scaled in floats, as in the AVX-512 kernel
        for (int c = 0; c < NC; ++c) {
            fs[c] = _mm256_setzero_ps();
        }
        for (int s = 0; s < 16; ++s) {
            const __m256i h  = load_half(B.hi[s], half);
            const __m256i l0 = load_half(B.lo[2 * s], half);
            const __m256i l1 = load_half(B.lo[2 * s + 1], half);
            const __m256i w0 = _mm256_or_si256(_mm256_and_si256(l0, m0f), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
            const __m256i w1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m0f),
                                               _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
            const __m256i w2 = _mm256_or_si256(_mm256_and_si256(l1, m0f), _mm256_and_si256(h, m30));
            const __m256i w3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m0f),
                                               _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
            const __m256  sc = _mm256_cvtepi32_ps(load_i8x8(B.scales[s] + 8 * half));
            for (int c = 0; c < NC; ++c) {
                const int8_t * q = x[c][b].qs + 16 * s;
                __m256i        d = dot4(w0, bcast_quad(q));
                d                = _mm256_add_epi32(d, dot4(w1, bcast_quad(q + 4)));
                d                = _mm256_add_epi32(d, dot4(w2, bcast_quad(q + 8)));
                d                = _mm256_add_epi32(d, dot4(w3, bcast_quad(q + 12)));
                d                = _mm256_sub_epi32(d, _mm256_set1_epi32(32 * x[c][b].bsums[s]));
                fs[c]            = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, fs[c]);
            }
        }
        const __m256 dw = load_fp16x8(B.d + 8 * half);
        for (int c = 0; c < NC; ++c) {
            acc[c] = _mm256_fmadd_ps(fs[c], _mm256_mul_ps(dw, _mm256_set1_ps(x[c][b].d)), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        _mm256_storeu_ps(y[c] + 8 * half, acc[c]);
    }
}

template <int NC>
void q4_k_tile(const block_q4_k_r16 * blocks, int64_t nb, int half, const block_q8_k * const * x, float * const * y) {
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    __m256        acc[NC];
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
        const block_q4_k_r16 & B = blocks[b];
        if (half == 0 && b + PREFETCH_BLOCKS < nb) {
            const auto * p = reinterpret_cast<const char *>(&blocks[b + PREFETCH_BLOCKS]);
            for (size_t off = 0; off < sizeof(block_q4_k_r16); off += 64) {
                _mm_prefetch(p + off, _MM_HINT_T0);
            }
        }
        __m256 fs[NC];  // scaled in floats, as in the AVX-512 kernel
        for (int c = 0; c < NC; ++c) {
            fs[c] = _mm256_setzero_ps();
        }
        for (int s = 0; s < 8; ++s) {
            __m256i d[NC];
            for (int c = 0; c < NC; ++c) {
                d[c] = _mm256_setzero_si256();
            }
            for (int p = 0; p < 4; ++p) {  // line 4s + p: quads 8s + 2p (low nibbles) and 8s + 2p + 1 (high)
                const __m256i l  = load_half(B.lo[4 * s + p], half);
                const __m256i wl = _mm256_and_si256(l, m0f);
                const __m256i wh = _mm256_and_si256(_mm256_srli_epi16(l, 4), m0f);
                for (int c = 0; c < NC; ++c) {
                    const int8_t * q = x[c][b].qs + 32 * s + 8 * p;
                    d[c] = _mm256_add_epi32(d[c], dot4(wl, bcast_quad(q)));
                    d[c] = _mm256_add_epi32(d[c], dot4(wh, bcast_quad(q + 4)));
                }
            }
            const __m256 sc = _mm256_cvtepi32_ps(load_u8x8(B.scales[s] + 8 * half));
            for (int c = 0; c < NC; ++c) {
                fs[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[c]), sc, fs[c]);
            }
        }
        // mins: (min, min) int16 pairs against the two 16-weight sums (vpmaddwd)
        __m256i sm[NC];
        for (int c = 0; c < NC; ++c) {
            sm[c] = _mm256_setzero_si256();
        }
        for (int s = 0; s < 8; ++s) {
            const __m256i m  = load_u8x8(B.mins[s] + 8 * half);
            const __m256i mn = _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
            for (int c = 0; c < NC; ++c) {
                const __m256i pair = bcast_quad(reinterpret_cast<const int8_t *>(x[c][b].bsums + 2 * s));
                sm[c]              = _mm256_add_epi32(sm[c], _mm256_madd_epi16(mn, pair));
            }
        }
        const __m256 dw = load_fp16x8(B.d + 8 * half);
        const __m256 mw = load_fp16x8(B.dmin + 8 * half);
        for (int c = 0; c < NC; ++c) {
            const __m256 dx = _mm256_set1_ps(x[c][b].d);
            acc[c]          = _mm256_fmadd_ps(fs[c], _mm256_mul_ps(dw, dx), acc[c]);
            acc[c]          = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(sm[c]), _mm256_mul_ps(mw, dx), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        _mm256_storeu_ps(y[c] + 8 * half, acc[c]);
    }
}

} // namespace

void mul_mat_q6_k_avx2(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                       int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const block_q6_k_r16 *>(w.bytes());
    for_each_tile<MAX_TILE, 2>(row_begin, row_end, n_x, [&](int64_t g, int half, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q6_k_tile<nc>(blocks + g * nb, nb, half, columns<nc>(x, nb, c0).data(),
                      columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

void mul_mat_q4_k_avx2(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                       int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const block_q4_k_r16 *>(w.bytes());
    for_each_tile<MAX_TILE, 2>(row_begin, row_end, n_x, [&](int64_t g, int half, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q4_k_tile<nc>(blocks + g * nb, nb, half, columns<nc>(x, nb, c0).data(),
                      columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

} // namespace specee::kernels

// ---- the 32-weight types (Q8_0, Q5_0, Q4_1), as in mul_mat_avx512_vnni.cpp

namespace specee::kernels {

namespace {

inline void load_nibble_lines(const uint8_t (*lo)[64], int half, __m256i * w) {
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    for (int p = 0; p < 4; ++p) {
        const __m256i l = load_half(lo[p], half);
        w[2 * p]        = _mm256_and_si256(l, m0f);
        w[2 * p + 1]    = _mm256_and_si256(_mm256_srli_epi16(l, 4), m0f);
    }
}

template <weight_type T> struct q32_block;

template <> struct q32_block<weight_type::q8_0> {
    using type = block_q8_0_r16;
    // the signed q (q + 128 times x would overflow vpmaddubsw's 16-bit pairs)
    static void load(const type & b, int half, __m256i * w) {
        for (int j = 0; j < 8; ++j) w[j] = _mm256_xor_si256(load_half(b.q[j], half), _mm256_set1_epi8(-128));
    }
    // |q| times x with q's sign: pairs within 2 x 128 x 127, the same integer
    // as (q + 128) . x - 128 sum(x)
    static __m256i dot(const __m256i * w, const int8_t * x, int32_t) {
        __m256i d = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
            d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w[j]),
                                                                           _mm256_sign_epi8(bcast_quad(x + 4 * j), w[j])),
                                                      _mm256_set1_epi16(1)));
        }
        return d;
    }
};

inline __m256i unsigned_dot(const __m256i * w, const int8_t * x) {
    __m256i d = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) d = _mm256_add_epi32(d, dot4(w[j], bcast_quad(x + 4 * j)));
    return d;
}

template <> struct q32_block<weight_type::q5_0> {
    using type = block_q5_0_r16;
    static void load(const type & b, int half, __m256i * w) {
        load_nibble_lines(b.lo, half, w);
        const __m256i m10   = _mm256_set1_epi8(0x10);
        const __m256i h     = load_half(b.hi, half);
        const __m256i hs[8] = {_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 3), _mm256_slli_epi16(h, 2),
                               _mm256_slli_epi16(h, 1), h, _mm256_srli_epi16(h, 1), _mm256_srli_epi16(h, 2),
                               _mm256_srli_epi16(h, 3)};
        for (int j = 0; j < 8; ++j) w[j] = _mm256_or_si256(w[j], _mm256_and_si256(hs[j], m10));
    }
    static __m256i dot(const __m256i * w, const int8_t * x, int32_t xs) {
        return _mm256_sub_epi32(unsigned_dot(w, x), _mm256_set1_epi32(16 * xs));
    }
};

template <> struct q32_block<weight_type::q4_1> {
    using type = block_q4_1_r16;
    static void load(const type & b, int half, __m256i * w) { load_nibble_lines(b.lo, half, w); }
    static __m256i dot(const __m256i * w, const int8_t * x, int32_t) { return unsigned_dot(w, x); }
};

template <weight_type T, int NC>
void q32_tile(const typename q32_block<T>::type * blocks, int64_t nb, int half, const block_q8_0 * const * x,
              const int32_t * const * sums, float * const * y) {
    using B_t = typename q32_block<T>::type;
    constexpr int ahead = (PREFETCH_BLOCKS * 3360 + sizeof(B_t) - 1) / sizeof(B_t);
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const B_t & B = blocks[b];
        if (half == 0 && b + ahead < nb) {
            for (size_t off = 0; off < sizeof(B_t); off += 64) {
                _mm_prefetch(reinterpret_cast<const char *>(&blocks[b + ahead]) + off, _MM_HINT_T0);
            }
        }
        __m256i w[8];
        q32_block<T>::load(B, half, w);
        const __m256 dw = load_fp16x8(B.d + 8 * half);
        for (int c = 0; c < NC; ++c) {
            const block_q8_0 & X  = x[c][b];
            const int32_t      xs = sums[c][b];
            const __m256i      d  = q32_block<T>::dot(w, X.qs, xs);
            const float        dx = _cvtsh_ss(X.d);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc[c]);
            if constexpr (T == weight_type::q4_1) {
                acc[c] = _mm256_fmadd_ps(load_fp16x8(B.m + 8 * half), _mm256_set1_ps(dx * (float) xs), acc[c]);
            }
        }
    }
    for (int c = 0; c < NC; ++c) _mm256_storeu_ps(y[c] + 8 * half, acc[c]);
}

template <weight_type T>
void q32_run(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y, int64_t ldy,
             int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const auto *  blocks = reinterpret_cast<const typename q32_block<T>::type *>(w.bytes());
    for_each_tile<MAX_TILE, 2>(row_begin, row_end, n_x, [&](int64_t g, int half, int c0, auto width) {
        constexpr int nc = decltype(width)::value;
        q32_tile<T, nc>(blocks + g * nb, nb, half, columns<nc>(x, nb, c0).data(), columns<nc>(sums, nb, c0).data(),
                        columns<nc>(y + g * ROW_GROUP, ldy, c0).data());
    });
}

} // namespace

void mul_mat_q32_avx2(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                      int64_t ldy, int64_t row_begin, int64_t row_end) {
    with_q32_type(w.type, [&](auto type) {
        q32_run<decltype(type)::value>(w, x, sums, n_x, y, ldy, row_begin, row_end);
    });
}

} // namespace specee::kernels
