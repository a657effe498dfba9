// row_layout.cpp — see row_layout.h.
#include "runner/row_layout.h"

#include "graph/graph_parts.h"

namespace specee {

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
