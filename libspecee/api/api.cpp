// api.cpp — the C API shim: argument checks, exception-to-status mapping,
// per-context error messages. No logic of its own.
#include "specee.h"
#include "specee_research.h"

#include "runner/context.h"
#include "model/devices.h"
#include "api/error.h"
#include "api/ggml_log.h"
#include "heads/heads.h"
#include "model/model.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <vector>

using specee::fail;

namespace {

void copy_message(char * err, size_t err_size, const std::string & msg) {
    if (err != nullptr && err_size > 0) {
        const size_t n = std::min(msg.size(), err_size - 1);
        std::memcpy(err, msg.data(), n);
        err[n] = '\0';
    }
}

// Runs `fn`, mapping every exception to a status and a message.
template <typename Fn>
specee_status guarded(std::string & message, Fn && fn) {
    try {
        fn();
        message.clear();
        return SPECEE_STATUS_OK;
    } catch (const specee::error & e) {
        message = e.what();
        return e.status;
    } catch (const std::bad_alloc &) {
        message = "out of memory";
        return SPECEE_STATUS_OUT_OF_MEMORY;
    } catch (const std::exception & e) {
        if (specee::is_lost_rpc_server(e)) {
            message = e.what();
            return SPECEE_STATUS_IO_ERROR;
        }
        message = std::string("internal error: ") + e.what();
        return SPECEE_STATUS_INTERNAL;
    } catch (...) {
        message = "internal error: unknown exception";
        return SPECEE_STATUS_INTERNAL;
    }
}

// For the calls on an existing context: message goes to ctx->last_error.
template <typename Fn>
specee_status on_context(specee_context * ctx, Fn && fn) {
    if (ctx == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    return guarded(ctx->last_error, [&] { fn(*ctx); });
}

// what the getters share: write at most `capacity` values, return how many there are
template <typename T> int32_t copy_out(const std::vector<T> & values, T * out, int32_t capacity) {
    for (int32_t i = 0; out != nullptr && i < capacity && i < int32_t(values.size()); i++) {
        out[i] = values[size_t(i)];
    }
    return int32_t(values.size());
}

} // namespace

extern "C" {

// ---- library ----

uint32_t specee_api_version(void) { return SPECEE_API_VERSION; }
const char * specee_kernels_isa(void) {
    const specee::kernels::isa i = specee::kernels::best_isa();
    return i == specee::kernels::isa::reference ? "none" : specee::kernels::isa_name(i);
}

const char * specee_status_name(enum specee_status status) {
    switch (status) {
        case SPECEE_STATUS_OK:               return "SPECEE_STATUS_OK";
        case SPECEE_STATUS_INVALID_ARGUMENT: return "SPECEE_STATUS_INVALID_ARGUMENT";
        case SPECEE_STATUS_IO_ERROR:         return "SPECEE_STATUS_IO_ERROR";
        case SPECEE_STATUS_INVALID_MODEL:    return "SPECEE_STATUS_INVALID_MODEL";
        case SPECEE_STATUS_UNSUPPORTED:      return "SPECEE_STATUS_UNSUPPORTED";
        case SPECEE_STATUS_CONTEXT_FULL:     return "SPECEE_STATUS_CONTEXT_FULL";
        case SPECEE_STATUS_OUT_OF_MEMORY:    return "SPECEE_STATUS_OUT_OF_MEMORY";
        case SPECEE_STATUS_COMPUTE_FAILED:   return "SPECEE_STATUS_COMPUTE_FAILED";
        case SPECEE_STATUS_INTERNAL:         return "SPECEE_STATUS_INTERNAL";
    }
    return "SPECEE_STATUS_UNKNOWN";
}

const char * specee_system_info(void) {
    static const std::string info = [] {
        std::string s;
        s += "AVX2 = " + std::to_string(ggml_cpu_has_avx2());
        s += " | FMA = " + std::to_string(ggml_cpu_has_fma());
        s += " | F16C = " + std::to_string(ggml_cpu_has_f16c());
        s += " | AVX512 = " + std::to_string(ggml_cpu_has_avx512());
        s += " | LLAMAFILE = " + std::to_string(ggml_cpu_has_llamafile());
        s += " | ggml " + std::string(ggml_version()) + " (" + ggml_commit() + ")";
        return s;
    }();
    return info.c_str();
}

const char * specee_ggml_version(void) { return ggml_version(); }

bool specee_has_gpu(void) { return specee::has_gpu_backend(); }
bool specee_has_rpc(void) { return specee::has_rpc_backend(); }

enum specee_status specee_rpc_serve(const char * endpoint, int32_t n_threads, char * err, size_t err_size) {
    std::string message;
    const specee_status st = guarded(message, [&] {
        if (endpoint == nullptr || *endpoint == '\0') {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "endpoint must be host:port");
        }
        if (n_threads < 1 || n_threads > 512) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "n_threads = %d is outside [1, 512]", n_threads);
        }
        specee::serve_rpc(endpoint, n_threads);
    });
    copy_message(err, err_size, message);
    return st;
}

