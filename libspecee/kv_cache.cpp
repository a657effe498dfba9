#include "kv_cache.h"

#include "error.h"

#include "ggml-cpu.h"

#include <cmath>
#include <cstring>

namespace specee {

kv_cache::kv_cache(const hparams & hp, uint32_t n_ctx, bool v_trans,
                   const std::vector<ggml_backend_buffer_type_t> & layer_buft)
    : n_layer_(hp.n_layer), n_ctx_(n_ctx), v_trans_(v_trans) {
    try {
        for (int il = 0; il < hp.n_layer; il++) {
            // each layer's K/V live where the layer runs; one context and buffer per place
            ggml_backend_buffer_type_t buft = size_t(il) < layer_buft.size() && layer_buft[size_t(il)]
                                                  ? layer_buft[size_t(il)] : ggml_backend_cpu_buffer_type();
            ggml_context * ctx = context_for(buft, size_t(2 * hp.n_layer));
            k_.push_back(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_kv(), n_ctx));
            v_.push_back(v_trans ? ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_ctx, hp.n_embd_kv())
                                 : ggml_new_tensor_2d(ctx, GGML_TYPE_F16, hp.n_embd_kv(), n_ctx));
            ggml_format_name(k_.back(), "cache_k_l%d", il);
            ggml_format_name(v_.back(), "cache_v_l%d", il);
        }
        for (store & s : stores_) {
            s.buffer = ggml_backend_alloc_ctx_tensors_from_buft(s.ctx, s.buft);
            if (s.buffer == nullptr) {
                fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate the KV cache (%u cells) in %s memory", n_ctx,
                     ggml_backend_buft_name(s.buft));
            }
            // Zeroed so that masked cells never hold NaN bit patterns (0 * NaN = NaN).
            ggml_backend_buffer_clear(s.buffer, 0);
        }
    } catch (...) {
        release();
        throw;
    }
    valid_.assign(size_t(n_layer_) * n_ctx_, 0);
}

ggml_context * kv_cache::context_for(ggml_backend_buffer_type_t buft, size_t n_tensors) {
    for (store & s : stores_) {
        if (s.buft == buft) {
            return s.ctx;
        }
    }
    ggml_init_params ip = {ggml_tensor_overhead() * n_tensors, nullptr, /*no_alloc=*/true};
    store s;
    s.buft = buft;
    s.ctx  = ggml_init(ip);
    if (s.ctx == nullptr) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create the KV cache context");
    }
    stores_.push_back(s);
    return s.ctx;
}

void kv_cache::release() {
    for (store & s : stores_) {
        ggml_backend_buffer_free(s.buffer);
        ggml_free(s.ctx);
    }
    stores_.clear();
}

kv_cache::~kv_cache() {
    release();
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
