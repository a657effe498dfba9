// graph_runner.h — runs a context's ggml graphs (as llama.cpp keeps
// llama-graph apart from llama-context): the CPU backend and its thread
// pool, the scheduler when layers sit on other devices, and one cache of
// built graphs keyed by a value that compares itself. Plain and early-exit
// steps, draft-head passes, token trees and multi-sequence batches all get
// their graphs here; positions, cells and masks are inputs, so a kept graph
// runs every later pass of the same key without being built again.
#pragma once

#include "graph/batch_graph.h"
#include "graph/graph.h"
#include "model/model.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace specee {

enum class graph_kind : uint8_t { forward, draft_head, batch };

// What a graph was built for. Two passes with equal keys run the same graph.
struct graph_key {
    graph_kind                kind = graph_kind::forward;
    std::vector<forward_plan> plans;        // one per sequence, pos cleared (an input)
    std::vector<int>          masks;        // each sequence's assign_masks(), one after another
    std::vector<uint64_t>     sequences;    // batch graphs: the contexts taking part, in order
    bool                      want_hidden = false;  // batch graphs: the final-normed hidden rows too

    bool operator==(const graph_key &) const = default;
    // more rows than a kept small graph has: such graphs (prompts) share one
    // slot per kind, sized once, instead of each keeping a compute buffer
    bool large() const;
};

// One sequence's graph key: `plan`'s shape with the masks its layers share in `kv`.
graph_key forward_key(graph_kind kind, const forward_plan & plan, const kv_cache & kv, int n_layer);

// Counters of a context's passes (see struct specee_perf).
struct perf_counters {
    uint64_t n_graph_runs   = 0;
    uint64_t n_graph_builds = 0;
    int64_t  t_compute_us   = 0;
    int64_t  t_run_us       = 0;  // whole passes, compute included
    int64_t  t_draft_us     = 0;  // early-exit stages
    int64_t  t_predictor_us = 0;
    int64_t  t_verify_us    = 0;
    int64_t  t_exit_step_us = 0;
};

class graph_runner {
public:
    // a built graph and the memory it lives in
    struct slot {
        std::vector<uint8_t> meta;              // the graph's and its tensors' structs
        ggml_context       * ctx    = nullptr;
        ggml_gallocr_t       galloc = nullptr;  // each slot keeps its own compute buffer (CPU only)
        graph_key            key;
        forward_graph        g;                 // kinds forward and draft_head
        batch_graph          batch;             // kind batch
        bool                 ready     = false;
        uint64_t             last_used = 0;
        ~slot();
    };
    // builds the graph of a key into a fresh ggml context of the slot,
    // setting slot.g or slot.batch, and returns it
    using builder = std::function<ggml_cgraph *(ggml_context * ctx, slot & s)>;

    // graph_size: the most nodes a graph of the context may have (the scheduler's size)
    graph_runner(const model & m, int32_t n_threads, int graph_size, perf_counters & perf);
    ~graph_runner();
    graph_runner(const graph_runner &) = delete;
    graph_runner & operator=(const graph_runner &) = delete;

    // The slot whose graph runs `key`: the kept one, or one `build` fills
    // (graph_size nodes at most) and the runner allocates. With offload
    // devices the scheduler splits every graph anew, so it is always built.
    slot & graph_for(const graph_key & key, int graph_size, const builder & build);
    // Computes a graph of a slot graph_for returned.
    void compute(ggml_cgraph * gf);
    // Builds and allocates a graph once and drops it again, so the compute
    // buffer of the large slot of its kind is sized before the first pass.
    void reserve(const graph_key & key, int graph_size, const builder & build);
    // Graphs of this kind are built again on their next use (their weights changed).
    void forget(graph_kind kind);

    // Computes on `with`'s thread pool from now on (see specee_context_share_threads).
    void share_threads(graph_runner & with);
    int32_t n_threads() const { return n_threads_; }
    bool    has_offload() const { return sched_ != nullptr; }

private:
    slot & slot_for(const graph_key & key, bool & reuse);
    void   release();  // frees what the constructor made

    perf_counters &                    perf_;
    int32_t                            n_threads_;
    ggml_backend_t                     backend_ = nullptr;   // the CPU
    std::shared_ptr<ggml_threadpool>   threadpool_;          // shared by contexts that share_threads()
    std::vector<ggml_backend_t>        offload_backends_;    // one per offload device of the model
    ggml_backend_sched_t               sched_ = nullptr;     // only with offload devices
    std::vector<std::unique_ptr<slot>> slots_;
    uint64_t                           n_uses_ = 0;
};

} // namespace specee