// ---- model ----

struct specee_model_params specee_model_default_params(void) {
    specee_model_params p;
    p.check_tensors = false;
    p.use_repack    = true;
    p.n_gpu_layers  = 0;
    p.rpc_servers   = nullptr;
    p.amx_decode    = false;
    p.kernels       = SPECEE_KERNELS_SPECEE;  // ggml's where the CPU or weight type has none of specee's
    return p;
}

enum specee_status specee_model_load(const char * path, const struct specee_model_params * params,
                                     struct specee_model ** out_model, char * err, size_t err_size) {
    std::string message;
    if (out_model != nullptr) {
        *out_model = nullptr;
    }
    const specee_status st = guarded(message, [&] {
        if (path == nullptr || out_model == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "path and out_model must not be NULL");
        }
        const specee_model_params p = params ? *params : specee_model_default_params();
        std::unique_ptr<specee_model> m(new specee_model());
        specee::load_model(*m, path, p);
        *out_model = m.release();
    });
    copy_message(err, err_size, message);
    return st;
}

void specee_model_free(struct specee_model * model) { delete model; }

int32_t specee_model_n_layer(const struct specee_model * m)     { return m ? m->hp.n_layer : 0; }
int32_t specee_model_n_embd(const struct specee_model * m)      { return m ? m->hp.n_embd : 0; }
int32_t specee_model_n_vocab(const struct specee_model * m)     { return m ? m->hp.n_vocab : 0; }
int32_t specee_model_n_head(const struct specee_model * m)      { return m ? m->hp.n_head : 0; }
int32_t specee_model_n_head_kv(const struct specee_model * m)   { return m ? m->hp.n_head_kv : 0; }
int32_t specee_model_n_ctx_train(const struct specee_model * m) { return m ? m->hp.n_ctx_train : 0; }
specee_token specee_model_bos(const struct specee_model * m)    { return m ? m->hp.bos : -1; }
specee_token specee_model_eos(const struct specee_model * m)    { return m ? m->hp.eos : -1; }
const char * specee_model_arch(const struct specee_model * m)   { return m ? m->arch_name.c_str() : ""; }
uint64_t specee_model_n_params(const struct specee_model * m)   { return m ? m->n_params : 0; }
uint64_t specee_model_size_bytes(const struct specee_model * m) { return m ? m->size_bytes : 0; }
int32_t specee_model_n_repacked(const struct specee_model * m)  { return m ? m->n_repacked : 0; }
int32_t specee_model_n_decode_copies(const struct specee_model * m) { return m ? m->n_decode_copies : 0; }
int32_t specee_model_n_packed(const struct specee_model * m) { return m ? int32_t(m->packed.size()) : 0; }

// ---- context ----

