// attention.cpp — the reference vector of attention_impl.h (16 floats in an
// array, one float operation per lane: the definition the vector paths
// match bit for bit) and the choice of instruction set.
#include "kernels/attention_impl.h"

namespace specee::kernels {

namespace {

struct ops_reference {
    struct vec {
        float x[ATTENTION_LANES];
    };
    static constexpr int BLOCK = 8;  // vectors of a head accumulated at once
    static constexpr int BATCH = 4;  // cells whose scores are summed at once

    template <typename F>
    static vec each(F && f) {
        vec r;
        for (int l = 0; l < ATTENTION_LANES; ++l) {
            r.x[l] = f(l);
        }
        return r;
    }
    static vec   zero() { return set1(0.0f); }
    static vec   set1(float a) { return each([&](int) { return a; }); }
    static vec   load(const float * p) { return each([&](int l) { return p[l]; }); }
    static vec   load_f16(const uint16_t * p) { return each([&](int l) { return fp16_to_fp32(p[l]); }); }
    static void  store(float * p, const vec & a) { std::memcpy(p, a.x, sizeof a.x); }
    static vec   add(const vec & a, const vec & b) { return each([&](int l) { return a.x[l] + b.x[l]; }); }
    static vec   sub(const vec & a, const vec & b) { return each([&](int l) { return a.x[l] - b.x[l]; }); }
    static vec   mul(const vec & a, const vec & b) { return each([&](int l) { return a.x[l] * b.x[l]; }); }
    static vec   fma(const vec & a, const vec & b, const vec & c) {
        return each([&](int l) { return std::fma(a.x[l], b.x[l], c.x[l]); });
    }
    static vec   max(const vec & a, const vec & b) { return each([&](int l) { return a.x[l] > b.x[l] ? a.x[l] : b.x[l]; }); }
    static vec   round(const vec & a) { return each([&](int l) { return std::nearbyint(a.x[l]); }); }
    static vec   pow2(const vec & n) {  // n: whole numbers in [-126, 0]
        return each([&](int l) {
            const uint32_t bits = uint32_t(int32_t(n.x[l]) + 127) << 23;
            float          f;
            std::memcpy(&f, &bits, sizeof f);
            return f;
        });
    }
    static vec   zero_below(const vec & y, const vec & x, float lim) {
        return each([&](int l) { return x.x[l] < lim ? 0.0f : y.x[l]; });
    }
    static vec   first(const vec & a, int n) { return each([&](int l) { return l < n ? a.x[l] : 0.0f; }); }
    static float sum(const vec & a) {  // lanes l + 8, then l + 4, l + 2, l + 1
        float s8[8], s4[4], s2[2];
        for (int l = 0; l < 8; ++l) s8[l] = a.x[l] + a.x[l + 8];
        for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
        for (int l = 0; l < 2; ++l) s2[l] = s4[l] + s4[l + 2];
        return s2[0] + s2[1];
    }
    static float max_lane(const vec & a) {
        float m = a.x[0];
        for (int l = 1; l < ATTENTION_LANES; ++l) m = a.x[l] > m ? a.x[l] : m;
        return m;
    }
    static void  sums(const vec * acc, float * out) {
        for (int t = 0; t < BATCH; ++t) {
            out[t] = sum(acc[t]);
        }
    }
};

} // namespace

void attend_reference(const attention_problem & p, int64_t task_begin, int64_t task_end) {
    attention_impl::attend_tasks<ops_reference>(p, task_begin, task_end);
}

void attend(isa i, const attention_problem & p, int64_t task_begin, int64_t task_end) {
    switch (cpu_has(i) ? i : isa::reference) {
#if defined(__x86_64__)
        case isa::avx512_vnni: return attend_avx512(p, task_begin, task_end);
        case isa::avx2:        return attend_avx2(p, task_begin, task_end);
#endif
        default:               return attend_reference(p, task_begin, task_end);
    }
}

} // namespace specee::kernels
