// tiles.h — how every kernel walks a product: groups of 16 rows (split over
// threads by the caller), halves of a group where registers hold 8 rows
// (AVX2), and tiles of up to MAX columns whose width is a compile-time
// constant, so one template serves every width and leftover columns go
// through the same code as full tiles.
#pragma once

#include "kernels/kernels.h"

#include <array>
#include <cstdint>
#include <type_traits>

namespace specee::kernels {

// Pointers to NC columns from column c0 on, `stride` elements apart.
template <int NC, typename T>
std::array<T *, NC> columns(T * base, int64_t stride, int c0) {
    std::array<T *, NC> out{};
    for (int c = 0; c < NC; ++c) {
        out[c] = base + (c0 + c) * stride;
    }
    return out;
}

// f(std::integral_constant<int, nc>) for a run-time nc in [W, MAX].
template <int W, int MAX, typename F>
void with_width(int nc, F && f) {
    if constexpr (W < MAX) {
        if (nc != W) {
            return with_width<W + 1, MAX>(nc, f);
        }
    }
    f(std::integral_constant<int, W>{});
}

// f(std::integral_constant<weight_type, T>) for a packed matrix of a type
// with 32-weight blocks and Q8_0 activations: the one list every instruction
// set's entry point dispatches on (other types: nothing).
template <typename F>
void with_q32_type(weight_type type, F && f) {
    switch (type) {
        case weight_type::q8_0: return f(std::integral_constant<weight_type, weight_type::q8_0>{});
        case weight_type::q5_0: return f(std::integral_constant<weight_type, weight_type::q5_0>{});
        case weight_type::q4_1: return f(std::integral_constant<weight_type, weight_type::q4_1>{});
        default: return;
    }
}

// Calls tile(g, half, c0, std::integral_constant<int, NC>) for every group g
// of rows [row_begin, row_end), every half < HALVES and every tile of columns.
template <int MAX, int HALVES, typename F>
void for_each_tile(int64_t row_begin, int64_t row_end, int n_x, F && tile) {
    for (int64_t g = row_begin / ROW_GROUP; g < row_end / ROW_GROUP; ++g) {
        for (int half = 0; half < HALVES; ++half) {
            for (int c0 = 0; c0 < n_x; c0 += MAX) {
                const int nc = n_x - c0 < MAX ? n_x - c0 : MAX;
                with_width<1, MAX>(nc, [&](auto width) { tile(g, half, c0, width); });
            }
        }
    }
}

} // namespace specee::kernels
