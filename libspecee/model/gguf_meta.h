// gguf_meta.h — type-checked reads of GGUF metadata.
//
// ggml's gguf getters assert on a type mismatch (which would abort the host
// process on a malicious file), so every read here checks the stored type
// first and throws specee::error instead.
#pragma once

#include "gguf.h"

#include <cstdint>
#include <optional>
#include <string>

namespace specee {

class gguf_meta {
public:
    explicit gguf_meta(const gguf_context * ctx) : ctx_(ctx) {}

    bool has(const std::string & key) const;

    // Unsigned or signed integer of any width, range-checked to [lo, hi].
    std::optional<int64_t> get_int(const std::string & key, int64_t lo, int64_t hi) const;
    int64_t require_int(const std::string & key, int64_t lo, int64_t hi) const;

    // F32 or F64, must be finite and in [lo, hi].
    std::optional<double> get_float(const std::string & key, double lo, double hi) const;

    std::optional<std::string> get_string(const std::string & key) const;
    std::optional<bool>        get_bool(const std::string & key) const;

    // Number of elements of an array key (any element type), or nullopt.
    std::optional<size_t> array_size(const std::string & key) const;

private:
    int64_t find(const std::string & key) const;
    const gguf_context * ctx_;
};

// Fails (SPECEE_STATUS_IO_ERROR, "file is truncated") unless every tensor's
// data lies inside a file of `file_size` bytes. Run it before allocating
// what the tensor shapes declare: a few bytes of header can declare terabytes.
void check_tensor_extents(const gguf_context * ctx, uint64_t file_size);

} // namespace specee
