// graph_runner.cpp — see graph_runner.h.
#include "runner/graph_runner.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

// Graphs over more rows than this are prompts (one slot per kind); smaller
// ones (steps, verification passes of every length, batches) are kept by
// key, the least recently used going first.
static constexpr uint32_t max_kept_rows  = 16;
static constexpr size_t   max_kept_small = 96;

bool graph_key::large() const {
    return std::any_of(plans.begin(), plans.end(), [](const forward_plan & p) { return p.n_tokens > max_kept_rows; });
}

graph_key forward_key(graph_kind kind, const forward_plan & plan, const kv_cache & kv, int n_layer) {
    graph_key key;
    key.kind = kind;
    key.plans.push_back(plan);
    key.plans.back().pos = 0;
    if (kind == graph_kind::forward) {  // the draft head's one layer has one mask
        key.masks = assign_masks(kv, plan, n_layer);
    }
    return key;
}

graph_runner::slot::~slot() {
    ggml_free(ctx);
    ggml_gallocr_free(galloc);
}

graph_runner::graph_runner(const model & m, int32_t n_threads, int graph_size, perf_counters & perf)
    : perf_(perf), n_threads_(n_threads) {
    // Explicit cleanup on failure: the destructor does not run for a
    // constructor that throws.
    try {
        backend_ = ggml_backend_cpu_init();
        if (backend_ == nullptr) {
            fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create the ggml CPU backend");
        }
        // A persistent thread pool: threads stay alive (and spin briefly)
        // between graphs instead of being created for every token.
        ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads_);
        threadpool_.reset(ggml_threadpool_new(&tpp), ggml_threadpool_free);
        if (threadpool_ == nullptr) {
            fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create a pool of %d threads", n_threads_);
        }
        ggml_backend_cpu_set_n_threads(backend_, n_threads_);
        ggml_backend_cpu_set_threadpool(backend_, threadpool_.get());

        if (m.devices.any_offload()) {
            // layers on other devices: ggml's scheduler splits each graph
            // between them and the CPU, which runs what they cannot
            std::vector<ggml_backend_t> all;
            for (ggml_backend_dev_t dev : m.devices.offload) {
                ggml_backend_t b = ggml_backend_dev_init(dev, nullptr);
                if (b == nullptr) {
                    fail(SPECEE_STATUS_IO_ERROR, "cannot start the %s backend", ggml_backend_dev_name(dev));
                }
                offload_backends_.push_back(b);
                all.push_back(b);
            }
            all.push_back(backend_);
            sched_ = ggml_backend_sched_new(all.data(), nullptr, int(all.size()), size_t(graph_size) * 2,
                                            /*parallel=*/false, /*op_offload=*/true);
            if (sched_ == nullptr) {
                fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create the graph scheduler");
            }
        }
    } catch (...) {
        release();
        throw;
    }
}

graph_runner::~graph_runner() {
    release();
}

void graph_runner::release() {
    slots_.clear();
    if (sched_) {
        ggml_backend_sched_free(sched_);
        sched_ = nullptr;
    }
    for (ggml_backend_t b : offload_backends_) {
        ggml_backend_free(b);
    }
    offload_backends_.clear();
    ggml_backend_free(backend_);  // before the thread pool it uses
    backend_ = nullptr;
    threadpool_.reset();  // freed with its last user
}

void graph_runner::share_threads(graph_runner & with) {
    if (&with == this || with.threadpool_ == threadpool_) {
        return;
    }
    // the old pool is paused by ggml, then freed here unless another context uses it
    ggml_backend_cpu_set_threadpool(backend_, with.threadpool_.get());
    ggml_backend_cpu_set_n_threads(backend_, with.n_threads_);
    threadpool_ = with.threadpool_;
    n_threads_  = with.n_threads_;
}

graph_runner::slot & graph_runner::slot_for(const graph_key & key, bool & reuse) {
    reuse = false;
    const bool large = key.large();
    slot * same_kind_large = nullptr;
    slot * oldest = nullptr;
    size_t n_small = 0;
    for (auto & s : slots_) {
        if (s->ready && s->key == key) {
            reuse = true;
            return *s;
        }
        if (s->key.large()) {
            same_kind_large = s->key.kind == key.kind ? s.get() : same_kind_large;
            continue;
        }
        n_small++;
        oldest = !oldest || s->last_used < oldest->last_used ? s.get() : oldest;
    }
    if (large && same_kind_large) {
        return *same_kind_large;  // prompts of one kind share a slot and its buffer
    }
    if (!large && n_small >= max_kept_small) {
        return *oldest;
    }
    slots_.push_back(std::make_unique<slot>());
    return *slots_.back();
}

graph_runner::slot & graph_runner::graph_for(const graph_key & key, int graph_size, const builder & build) {
    bool reuse = false;
    slot & s = slot_for(key, reuse);
    s.last_used = ++n_uses_;
    if (reuse && !sched_) {
        return s;
    }
    s.ready = false;
    ggml_free(s.ctx);  // before its memory may move
    s.ctx = nullptr;
    s.meta.resize(std::max(s.meta.size(), ggml_tensor_overhead() * size_t(graph_size) +
                                              ggml_graph_overhead_custom(size_t(graph_size), false)));
    ggml_init_params ip = {s.meta.size(), s.meta.data(), true};
    s.ctx = ggml_init(ip);
    if (s.galloc == nullptr && !sched_) {
        s.galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    }
    if (s.ctx == nullptr || (s.galloc == nullptr && !sched_)) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create a compute graph");
    }
    s.key = key;
    ggml_cgraph * gf = build(s.ctx, s);
    // CPU only: each slot keeps its buffer and its graph runs again as it
    // is. With offload devices the scheduler splits and allocates every
    // graph anew (its compute buffers are shared), and compute() follows at once.
    // The allocator may hold the plan of the graph this slot had before; ggml
    // plans again only when node counts or sizes differ (not the leafs), and
    // placed a new graph's inputs by an old plan once (a crash after an
    // early-exit segment graph replaced another of the same size). So every
    // new graph is planned first.
    const bool ok = sched_ ? (ggml_backend_sched_reset(sched_), ggml_backend_sched_alloc_graph(sched_, gf))
                           : ggml_gallocr_reserve(s.galloc, gf) && ggml_gallocr_alloc_graph(s.galloc, gf);
    if (!ok) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate the compute graph");
    }
    s.ready = true;
    perf_.n_graph_builds++;
    return s;
}

void graph_runner::reserve(const graph_key & key, int graph_size, const builder & build) {
    graph_for(key, graph_size, build).ready = false;  // its inputs were never set
}

void graph_runner::forget(graph_kind kind) {
    for (auto & s : slots_) {
        if (s->key.kind == kind) {
            s->ready = false;
        }
    }
}

void graph_runner::compute(ggml_cgraph * gf) {
    const int64_t t0 = ggml_time_us();
    const ggml_status st = sched_ ? ggml_backend_sched_graph_compute(sched_, gf) : ggml_backend_graph_compute(backend_, gf);
    perf_.t_compute_us += ggml_time_us() - t0;
    perf_.n_graph_runs++;
    if (st != GGML_STATUS_SUCCESS) {
        fail(SPECEE_STATUS_COMPUTE_FAILED, "ggml graph compute failed with status %d", int(st));
    }
}

} // namespace specee
