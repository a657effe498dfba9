// attention_avx2.cpp — attention_impl.h over two 256-bit registers (lanes
// 0-7 and 8-15). Compiled with AVX2, FMA and F16C (CMakeLists.txt), called
// only where the CPU has them.
#include "kernels/attention_impl.h"

#include <immintrin.h>

namespace specee::kernels {

namespace {

struct ops_avx2 {
    struct vec {
        __m256 lo, hi;
    };
    static constexpr int BLOCK = 2;  // two chains of 4 registers of accumulators
    static constexpr int BATCH = 8;  // cells whose scores are summed at once

    static vec   zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
    static vec   set1(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
    static vec   load(const float * p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
    static vec   load_f16(const uint16_t * p) {
        return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))),
                _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 8)))};
    }
    static void  store(float * p, const vec & a) {
        _mm256_storeu_ps(p, a.lo);
        _mm256_storeu_ps(p + 8, a.hi);
    }
    static vec   add(const vec & a, const vec & b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
    static vec   sub(const vec & a, const vec & b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
    static vec   mul(const vec & a, const vec & b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
    static vec   fma(const vec & a, const vec & b, const vec & c) {
        return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
    }
    static vec   max(const vec & a, const vec & b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
    static __m256 round1(__m256 a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static vec   round(const vec & a) { return {round1(a.lo), round1(a.hi)}; }
    static __m256 pow21(__m256 n) {
        const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
    }
    static vec   pow2(const vec & n) { return {pow21(n.lo), pow21(n.hi)}; }
    static vec   zero_below(const vec & y, const vec & x, float lim) {
        const __m256 l = _mm256_set1_ps(lim);
        return {_mm256_andnot_ps(_mm256_cmp_ps(x.lo, l, _CMP_LT_OQ), y.lo),
                _mm256_andnot_ps(_mm256_cmp_ps(x.hi, l, _CMP_LT_OQ), y.hi)};
    }
    static vec   first(const vec & a, int n) {
        const __m256i nn = _mm256_set1_epi32(n);
        const __m256i lo = _mm256_cmpgt_epi32(nn, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i hi = _mm256_cmpgt_epi32(nn, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
        return {_mm256_and_ps(a.lo, _mm256_castsi256_ps(lo)), _mm256_and_ps(a.hi, _mm256_castsi256_ps(hi))};
    }
    static float sum8(__m256 s8) {  // lanes l + 4, then l + 2, l + 1
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
    }
    static float sum(const vec & a) { return sum8(_mm256_add_ps(a.lo, a.hi)); }
    static float max_lane(const vec & a) {
        const __m256 m8 = _mm256_max_ps(a.lo, a.hi);
        const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
    }
    // sum() of 8 cells at once: the same pairs added, 8 cells to a register
    static void  sums(const vec * acc, float * out) {
        __m256 s8[8], s4[4], s2[2];
        for (int c = 0; c < 8; ++c) {
            s8[c] = _mm256_add_ps(acc[c].lo, acc[c].hi);                       // l + 8
        }
        for (int p = 0; p < 4; ++p) {                                          // l + 4: cells 2p, 2p + 1
            s4[p] = _mm256_add_ps(_mm256_permute2f128_ps(s8[2 * p], s8[2 * p + 1], 0x20),
                                  _mm256_permute2f128_ps(s8[2 * p], s8[2 * p + 1], 0x31));
        }
        for (int o = 0; o < 2; ++o) {                                          // l + 2
            s2[o] = _mm256_add_ps(_mm256_shuffle_ps(s4[2 * o], s4[2 * o + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(s4[2 * o], s4[2 * o + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        }
        const __m256 s1 = _mm256_add_ps(_mm256_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)),  // l + 1
                                        _mm256_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
        // lane 4 (c % 2) + c / 2 holds cell c
        _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(s1, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
};

} // namespace

void attend_avx2(const attention_problem & p, int64_t task_begin, int64_t task_end) {
    attention_impl::attend_tasks<ops_avx2>(p, task_begin, task_end);
}

} // namespace specee::kernels
