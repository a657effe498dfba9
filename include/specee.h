/*
 * specee.h — the public C API of libspecee.
 *
 * libspecee runs a Llama-family GGUF model (architectures `llama`, `qwen2`, `qwen3`, `phi3`) on
 * ggml, one sequence per context, and is built so that speculative early exit
 * (SpecEE) can stop the forward pass after any layer.
 *
 * Usage:
 *
 *     struct specee_model * model = NULL;
 *     char err[256];
 *     struct specee_model_params mp = specee_model_default_params();
 *     if (specee_model_load("model.gguf", &mp, &model, err, sizeof err) != SPECEE_STATUS_OK) {
 *         fprintf(stderr, "%s\n", err);
 *         return 1;
 *     }
 *     struct specee_context_params cp = specee_context_default_params();
 *     cp.n_threads = 2;
 *     struct specee_context * ctx = NULL;
 *     specee_context_init(model, &cp, &ctx, err, sizeof err);
 *
 *     specee_token prompt[] = { 1, 2, 3 };
 *     specee_token next;
 *     specee_prefill(ctx, prompt, 3, false);            // logits of the last token
 *     next = specee_argmax(ctx, 0);
 *     for (int i = 0; i < 16; i++) {
 *         if (specee_decode(ctx, next, &next) != SPECEE_STATUS_OK) {
 *             fprintf(stderr, "%s\n", specee_context_error(ctx));
 *             break;
 *         }
 *     }
 *     specee_context_free(ctx);
 *     specee_model_free(model);
 *
 * Threading: a model may be shared by any number of contexts and threads; a
 * context must not be used by two threads at once.
 *
 * Errors: every entry point that can fail returns an `enum specee_status`;
 * the matching message is available from specee_context_error() (or, for the
 * functions that create objects, in the caller's `err` buffer). Bad input
 * (files, token ids, sizes) never aborts the host process.
 *
 * Ownership: pointers returned by getters stay valid until the next call that
 * changes the same context (prefill, decode, truncate, free).
 */
#ifndef SPECEE_H
#define SPECEE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  define SPECEE_API __declspec(dllexport)
#else
#  define SPECEE_API __attribute__((visibility("default")))
#endif

#define SPECEE_API_VERSION 8

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin: everything down to cffi-end is read by the Python binding. */

typedef int32_t specee_token;

struct specee_model;
struct specee_context;
struct specee_heads;

#define SPECEE_MAX_CANDIDATES 8
#define SPECEE_MAX_EXIT_CHAIN 16  /* most exits one exact verification takes (specee_exit_params.max_chain) */

/* The exit predictors' input: 3 values per candidate (see specee_exit_features).
 * Head files record the version their predictors were trained on; a head
 * file of another version is refused. */
#define SPECEE_EXIT_FEATURE_VERSION 2
#define SPECEE_EXIT_FEATURES_PER_CANDIDATE 3

enum specee_status {
    SPECEE_STATUS_OK               = 0,
    SPECEE_STATUS_INVALID_ARGUMENT = 1,  /* NULL pointer, out-of-range value or token id, empty input */
    SPECEE_STATUS_IO_ERROR         = 2,  /* file missing, unreadable or truncated */
    SPECEE_STATUS_INVALID_MODEL    = 3,  /* not a GGUF, or inconsistent metadata / tensor shapes */
    SPECEE_STATUS_UNSUPPORTED      = 4,  /* valid file, but an architecture or tensor type we do not run */
    SPECEE_STATUS_CONTEXT_FULL     = 5,  /* the tokens would not fit in the context (n_ctx) */
    SPECEE_STATUS_OUT_OF_MEMORY    = 6,
    SPECEE_STATUS_COMPUTE_FAILED   = 7,  /* ggml refused or failed the graph */
    SPECEE_STATUS_INTERNAL         = 8   /* a bug in libspecee: please report it */
};

