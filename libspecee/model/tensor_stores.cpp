// tensor_stores.cpp — see tensor_stores.h.
#include "model/tensor_stores.h"

#include "api/error.h"

namespace specee {

tensor_stores::~tensor_stores() {
    for (store & s : stores_) {
        ggml_backend_buffer_free(s.buffer);
        ggml_free(s.ctx);
    }
}

ggml_context * tensor_stores::context_for(ggml_backend_buffer_type_t buft, size_t max_tensors) {
    for (store & s : stores_) {
        if (s.buft == buft) {
            return s.ctx;
        }
    }
    ggml_init_params ip = {ggml_tensor_overhead() * max_tensors, nullptr, /*no_alloc=*/true};
    store s;
    s.buft = buft;
    s.ctx  = ggml_init(ip);
    if (s.ctx == nullptr) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create a tensor context");
    }
    stores_.push_back(s);
    return s.ctx;
}

void tensor_stores::allocate(const char * what, ggml_backend_buffer_usage usage) {
    for (store & s : stores_) {
        s.buffer = ggml_backend_alloc_ctx_tensors_from_buft(s.ctx, s.buft);
        if (s.buffer == nullptr) {
            fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate %s memory for %s", ggml_backend_buft_name(s.buft), what);
        }
        ggml_backend_buffer_set_usage(s.buffer, usage);
    }
}

} // namespace specee
