// attention_avx512.cpp — attention_impl.h over one 512-bit register.
// Compiled with AVX-512F and F16C (CMakeLists.txt), called only where the
// CPU has them.
#include "kernels/attention_impl.h"

#include <immintrin.h>

namespace specee::kernels {

namespace {

struct ops_avx512 {
    using vec = __m512;
    static constexpr int BLOCK = 8;   // a head of 128 in registers (two chains: 16 of them)
    static constexpr int BATCH = 16;  // cells whose scores are summed at once

    static vec   zero() { return _mm512_setzero_ps(); }
    static vec   set1(float a) { return _mm512_set1_ps(a); }
    static vec   load(const float * p) { return _mm512_loadu_ps(p); }
    static vec   load_f16(const uint16_t * p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
    }
    static void  store(float * p, vec a) { _mm512_storeu_ps(p, a); }
    static vec   add(vec a, vec b) { return _mm512_add_ps(a, b); }
    static vec   sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
    static vec   mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
    static vec   fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
    static vec   max(vec a, vec b) { return _mm512_max_ps(a, b); }
    static vec   round(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static vec   pow2(vec n) {
        const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
    }
    static vec   zero_below(vec y, vec x, float lim) {
        return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(lim), _CMP_LT_OQ), _mm512_setzero_ps());
    }
    static vec   first(vec a, int n) { return _mm512_maskz_mov_ps(__mmask16((1u << n) - 1u), a); }
    static float sum(vec a) {  // lanes l + 8, then l + 4, l + 2, l + 1
        const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
    }
    static float max_lane(vec a) { return _mm512_reduce_max_ps(a); }
    // sum() of 16 cells at once: the same pairs added, with 128-bit block
    // and in-block shuffles packing 2, 4, 8, then 16 cells to a register
    static void  sums(const vec * acc, float * out) {
        __m512 s8[8], s4[4], s2[2];
        for (int p = 0; p < 8; ++p) {  // l + 8: cells 2p, 2p + 1, 8 lanes each
            s8[p] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        }
        for (int r = 0; r < 4; ++r) {  // l + 4: block k holds cell 4r + k
            s4[r] = _mm512_add_ps(_mm512_shuffle_f32x4(s8[2 * r], s8[2 * r + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(s8[2 * r], s8[2 * r + 1], _MM_SHUFFLE(3, 1, 3, 1)));
        }
        for (int o = 0; o < 2; ++o) {  // l + 2: block k holds cells 8o + k, 8o + 4 + k
            s2[o] = _mm512_add_ps(_mm512_shuffle_ps(s4[2 * o], s4[2 * o + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(s4[2 * o], s4[2 * o + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        }
        const __m512 s1 = _mm512_add_ps(_mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)),  // l + 1
                                        _mm512_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
        // lane 4 (c % 4) + c / 4 holds cell c
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, s1));
    }
};

} // namespace

void attend_avx512(const attention_problem & p, int64_t task_begin, int64_t task_end) {
    attention_impl::attend_tasks<ops_avx512>(p, task_begin, task_end);
}

} // namespace specee::kernels