/* Where a context's time went, since creation or specee_reset_perf(). */
struct specee_perf {
    uint64_t n_graph_runs;    /* ggml graphs computed */
    uint64_t n_graph_builds;  /* graphs built; the other runs reused the previous graph */
    double   t_compute_ms;    /* inside ggml's graph compute (the model's arithmetic and thread sync) */
    double   t_host_ms;       /* in libspecee around it: graph building, allocation, inputs, outputs */
    /* early-exit steps, split by stage (each includes its graph runs; the rest is the layers) */
    double   t_draft_ms;      /* the draft head's steps */
    double   t_predictor_ms;  /* the exit predictors' MLPs and features, on the host */
    double   t_verify_ms;     /* full-vocabulary logits at predictor fires (useful or not) */
    double   t_exit_step_ms;  /* whole specee_decode_with_candidates calls, the above included */
};

/* Speculative early exit settings of a context. */
struct specee_exit_params {
    float threshold;    /* a checked layer may exit when its predictor says more than this; from the head file */
    bool  use_offline;  /* check the head file's layer set */
    bool  use_online;   /* also check e-2, e, e+2 around the exit layers e of the last 5 exits;
                           specee_set_heads sets it from the head file (default true) */
    bool  full_depth;   /* debug: also run every layer and report the full model's token */
    bool  fill_kv;      /* after an exit, give the skipped layers K/V projected from the exit hidden state
                           (instead of masking the position in them) */
    bool  verify_full;  /* true (default): when a predictor fires, exit only if the layer's full-vocabulary
                           argmax is a candidate. false: exit with the candidate of highest logit and skip
                           the full-vocabulary logits (faster, lossier; the step then has no logits).
                           specee_set_heads sets it from the head file (default true) */
    bool  exact;        /* false (default): an exit emits its token (the paper's early exit; the output
                           may differ from the full model's). true: an exit's token is a draft, and the
                           next call must be specee_verify_exit, which checks it against full depth.
                           Takes neither fill_kv nor full_depth */
    int32_t max_chain;  /* exact: exits one verification may take, 1 (default) to SPECEE_MAX_EXIT_CHAIN.
                           Above 1, a step for the last exit's draft may exit too (a chain) */
};

/* What one early-exit decode step did. */
struct specee_step {
    specee_token token;        /* the token chosen */
    int32_t      exit_layer;   /* layers computed when it was chosen; n_layer = no early exit */
    specee_token full_token;   /* the full model's token when it was computed (no exit, or full_depth); else -1 */
    int32_t      n_next;       /* draft candidates for the next step (0 without a draft head) */
    specee_token next[SPECEE_MAX_CANDIDATES];
};

/* Early-exit counters of a context since creation or specee_reset_exit_stats(). */
struct specee_exit_stats {
    uint64_t n_steps;          /* decode steps with candidates */
    uint64_t n_exits;          /* steps that stopped before the last layer */
    uint64_t sum_exit_layers;  /* layers computed, summed over steps */
    uint64_t n_checks;         /* predictor evaluations */
    uint64_t n_fires;          /* ... above the threshold */
    uint64_t n_false_fires;    /* ... whose layer argmax was not a candidate (no exit) */
    uint64_t n_draft_top1;     /* steps whose token was the first candidate */
    uint64_t n_draft_topk;     /* steps whose token was one of the candidates */
};

/* Whose CPU kernels multiply the weight matrices (docs/kernels.md). */
enum specee_kernels {
    SPECEE_KERNELS_GGML   = 0, /* ggml's own: the numerics of llama.cpp with flash attention off */
    SPECEE_KERNELS_SPECEE = 1, /* (default) specee's where it has one for the CPU and weight type (Q4_K, Q6_K, Q8_0,
                                  Q5_0, Q4_1 on AVX-512 VNNI or AVX2), in passes of up to 16 tokens; ggml's
                                  elsewhere. Every row of a pass is computed exactly as a one-token step
                                  computes it. The matrices get a second copy in specee's layout (weight
                                  memory grows by their size). */
};

