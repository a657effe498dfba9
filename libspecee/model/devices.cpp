// devices.cpp — offload devices for a model (see devices.h).
#include "model/devices.h"

#include "api/error.h"
#include "ggml-cpu.h"

#ifdef SPECEE_HAS_RPC
#include "ggml-rpc.h"
#endif

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>

namespace specee {

bool has_gpu_backend() {
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        const auto type = ggml_backend_dev_type(ggml_backend_dev_get(i));
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            return true;
        }
    }
    return false;
}

bool has_rpc_backend() {
#ifdef SPECEE_HAS_RPC
    return true;
#else
    return false;
#endif
}

bool is_lost_rpc_server(const std::exception & e) {
    return has_rpc_backend() && std::strncmp(e.what(), "the RPC server ", 15) == 0;
}

ggml_backend_buffer_type_t device_map::layer_buft(int il) const {
    ggml_backend_dev_t dev = layer_dev.at(size_t(il));
    return dev ? ggml_backend_dev_buffer_type(dev) : nullptr;
}

ggml_backend_buffer_type_t device_map::output_buft() const {
    return output_dev ? ggml_backend_dev_buffer_type(output_dev) : nullptr;
}

namespace {

std::vector<std::string> split_endpoints(const char * list) {
    std::vector<std::string> out;
    std::string cur;
    for (const char * p = list; p && *p; p++) {
        if (*p == ',') {
            out.push_back(cur);
            cur.clear();
        } else if (*p != ' ') {
            cur += *p;
        }
    }
    if (!cur.empty() || (list && *list)) {
        out.push_back(cur);
    }
    return out;
}

void check_syntax(const std::string & endpoint) {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "RPC server '%s' is not host:port", endpoint.c_str());
    }
    const std::string port = endpoint.substr(colon + 1);
    for (char c : port) {
        if (c < '0' || c > '9') {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "RPC server '%s': the port must be a number", endpoint.c_str());
        }
    }
}

// Fails unless a TCP connection to "host:port" opens within `timeout_ms`.
// ggml's RPC client aborts the process when it cannot connect; checking
// first turns that into an error the caller can handle.
void check_reachable(const std::string & endpoint, int timeout_ms) {
    const size_t colon = endpoint.rfind(':');
    const std::string host = endpoint.substr(0, colon);
    const std::string port = endpoint.substr(colon + 1);
    addrinfo hints = {};
    hints.ai_family   = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
        fail(SPECEE_STATUS_IO_ERROR, "RPC server %s: cannot resolve host '%s'", endpoint.c_str(), host.c_str());
    }
    std::string why = "no address";
    bool ok = false;
    for (addrinfo * a = res; a && !ok; a = a->ai_next) {
        const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            why = std::strerror(errno);
            continue;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd pfd = {fd, POLLOUT, 0};
            rc = poll(&pfd, 1, timeout_ms);
            if (rc == 0) {
                why = "no answer within " + std::to_string(timeout_ms / 1000) + " s";
                rc = -1;
            } else if (rc > 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err == 0 ? 0 : -1;
                if (err) {
                    why = std::strerror(err);
                }
            } else {
                why = std::strerror(errno);
            }
        } else if (rc != 0) {
            why = std::strerror(errno);
        }
        ok = rc == 0;
        close(fd);
    }
    freeaddrinfo(res);
    if (!ok) {
        fail(SPECEE_STATUS_IO_ERROR, "cannot reach RPC server %s: %s", endpoint.c_str(), why.c_str());
    }
}

void add_rpc_devices(const char * rpc_servers, std::vector<ggml_backend_dev_t> & out) {
    const std::vector<std::string> endpoints = split_endpoints(rpc_servers);
    if (endpoints.empty()) {
        return;
    }
#ifdef SPECEE_HAS_RPC
    for (const std::string & ep : endpoints) {
        if (ep.empty()) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "empty entry in the RPC server list '%s'", rpc_servers);
        }
        check_syntax(ep);
    }
    for (const std::string & ep : endpoints) {
        check_reachable(ep, 3000);
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(ep.c_str());
        if (reg == nullptr) {
            fail(SPECEE_STATUS_IO_ERROR, "RPC server %s refused the connection", ep.c_str());
        }
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) {
            out.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
#else
    fail(SPECEE_STATUS_UNSUPPORTED, "this libspecee was built without ggml's RPC backend");
#endif
}

} // namespace

device_map plan_devices(int32_t n_layer, int32_t n_gpu_layers, const char * rpc_servers) {
    if (n_gpu_layers < 0) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "n_gpu_layers = %d: it must be >= 0 (0 = all on the CPU)",
             n_gpu_layers);
    }
    device_map dm;
    dm.layer_dev.assign(size_t(n_layer), nullptr);
    add_rpc_devices(rpc_servers, dm.offload);
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            dm.offload.push_back(dev);
        }
    }
    if (n_gpu_layers == 0) {
        dm.offload.clear();  // nothing goes there: run as a CPU-only model
        return dm;
    }
    if (dm.offload.empty()) {
        fail(SPECEE_STATUS_UNSUPPORTED,
             "n_gpu_layers = %d, but there is no device to offload to: this libspecee has no GPU backend "
             "(build it with -C cmake.define.SPECEE_CUDA=ON) and no RPC servers were given",
             n_gpu_layers);
    }
    // the last n layers, split into contiguous runs over the devices in order
    const int32_t n_off   = std::min(n_gpu_layers, n_layer);
    const int32_t first   = n_layer - n_off;
    const size_t  n_dev   = dm.offload.size();
    for (int32_t il = first; il < n_layer; il++) {
        dm.layer_dev[size_t(il)] = dm.offload[size_t(il - first) * n_dev / size_t(n_off)];
    }
    if (n_gpu_layers > n_layer) {
        dm.output_dev = dm.offload.back();
    }
    return dm;
}

void serve_rpc(const std::string & endpoint, int32_t n_threads) {
#ifdef SPECEE_HAS_RPC
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        fail(SPECEE_STATUS_INTERNAL, "ggml has no CPU device");
    }
    ggml_backend_rpc_start_server(endpoint.c_str(), nullptr, size_t(std::max(n_threads, 1)), 1, &cpu);
    fail(SPECEE_STATUS_IO_ERROR, "the RPC server on %s stopped (is the port free?)", endpoint.c_str());
#else
    fail(SPECEE_STATUS_UNSUPPORTED, "this libspecee was built without ggml's RPC backend");
#endif
}

} // namespace specee