struct specee_context_params specee_context_default_params(void) {
    specee_context_params p;
    p.n_ctx     = 0;
    p.n_batch   = 512;
    p.n_threads  = 0;
    p.flash_attn = false;
    p.exact_verify = true;
    return p;
}

enum specee_status specee_context_init(struct specee_model * model, const struct specee_context_params * params,
                                       struct specee_context ** out_ctx, char * err, size_t err_size) {
    std::string message;
    if (out_ctx != nullptr) {
        *out_ctx = nullptr;
    }
    const specee_status st = guarded(message, [&] {
        if (model == nullptr || out_ctx == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "model and out_ctx must not be NULL");
        }
        const specee_context_params p = params ? *params : specee_context_default_params();
        *out_ctx = new specee_context(*model, p);
    });
    copy_message(err, err_size, message);
    return st;
}

void specee_context_free(struct specee_context * ctx) { delete ctx; }

const char * specee_context_error(const struct specee_context * ctx) {
    return ctx ? ctx->last_error.c_str() : "context is NULL";
}

uint32_t specee_n_ctx(const struct specee_context * ctx)     { return ctx ? ctx->n_ctx() : 0; }
uint32_t specee_n_past(const struct specee_context * ctx)    { return ctx ? ctx->n_past() : 0; }
int32_t  specee_n_threads(const struct specee_context * ctx) { return ctx ? ctx->n_threads() : 0; }

enum specee_status specee_prefill(struct specee_context * ctx, const specee_token * tokens, int32_t n_tokens,
                                  bool logits_all) {
    return on_context(ctx, [&](specee::context & c) { c.prefill(tokens, n_tokens, logits_all); });
}

enum specee_status specee_decode(struct specee_context * ctx, specee_token token, specee_token * out_argmax) {
    return on_context(ctx, [&](specee::context & c) {
        c.decode(token);
        if (out_argmax) {
            *out_argmax = c.argmax(0);
        }
    });
}

const float * specee_get_logits(struct specee_context * ctx, int32_t i) { return ctx ? ctx->logits(i) : nullptr; }
int32_t specee_n_outputs(const struct specee_context * ctx)          { return ctx ? ctx->n_outputs() : 0; }
specee_token specee_argmax(struct specee_context * ctx, int32_t i)     { return ctx ? ctx->argmax(i) : -1; }

enum specee_status specee_set_hidden_output(struct specee_context * ctx, int32_t layer, bool final_norm) {
    return on_context(ctx, [&](specee::context & c) { c.set_hidden_output(layer, final_norm); });
}

const float * specee_get_hidden(struct specee_context * ctx, int32_t * out_n_tokens) {
    if (ctx == nullptr) {
        if (out_n_tokens) {
            *out_n_tokens = 0;
        }
        return nullptr;
    }
    return ctx->hidden(out_n_tokens);
}

enum specee_status specee_kv_truncate(struct specee_context * ctx, uint32_t n_past) {
    return on_context(ctx, [&](specee::context & c) { c.truncate(n_past); });
}

enum specee_status specee_draft_chain(struct specee_context * ctx, specee_token next_token, int32_t n_steps,
                                      int32_t k, specee_token * out_tokens, float * out_probs) {
    return on_context(ctx, [&](specee::context & c) { c.draft_chain(next_token, n_steps, k, out_tokens, out_probs); });
}

enum specee_status specee_draft_tree(struct specee_context * ctx, specee_token next_token, int32_t depth, int32_t width,
                                     int32_t k, int32_t capacity, specee_token * out_tokens, int32_t * out_parents,
                                     float * out_probs, float * out_path_probs, int32_t * out_n) {
    return on_context(ctx, [&](specee::context & c) {
        if (out_n == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "out_n must not be NULL");
        }
        *out_n = c.draft_tree(next_token, depth, width, k, capacity, out_tokens, out_parents, out_probs,
                              out_path_probs);
    });
}

