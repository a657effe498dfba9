// context.h — one sequence: KV cache, compute buffers, threads, outputs.
#pragma once

#include "heads/draft_state.h"
#include "heads/early_exit_state.h"
#include "heads/exit_policy.h"
#include "graph/graph.h"
#include "heads/heads.h"
#include "kv/kv_cache.h"
#include "graph/batch_graph.h"
#include "model/model.h"
#include "runner/graph_runner.h"
#include "runner/row_layout.h"
#include "runner/token_tree.h"

#include "ggml-backend.h"

#include <memory>
#include <set>
#include <string>
#include <vector>

namespace specee {

class context {
public:
    context(const model & m, const specee_context_params & params);
    ~context();
    context(const context &) = delete;
    context & operator=(const context &) = delete;

    const model & mdl() const { return model_; }
    uint32_t n_ctx()     const { return kv_.n_ctx(); }
    uint32_t n_past()    const { return kv_.n_past(); }
    int32_t  n_threads() const { return runner_.n_threads(); }
    const kv_cache & kv() const { return kv_; }

    // Full-depth forward passes (see specee.h for the contracts).
    void prefill(const int32_t * tokens, int32_t n_tokens, bool logits_all);
    void decode(int32_t token);
    void truncate(uint32_t n_past);
    void set_hidden_output(int32_t layer, bool final_norm);

    const float * logits(int32_t i) const;
    int32_t       n_outputs() const { return n_outputs_; }
    int32_t       argmax(int32_t i) const;
    const float * hidden(int32_t * n_tokens) const;

    // ---- speculative early exit (context_exit.cpp) ----
    using exit_params = specee::exit_params;
    using exit_stats  = specee::exit_stats;
    void set_heads(const heads * h);  // nullptr detaches
    void set_exit_params(const exit_params & p);
    const exit_params & get_exit_params() const { return early_exit_.params; }
    // One decode step with early exit; returns the chosen token. With
    // full_depth, *out_full receives the full model's token (else -1).
    int32_t decode_with_candidates(int32_t token, const int32_t * cands, int32_t n_cand, int32_t * out_full);
    int32_t last_exit_layer() const { return early_exit_.last_exit_layer; }
    // Exact early exit (exit_params::exact; context_exit_verify.cpp): after a
    // step that exited, its token is a draft. Up to max_chain steps chain:
    // the next step (for the draft) may exit at or below the last exit layer
    // (it stops there without an exit otherwise, choosing nothing). One pass
    // then completes every pending token's remaining layers from its exit
    // state, beside the last draft at full depth when there is one; row i's
    // logits follow row i's token, each as a one-token step computes them.
    // Every position is then cached at every layer; on a miss the caller
    // truncates the positions after the first wrong draft away.
    // `draft`: the last step's token (-1 when it stopped at the cap).
    void verify_exit(int32_t draft);
    bool exit_pending() const { return !early_exit_.chain.empty(); }
    // A full-depth step that records, after every layer, the candidates'
    // logits ([n_layer, n_cand] into cand_logits) and the full-vocabulary
    // argmax ([n_layer] into layer_argmax): the predictors' training data.
    int32_t trace_step(int32_t token, const int32_t * cands, int32_t n_cand, float * cand_logits,
                       int32_t * layer_argmax);

