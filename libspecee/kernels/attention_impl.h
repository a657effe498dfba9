// attention_impl.h — the one algorithm of attention.h, written once over a
// vector of 16 floats whose operations each instruction set supplies (ops_*
// in attention.cpp, attention_avx2.cpp, attention_avx512.cpp). Every float
// step is spelled out (the files are compiled with -ffp-contract=off), so the
// three give the same bits.
//
// For one query row and head, over the cells its mask lets it see, in cell
// order (j: a cell's rank among them):
//   1. s_j = sum16(q * k_j) * scale + mask_j, where sum16 multiplies-adds
//      element d into lane d % 16, then adds the lanes as a fixed tree
//      (l + 8, then l + 4, l + 2, l + 1);
//   2. w_j = exp(s_j - max s) by exp_nonpositive below; their sum in lane
//      j % 16, then the same tree;
//   3. out_d = (sum over j in order of w_j * v_j,d, one fused multiply-add
//      each) * (1 / sum).
// Nothing depends on where the cells sit in the cache, only on their ranks.
#pragma once

#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace specee::kernels::attention_impl {

constexpr int L = ATTENTION_LANES;

// F16 bits to float: every half is a float exactly, so this agrees with
// the F16C instructions the vector paths use.
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t       exp  = (h >> 10) & 0x1fu;
    uint32_t       man  = h & 0x3ffu;
    uint32_t       bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);      // inf, nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;                                  // +-0
    } else {                                          // subnormal: normalize
        exp = 113u;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// e^x for x <= 0: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), e^r by
// its Taylor polynomial to r^7 (error below 1e-8 relative), times 2^n built
// from bits. Below -86 (e^-86 is near the smallest normal float) it is 0.
constexpr float EXP_ZERO_BELOW = -86.0f;
constexpr float LOG2E = 1.44269504088896341f, LN2_HI = 0.693145751953125f, LN2_LO = 1.42860682030941723212e-6f;
constexpr float TAYLOR[8] = {1.0f, 1.0f, 1.0f / 2, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040};

template <class O>
typename O::vec exp_nonpositive(typename O::vec x) {
    using V = typename O::vec;
    const V xc = O::max(x, O::set1(EXP_ZERO_BELOW - 1.0f));  // keeps 2^n a normal float
    const V n  = O::round(O::mul(xc, O::set1(LOG2E)));
    V       r  = O::fma(n, O::set1(-LN2_HI), xc);
    r          = O::fma(n, O::set1(-LN2_LO), r);
    V p        = O::set1(TAYLOR[7]);
    for (int k = 6; k >= 0; --k) {
        p = O::fma(p, r, O::set1(TAYLOR[k]));
    }
    return O::zero_below(O::mul(p, O::pow2(n)), x, EXP_ZERO_BELOW);
}

inline float mask_value(const attention_problem & p, int row, int cell) {
    const char * m = p.mask + size_t(row) * p.mask_row;
    if (p.mask_f16) {
        uint16_t h;
        std::memcpy(&h, m + size_t(cell) * 2, 2);
        return f16_to_f32(h);
    }
    float f;
    std::memcpy(&f, m + size_t(cell) * 4, 4);
    return f;
}

// out[d0 + b * 16 ..] for NB vectors: sum over j of w_j v_j, times inv.
template <class O, int NB>
void weighted_values(const attention_problem & p, const float * w, const int32_t * cell, int n, size_t kv_off,
                     int d0, float inv, float * out) {
    using V = typename O::vec;
    V acc[NB];
    for (int b = 0; b < NB; ++b) {
        acc[b] = O::zero();
    }
    for (int j = 0; j < n; ++j) {
        const V          wj = O::set1(w[j]);
        const uint16_t * v  = reinterpret_cast<const uint16_t *>(p.v + size_t(cell[j]) * p.v_cell + kv_off) + d0;
        for (int b = 0; b < NB; ++b) {
            acc[b] = O::fma(wj, O::load_f16(v + b * L), acc[b]);
        }
    }
    for (int b = 0; b < NB; ++b) {
        O::store(out + d0 + b * L, O::mul(acc[b], O::set1(inv)));
    }
}

template <class O, int NB = O::BLOCK>
void weighted_values_any(int nb, const attention_problem & p, const float * w, const int32_t * cell, int n,
                         size_t kv_off, int d0, float inv, float * out) {
    if constexpr (NB > 1) {
        if (nb < NB) {
            return weighted_values_any<O, NB - 1>(nb, p, w, cell, n, kv_off, d0, inv, out);
        }
    }
    weighted_values<O, NB>(p, w, cell, n, kv_off, d0, inv, out);
}

template <class O>
void attend_tasks(const attention_problem & p, int64_t task_begin, int64_t task_end) {
    using V = typename O::vec;
    thread_local std::vector<float>   w;     // the visible cells' scores, then their weights
    thread_local std::vector<int32_t> cell;  // the visible cells, in order
    w.resize(size_t(p.n_kv) + L);            // + L: the last vector of weights may run past them
    cell.resize(size_t(p.n_kv));
    const int hd = p.head_dim, group = p.n_head / p.n_head_kv;
    for (int64_t t = task_begin; t < task_end; ++t) {
        const int     row    = int(t / p.n_head), head = int(t % p.n_head);
        const float * q      = reinterpret_cast<const float *>(p.q + size_t(row) * p.q_row + size_t(head) * p.q_head);
        const size_t  kv_off = size_t(head / group) * size_t(hd) * 2;
        float *       out    = p.out + size_t(row) * p.out_row + size_t(head) * size_t(hd);

        // 1. the scores of the cells this row sees
        int   n   = 0;
        float top = -INFINITY;
        for (int c = 0; c < p.n_kv; ++c) {
            const float m = mask_value(p, row, c);
            if (m == -INFINITY) {
                continue;
            }
            const uint16_t * k   = reinterpret_cast<const uint16_t *>(p.k + size_t(c) * p.k_cell + kv_off);
            V                acc = O::zero();
            for (int d = 0; d < hd; d += L) {
                acc = O::fma(O::load(q + d), O::load_f16(k + d), acc);
            }
            const float s = O::sum(acc) * p.scale + m;
            w[size_t(n)]    = s;
            cell[size_t(n)] = c;
            n++;
            top = std::max(top, s);
        }
        if (n == 0) {  // a row that sees no cell (never from the graphs: a row sees itself)
            std::fill(out, out + hd, 0.0f);
            continue;
        }
        // 2. the weights and their sum, lane by rank
        V total = O::zero();
        for (int j = 0; j < n; j += L) {
            V e = exp_nonpositive<O>(O::sub(O::load(&w[size_t(j)]), O::set1(top)));
            if (n - j < L) {
                e = O::first(e, n - j);
            }
            O::store(&w[size_t(j)], e);
            total = O::add(total, e);
        }
        const float inv = 1.0f / O::sum(total);
        // 3. the weighted sum of the values, O::BLOCK vectors of the head at a time
        for (int d0 = 0; d0 < hd; d0 += O::BLOCK * L) {
            const int nb = std::min(O::BLOCK, (hd - d0) / L);
            weighted_values_any<O>(nb, p, w.data(), cell.data(), n, kv_off, d0, inv, out);
        }
    }
}

} // namespace specee::kernels::attention_impl