struct specee_model_params {
    bool check_tensors;  /* scan the weights for NaN/Inf and bad block scales while loading (slower) */
    bool use_repack;     /* put matrices ggml can repack (Q4_0, Q4_K, ...) in its faster CPU layout, as llama.cpp does */
    int32_t      n_gpu_layers;  /* llama.cpp's -ngl: the last N layers (and, for N > n_layer, the output layer)
                                   run on the offload devices (RPC servers, then GPUs); 0 (default) = all on the
                                   CPU. A build without a GPU backend and no rpc_servers refuses N > 0. */
    const char * rpc_servers;   /* NULL, or "host:port[,host:port...]": ggml RPC servers (specee rpc-server) that
                                   take offloaded layers. An unreachable server fails the load within 3 s. The
                                   RPC protocol has no authentication: use it only on networks you trust. */
    bool         amx_decode;    /* on CPUs with AMX (and use_repack): a second copy of the matrices in ggml's AMX
                                   layout, read by single-token graphs. Decode about 2x faster on SmolLM2 here,
                                   twice the weight memory, and other rounding than the plain kernels (SmolLM2:
                                   95.6% teacher-forced argmax agreement). Default false. No effect elsewhere. */
    int32_t      kernels;       /* enum specee_kernels: whose CPU kernels multiply the matrices */
};

struct specee_context_params {
    uint32_t n_ctx;      /* context size in tokens; 0 = the model's training context, capped at 4096 */
    uint32_t n_batch;    /* most tokens one prefill graph processes; longer prompts are split */
    int32_t  n_threads;  /* compute threads; <= 0 = number of online CPUs */
    bool     flash_attn; /* fused attention kernel; false (default) matches llama.cpp's default numerics */
    bool     exact_verify; /* true (default): specee_decode_tree computes every row as a one-token
                            * step would, so verified tokens see exactly plain decoding's logits (greedy
                            * speculation keeps plain greedy output); false: ggml's batched kernels,
                            * cheaper on repacked matrices, but rows may differ in the last bits */
};

/* ---- library ---- */

SPECEE_API uint32_t     specee_api_version(void);              /* == SPECEE_API_VERSION of the built library */
SPECEE_API const char * specee_status_name(enum specee_status status);  /* "SPECEE_STATUS_OK", ... */
SPECEE_API const char * specee_system_info(void);              /* ggml's CPU features, for logs */
SPECEE_API const char * specee_ggml_version(void);             /* version of the ggml linked at run time, "0.20.2" */
SPECEE_API const char * specee_kernels_isa(void);              /* what specee's kernels run on this CPU: "avx512_vnni",
                                                                   or "none" (SPECEE_KERNELS_SPECEE then changes nothing) */

/* Whether this build has a GPU backend (CUDA) / ggml's RPC backend. */
SPECEE_API bool specee_has_gpu(void);
SPECEE_API bool specee_has_rpc(void);

/* Serves this machine's CPU backend to RPC clients on `endpoint`
 * ("host:port"; bind 127.0.0.1 unless the network is trusted: the protocol has
 * no authentication) with `n_threads` compute threads. Returns only if the
 * server cannot start or stops, with the reason in `err`. */
SPECEE_API enum specee_status specee_rpc_serve(const char * endpoint, int32_t n_threads, char * err, size_t err_size);

/* ---- model ---- */

SPECEE_API struct specee_model_params specee_model_default_params(void);

/* Loads a GGUF file. On failure *out_model is NULL and `err` (if not NULL)
 * holds a message of at most err_size-1 bytes. */
SPECEE_API enum specee_status specee_model_load(
        const char                       * path,
        const struct specee_model_params * params,   /* NULL = defaults */
        struct specee_model             ** out_model,
        char                             * err,
        size_t                             err_size);

/* Frees a model; NULL is a no-op. Every context of the model must be freed first. */
SPECEE_API void specee_model_free(struct specee_model * model);

SPECEE_API int32_t      specee_model_n_layer    (const struct specee_model * model);
SPECEE_API int32_t      specee_model_n_embd     (const struct specee_model * model);
SPECEE_API int32_t      specee_model_n_vocab    (const struct specee_model * model);
SPECEE_API int32_t      specee_model_n_head     (const struct specee_model * model);
SPECEE_API int32_t      specee_model_n_head_kv  (const struct specee_model * model);
SPECEE_API int32_t      specee_model_n_ctx_train(const struct specee_model * model);
SPECEE_API specee_token specee_model_bos        (const struct specee_model * model);  /* -1 if none */
SPECEE_API specee_token specee_model_eos        (const struct specee_model * model);  /* -1 if none */
SPECEE_API const char * specee_model_arch       (const struct specee_model * model);  /* "llama", "qwen2", "qwen3", "phi3" */
SPECEE_API uint64_t     specee_model_n_params   (const struct specee_model * model);
SPECEE_API uint64_t     specee_model_size_bytes (const struct specee_model * model);  /* weight bytes */
SPECEE_API int32_t      specee_model_n_repacked (const struct specee_model * model);  /* matrices in ggml's repacked CPU layout */
SPECEE_API int32_t      specee_model_n_decode_copies(const struct specee_model * model);  /* AMX copies (amx_decode) */
SPECEE_API int32_t      specee_model_n_packed(const struct specee_model * model);  /* matrices with a copy in specee's
                                                                                   kernel layout (kernels = SPECEE) */

