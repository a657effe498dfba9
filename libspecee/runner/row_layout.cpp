// row_layout.cpp — see row_layout.h.
#include "runner/row_layout.h"

#include "api/error.h"
#include "graph/graph_parts.h"

namespace specee {

token_tree make_token_tree(const int32_t * tokens, const int32_t * parents, int32_t n, uint32_t base) {
    token_tree t;
    t.base = base;
    t.n    = uint32_t(n);
    t.tokens.assign(tokens, tokens + n);
    t.parents.resize(size_t(n));
    t.depth.resize(size_t(n));
    t.ancestor.assign(size_t(n) * size_t(n), 0);
    for (int32_t i = 0; i < n; i++) {
        const int32_t p = parents ? parents[i] : i - 1;  // no parents: a chain
        if (p < -1 || p >= i) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT,
                 "parent %d of tree token %d must be -1 (follows the cache) or an earlier token in [0, %d)", p, i, i);
        }
        t.parents[size_t(i)] = p;
        t.depth[size_t(i)]   = p < 0 ? 0 : t.depth[size_t(p)] + 1;
        uint8_t * row = &t.ancestor[size_t(i) * size_t(n)];
        if (p >= 0) {
            const uint8_t * prow = &t.ancestor[size_t(p) * size_t(n)];
            std::copy(prow, prow + p + 1, row);
        }
        row[i] = 1;
    }
    return t;
}

void row_layout::mask(const kv_cache & kv, int il, uint32_t n_kv, float * out) const {
    if (tree) {
        kv.build_tree_mask(il, tree->base, tree->n, tree->ancestor, first, n, n_kv, out);
    } else {
        kv.build_mask(il, cell, n, n_kv, out);
    }
}

void fill_attention_inputs(const attention_inputs & in, const row_layout & rows, const kv_cache & kv, uint32_t n_kv,
                           input_scratch & s) {
    s.cells.resize(rows.n);
    for (uint32_t i = 0; i < rows.n; i++) {
        s.cells[i] = int64_t(rows.cell + i);
    }
    set_input(in.k_idx, s.cells.data(), 0, rows.n * sizeof(int64_t));
    if (in.v_idx != in.k_idx) {
        kv.v_indices(s.cells.data(), rows.n, s.v_cells);
        set_input(in.v_idx, s.v_cells.data(), 0, s.v_cells.size() * sizeof(int64_t));
    }
    s.mask.resize(size_t(n_kv) * rows.n);
    for (size_t u = 0; u < in.masks.size(); u++) {
        rows.mask(kv, in.mask_layer[u], n_kv, s.mask.data());
        set_mask_input(in.masks[u], s.mask.data(), s.mask.size(), s.mask_f16);
    }
}

void fill_positions(ggml_tensor * positions, const row_layout & rows, input_scratch & s) {
    s.positions.resize(rows.n);
    for (uint32_t i = 0; i < rows.n; i++) {
        s.positions[i] = rows.position(i);
    }
    set_input(positions, s.positions.data(), 0, rows.n * sizeof(int32_t));
}

} // namespace specee
