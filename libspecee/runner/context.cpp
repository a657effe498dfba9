// context.cpp — runs forward passes for one sequence and keeps their outputs.
#include "runner/context.h"

#include "api/error.h"
#include "api/ggml_log.h"
#include "graph/graph_parts.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

namespace specee {

static uint32_t resolve_n_ctx(const model & m, const specee_context_params & p) {
    if (p.n_ctx == 0) {
        return uint32_t(std::min(m.hp.n_ctx_train, 4096));
    }
    if (p.n_ctx > (1u << 20)) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "n_ctx = %u is larger than the limit of %u", p.n_ctx, 1u << 20);
    }
    return p.n_ctx;
}

// Where each layer's K/V live: where the layer runs.
static std::vector<ggml_backend_buffer_type_t> layer_bufts(const model & m) {
    std::vector<ggml_backend_buffer_type_t> out;
    for (int il = 0; il < m.hp.n_layer; il++) {
        out.push_back(m.devices.layer_buft(il));
    }
    return out;
}

static uint64_t next_context_id() {
    static std::atomic<uint64_t> next{1};
    return next++;
}

static int32_t resolve_threads(int32_t n) {
    if (n > 0) {
        return std::min(n, 512);
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? int32_t(hw) : 1;
}

context::context(const model & m, const specee_context_params & params)
    : model_(m),
      kv_(m.hp, resolve_n_ctx(m, params), /*v_trans=*/!params.flash_attn, layer_bufts(m)),
      n_batch_(std::max(1u, std::min(params.n_batch == 0 ? 512u : params.n_batch, kv_.n_ctx()))),
      n_threads_(resolve_threads(params.n_threads)),
      exact_verify_(params.exact_verify),
      id_(next_context_id()) {
    install_ggml_log();

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

        graph_size_ = std::max(1024, 96 * m.hp.n_layer + 64);  // as_steps passes add reshapes and copies per layer
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
            sched_ = ggml_backend_sched_new(all.data(), nullptr, int(all.size()), size_t(graph_size_) * 2,
                                            /*parallel=*/false, /*op_offload=*/true);
            if (sched_ == nullptr) {
                fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create the graph scheduler");
            }
        }

        ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
        state_ctx_ = ggml_init(ip);
        state_ = ggml_new_tensor_2d(state_ctx_, GGML_TYPE_F32, m.hp.n_embd, n_batch_);
        state_buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(state_ctx_, ggml_backend_cpu_buffer_type());
        if (state_buffer_ == nullptr) {
            fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate compute buffers");
        }

        // Size the prefill compute buffer once for the largest chunk, so
        // that generation never reallocates it.
        slots_.push_back(std::make_unique<graph_slot>());
        forward_plan plan;
        plan.n_tokens  = n_batch_;
        plan.n_kv      = kv_.n_ctx();
        plan.layer_end = m.hp.n_layer;
        plan.n_logits  = 1;
        build_into(*slots_[0], plan);
        slots_[0]->ready = false;  // its inputs were never set
    } catch (...) {
        release();
        throw;
    }
}

void context::release() {
    slots_.clear();
    batch_slots_.clear();
    if (sched_) {
        ggml_backend_sched_free(sched_);
        sched_ = nullptr;
    }
    for (ggml_backend_t b : offload_backends_) {
        ggml_backend_free(b);
    }
    offload_backends_.clear();
    ggml_backend_buffer_free(state_buffer_);
    state_buffer_ = nullptr;
    ggml_free(state_ctx_);
    state_ctx_ = nullptr;
    ggml_backend_free(backend_);  // before the thread pool it uses
    backend_ = nullptr;
    threadpool_.reset();  // freed with its last user
}

void context::share_threads(context & with) {
    if (&with == this || with.threadpool_ == threadpool_) {
        return;
    }
    // the old pool is paused by ggml, then freed here unless another context uses it
    ggml_backend_cpu_set_threadpool(backend_, with.threadpool_.get());
    ggml_backend_cpu_set_n_threads(backend_, with.n_threads_);
    threadpool_ = with.threadpool_;
    n_threads_  = with.n_threads_;
}