    // ---- draft head (context_draft.cpp) ----
    bool has_draft() const { return draft_.kv != nullptr; }
    // Runs the draft over the pairs (feature, next token) it has not seen:
    // features of positions [draft n_past, n_past) with the tokens after
    // them, the last of which is `next_token`; returns its top-k candidates
    // for the token after `next_token`.
    std::vector<int32_t> draft_sync(int32_t next_token);
    // draft_sync(next_token), then the draft head runs ahead of the target
    // for n_steps - 1 more steps, each fed its own predicted feature and
    // best token (EAGLE); per step the k best tokens and their draft
    // probabilities ([n_steps, k] each). Its cache keeps the synced positions only.
    void draft_chain(int32_t next_token, int32_t n_steps, int32_t k, int32_t * out_tokens, float * out_probs);
    // EAGLE-2: draft_sync(next_token), then a tree grown `depth` levels
    // deep, the `width` likeliest nodes of each level expanded with their k
    // best children in one pass; the `capacity` likeliest nodes of it come
    // back best first (see specee_draft_tree). Returns how many. Its cache
    // keeps the synced positions only. (context_draft_tree.cpp)
    int32_t draft_tree(int32_t next_token, int32_t depth, int32_t width, int32_t k, int32_t capacity,
                       int32_t * out_tokens, int32_t * out_parents, float * out_probs, float * out_path);
    uint32_t draft_n_past() const { return draft_.kv ? draft_.kv->n_past() : 0; }
    // the draft's candidates after the last early-exit step (empty without a draft)
    const std::vector<int32_t> & next_candidates() const { return draft_.next_cands; }
    std::vector<int32_t> checked_layers() const;
    // what the last early-exit step's checks saw: layer indices, and
    // exit_features() of each ([n, 3 n_cand]), in check order
    const std::vector<int32_t> & last_check_layers() const { return early_exit_.last_check_layers; }
    const std::vector<float> &   last_check_features() const { return early_exit_.last_check_features; }
    const std::vector<float> &   last_trace_change() const { return early_exit_.trace_change; }
    const std::vector<float> &   last_trace_hidden() const { return early_exit_.trace_hidden; }
    // the draft's probabilities of its k best tokens after its last pass, best first
    std::vector<float>           last_draft_probs() const;
    const exit_stats & stats() const { return early_exit_.stats; }
    void reset_stats() { early_exit_.stats = exit_stats(); }

    // ---- token trees (context_tree.cpp) ----
    // One pass over a token tree after the cache (see specee_decode_tree);
    // depths: how many layers each row runs (specee_decode_tree_depths), nullptr: all.
    void decode_tree(const int32_t * tokens, const int32_t * parents, int32_t n, const int32_t * depths = nullptr);
    // Keeps one path of the pending tree, compacted into place (see specee_tree_accept).
    void tree_accept(const int32_t * rows, int32_t n);
    bool tree_pending() const { return tree_.n > 0; }

    // Computes on `with`'s thread pool from now on (see specee_context_share_threads).
    void share_threads(context & with);

    // ---- several contexts in one pass (batch_decode.cpp) ----
    // One full-depth token for each context (see specee_decode_batch).
    static void decode_batch(context * const * contexts, const int32_t * tokens, int32_t n);

    std::string last_error;

    // adds the time until it goes out of scope to a counter
    struct scoped_timer {
        int64_t & total;
        int64_t   t0;
        explicit scoped_timer(int64_t & t) : total(t), t0(ggml_time_us()) {}
        ~scoped_timer() { total += ggml_time_us() - t0; }
        scoped_timer(const scoped_timer &) = delete;
        scoped_timer & operator=(const scoped_timer &) = delete;
    };
    using perf_counters = specee::perf_counters;
    const perf_counters & perf() const { return perf_; }
    void reset_perf() { perf_ = perf_counters(); }

private:
    token_tree tree_;  // the tree decode_tree ran, until tree_accept keeps a path of it
    void require_no_tree() const;
    void require_no_pending_exit() const;  // nothing but verify_exit or truncate runs while an exit waits
    // the layer cap of a step that continues the pending chain with `token`
    // (n_layer when no chain is pending); refuses a step that cannot chain
    int32_t chain_cap(int32_t token) const;
    // the online schedule as if only the chain's first n_kept exits had happened
    void    relearn_chain_exits(size_t n_kept);

