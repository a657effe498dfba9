// kv_cache.h — per-layer K/V storage for one sequence, with a per-layer,
// per-cell validity record.
//
// Cell i holds position i. Early exit leaves the layers after the exit
// without K/V for that token, so every layer keeps its own record of which
// cells it computed, and builds its own attention mask from it
// (ref: SpecEE's llama.cpp version; docs/design.md#skipped-layers-kv-cache).
#pragma once

#include "model/model.h"
#include "model/tensor_stores.h"

#include <cstdint>
#include <utility>
#include <vector>

namespace specee {

class kv_cache {
public:
    // v_trans: store V transposed ([n_ctx, n_embd_kv]), the layout the
    // unfused attention multiplies with; the fused kernel wants it as K.
    // layer_buft: where each layer's K/V live (nullptr or missing = CPU memory).
    kv_cache(const hparams & hp, uint32_t n_ctx, bool v_trans,
             const std::vector<ggml_backend_buffer_type_t> & layer_buft = {});
    ~kv_cache() = default;
    kv_cache(const kv_cache &) = delete;
    kv_cache & operator=(const kv_cache &) = delete;

    uint32_t n_ctx()  const { return n_ctx_; }
    uint32_t n_past() const { return n_past_; }

    bool v_trans() const { return v_trans_; }
    ggml_tensor * k(int il) const { return k_[size_t(il)]; }  // [n_embd_kv, n_ctx] F16
    ggml_tensor * v(int il) const { return v_[size_t(il)]; }  // [n_embd_kv, n_ctx] or, if v_trans, [n_ctx, n_embd_kv] F16

    bool valid(int il, uint32_t pos) const { return valid_[index(il, pos)] != 0; }

    // Records that layers [0, n_layers_done) computed K/V for positions
    // [pos, pos + n) and deeper layers did not; advances n_past.
    void commit(uint32_t pos, uint32_t n, int n_layers_done);

    // Forgets positions >= n_past.
    void truncate(uint32_t n_past);

    // Writes layer il's mask for queries at positions [pos, pos + n) over
    // cells [0, n_kv) into `out` ([n_kv, n] row-major: 0 or -inf).
    // The queries' own cells count as valid: the layer writes them now.
    void build_mask(int il, uint32_t pos, uint32_t n, uint32_t n_kv, float * out) const;

    // The same for a token tree of n_tree tokens at cells [pos, pos +
    // n_tree), for the queries of its rows [first, first + n): each sees the
    // cache below pos (as build_mask) and, of the tree, only its ancestors
    // and itself (`ancestor`: [n_tree, n_tree] row-major, 1 where j is i or
    // above it). The rows before `first` are in the cache already (the draft
    // tree grows a level per pass); a target tree is written whole (first 0).
    void build_tree_mask(int il, uint32_t pos, uint32_t n_tree, const std::vector<uint8_t> & ancestor,
                         uint32_t first, uint32_t n, uint32_t n_kv, float * out) const;

    // With V transposed: the element indices ([n, n_embd_kv] row-major)
    // that the V rows of tokens written to `cells` go to (d * n_ctx + cell).
    void v_indices(const int64_t * cells, uint32_t n, std::vector<int64_t> & out) const;

    // Copies every layer's K/V of cell src to cell dst for each (src, dst)
    // pair, in order; a pair's src must not be an earlier pair's dst.
    void move_cells(const std::vector<std::pair<uint32_t, uint32_t>> & moves);

    // True if layers a and b see the same cells below `n_kv`.
    bool same_validity(int a, int b, uint32_t n_kv) const;

private:
    size_t index(int il, uint32_t pos) const { return size_t(il) * n_ctx_ + pos; }

    int                        n_layer_;
    uint32_t                   n_ctx_;
    uint32_t                   n_past_ = 0;
    bool                       v_trans_;
    tensor_stores              stores_;  // K/V tensors by where they live
    std::vector<ggml_tensor *> k_, v_;
    std::vector<uint8_t>       valid_;  // [n_layer, n_ctx]
};

} // namespace specee