context::graph_slot::~graph_slot() {
    ggml_free(ctx);
    ggml_gallocr_free(galloc);
}

context::~context() {
    release();
}

// Attention reads whole blocks of 256 cells (the masked rest are zeros in
// the softmax), as llama.cpp does: its sums then run in the same order, so
// greedy output matches it token for token, and the graph's shapes change
// only every 256 tokens.
uint32_t context::padded_n_kv(uint32_t n_used) const {
    const uint32_t pad = 256;
    return std::min(kv_.n_ctx(), (n_used + pad - 1) / pad * pad);
}

void context::check_tokens(const int32_t * tokens, int32_t n) const {
    require_no_tree();
    require_no_pending_exit();
    if (tokens == nullptr || n <= 0) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "empty input: at least one token is needed");
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= model_.hp.n_vocab) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary [0, %d)",
                 tokens[i], i, model_.hp.n_vocab);
        }
    }
    if (uint64_t(kv_.n_past()) + uint64_t(n) > kv_.n_ctx()) {
        fail(SPECEE_STATUS_CONTEXT_FULL, "context is full: %u tokens cached + %d new > n_ctx = %u",
             kv_.n_past(), n, kv_.n_ctx());
    }
}

// Appends the columns of an F32 output tensor [ne0, n] to `out`; returns n.
// The index of the first maximum, as llama.cpp's greedy sampler picks it.
// std::max_element tracks the index at every element (one element a cycle);
// here sixteen running maxima vectorize and a second pass finds the index:
// about 4x faster on a 49k vocabulary, 1% of a SmolLM2 step.
static int32_t first_max_index(const float * row, int32_t n) {
    constexpr int32_t lanes = 16;
    float             lane_max[lanes];
    std::fill(lane_max, lane_max + lanes, row[0]);
    int32_t i = 0;
    for (; i + lanes <= n; i += lanes) {
        for (int32_t j = 0; j < lanes; j++) {
            lane_max[j] = row[i + j] > lane_max[j] ? row[i + j] : lane_max[j];
        }
    }
    float best = row[0];
    for (int32_t j = 0; j < lanes; j++) {
        best = lane_max[j] > best ? lane_max[j] : best;
    }
    for (; i < n; i++) {
        best = row[i] > best ? row[i] : best;
    }
    for (int32_t k = 0; k < n; k++) {
        if (row[k] == best) {
            return k;
        }
    }
    return 0;  // only NaN at row[0] gets here: std::max_element's answer too
}

static int32_t append_columns(const ggml_tensor * t, std::vector<float> & out) {
    const size_t n_floats = size_t(ggml_nelements(t));
    const size_t offset   = out.size();
    out.resize(offset + n_floats);
    ggml_backend_tensor_get(t, out.data() + offset, 0, n_floats * sizeof(float));
    return int32_t(t->ne[1]);
}

void context::graph_slot::reset(int graph_size, bool with_galloc) {
    ready = false;
    ggml_free(ctx);  // before its memory may move
    ctx = nullptr;
    meta.resize(std::max(meta.size(), ggml_tensor_overhead() * size_t(graph_size) +
                                          ggml_graph_overhead_custom(size_t(graph_size), false)));
    ggml_init_params ip = {meta.size(), meta.data(), true};
    ctx = ggml_init(ip);
    if (galloc == nullptr && with_galloc) {
        galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    }
    if (ctx == nullptr || (galloc == nullptr && with_galloc)) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot create a compute graph");
    }
}

bool context::graph_slot::allocate(ggml_cgraph * gf) {
    // The allocator may hold the plan of the graph this slot had before. ggml
    // plans again only when node counts or node sizes differ (it does not
    // compare the leafs), and placed a new graph's inputs by an old plan: a
    // crash in ggml_gallocr_alloc_graph after an early-exit segment graph
    // replaced another of the same size. So every new graph is planned first.
    return ggml_gallocr_reserve(galloc, gf) && ggml_gallocr_alloc_graph(galloc, gf);
}