    // What a pass reads besides its layout: tokens (the rows that start at
    // layer 0), candidate ids, draft-head features, late rows' hidden states.
    struct pass_inputs {
        const int32_t * tokens       = nullptr;
        const int32_t * cands        = nullptr;
        const float *   features     = nullptr;
        const float *   entry_states = nullptr;  // [n_embd, plan.entry_layers.size()]
    };
    // One pass through the runner: the graph of `plan` (kept, or built),
    // its inputs filled from `rows` (where its rows sit in `kv`), computed.
    const forward_graph & pass(graph_kind kind, const forward_plan & plan, const row_layout & rows,
                               const kv_cache & kv, const pass_inputs & in);
    // A pass of the model over tokens at [plan.pos, plan.pos + n), layers
    // [layer_begin, layer_end) (a tree's rows when `rows` says so), with its
    // outputs appended to this context's.
    void run(const int32_t * tokens, const forward_plan & plan, const int32_t * cands = nullptr,
             const float * entry_states = nullptr, const row_layout * rows = nullptr);
    // tokens in the vocabulary, room in the cache, nothing pending (a chained
    // exit step may follow a pending exit: `chaining`)
    void check_tokens(const int32_t * tokens, int32_t n, bool chaining = false) const;
    void clear_outputs();                           // logits and hidden states of the last call
    void ask_hidden(forward_plan & plan) const;     // the hidden rows a full pass keeps (draft features, or as set)
    uint32_t padded_n_kv(uint32_t n_used) const;
    // this context's row of a batch pass (decode_batch): its logits (and
    // feature), its token committed to its cache and, with a draft head, kept for it
    void take_batch_row(const batch_graph & g, size_t row, int32_t token);
    forward_plan plan_at_end(uint32_t n) const;     // n tokens after the cache, reading its padded cells

    const model & model_;
    kv_cache      kv_;
    uint32_t      n_batch_;
    bool          exact_verify_ = true;  // tree passes as one-token steps (specee_context_params.exact_verify)

    int                graph_size_ = 0;  // nodes a graph of this context may have
    perf_counters      perf_;            // before runner_, which counts into it
    graph_runner       runner_;
    const uint64_t     id_;              // unique in the process (a freed context's address may come back)
    bool has_offload() const { return runner_.has_offload(); }

    void release_state();                            // frees the residual buffer below
    ggml_context          * state_ctx_    = nullptr;
    ggml_backend_buffer_t   state_buffer_ = nullptr;
    ggml_tensor           * state_        = nullptr;  // [n_embd, n_batch] residual between segments

    std::vector<float>       logits_;       // [n_outputs, n_vocab]
    int32_t                  n_outputs_ = 0;
    std::vector<float>       hidden_;       // [n_hidden_tokens, n_embd]
    std::vector<float>       cand_logits_;  // [n_cand] of the last segment that asked for them
    std::vector<float>       cand_logits_prev_;  // [n_cand] the layer before (empty when it was layer 0)
    int32_t                  n_hidden_  = 0;
    int32_t                  hidden_layer_ = -1;
    bool                     hidden_norm_  = false;

    // early exit
    int32_t logits_argmax_in(const int32_t * cands, int32_t n_cand, bool & is_candidate) const;
    // checks a step's token and candidates, catches the draft up, clears outputs
    void    begin_candidate_step(int32_t token, const int32_t * cands, int32_t n_cand, bool chaining = false);
    // runs layers [from, to) from the saved state (none if from == to) and
    // keeps the last token's logits and, with a draft head, its feature
    void    run_to_output(int32_t token, forward_plan & plan, int32_t from, int32_t to);
    // an exit's hidden state is the draft head's next feature: lossy exits,
    // and exact ones that a chained step may follow
    bool    exit_feature_wanted() const;
    // a pending exit of `token` at `pos` from the state its last pass saved
    pending_exit exit_state_at(int32_t token, uint32_t pos, int32_t layer, int32_t draft) const;
    early_exit_state early_exit_;

    // draft head: its one-layer cache, the target tokens and features it
    // has not consumed yet ([n_pending, n_embd]), its graphs
    std::vector<int32_t> draft_run(const int32_t * tokens, const float * features, uint32_t n);
    // one graph over n pairs at the draft's n_past (a draft tree's level
    // when `rows` says so), committed to its cache; keeps the logits and
    // predicted features of the last pair, or of every pair
    void                 draft_pass(const int32_t * tokens, const float * features, uint32_t n, bool every_row,
                                    const row_layout * rows = nullptr);
    void                 keep_pending(const int32_t * tokens, uint32_t n);
    void                 require_draft_k(int32_t k) const;  // a draft head with at least k tokens
    void                 keep_pending(const int32_t * tokens, const float * features, uint32_t n);
    draft_state                draft_;
    // the k best tokens of row `row` of the last draft logits (and their probabilities)
    std::vector<int32_t>       draft_top(size_t row, size_t k, float * probs) const;

    input_scratch            scratch_;
};

} // namespace specee

struct specee_context : specee::context {
    using specee::context::context;
};