enum specee_status specee_context_share_threads(struct specee_context * ctx, struct specee_context * with) {
    if (with == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    return on_context(ctx, [&](specee::context & c) { c.share_threads(*with); });
}

enum specee_status specee_decode_tree(struct specee_context * ctx, const specee_token * tokens,
                                      const int32_t * parents, int32_t n_tokens) {
    return on_context(ctx, [&](specee::context & c) { c.decode_tree(tokens, parents, n_tokens); });
}

enum specee_status specee_decode_tree_depths(struct specee_context * ctx, const specee_token * tokens,
                                            const int32_t * parents, const int32_t * depths, int32_t n_tokens) {
    return on_context(ctx, [&](specee::context & c) { c.decode_tree(tokens, parents, n_tokens, depths); });
}

enum specee_status specee_tree_accept(struct specee_context * ctx, const int32_t * rows, int32_t n) {
    return on_context(ctx, [&](specee::context & c) { c.tree_accept(rows, n); });
}

enum specee_status specee_decode_batch(struct specee_context * const * contexts, const specee_token * tokens,
                                       int32_t n, specee_token * out_argmax) {
    if (contexts == nullptr || n < 1 || contexts[0] == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    return on_context(contexts[0], [&](specee::context &) {
        std::vector<specee::context *> all(contexts, contexts + n);  // specee_context derives from specee::context
        specee::context::decode_batch(all.data(), tokens, n);
        for (int32_t i = 0; out_argmax && i < n; i++) {
            out_argmax[i] = all[size_t(i)]->argmax(0);
        }
    });
}

int32_t specee_kv_cell_valid(const struct specee_context * ctx, int32_t layer, uint32_t pos) {
    if (ctx == nullptr || layer < 0 || layer >= ctx->mdl().hp.n_layer || pos >= ctx->n_ctx()) {
        return -1;
    }
    return ctx->kv().valid(layer, pos) ? 1 : 0;
}

enum specee_status specee_get_perf(const struct specee_context * ctx, struct specee_perf * out) {
    if (ctx == nullptr || out == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    const auto & p = ctx->perf();
    out->n_graph_runs   = p.n_graph_runs;
    out->n_graph_builds = p.n_graph_builds;
    out->t_compute_ms   = double(p.t_compute_us) / 1000.0;
    out->t_host_ms      = double(p.t_run_us - p.t_compute_us) / 1000.0;
    out->t_draft_ms     = double(p.t_draft_us) / 1000.0;
    out->t_predictor_ms = double(p.t_predictor_us) / 1000.0;
    out->t_verify_ms    = double(p.t_verify_us) / 1000.0;
    out->t_exit_step_ms = double(p.t_exit_step_us) / 1000.0;
    return SPECEE_STATUS_OK;
}

void specee_reset_perf(struct specee_context * ctx) {
    if (ctx) {
        ctx->reset_perf();
    }
}

// ---- speculative early exit ----

enum specee_status specee_heads_load(const struct specee_model * model, const char * path,
                                     struct specee_heads ** out_heads, char * err, size_t err_size) {
    std::string message;
    if (out_heads != nullptr) {
        *out_heads = nullptr;
    }
    const specee_status st = guarded(message, [&] {
        if (model == nullptr || path == nullptr || out_heads == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "model, path and out_heads must not be NULL");
        }
        std::unique_ptr<specee_heads> h(new specee_heads());
        specee::load_heads(*h, *model, path);
        *out_heads = h.release();
    });
    copy_message(err, err_size, message);
    return st;
}

void specee_heads_free(struct specee_heads * heads) { delete heads; }
int32_t specee_heads_n_candidates(const struct specee_heads * h) { return h ? h->n_cand : 0; }
bool specee_heads_has_draft(const struct specee_heads * h) { return h != nullptr && h->draft.present; }
const char * specee_model_fingerprint(const struct specee_model * m) { return m ? m->fingerprint.c_str() : ""; }

enum specee_status specee_set_heads(struct specee_context * ctx, const struct specee_heads * heads) {
    return on_context(ctx, [&](specee::context & c) { c.set_heads(heads); });
}

static specee_exit_params to_c(const specee::context::exit_params & e) {
    specee_exit_params p;
    p.threshold   = e.threshold;
    p.use_offline = e.use_offline;
    p.use_online  = e.use_online;
    p.full_depth  = e.full_depth;
    p.fill_kv     = e.fill_kv;
    p.verify_full = e.verify_full;
    p.exact       = e.exact;
    p.max_chain   = e.max_chain;
    return p;
}

struct specee_exit_params specee_exit_default_params(void) {
    return to_c(specee::context::exit_params());
}

enum specee_status specee_get_exit_params(const struct specee_context * ctx, struct specee_exit_params * out) {
    if (ctx == nullptr || out == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    *out = to_c(ctx->get_exit_params());
    return SPECEE_STATUS_OK;
}

enum specee_status specee_set_exit_params(struct specee_context * ctx, const struct specee_exit_params * params) {
    return on_context(ctx, [&](specee::context & c) {
        if (params == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "params must not be NULL");
        }
        specee::context::exit_params e;
        e.threshold   = params->threshold;
        e.use_offline = params->use_offline;
        e.use_online  = params->use_online;
        e.full_depth  = params->full_depth;
        e.fill_kv     = params->fill_kv;
        e.verify_full = params->verify_full;
        e.exact       = params->exact;
        e.max_chain   = params->max_chain;
        c.set_exit_params(e);
    });
}

enum specee_status specee_decode_with_candidates(struct specee_context * ctx, specee_token token,
                                                 const specee_token * candidates, int32_t n_cand,
                                                 struct specee_step * out) {
    return on_context(ctx, [&](specee::context & c) {
        if (out == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "out must not be NULL");
        }
        int32_t full = -1;
        const int32_t chosen = c.decode_with_candidates(token, candidates, n_cand, &full);
        out->token      = chosen;
        out->exit_layer = c.last_exit_layer();
        out->full_token = full;
        const auto & next = c.next_candidates();
        out->n_next = int32_t(std::min(next.size(), size_t(SPECEE_MAX_CANDIDATES)));
        for (int32_t i = 0; i < out->n_next; i++) {
            out->next[i] = next[size_t(i)];
        }
    });
}

enum specee_status specee_verify_exit(struct specee_context * ctx, specee_token draft) {
    return on_context(ctx, [&](specee::context & c) { c.verify_exit(draft); });
}

enum specee_status specee_trace_step(struct specee_context * ctx, specee_token token,
                                     const specee_token * candidates, int32_t n_cand, float * cand_logits,
                                     int32_t * layer_argmax, struct specee_step * out) {
    return on_context(ctx, [&](specee::context & c) {
        if (out == nullptr) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "out must not be NULL");
        }
        out->token      = c.trace_step(token, candidates, n_cand, cand_logits, layer_argmax);
        out->exit_layer = c.mdl().hp.n_layer;
        out->full_token = out->token;
        const auto & next = c.next_candidates();
        out->n_next = int32_t(std::min(next.size(), size_t(SPECEE_MAX_CANDIDATES)));
        for (int32_t i = 0; i < out->n_next; i++) {
            out->next[i] = next[size_t(i)];
        }
    });
}