void context::build_into(graph_slot & slot, const forward_plan & plan, bool draft) {
    slot.reset(graph_size_, /*with_galloc=*/sched_ == nullptr);
    slot.g = draft ? build_draft(slot.ctx, model_, early_exit_.attached->draft, *draft_.kv, plan, graph_size_)
                   : build_forward(slot.ctx, model_, kv_, state_, plan, graph_size_);
    // CPU only: each slot keeps its buffer and its graph runs again as it
    // is. With offload devices the scheduler splits and allocates every
    // graph anew (its compute buffers are shared), and compute() follows at once.
    const bool ok = sched_ ? (ggml_backend_sched_reset(sched_), ggml_backend_sched_alloc_graph(sched_, slot.g.gf))
                           : slot.allocate(slot.g.gf);
    if (!ok) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot allocate the compute graph");
    }
    slot.plan  = plan;
    slot.ready = true;
    perf_.n_graph_builds++;
}

// The slot whose graph can run `plan` as it is (reuse = true), or the slot
// to build it in: decode steps within the same 256-cell block then skip
// graph building and allocation.
context::graph_slot & context::slot_for(const forward_plan & plan, bool & reuse) {
    const size_t max_slots = 33;  // prefill + one per single-token shape we keep
    const std::vector<int> masks = assign_masks(kv_, plan, model_.hp.n_layer);
    auto fits = [&](const graph_slot & s) {
        return s.ready && s.plan.same_shape(plan) && s.g.mask_of_layer == masks;
    };
    if (plan.n_tokens > max_kept_batch) {
        reuse = fits(*slots_[0]);  // prompts: one slot, sized at construction for n_batch
        return *slots_[0];
    }
    if (plan.n_tokens > 1) {
        // small batches (verification passes of drafts, of every length in
        // turn): a slot per shape, so alternating lengths do not rebuild graphs
        for (const auto & s : batch_slots_) {
            if (fits(*s)) {
                reuse = true;
                return *s;
            }
        }
        reuse = false;
        for (auto & s : batch_slots_) {
            if (s->ready && s->plan.same_shape(plan)) {
                return *s;  // same shape, other masks: rebuild in place
            }
        }
        if (batch_slots_.size() >= 2 * max_kept_batch) {
            batch_slots_.erase(batch_slots_.begin());  // the oldest shape
        }
        batch_slots_.push_back(std::make_unique<graph_slot>());
        return *batch_slots_.back();
    }
    graph_slot * victim = nullptr;
    for (size_t i = 1; i < slots_.size(); i++) {
        graph_slot & s = *slots_[i];
        if (fits(s)) {
            reuse = true;
            return s;
        }
        if (s.ready && s.plan.same_shape(plan)) {
            victim = &s;  // same shape, other masks: rebuild in place
        }
    }
    reuse = false;
    if (victim) {
        return *victim;
    }
    if (slots_.size() < max_slots) {
        slots_.push_back(std::make_unique<graph_slot>());
        return *slots_.back();
    }
    victim = slots_[1].get();
    for (size_t i = 2; i < slots_.size(); i++) {
        if (slots_[i]->last_used < victim->last_used) {
            victim = slots_[i].get();
        }
    }
    return *victim;
}

