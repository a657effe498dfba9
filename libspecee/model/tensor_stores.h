// tensor_stores.h — tensors grouped by where they live: one ggml context
// and one backend buffer per buffer type (plain CPU memory, a repacked CPU
// layout, a device's memory), as llama.cpp's loader keeps them. The model's
// weights and the KV cache both place their tensors this way.
#pragma once

#include "ggml.h"
#include "ggml-backend.h"

#include <cstddef>
#include <vector>

namespace specee {

class tensor_stores {
public:
    struct store {
        ggml_backend_buffer_type_t buft   = nullptr;
        ggml_context             * ctx    = nullptr;  // no_alloc: tensor metadata only
        ggml_backend_buffer_t      buffer = nullptr;  // set by allocate()
    };

    tensor_stores() = default;
    ~tensor_stores();
    tensor_stores(const tensor_stores &) = delete;
    tensor_stores & operator=(const tensor_stores &) = delete;

    // The context whose tensors will live in `buft`, created on first use
    // with room for `max_tensors`.
    ggml_context * context_for(ggml_backend_buffer_type_t buft, size_t max_tensors);
    // Allocates one buffer per store for its tensors, with `usage`; throws
    // SPECEE_STATUS_OUT_OF_MEMORY naming `what` and the memory.
    void allocate(const char * what, ggml_backend_buffer_usage usage);
    const std::vector<store> & all() const { return stores_; }

private:
    std::vector<store> stores_;
};

} // namespace specee
