#include "kv/kv_cache.h"

#include "api/error.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstring>

namespace specee {

kv_cache::kv_cache(const hparams & hp, uint32_t n_ctx, bool v_trans,
                   const std::vector<ggml_backend_buffer_type_t> & layer_buft)
    : n_layer_(hp.n_layer), n_ctx_(n_ctx), v_trans_(v_trans) {
    for (int il = 0; il < hp.n_layer; il++) {
        // each layer's K/V live where the layer runs
        ggml_backend_buffer_type_t buft = size_t(il) < layer_buft.size() && layer_buft[size_t(il)]
                                              ? layer_buft[size_t(il)] : ggml_backend_cpu_buffer_type();
        ggml_context * ctx = stores_.context_for(buft, size_t(2 * hp.n_layer));
        k_.push_back(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_kv(), n_ctx));
        v_.push_back(v_trans ? ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_ctx, hp.n_embd_kv())
                             : ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_kv(), n_ctx));
        ggml_format_name(k_.back(), "cache_k_l%d", il);
        ggml_format_name(v_.back(), "cache_v_l%d", il);
    }
    stores_.allocate("the KV cache", GGML_BACKEND_BUFFER_USAGE_ANY);
    for (const tensor_stores::store & s : stores_.all()) {
        // Zeroed so that masked cells never hold NaN bit patterns (0 * NaN = NaN).
        ggml_backend_buffer_clear(s.buffer, 0);
    }
    valid_.assign(size_t(n_layer_) * n_ctx_, 0);
}

void kv_cache::commit(uint32_t pos, uint32_t n, int n_layers_done) {
    for (int il = 0; il < n_layer_; il++) {
        std::memset(&valid_[index(il, pos)], il < n_layers_done ? 1 : 0, n);
    }
    n_past_ = pos + n;
}

void kv_cache::truncate(uint32_t n_past) {
    for (int il = 0; il < n_layer_; il++) {
        // data() + index: at n_past == n_ctx this is one past a layer's row (valid, 0 bytes)
        std::memset(valid_.data() + index(il, n_past), 0, n_ctx_ - n_past);
    }
    n_past_ = n_past;
}

void kv_cache::build_mask(int il, uint32_t pos, uint32_t n, uint32_t n_kv, float * out) const {
    const uint8_t * valid = &valid_[index(il, 0)];
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t qpos = pos + i;
        float        * row  = out + size_t(i) * n_kv;
        for (uint32_t j = 0; j < n_kv; j++) {
            const bool visible = j <= qpos && (j >= pos || valid[j]);
            row[j] = visible ? 0.0f : -INFINITY;
        }
    }
}

void kv_cache::v_indices(const int64_t * cells, uint32_t n, std::vector<int64_t> & out) const {
    const int64_t n_embd_kv = k_.front()->ne[0];
    out.resize(size_t(n_embd_kv) * n);
    for (uint32_t i = 0; i < n; i++) {
        for (int64_t d = 0; d < n_embd_kv; d++) {
            out[size_t(i) * size_t(n_embd_kv) + size_t(d)] = d * int64_t(n_ctx_) + cells[i];
        }
    }
}

void kv_cache::build_tree_mask(int il, uint32_t pos, uint32_t n_tree, const std::vector<uint8_t> & ancestor,
                               uint32_t first, uint32_t n, uint32_t n_kv, float * out) const {
    const uint8_t * valid = &valid_[index(il, 0)];
    for (uint32_t i = 0; i < n; i++) {
        float         * row  = out + size_t(i) * n_kv;
        const uint8_t * anc  = &ancestor[size_t(first + i) * n_tree];
        for (uint32_t j = 0; j < n_kv; j++) {
            const bool visible = j < pos ? valid[j] != 0 : (j < pos + n_tree && anc[j - pos]);
            row[j] = visible ? 0.0f : -INFINITY;
        }
    }
}

// Copies `bytes` at byte offset src to offset dst within t, on any backend.
static void copy_within(ggml_tensor * t, size_t src, size_t dst, size_t bytes, std::vector<uint8_t> & tmp) {
    if (ggml_backend_buffer_is_host(t->buffer)) {
        std::memcpy(static_cast<uint8_t *>(t->data) + dst, static_cast<const uint8_t *>(t->data) + src, bytes);
        return;
    }
    tmp.resize(bytes);
    ggml_backend_tensor_get(t, tmp.data(), src, bytes);
    ggml_backend_tensor_set(t, tmp.data(), dst, bytes);
}

void kv_cache::move_cells(const std::vector<std::pair<uint32_t, uint32_t>> & moves) {
    std::vector<uint8_t> tmp;
    for (int il = 0; il < n_layer_; il++) {
        ggml_tensor * k = k_[size_t(il)];
        ggml_tensor * v = v_[size_t(il)];
        for (const auto & [src, dst] : moves) {
            copy_within(k, src * k->nb[1], dst * k->nb[1], k->nb[1], tmp);  // a cell is a row of K
            if (!v_trans_) {
                copy_within(v, src * v->nb[1], dst * v->nb[1], v->nb[1], tmp);
            } else {
                for (int64_t d = 0; d < v->ne[1]; d++) {  // a cell is a column of transposed V
                    copy_within(v, d * v->nb[1] + src * v->nb[0], d * v->nb[1] + dst * v->nb[0], v->nb[0], tmp);
                }
            }
            valid_[index(il, dst)] = valid_[index(il, src)];
        }
    }
}

bool kv_cache::same_validity(int a, int b, uint32_t n_kv) const {
    return std::memcmp(&valid_[index(a, 0)], &valid_[index(b, 0)], n_kv) == 0;
}

} // namespace specee