void context::compute(const forward_graph & g, const forward_plan & plan, const kv_cache & kv,
                      const int32_t * tokens, const int32_t * cands, const float * features,
                      const float * entry_states) {
    // ---- inputs ----
    const uint32_t n = plan.n_tokens;
    // a tree's rows from `first` on are this pass's tokens (a draft tree's earlier rows are cached)
    const uint32_t first = laying_out_ ? plan.pos - laying_out_->base : 0;
    pos_buf_.resize(n);
    k_idx_buf_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
        // cell i holds position i; a tree's tokens sit at their depth after its base
        pos_buf_[i]   = laying_out_ ? int32_t(laying_out_->base + uint32_t(laying_out_->depth[first + i]))
                                    : int32_t(plan.pos + i);
        k_idx_buf_[i] = int64_t(plan.pos + i);
    }
    set_input(g.positions, pos_buf_.data(), 0, n * sizeof(int32_t));
    set_input(g.k_idx, k_idx_buf_.data(), 0, n * sizeof(int64_t));
    if (g.v_idx != g.k_idx) {
        kv.v_indices(k_idx_buf_.data(), n, v_idx_buf_);
        set_input(g.v_idx, v_idx_buf_.data(), 0, v_idx_buf_.size() * sizeof(int64_t));
    }
    if (g.tokens) {
        // rows entering late (plan.entry_layers) come first and have no token input
        const size_t n_with_tokens = size_t(ggml_nelements(g.tokens));
        set_input(g.tokens, tokens + (n - n_with_tokens), 0, n_with_tokens * sizeof(int32_t));
    }
    if (g.entry_states) {
        set_input(g.entry_states, entry_states, 0, size_t(ggml_nbytes(g.entry_states)));
    }
    if (g.features) {
        set_input(g.features, features, 0, n * size_t(model_.hp.n_embd) * sizeof(float));
    }
    if (g.cand_ids) {
        set_input(g.cand_ids, cands, 0, size_t(plan.n_cand) * sizeof(int32_t));
    }
    mask_buf_.resize(size_t(plan.n_kv) * n);
    for (size_t u = 0; u < g.masks.size(); u++) {
        if (laying_out_) {
            kv.build_tree_mask(g.mask_layer[u], laying_out_->base, laying_out_->n, laying_out_->ancestor, first, n,
                               plan.n_kv, mask_buf_.data());
        } else {
            kv.build_mask(g.mask_layer[u], plan.pos, n, plan.n_kv, mask_buf_.data());
        }
        set_mask_input(g.masks[u], mask_buf_.data(), mask_buf_.size(), mask_f16_);
    }

    const int64_t t_compute = ggml_time_us();
    const ggml_status st = sched_ ? ggml_backend_sched_graph_compute(sched_, g.gf)
                                  : ggml_backend_graph_compute(backend_, g.gf);
    perf_.t_compute_us += ggml_time_us() - t_compute;
    perf_.n_graph_runs++;
    if (st != GGML_STATUS_SUCCESS) {
        fail(SPECEE_STATUS_COMPUTE_FAILED, "ggml graph compute failed with status %d", int(st));
    }

}

void context::run(const int32_t * tokens, const forward_plan & plan, const int32_t * cands,
                  const float * entry_states) {
    const int64_t t_start = ggml_time_us();
    bool reuse = false;
    graph_slot & slot = slot_for(plan, reuse);
    if (!reuse || sched_) {
        build_into(slot, plan);
    }
    slot.last_used = ++n_runs_;
    const forward_graph & g = slot.g;

    compute(g, plan, kv_, tokens, cands, nullptr, entry_states);

    // ---- outputs ----
    if (g.logits) {
        n_outputs_ += append_columns(g.logits, logits_);
    }
    if (g.hidden) {
        n_hidden_ += append_columns(g.hidden, hidden_);
    }
    if (g.cand_logits) {
        cand_logits_.clear();
        append_columns(g.cand_logits, cand_logits_);
        cand_logits_prev_.clear();
        if (g.cand_logits_prev) {
            append_columns(g.cand_logits_prev, cand_logits_prev_);
        }
    }
    if (!g.trace_cand.empty()) {
        cand_logits_.clear();
        early_exit_.trace_argmax.resize(g.trace_argmax.size());
        early_exit_.trace_change.resize(g.trace_change.size());
        early_exit_.trace_hidden.clear();
        for (size_t il = 0; il < g.trace_cand.size(); il++) {
            append_columns(g.trace_cand[il], cand_logits_);
            ggml_backend_tensor_get(g.trace_argmax[il], &early_exit_.trace_argmax[il], 0, sizeof(int32_t));
            ggml_backend_tensor_get(g.trace_change[il], &early_exit_.trace_change[il], 0, sizeof(float));
            append_columns(g.trace_hidden[il], early_exit_.trace_hidden);
        }
    }
    perf_.t_run_us += ggml_time_us() - t_start;
}