/* ---- context (one sequence, its KV cache and its compute buffers) ---- */

SPECEE_API struct specee_context_params specee_context_default_params(void);

SPECEE_API enum specee_status specee_context_init(
        struct specee_model                * model,
        const struct specee_context_params * params,   /* NULL = defaults */
        struct specee_context             ** out_ctx,
        char                               * err,
        size_t                               err_size);

/* Frees a context; NULL is a no-op. */
SPECEE_API void specee_context_free(struct specee_context * ctx);

/* Message of the last failed call on this context ("" if none). */
SPECEE_API const char * specee_context_error(const struct specee_context * ctx);

SPECEE_API uint32_t specee_n_ctx    (const struct specee_context * ctx);
SPECEE_API uint32_t specee_n_past   (const struct specee_context * ctx);   /* tokens in the KV cache */
SPECEE_API int32_t  specee_n_threads(const struct specee_context * ctx);

/* Runs the prompt tokens through the full model at positions n_past.. and
 * appends them to the KV cache. Logits are kept for the last token, or for
 * every token if `logits_all`. On failure the KV cache is as before. */
SPECEE_API enum specee_status specee_prefill(
        struct specee_context * ctx,
        const specee_token    * tokens,
        int32_t                 n_tokens,
        bool                    logits_all);

/* One full-depth decode step: appends `token` at position n_past and keeps
 * its logits. `out_argmax` (may be NULL) receives the greedy next token. */
SPECEE_API enum specee_status specee_decode(
        struct specee_context * ctx,
        specee_token            token,
        specee_token          * out_argmax);

/* Logits of the last prefill/decode: row i of [n_outputs, n_vocab]. NULL if i
 * is out of range. */
SPECEE_API const float * specee_get_logits(struct specee_context * ctx, int32_t i);
SPECEE_API int32_t       specee_n_outputs (const struct specee_context * ctx);
SPECEE_API specee_token  specee_argmax    (struct specee_context * ctx, int32_t i);  /* -1 if i is out of range */

/* Asks the next prefill/decode calls to keep the hidden state after layer
 * `layer` (0 = token embeddings, n_layer = last layer; -1 = off), passed
 * through the final RMSNorm if `final_norm`. Kept for every token. */
SPECEE_API enum specee_status specee_set_hidden_output(
        struct specee_context * ctx,
        int32_t                 layer,
        bool                    final_norm);

/* The hidden states kept by the last call: [n_tokens, n_embd] row-major;
 * *out_n_tokens receives n_tokens. NULL if none were asked for. */
SPECEE_API const float * specee_get_hidden(struct specee_context * ctx, int32_t * out_n_tokens);

/* Forgets every token at position >= n_past (rollback); n_past may not exceed
 * the current one. */
SPECEE_API enum specee_status specee_kv_truncate(struct specee_context * ctx, uint32_t n_past);

/* From now on `ctx` computes on the thread pool of `with` (its own pool is
 * freed unless another context shares it; a pool lives as long as any
 * context using it). For several contexts that one thread drives in turn
 * (a server's slots): one set of threads instead of one per context, whose
 * idle pools would otherwise spin against the working one. The contexts
 * sharing a pool must never compute at the same time. */
SPECEE_API enum specee_status specee_context_share_threads(
        struct specee_context * ctx,
        struct specee_context * with);

/* ---- token trees: many drafted continuations verified in one pass ---- */

