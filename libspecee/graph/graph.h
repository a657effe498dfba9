// graph.h — builds the ggml graph of one forward pass over a range of layers.
//
// A pass covers positions [pos, pos + n_tokens) and layers [layer_begin,
// layer_end). It starts from the token embeddings (layer_begin == 0) or from
// the residual stream saved by the previous segment, so that early exit can
// stop after any layer and resume later without recomputing.
#pragma once

#include "heads/heads.h"
#include "kv/kv_cache.h"
#include "model/model.h"

#include <cstdint>
#include <vector>

namespace specee {

struct forward_plan {
    uint32_t pos          = 0;      // position of the first token
    uint32_t n_tokens     = 0;
    uint32_t n_kv         = 0;      // cells the attention reads: >= pos + n_tokens (padded; the rest masked)
    int      layer_begin  = 0;
    int      layer_end    = 0;      // exclusive
    bool     save_state   = false;  // write the residual stream after layer_end - 1 to `state`
    int      n_logits     = 0;      // 0: none, 1: last token only, n_tokens: all
    int      hidden_layer = -1;     // keep the hidden state after this many layers, -1: none
    bool     hidden_norm  = false;  // ... passed through the final RMSNorm
    int      n_cand       = 0;      // > 0: logits of these candidate tokens at layer_end (last token)
    bool     trace        = false;  // after every layer: candidate logits and the full-vocabulary argmax
    bool     fill_kv      = false;  // only write K/V of layers [layer_begin, layer_end), all projected
                                    // from `state` (the hidden state an early exit stopped at)
    bool     as_steps     = false;  // every row computed as a one-token step would (graph_parts.h product):
                                    // verified drafts see exactly plain decoding's numbers
    // Rows that enter the pass late (exact early exit, docs/exact-specee.md):
    // row i < entry_layers.size() starts at layer entry_layers[i] from
    // forward_graph::entry_states, the hidden state its early exit stopped
    // at; the other rows start at layer_begin (0) from their tokens. Entry
    // layers never rise along the rows, so the rows a layer computes are
    // always the last ones of the pass; the others' K/V at that layer are
    // in the cache already.
    std::vector<int32_t> entry_layers;
    // Rows that leave the pass early (SpaDec's layer skipping, lossy;
    // docs/layer-skipping.md): row i runs its first depths[i] layers, then
    // goes to the final norm and the logits. Depths never rise along the
    // rows, so the rows a layer computes are always the first ones of the
    // pass, and every row's ancestors are computed wherever it is. Empty:
    // every row runs every layer.
    std::vector<int32_t> depths;

    // Every field but `pos` is the graph's shape (positions, cells and masks
    // are inputs); the graph cache keys graphs by the whole plan with pos
    // cleared (runner/graph_runner.h), so a new field is part of the key.
    bool operator==(const forward_plan &) const = default;
};

// For each layer in [plan.layer_begin, plan.layer_end), the index of the mask
// it uses; layers that computed the same cells share one (all of them, when
// nothing has exited early). Entries outside the range are -1.
std::vector<int> assign_masks(const kv_cache & kv, const forward_plan & plan, int n_layer);

// The inputs that place a pass's rows in one KV cache: the cells they
// write and, for each group of layers that computed the same cells, what
// each row may attend to. row_layout (runner/row_layout.h) fills them.
struct attention_inputs {
    ggml_tensor * k_idx = nullptr;              // [n_tokens] I64: the cells this batch writes
    ggml_tensor * v_idx = nullptr;              // [n_embd_kv * n_tokens] I64 if V is transposed, else == k_idx
    std::vector<ggml_tensor *> masks;           // unique masks, [n_kv, n_tokens] F32 (F16 for flash attention)
    std::vector<int>           mask_layer;      // for each unique mask, a layer it serves
    std::vector<int>           mask_of_layer;   // assign_masks() at build time
};

struct forward_graph : attention_inputs {
    ggml_cgraph * gf = nullptr;

    // inputs, to be filled after allocation (and attention_inputs')
    ggml_tensor * tokens = nullptr;             // [n_tokens - late rows] I32 (only when layer_begin == 0)
    ggml_tensor * positions = nullptr;          // [n_tokens] I32
    ggml_tensor * cand_ids = nullptr;           // [n_cand] I32
    ggml_tensor * features = nullptr;           // [n_embd, n_tokens] F32 (draft head graphs)
    ggml_tensor * entry_states = nullptr;       // [n_embd, entry_layers.size()] F32: late rows' hidden states

    // outputs
    ggml_tensor * logits = nullptr;             // [n_vocab, n_logits]
    ggml_tensor * hidden = nullptr;             // [n_embd, n_tokens]
    ggml_tensor * cand_logits = nullptr;        // [n_cand, 1] after layer_end - 1
    ggml_tensor * cand_logits_prev = nullptr;   // [n_cand, 1] after layer_end - 2 (none if layer_end == 1)
    std::vector<ggml_tensor *> trace_cand;      // per layer: [n_cand, 1] candidate logits after it
    std::vector<ggml_tensor *> trace_argmax;    // per layer: [1] I32 full-vocabulary argmax after it
    std::vector<ggml_tensor *> trace_change;    // per layer: [1] |x_l - x_(l-1)| / |x_l| of the residual stream
    std::vector<ggml_tensor *> trace_hidden;    // per layer: [n_embd, 1] final-normed hidden state after it
};

// Builds the graph into `ctx0` (a no_alloc context). `state` is the
// context's persistent residual buffer [n_embd, n_batch] F32.
forward_graph build_forward(ggml_context * ctx0, const model & m, const kv_cache & kv,
                            ggml_tensor * state, const forward_plan & plan, int graph_size);

// The draft head over pairs (token, feature) at draft positions [pos, pos +
// n_tokens): fc, its decoder layer over its own cache `kv` (one layer), and
// the logits over the draft vocabulary and the predicted feature of the
// last pair ([n_draft_vocab, 1], [n_embd, 1]), or of every pair when
// plan.n_logits == n_tokens (a draft tree's level, under a tree mask).
forward_graph build_draft(ggml_context * ctx0, const model & m, const draft_weights & d, const kv_cache & kv,
                          const forward_plan & plan, int graph_size);

} // namespace specee