void context::prefill(const int32_t * tokens, int32_t n_tokens, bool logits_all) {
    check_tokens(tokens, n_tokens);
    clear_outputs();

    const uint32_t start = kv_.n_past();
    try {
        for (uint32_t done = 0; done < uint32_t(n_tokens);) {
            const uint32_t chunk = std::min(n_batch_, uint32_t(n_tokens) - done);
            const bool     last  = done + chunk == uint32_t(n_tokens);
            forward_plan plan;
            plan.pos          = start + done;
            plan.n_tokens     = chunk;
            plan.n_kv         = padded_n_kv(plan.pos + chunk);
            plan.layer_end    = model_.hp.n_layer;
            plan.n_logits     = logits_all ? int(chunk) : (last ? 1 : 0);
            ask_hidden(plan);
            run(tokens + done, plan);
            kv_.commit(plan.pos, chunk, model_.hp.n_layer);
            done += chunk;
        }
        if (has_draft()) {
            keep_pending(tokens, uint32_t(n_tokens));
        }
    } catch (...) {
        kv_.truncate(start);  // all or nothing
        clear_outputs();
        throw;
    }
}

void context::decode(int32_t token) {
    prefill(&token, 1, false);
}

void context::truncate(uint32_t n_past) {
    if (tree_pending() && n_past > tree_.base) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "a token tree is pending: keep a path of it (specee_tree_accept) or truncate to at most %u", tree_.base);
    }
    tree_ = token_tree();
    if (n_past > kv_.n_past()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "cannot truncate to %u: only %u tokens are cached", n_past, kv_.n_past());
    }
    if (early_exit_.pending.active() && n_past <= early_exit_.pending.pos) {
        early_exit_.pending = pending_exit();  // the exited token goes: nothing waits for verification
    }
    kv_.truncate(n_past);
    if (draft_.kv) {
        // the draft keeps the positions it has seen below n_past; pending
        // features beyond n_past go
        const uint32_t seen = std::min(draft_.kv->n_past(), n_past);
        draft_.kv->truncate(seen);
        const size_t keep = std::min(draft_.pending_tokens.size(), size_t(n_past - seen));
        draft_.pending_tokens.resize(keep);
        draft_.pending_features.resize(keep * size_t(model_.hp.n_embd));
    }
}

void context::clear_outputs() {
    logits_.clear();
    hidden_.clear();
    n_outputs_ = 0;
    n_hidden_  = 0;
}

void context::ask_hidden(forward_plan & plan) const {
    // with a draft head: its features, the final-normed last hidden states
    plan.hidden_layer = has_draft() ? model_.hp.n_layer : hidden_layer_;
    plan.hidden_norm  = has_draft() ? true : hidden_norm_;
}

void context::set_hidden_output(int32_t layer, bool final_norm) {
    if (layer < -1 || layer > model_.hp.n_layer) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "hidden layer %d is outside [-1, %d]", layer, model_.hp.n_layer);
    }
    hidden_layer_ = layer;
    hidden_norm_  = final_norm;
}

const float * context::logits(int32_t i) const {
    if (i < 0 || i >= n_outputs_) {
        return nullptr;
    }
    return logits_.data() + size_t(i) * size_t(model_.hp.n_vocab);
}

int32_t context::argmax(int32_t i) const {
    const float * row = logits(i);
    if (row == nullptr) {
        return -1;
    }
    return first_max_index(row, model_.hp.n_vocab);
}

const float * context::hidden(int32_t * n_tokens) const {
    if (n_tokens) {
        *n_tokens = n_hidden_;
    }
    return n_hidden_ > 0 ? hidden_.data() : nullptr;
}

} // namespace specee