/* Decodes a tree of n_tokens drafted tokens after the n_past cached ones, in
 * one full-depth pass. parents[i] is the index of token i's parent in this
 * call (it must come earlier, < i), or -1 for a token that directly follows
 * the cache; parents NULL means a chain (parents[i] = i - 1). Token i sits at
 * position n_past + depth(i) and attends to the cache and to its ancestors
 * and itself only. Every token gets logits: specee_get_logits(ctx, i),
 * specee_argmax(ctx, i) (row i: the distribution after token i). n_tokens
 * may not exceed n_batch.
 *
 * The tree then stays pending: specee_tree_accept keeps one path of it (or
 * none), and until then every call that adds tokens fails, and
 * specee_kv_truncate may only go back to the cache before the tree. On
 * failure nothing changes. */
SPECEE_API enum specee_status specee_decode_tree(
        struct specee_context * ctx,
        const specee_token    * tokens,
        const int32_t         * parents,
        int32_t                 n_tokens);

/* specee_decode_tree with layer skipping inside the pass (SpaDec; lossy):
 * row i runs only its first depths[i] layers, then goes to the final norm
 * and the logits, so later layers run on fewer rows. depths[i] is in
 * [1, n_layer] and never above depths[i - 1] (order the rows so; a row
 * then never runs deeper than its ancestors). A row's K/V above its depth
 * is never computed: later tokens do not attend to it there, as after a
 * lossy early exit. depths NULL, or every depth n_layer, is
 * specee_decode_tree. */
SPECEE_API enum specee_status specee_decode_tree_depths(
        struct specee_context * ctx,
        const specee_token    * tokens,
        const int32_t         * parents,
        const int32_t         * depths,
        int32_t                 n_tokens);

/* Keeps the path rows[0..n) of the pending tree: rows[0] a token with parent
 * -1, rows[k]'s parent rows[k - 1]. Its tokens end up at the positions after
 * the cache, in order (their K/V moved into place, as if decoded one by one),
 * the tree's other tokens are forgotten, and the draft head (if any) is given
 * the path's features. n == 0 forgets the whole tree. Logits stay as
 * specee_decode_tree left them. */
SPECEE_API enum specee_status specee_tree_accept(
        struct specee_context * ctx,
        const int32_t         * rows,
        int32_t                 n);

/* ---- several sequences in one pass (continuous batching) ---- */

/* One full-depth decode step for each of n contexts in a single pass:
 * contexts[i] gets tokens[i] at its own n_past and its logits (row 0), as
 * specee_decode would leave them; out_argmax (may be NULL) receives each
 * one's greedy next token. The weights are read once for all of them. The
 * contexts must be distinct, share one model and n_ctx, and run on the CPU
 * only; the pass runs on contexts[0]'s threads, and an error is reported
 * there (specee_context_error(contexts[0])). On failure no context changes. */
SPECEE_API enum specee_status specee_decode_batch(
        struct specee_context * const * contexts,
        const specee_token            * tokens,
        int32_t                         n,
        specee_token                  * out_argmax);

/* 1 if layer `layer` holds K/V for the cell at position `pos`, 0 if not, -1 on
 * a bad argument. Early exit leaves deeper layers without some positions. */
SPECEE_API int32_t specee_kv_cell_valid(const struct specee_context * ctx, int32_t layer, uint32_t pos);

/* ---- speculative early exit ---- */

/* Loads the exit predictors (and schedule) trained for `model`. A file made
 * for another model is refused with SPECEE_STATUS_INVALID_ARGUMENT. */
SPECEE_API enum specee_status specee_heads_load(
        const struct specee_model  * model,
        const char                 * path,
        struct specee_heads       ** out_heads,
        char                       * err,
        size_t                       err_size);
SPECEE_API void        specee_heads_free(struct specee_heads * heads);   /* NULL is a no-op */
SPECEE_API int32_t     specee_heads_n_candidates(const struct specee_heads * heads);
SPECEE_API bool        specee_heads_has_draft(const struct specee_heads * heads);
SPECEE_API const char * specee_model_fingerprint(const struct specee_model * model);  /* what head files name */

/* Attaches heads to a context (NULL detaches); they must outlive it. Resets
 * the threshold to the heads' own. */
SPECEE_API enum specee_status specee_set_heads(struct specee_context * ctx, const struct specee_heads * heads);