enum specee_status specee_draft_sync(struct specee_context * ctx, specee_token next_token, specee_token * out,
                                     int32_t capacity, int32_t * out_n) {
    return on_context(ctx, [&](specee::context & c) {
        if (out == nullptr || out_n == nullptr || capacity < 0) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "out and out_n must not be NULL");
        }
        const std::vector<int32_t> cands = c.draft_sync(next_token);
        *out_n = int32_t(std::min(cands.size(), size_t(capacity)));
        for (int32_t i = 0; i < *out_n; i++) {
            out[i] = cands[size_t(i)];
        }
    });
}

enum specee_status specee_exit_features(const float * cand_logits, int64_t n_steps, int32_t n_layer, int32_t n_cand,
                                        float * out) {
    if (cand_logits == nullptr || out == nullptr || n_steps < 0 || n_layer < 1 || n_cand < 1 ||
        n_cand > SPECEE_MAX_CANDIDATES) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    const int64_t n_feat = int64_t(SPECEE_EXIT_FEATURES_PER_CANDIDATE) * n_cand;
    for (int64_t i = 0; i < n_steps * n_layer; i++) {
        const float * logits = cand_logits + i * n_cand;
        const bool    first  = i % n_layer == 0;
        specee::exit_features(logits, first ? nullptr : logits - n_cand, n_cand, out + i * n_feat);
    }
    return SPECEE_STATUS_OK;
}

