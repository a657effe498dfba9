// devices.h — where a model's layers run: the CPU, or offload devices (a GPU
// backend built into ggml, or ggml RPC servers on other machines), chosen the
// way llama.cpp chooses them: -ngl N puts the last N layers on the offload
// devices, and N > n_layer the output layer too.
#pragma once

#include "ggml-backend.h"

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace specee {

struct device_map {
    std::vector<ggml_backend_dev_t> offload;    // RPC servers first, then local GPUs
    std::vector<ggml_backend_dev_t> layer_dev;  // per layer; nullptr = CPU
    ggml_backend_dev_t              output_dev = nullptr;  // output norm and matrix; nullptr = CPU

    bool any_offload() const { return !offload.empty(); }
    // the buffer type that holds layer il's weights and K/V (nullptr = CPU)
    ggml_backend_buffer_type_t layer_buft(int il) const;
    ggml_backend_buffer_type_t output_buft() const;
};

// `rpc_servers`: "host:port[,host:port...]" or NULL/empty. Throws
// specee::error: an unreachable server, or layers asked for with no device
// to put them on.
device_map plan_devices(int32_t n_layer, int32_t n_gpu_layers, const char * rpc_servers);

// Whether this libspecee was built with a GPU backend / the RPC backend.
bool has_gpu_backend();
bool has_rpc_backend();

// Whether `e` is ggml's RPC client reporting a server that died or closed
// the connection (cmake/ggml-patches/0001: it throws a std::runtime_error
// whose message starts "the RPC server "; the type itself is private to
// ggml-rpc.cpp). The C API reports it as SPECEE_STATUS_IO_ERROR.
bool is_lost_rpc_server(const std::exception & e);

// Serves this machine's CPU backend to RPC clients until the process ends;
// throws specee::error if it cannot start.
void serve_rpc(const std::string & endpoint, int32_t n_threads);

} // namespace specee
