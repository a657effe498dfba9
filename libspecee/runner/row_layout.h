// row_layout.h — where a pass's rows go, handed to the runner explicitly:
// plain rows at consecutive positions and cells, or rows of a token tree at
// their depth after its base, each attending to the cache and its own
// ancestors. fill_attention_inputs() turns a layout into a graph's inputs.
#pragma once

#include "graph/graph.h"
#include "kv/kv_cache.h"
#include "runner/token_tree.h"

#include "ggml.h"

#include <cstdint>
#include <vector>

namespace specee {

struct row_layout {
    uint32_t           cell  = 0;        // the cell of the first row; row i writes cell + i
    uint32_t           n     = 0;
    const token_tree * tree  = nullptr;  // tree rows: positions by depth, masks by ancestry
    uint32_t           first = 0;        // the tree row of this pass's row 0 (earlier ones are cached)

    static row_layout plain(uint32_t pos, uint32_t n) { return {pos, n, nullptr, 0}; }
    // rows [first, first + n) of `t`; the rows before them are in the cache already
    static row_layout of_tree(const token_tree & t, uint32_t first, uint32_t n) {
        return {t.base + first, n, &t, first};
    }

    int32_t position(uint32_t i) const {
        return tree ? int32_t(tree->base + uint32_t(tree->depth[first + i])) : int32_t(cell + i);
    }
    // layer il's mask for these rows over cells [0, n_kv) ([n_kv, n] row-major)
    void mask(const kv_cache & kv, int il, uint32_t n_kv, float * out) const;
};

// Reusable host buffers for filling inputs (no allocation per step).
struct input_scratch {
    std::vector<int32_t>     positions;
    std::vector<int64_t>     cells, v_cells;
    std::vector<float>       mask;
    std::vector<ggml_fp16_t> mask_f16;
};

// Writes `rows`' cells and per-layer masks into `in` (a graph's attention
// inputs over cells [0, n_kv) of `kv`).
void fill_attention_inputs(const attention_inputs & in, const row_layout & rows, const kv_cache & kv, uint32_t n_kv,
                           input_scratch & s);

// Writes `rows`' positions into a graph's [n] I32 positions input.
void fill_positions(ggml_tensor * positions, const row_layout & rows, input_scratch & s);

} // namespace specee
