// heads.h — SpecEE heads for one base model: the per-layer exit predictors
// and their schedule, loaded from a GGUF file of their own (docs/heads.md).
#pragma once

#include "model/model.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace specee {

// MLP n_features -> hidden (ReLU) -> 1 (sigmoid). ref: SpecEE sec. 4.1
struct exit_predictor {
    int32_t            n_in   = 0;
    int32_t            hidden = 0;
    std::vector<float> w1;  // [hidden][n_in] row-major
    std::vector<float> b1;  // [hidden]
    std::vector<float> w2;  // [hidden]
    float              b2 = 0.0f;

    // Probability that the layer's argmax is already the final token.
    float operator()(const float * features) const;
};

// EAGLE-style draft head: fc over [embed(token), feature] (2d -> d), one
// decoder layer with its own KV cache, then an output matrix (the target's,
// or a reduced vocabulary's rows). ref: EAGLE (Li et al. 2024); docs/design.md#candidates.
struct draft_weights {
    bool                 present = false;
    ggml_tensor        * fc      = nullptr;  // [2 n_embd, n_embd]
    ggml_tensor        * fc_b    = nullptr;  // [n_embd] or none
    layer_weights        layer;              // attn_norm may be none (EAGLE's first layer has no input norm)
    ggml_tensor        * output  = nullptr;  // [n_embd, n_draft_vocab], or none: the target's output matrix
    std::vector<int32_t> vocab;              // draft row -> token id; empty: row i is token i
    int32_t              n_ff    = 0;
};

struct heads {
    int32_t n_cand    = 4;     // candidates per step (k)
    float   threshold = 0.5f;  // default predictor threshold
    bool    verify_full = true;  // default exit verification (the predictors were trained for it)
    bool    use_online  = true;  // default: also check layers around recent exits
    std::vector<int32_t>               offline_layers;  // checked layer indices, ascending
    std::map<int32_t, exit_predictor>  predictors;      // by layer index (check after that layer)
    draft_weights                      draft;

    ggml_context * data = nullptr;  // the head file's tensors (the draft's weights live here)
    ggml_backend_buffer_t data_buffer = nullptr;  // a CPU buffer over data's memory (not owning it)
    heads() = default;
    heads(const heads &) = delete;
    heads & operator=(const heads &) = delete;
    ~heads();
};

// Loads and validates a head file for model `m`; throws specee::error.
void load_heads(heads & h, const model & m, const char * path);

} // namespace specee

struct specee_heads : specee::heads {};
