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
//      (l + 8, then l + 4, l + 2, l + 1; the vector paths reduce 16 or 8
//      cells at once with shuffles that add exactly these pairs);
//   2. w_j = exp(s_j - max s) by exp_nonpositive below; their sum in lane
//      j % 16, then the same tree;
//   3. out_d = (even_d + odd_d) * (1 / sum), where even_d and odd_d add
//      w_j * v_j,d over the even and the odd ranks j in order, one fused
//      multiply-add each (two chains, so that a narrow head does not wait
//      on one chain's latency).
// Nothing depends on where the cells sit in the cache, only on their ranks.
// The loops over accumulators are unrolled (#pragma GCC unroll) so that
// they stay in registers rather than in memory.
#pragma once

#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace specee::kernels::attention_impl {

constexpr int L = ATTENTION_LANES;

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
        return h == 0 ? 0.0f : h == 0xfc00u ? -INFINITY : fp16_to_fp32(h);  // the two values masks hold, first
    }
    float f;
    std::memcpy(&f, m + size_t(cell) * 4, 4);
    return f;
}

// Part of step 3 for one head: ranks [j0, j1) (j0 even) added to its two
// chains (`even`, `odd`: head_dim floats each) for NB vectors from d0 on.
template <class O, int NB>
void add_values(const attention_problem & p, const float * w, const int32_t * cell, int j0, int j1, size_t kv_off,
                int d0, float * even_acc, float * odd_acc) {
    using V = typename O::vec;
    V even[NB], odd[NB];
#pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
        even[b] = O::load(even_acc + d0 + b * L);
        odd[b]  = O::load(odd_acc + d0 + b * L);
    }
    auto row_of = [&](int j) {
        return reinterpret_cast<const uint16_t *>(p.v + size_t(cell[j]) * p.v_cell + kv_off) + d0;
    };
    int j = j0;
    for (; j + 1 < j1; j += 2) {
        const V          we = O::set1(w[j]), wo = O::set1(w[j + 1]);
        const uint16_t * ve = row_of(j);
        const uint16_t * vo = row_of(j + 1);
#pragma GCC unroll 16
        for (int b = 0; b < NB; ++b) {
            even[b] = O::fma(we, O::load_f16(ve + b * L), even[b]);
            odd[b]  = O::fma(wo, O::load_f16(vo + b * L), odd[b]);
        }
    }
    if (j < j1) {  // the last rank, even
        const V          we = O::set1(w[j]);
        const uint16_t * ve = row_of(j);
#pragma GCC unroll 16
        for (int b = 0; b < NB; ++b) {
            even[b] = O::fma(we, O::load_f16(ve + b * L), even[b]);
        }
    }
#pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
        O::store(even_acc + d0 + b * L, even[b]);
        O::store(odd_acc + d0 + b * L, odd[b]);
    }
}

template <class O, int NB = O::BLOCK>
void add_values_any(int nb, const attention_problem & p, const float * w, const int32_t * cell, int j0, int j1,
                    size_t kv_off, int d0, float * even_acc, float * odd_acc) {
    if constexpr (NB > 1) {
        if (nb < NB) {
            return add_values_any<O, NB - 1>(nb, p, w, cell, j0, j1, kv_off, d0, even_acc, odd_acc);
        }
    }
    add_values<O, NB>(p, w, cell, j0, j1, kv_off, d0, even_acc, odd_acc);
}

// Heads of one row that share K and V (one group of grouped-query
// attention) are computed together, so that each cell's K and V rows are
// read from memory once for all of them; each head's arithmetic is the
// one above, unchanged.
constexpr int MAX_RUN   = 8;   // heads computed together
constexpr int CELL_TILE = 64;  // cells whose K or V rows stay in L1 while every head of a run reads them

