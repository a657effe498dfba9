#include "kv_cache.h"

#include "error.h"

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

bool kv_cache::same_validity(int a, int b, uint32_t n_kv) const {
    return std::memcmp(&valid_[index(a, 0)], &valid_[index(b, 0)], n_kv) == 0;
}

} // namespace specee