SPECEE_API struct specee_exit_params specee_exit_default_params(void);
SPECEE_API enum specee_status specee_get_exit_params(const struct specee_context * ctx, struct specee_exit_params * out);
SPECEE_API enum specee_status specee_set_exit_params(struct specee_context * ctx, const struct specee_exit_params * params);

/* One decode step for `token` with early exit: the layers run in segments up
 * to each checked layer, whose predictor sees the candidates' logits; when
 * it fires and the layer's full-vocabulary argmax is a candidate, the step
 * stops there. Layers after the exit keep no K/V for this position (their
 * attention masks hide it). n_cand must equal specee_heads_n_candidates. */
SPECEE_API enum specee_status specee_decode_with_candidates(
        struct specee_context * ctx,
        specee_token            token,
        const specee_token    * candidates,
        int32_t                 n_cand,
        struct specee_step    * out);

/* Exact early exit (specee_exit_params.exact): after a specee_decode_with_candidates
 * step that exited (exit_layer < n_layer), its token is only a draft.
 * With max_chain > 1 the next call may be a specee_decode_with_candidates
 * step for that draft (a chain of up to max_chain steps): it checks only
 * layers below the last exit layer (its inputs above do not exist yet) and,
 * when none exits, stops there with token -1 and exit_layer = that layer,
 * which ends the chain. Then one pass runs every pending token's remaining
 * layers from the hidden state it stopped at, beside `draft` (the last
 * step's token; -1 after a step that stopped without an exit) at the next
 * position through every layer: the rows share each weight read above the
 * exit layers. specee_get_logits(ctx, i) is then the full model's
 * distribution after row i's token: row 0 checks the first draft, row i the
 * i-th, the last row follows the last token, each computed as a one-token
 * step computes it. Every position is cached at every layer: when a check
 * fails, truncate to drop the positions from the wrong draft's on (that
 * truncation, the first call after this one, also takes those exits out of
 * the online schedule). Until this call (or a truncation that drops the
 * pending tokens) other decode calls are refused. CONTEXT_FULL when no cell
 * is left for `draft` (the chain still waits: truncate, or end there). */
SPECEE_API enum specee_status specee_verify_exit(struct specee_context * ctx, specee_token draft);

/* With a draft head in the heads: runs the draft over the positions it has
 * not seen (the prompt, after specee_prefill), with `next_token` (the token
 * chosen after them) as the last input, and writes its top-k candidates for
 * the token after `next_token` to `out` (at most `capacity`; *out_n receives
 * how many). Feed them to the next specee_decode_with_candidates, which
 * returns the following ones in specee_step.next. While a draft is attached,
 * prefill and decode keep the final-normed hidden states (the draft's
 * features) as their hidden output. */
SPECEE_API enum specee_status specee_draft_sync(
        struct specee_context * ctx,
        specee_token            next_token,
        specee_token          * out,
        int32_t                 capacity,
        int32_t               * out_n);

/* EAGLE drafting: specee_draft_sync(next_token), then the draft head runs
 * ahead of the target for n_steps - 1 more steps, each fed its own predicted
 * feature and its best token. Step s's k best tokens (best first) go to
 * out_tokens[s * k ...] and their probabilities under the draft (softmax
 * over its vocabulary) to out_probs[s * k ...]. Afterwards the draft head's
 * cache holds the synced positions only, as after specee_draft_sync. */
SPECEE_API enum specee_status specee_draft_chain(
        struct specee_context * ctx,
        specee_token            next_token,
        int32_t                 n_steps,
        int32_t                 k,
        specee_token          * out_tokens,
        float                 * out_probs);

