#include "model/gguf_meta.h"

#include "api/error.h"

#include <cmath>

namespace specee {

int64_t gguf_meta::find(const std::string & key) const {
    return gguf_find_key(ctx_, key.c_str());
}

bool gguf_meta::has(const std::string & key) const {
    return find(key) >= 0;
}

std::optional<int64_t> gguf_meta::get_int(const std::string & key, int64_t lo, int64_t hi) const {
    const int64_t id = find(key);
    if (id < 0) {
        return std::nullopt;
    }
    int64_t v = 0;
    switch (gguf_get_kv_type(ctx_, id)) {
        case GGUF_TYPE_UINT8:  v = gguf_get_val_u8 (ctx_, id); break;
        case GGUF_TYPE_INT8:   v = gguf_get_val_i8 (ctx_, id); break;
        case GGUF_TYPE_UINT16: v = gguf_get_val_u16(ctx_, id); break;
        case GGUF_TYPE_INT16:  v = gguf_get_val_i16(ctx_, id); break;
        case GGUF_TYPE_UINT32: v = gguf_get_val_u32(ctx_, id); break;
        case GGUF_TYPE_INT32:  v = gguf_get_val_i32(ctx_, id); break;
        case GGUF_TYPE_INT64:  v = gguf_get_val_i64(ctx_, id); break;
        case GGUF_TYPE_UINT64: {
            const uint64_t u = gguf_get_val_u64(ctx_, id);
            if (u > uint64_t(INT64_MAX)) {
                fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s = %llu is out of range", key.c_str(), (unsigned long long) u);
            }
            v = int64_t(u);
            break;
        }
        default:
            fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s has type %s, expected an integer",
                 key.c_str(), gguf_type_name(gguf_get_kv_type(ctx_, id)));
    }
    if (v < lo || v > hi) {
        fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s = %lld is outside [%lld, %lld]",
             key.c_str(), (long long) v, (long long) lo, (long long) hi);
    }
    return v;
}

int64_t gguf_meta::require_int(const std::string & key, int64_t lo, int64_t hi) const {
    const auto v = get_int(key, lo, hi);
    if (!v) {
        fail(SPECEE_STATUS_INVALID_MODEL, "required metadata key %s is missing", key.c_str());
    }
    return *v;
}

std::optional<double> gguf_meta::get_float(const std::string & key, double lo, double hi) const {
    const int64_t id = find(key);
    if (id < 0) {
        return std::nullopt;
    }
    double v = 0;
    switch (gguf_get_kv_type(ctx_, id)) {
        case GGUF_TYPE_FLOAT32: v = gguf_get_val_f32(ctx_, id); break;
        case GGUF_TYPE_FLOAT64: v = gguf_get_val_f64(ctx_, id); break;
        default:
            fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s has type %s, expected a float",
                 key.c_str(), gguf_type_name(gguf_get_kv_type(ctx_, id)));
    }
    if (!std::isfinite(v) || v < lo || v > hi) {
        fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s = %g is outside [%g, %g]", key.c_str(), v, lo, hi);
    }
    return v;
}

std::optional<std::string> gguf_meta::get_string(const std::string & key) const {
    const int64_t id = find(key);
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_STRING) {
        fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s has type %s, expected a string",
             key.c_str(), gguf_type_name(gguf_get_kv_type(ctx_, id)));
    }
    return std::string(gguf_get_val_str(ctx_, id));
}

std::optional<bool> gguf_meta::get_bool(const std::string & key) const {
    const int64_t id = find(key);
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_BOOL) {
        fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s has type %s, expected a bool",
             key.c_str(), gguf_type_name(gguf_get_kv_type(ctx_, id)));
    }
    return gguf_get_val_bool(ctx_, id);
}

std::optional<size_t> gguf_meta::array_size(const std::string & key) const {
    const int64_t id = find(key);
    if (id < 0) {
        return std::nullopt;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY) {
        fail(SPECEE_STATUS_INVALID_MODEL, "metadata %s is not an array", key.c_str());
    }
    return gguf_get_arr_n(ctx_, id);
}

void check_tensor_extents(const gguf_context * ctx, uint64_t file_size) {
    const uint64_t data_offset = gguf_get_data_offset(ctx);
    for (int64_t i = 0; i < gguf_get_n_tensors(ctx); i++) {
        const uint64_t offset = data_offset + gguf_get_tensor_offset(ctx, i);
        const uint64_t nbytes = gguf_get_tensor_size(ctx, i);
        if (offset > file_size || nbytes > file_size - offset) {
            fail(SPECEE_STATUS_IO_ERROR, "file is truncated: tensor %s needs bytes up to %llu, the file has %llu",
                 gguf_get_tensor_name(ctx, i), (unsigned long long) (offset + nbytes), (unsigned long long) file_size);
        }
    }
}

} // namespace specee