template <class O>
void attend_tasks(const attention_problem & p, int64_t task_begin, int64_t task_end) {
    using V = typename O::vec;
    thread_local std::vector<float>   w;       // per head of a run: the visible cells' scores, then weights
    thread_local std::vector<float>   chains;  // per head of a run: step 3's two chains
    thread_local std::vector<float>   added;   // the visible cells' mask values
    thread_local std::vector<int32_t> cell;    // the visible cells, in order
    const size_t stride = size_t(p.n_kv) + L;  // + L: the last vector (or batch of sums) may run past them
    w.resize(MAX_RUN * stride);
    chains.resize(MAX_RUN * 2 * size_t(p.head_dim));
    added.resize(size_t(p.n_kv));
    cell.resize(size_t(p.n_kv));
    const int hd = p.head_dim, group = p.n_head / p.n_head_kv;
    for (int64_t t = task_begin; t < task_end;) {
        const int row = int(t / p.n_head), head0 = int(t % p.n_head);
        int       run = 1;  // heads head0.. of the same group, within this thread's tasks
        while (run < MAX_RUN && t + run < task_end && head0 + run < p.n_head && (head0 + run) / group == head0 / group) {
            run++;
        }
        t += run;
        const size_t kv_off = size_t(head0 / group) * size_t(hd) * 2;
        auto q_of = [&](int r) {
            return reinterpret_cast<const float *>(p.q + size_t(row) * p.q_row + size_t(head0 + r) * p.q_head);
        };
        auto out_of = [&](int r) { return p.out + size_t(row) * p.out_row + size_t(head0 + r) * size_t(hd); };

        // 1. the cells this row sees, then their scores, O::BATCH cells at a time
        int n = 0;
        for (int c = 0; c < p.n_kv; ++c) {
            const float m = mask_value(p, row, c);
            if (m != -INFINITY) {
                added[size_t(n)] = m;
                cell[size_t(n)]  = c;
                n++;
            }
        }
        if (n == 0) {  // a row that sees no cell (never from the graphs: a row sees itself)
            for (int r = 0; r < run; ++r) {
                std::fill(out_of(r), out_of(r) + hd, 0.0f);
            }
            continue;
        }
        for (int j = 0; j < n; j += O::BATCH) {
            const int        count = std::min(O::BATCH, n - j);
            const uint16_t * k[O::BATCH];
            for (int u = 0; u < O::BATCH; ++u) {
                k[u] = reinterpret_cast<const uint16_t *>(p.k + size_t(cell[size_t(j + std::min(u, count - 1))]) *
                                                               p.k_cell + kv_off);
            }
            for (int r = 0; r < run; ++r) {  // the batch's K rows: from memory once, then from L1
                const float * q = q_of(r);
                V             acc[O::BATCH];
#pragma GCC unroll 16
                for (int u = 0; u < O::BATCH; ++u) {
                    acc[u] = O::zero();
                }
                for (int d = 0; d < hd; d += L) {
                    const V qd = O::load(q + d);
#pragma GCC unroll 16
                    for (int u = 0; u < O::BATCH; ++u) {
                        acc[u] = O::fma(qd, O::load_f16(k[u] + d), acc[u]);
                    }
                }
                O::sums(acc, &w[size_t(r) * stride + size_t(j)]);  // sums past count land in the spare room
            }
        }

        // 2. per head: s = sum * scale + mask (two roundings, as a scalar
        // would), the weights and their sum, lane by rank
        float inv[MAX_RUN];
        for (int r = 0; r < run; ++r) {
            float * wr   = &w[size_t(r) * stride];
            V       tops = O::set1(-INFINITY);
            int     j    = 0;
            for (; j + L <= n; j += L) {
                const V sj = O::add(O::mul(O::load(wr + j), O::set1(p.scale)), O::load(&added[size_t(j)]));
                O::store(wr + j, sj);
                tops = O::max(tops, sj);
            }
            float top = O::max_lane(tops);  // a maximum: the same in any order
            for (; j < n; ++j) {
                const float sj = wr[j] * p.scale + added[size_t(j)];
                wr[j]          = sj;
                top            = std::max(top, sj);
            }
            V total = O::zero();
            for (j = 0; j < n; j += L) {
                V e = exp_nonpositive<O>(O::sub(O::load(wr + j), O::set1(top)));
                if (n - j < L) {
                    e = O::first(e, n - j);
                }
                O::store(wr + j, e);
                total = O::add(total, e);
            }
            inv[r] = 1.0f / O::sum(total);
        }

        // 3. the weighted sums of the values, CELL_TILE cells at a time for every head
        std::fill(chains.begin(), chains.begin() + long(size_t(run) * 2 * size_t(hd)), 0.0f);
        for (int j0 = 0; j0 < n; j0 += CELL_TILE) {
            const int j1 = std::min(n, j0 + CELL_TILE);
            for (int r = 0; r < run; ++r) {
                float * even = &chains[size_t(r) * 2 * size_t(hd)];
                for (int d0 = 0; d0 < hd; d0 += O::BLOCK * L) {
                    const int nb = std::min(O::BLOCK, (hd - d0) / L);
                    add_values_any<O>(nb, p, &w[size_t(r) * stride], cell.data(), j0, j1, kv_off, d0, even, even + hd);
                }
            }
        }
        for (int r = 0; r < run; ++r) {
            const float * even = &chains[size_t(r) * 2 * size_t(hd)];
            float *       out  = out_of(r);
            for (int d = 0; d < hd; d += L) {
                O::store(out + d, O::mul(O::add(O::load(even + d), O::load(even + hd + d)), O::set1(inv[r])));
            }
        }
    }
}

} // namespace specee::kernels::attention_impl