/* EAGLE-2 drafting, a dynamic tree: specee_draft_sync(next_token), whose k
 * best tokens are the tree's first level; then, for each further level up
 * to `depth`, the `width` nodes of the last level with the highest path
 * probability (the product of the draft probabilities from the first level
 * down to the node) are run through the draft head in one pass, each fed
 * its parent's predicted feature (a first-level node: the sync's) and its
 * own token, at draft position synced + L for a node of level L (the first
 * level being 0), attending to the synced positions and its own ancestors
 * only; each gets its k best tokens as children. Nodes whose
 * path probability cannot beat the capacity-th best so far are not
 * expanded (their descendants could not be kept).
 *
 * Of all nodes, the `capacity` with the highest path probability (ties: the
 * earlier made) are written best first: *out_n (<= capacity) receives how
 * many; out_tokens[i] is node i's token, out_parents[i] its parent's index
 * in the output (always < i), or -1 for a first-level node (it follows
 * next_token); out_probs[i] its draft probability given its parent, and
 * out_path_probs[i] (may be NULL) its path probability. A parent's path
 * probability is never below its child's, so every prefix of the output is
 * a tree, ready for specee_decode_tree after next_token.
 *
 * depth >= 1, 1 <= width <= n_batch, 1 <= k <= the draft's vocabulary,
 * capacity >= 1; the draft cache must hold the synced positions plus one
 * cell per expanded node, else SPECEE_STATUS_CONTEXT_FULL. Bad arguments,
 * no draft head or a pending token tree change nothing. Afterwards the draft
 * head's cache holds the synced positions only, as after specee_draft_sync. */
SPECEE_API enum specee_status specee_draft_tree(
        struct specee_context * ctx,
        specee_token            next_token,
        int32_t                 depth,
        int32_t                 width,
        int32_t                 k,
        int32_t                 capacity,
        specee_token          * out_tokens,       /* [capacity] */
        int32_t               * out_parents,      /* [capacity] */
        float                 * out_probs,        /* [capacity] */
        float                 * out_path_probs,   /* [capacity] or NULL */
        int32_t               * out_n);

/* Training data for the exit predictors: one full-depth step for `token`
 * that writes, after every layer l, the candidates' logits (cand_logits[l *
 * n_cand + i], as the predictor would see them) and that layer's
 * full-vocabulary argmax (layer_argmax[l]); out->token is the full model's
 * token and out->next the draft's next candidates, as for a normal step. */
SPECEE_API enum specee_status specee_trace_step(
        struct specee_context * ctx,
        specee_token            token,
        const specee_token    * candidates,
        int32_t                 n_cand,
        float                 * cand_logits,   /* [n_layer * n_cand] */
        int32_t               * layer_argmax,  /* [n_layer] */
        struct specee_step    * out);

/* The exit predictors' features, the one definition training and inference
 * share. `cand_logits` holds [n_steps][n_layer][n_cand] candidate logits
 * after every layer (as specee_trace_step writes them, step after step);
 * `out` receives [n_steps][n_layer][3 * n_cand]: for layer l, the logits,
 * their softmax p_l, and p_l - p_(l-1) (zeros at layer 0). A check after
 * layer l during decoding computes exactly these values. */
SPECEE_API enum specee_status specee_exit_features(
        const float * cand_logits,
        int64_t       n_steps,
        int32_t       n_layer,
        int32_t       n_cand,
        float       * out);

/* What the checks of the last early-exit step saw: writes at most `capacity`
 * checked layer indices to `layers` and their features ([capacity][3 *
 * n_cand]) to `features` (either may be NULL); returns how many checks ran. */
SPECEE_API int32_t specee_get_last_checks(
        const struct specee_context * ctx,
        int32_t                     * layers,
        float                       * features,
        int32_t                       capacity);

/* Layers computed by the last early-exit step (n_layer = no exit), -1 before any. */
SPECEE_API int32_t specee_get_exit_layer(const struct specee_context * ctx);

/* The layer indices the next step will check (ascending); returns how many,
 * writing at most `capacity`. */
SPECEE_API int32_t specee_get_checked_layers(const struct specee_context * ctx, int32_t * out, int32_t capacity);

SPECEE_API enum specee_status specee_get_exit_stats(const struct specee_context * ctx, struct specee_exit_stats * out);
SPECEE_API void               specee_reset_exit_stats(struct specee_context * ctx);

/* Timing counters of this context (see struct specee_perf). */
SPECEE_API enum specee_status specee_get_perf(const struct specee_context * ctx, struct specee_perf * out);
SPECEE_API void               specee_reset_perf(struct specee_context * ctx);

/* cffi-end */

#ifdef __cplusplus
}
#endif

#endif /* SPECEE_H */