enum specee_status specee_heads_predict(const struct specee_heads * heads, int32_t layer, const float * features,
                                        int64_t n, float * out) {
    if (heads == nullptr || features == nullptr || out == nullptr || n < 0) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    const auto it = heads->predictors.find(layer);
    if (it == heads->predictors.end()) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    const specee::exit_predictor & p = it->second;
    for (int64_t i = 0; i < n; i++) {
        out[i] = p(features + i * p.n_in);
    }
    return SPECEE_STATUS_OK;
}

int32_t specee_get_last_checks(const struct specee_context * ctx, int32_t * layers, float * features,
                               int32_t capacity) {
    if (ctx == nullptr) {
        return 0;
    }
    const std::vector<int32_t> & ls = ctx->last_check_layers();
    const std::vector<float> &   fs = ctx->last_check_features();
    const size_t n_feat = ls.empty() ? 0 : fs.size() / ls.size();
    for (int32_t i = 0; i < capacity && i < int32_t(ls.size()); i++) {
        if (layers) {
            layers[i] = ls[size_t(i)];
        }
        if (features) {
            std::copy(fs.begin() + ptrdiff_t(size_t(i) * n_feat), fs.begin() + ptrdiff_t(size_t(i + 1) * n_feat),
                      features + size_t(i) * n_feat);
        }
    }
    return int32_t(ls.size());
}

int32_t specee_get_trace_change(const struct specee_context * ctx, float * out, int32_t capacity) {
    return ctx ? copy_out(ctx->last_trace_change(), out, capacity) : 0;
}

int32_t specee_get_trace_hidden(const struct specee_context * ctx, float * out, int32_t capacity) {
    return ctx ? copy_out(ctx->last_trace_hidden(), out, capacity) : 0;
}

int32_t specee_get_draft_probs(const struct specee_context * ctx, float * out, int32_t capacity) {
    return ctx ? copy_out(ctx->last_draft_probs(), out, capacity) : 0;
}

int32_t specee_get_exit_layer(const struct specee_context * ctx) { return ctx ? ctx->last_exit_layer() : -1; }

int32_t specee_get_checked_layers(const struct specee_context * ctx, int32_t * out, int32_t capacity) {
    if (ctx == nullptr) {
        return 0;
    }
    return copy_out(ctx->checked_layers(), out, capacity);
}

enum specee_status specee_get_exit_stats(const struct specee_context * ctx, struct specee_exit_stats * out) {
    if (ctx == nullptr || out == nullptr) {
        return SPECEE_STATUS_INVALID_ARGUMENT;
    }
    const auto & s = ctx->stats();
    out->n_steps         = s.n_steps;
    out->n_exits         = s.n_exits;
    out->sum_exit_layers = s.sum_exit_layers;
    out->n_checks        = s.n_checks;
    out->n_fires         = s.n_fires;
    out->n_false_fires   = s.n_false_fires;
    out->n_draft_top1    = s.n_draft_top1;
    out->n_draft_topk    = s.n_draft_topk;
    return SPECEE_STATUS_OK;
}

void specee_reset_exit_stats(struct specee_context * ctx) {
    if (ctx) {
        ctx->reset_stats();
    }
}

} // extern "C"
