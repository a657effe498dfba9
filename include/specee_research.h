/* specee_research.h — research hooks of libspecee: signals for studying new
 * exit features (bench/exit_feature_ablation.py, specee train's traces).
 * Not part of the stable C API in specee.h: these may change with any
 * version. Same conventions as specee.h; the Python binding reads the
 * cffi block below as well. */
#ifndef SPECEE_RESEARCH_H
#define SPECEE_RESEARCH_H

#include "specee.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* Signals for studying new exit features (bench/exit_feature_ablation.py).
 * specee_get_trace_change: for the last specee_trace_step, how much each
 * layer l still moved the residual stream, |x_l - x_(l-1)| / |x_l| (x_(-1)
 * is the token's embedding). specee_get_draft_probs: the draft head's
 * probabilities (over its vocabulary) of its k best tokens after its last
 * pass, best first: after specee_draft_sync or an early-exit or trace step,
 * those of the candidates it proposed (out->next). Both write at most
 * `capacity` values and return how many there are (0 before any). */
SPECEE_API int32_t specee_get_trace_change(const struct specee_context * ctx, float * out, int32_t capacity);
/* specee_get_trace_hidden: for the last specee_trace_step, the hidden state
 * after each layer, final-normed (what the lm_head reads): [n_layer][n_embd],
 * at most `capacity` values; returns how many there are (0 before any). */
SPECEE_API int32_t specee_get_trace_hidden(const struct specee_context * ctx, float * out, int32_t capacity);
SPECEE_API int32_t specee_get_draft_probs(const struct specee_context * ctx, float * out, int32_t capacity);

/* The exit predictor of layer `layer` of `heads` on n feature vectors
 * (features: [n][3 * n_candidates], as specee_exit_features writes them):
 * out[i] is the probability it gives, exactly as a decode step computes it.
 * The one MLP training and replays are held to (tests/test_exit_features.py).
 * SPECEE_STATUS_INVALID_ARGUMENT when the layer has no predictor. */
SPECEE_API enum specee_status specee_heads_predict(const struct specee_heads * heads, int32_t layer,
                                                   const float * features, int64_t n, float * out);

/* cffi-end */

#ifdef __cplusplus
}
#endif

#endif /* SPECEE_RESEARCH_H */
