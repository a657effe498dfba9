// model.h — a Llama-family model loaded from GGUF: hyper-parameters, weights.
#pragma once

#include "specee.h"

#include "ggml.h"
#include "ggml-backend.h"

#include "kernels/kernels.h"
#include "model/devices.h"
#include "model/tensor_stores.h"
#include "model/weight_block.h"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace specee {

// The architectures libspecee runs (docs/architectures.md):
//   llama  Llama 1/2/3.x, Mistral, TinyLlama, SmolLM2: RoPE on (2i, 2i + 1) pairs,
//          Llama 3.1+ scales RoPE frequencies with rope_freqs.weight
//   qwen2  adds Q/K/V biases, NEOX RoPE
//   qwen3  no biases, RMSNorm of every Q and K head before RoPE, NEOX RoPE
//   phi3   Q/K/V fused in one matrix, gate and up fused in one, NEOX RoPE
enum class arch { llama, qwen2, qwen3, phi3 };

struct hparams {
    arch     architecture = arch::llama;
    int32_t  n_layer      = 0;
    int32_t  n_embd       = 0;
    int32_t  n_ff         = 0;
    int32_t  n_head       = 0;
    int32_t  n_head_kv    = 0;
    int32_t  n_embd_head  = 0;   // attention.key_length, else n_embd / n_head
    int32_t  n_rot        = 0;   // rotated dimensions of a head (rope.dimension_count), <= n_embd_head
    int32_t  n_vocab      = 0;
    int32_t  n_ctx_train  = 0;
    float    rms_eps      = 1e-5f;
    float    rope_base    = 10000.0f;
    float    rope_freq_scale  = 1.0f;  // 1 / rope.scaling.factor for linear scaling
    float    rope_attn_factor = 1.0f;  // rope.scaling.attn_factor: scales cos and sin (longrope)
    int32_t  n_ctx_orig   = 0;   // rope.scaling.original_context_length: longrope switches factors past it
    int      rope_mode    = 0;   // GGML_ROPE_TYPE_NORMAL (llama) or _NEOX (qwen2, qwen3, phi3)
    int32_t  bos          = -1;
    int32_t  eos          = -1;

    int32_t n_embd_q()  const { return n_embd_head * n_head; }
    int32_t n_embd_kv() const { return n_embd_head * n_head_kv; }
};

struct layer_weights {
    ggml_tensor * attn_norm = nullptr;  // [n_embd]
    ggml_tensor * wqkv      = nullptr;  // [n_embd, n_embd_q + 2 n_embd_kv] (phi3: Q, K, V fused; wq/wk/wv null)
    ggml_tensor * wq        = nullptr;  // [n_embd, n_embd_q]
    ggml_tensor * wk        = nullptr;  // [n_embd, n_embd_kv]
    ggml_tensor * wv        = nullptr;  // [n_embd, n_embd_kv]
    ggml_tensor * wo        = nullptr;  // [n_embd_q, n_embd]
    ggml_tensor * bq        = nullptr;  // [n_embd_q]  (qwen2 only)
    ggml_tensor * bk        = nullptr;  // [n_embd_kv] (qwen2 only)
    ggml_tensor * bv        = nullptr;  // [n_embd_kv] (qwen2 only)
    ggml_tensor * q_norm    = nullptr;  // [n_embd_head] RMSNorm of each Q head (qwen3 only)
    ggml_tensor * k_norm    = nullptr;  // [n_embd_head] RMSNorm of each K head (qwen3 only)
    ggml_tensor * ffn_norm  = nullptr;  // [n_embd]
    ggml_tensor * ffn_gate  = nullptr;  // [n_embd, n_ff]; null in phi3, whose ffn_up holds gate then up
    ggml_tensor * ffn_up    = nullptr;  // [n_embd, n_ff], phi3: [n_embd, 2 n_ff]
    ggml_tensor * ffn_down  = nullptr;  // [n_ff, n_embd]
};

struct model {
    hparams                    hp;
    std::string                arch_name;
    ggml_tensor              * tok_embd    = nullptr;  // [n_embd, n_vocab]
    ggml_tensor              * output_norm = nullptr;  // [n_embd]
    ggml_tensor              * output      = nullptr;  // [n_embd, n_vocab]; == tok_embd when tied
    std::vector<layer_weights> layers;
    // RoPE frequency factors [n_rot / 2], one for all layers: each rotation
    // frequency is divided by its factor (ggml_rope_ext's freq_factors).
    ggml_tensor              * rope_freqs  = nullptr;  // Llama 3.1+ (rope_freqs.weight)
    ggml_tensor              * rope_long   = nullptr;  // longrope (phi3): contexts past n_ctx_orig
    ggml_tensor              * rope_short  = nullptr;  // longrope: contexts up to n_ctx_orig

    // The frequency factors a context of n_ctx cells runs with (or null).
    ggml_tensor * rope_factors(uint32_t n_ctx) const {
        if (rope_freqs != nullptr) {
            return rope_freqs;
        }
        return n_ctx > uint32_t(hp.n_ctx_orig) ? rope_long : rope_short;
    }

    ggml_context             * meta   = nullptr;  // tensor metadata from gguf (shapes only)

    // Where the layers run (CPU, or offload devices: devices.h), and the
    // weights' storage: one ggml context and buffer per buffer type, as
    // llama.cpp's loader keeps them (plain CPU memory; ggml's CPU "extra"
    // type that repacks matrices into the layouts its faster kernels read;
    // each offload device's memory).
    device_map devices;
    tensor_stores              weights;
    int                        n_repacked   = 0;  // tensors in the CPU's repacked layout
    // On CPUs with AMX: a second copy of the matrices in ggml's AMX layout,
    // which single-token graphs read (its single-token kernels are the
    // fastest there, its multi-token ones fault: docs/results.md, "Plain decoding
    // against llama-bench"). Empty, and the pointers the plain ones, elsewhere.
    std::vector<layer_weights> decode_layers;
    ggml_tensor              * decode_output = nullptr;
    int                        n_decode_copies = 0;

    // The weights a graph of n_tokens tokens reads.
    const layer_weights & layer(int il, int64_t n_tokens) const {
        return n_tokens == 1 && !decode_layers.empty() ? decode_layers[size_t(il)] : layers[size_t(il)];
    }
    ggml_tensor * output_for(int64_t n_tokens) const {
        return n_tokens == 1 && decode_output != nullptr ? decode_output : output;
    }
    // kernels = SPECEE_KERNELS_SPECEE: a second copy of the Q4_K / Q6_K
    // matrices in the layout of specee's kernels (docs/kernels.md), which
    // passes of up to 16 tokens read; by the placed tensor.
    struct packed_weight {
        kernels::packed_matrix matrix;
        kernels::isa           isa = kernels::isa::reference;
        // the matrices of the product node that follows this one (the
        // first of its node) in a decode step: each thread starts their
        // rows on their way to its cache while it waits at the barrier
        std::vector<const packed_weight *> next;
    };
    std::unordered_map<const ggml_tensor *, packed_weight> packed;
    // The packed matrices of a decode step, moved at load into one block of
    // 2 MB pages in the order the step reads them (packed_matrix::placed).
    weight_block packed_block;
    const packed_weight * packed_for(const ggml_tensor * w) const {
        const auto it = packed.find(w);
        return it == packed.end() ? nullptr : &it->second;
    }
    // Packed matrices that read the same input (a layer's Q, K, V; its
    // gate and up), multiplied as one graph node after one quantization of
    // the input: fewer nodes and thread barriers a step. By the first one.
    struct packed_set {
        std::vector<const packed_weight *> parts;
        // the model's RMSNorm epsilon, for the set's node to norm its input
        // itself (packed_products), unless SPECEE_FOLD_NORMS=0 was set at
        // load (a switch for tests and A/B runs)
        float rms_eps   = 0.0f;
        bool  fold_norm = true;
    };
    std::unordered_map<const ggml_tensor *, packed_set> packed_sets;
    const packed_set * packed_set_for(const ggml_tensor * first) const {
        const auto it = packed_sets.find(first);
        return it == packed_sets.end() ? nullptr : &it->second;
    }
    // kernels = SPECEE_KERNELS_SPECEE: every pass attends through specee's
    // kernel (kernels/attention.h), whose rows depend only on the cells they
    // see: a token tree's rows equal one-token steps. Contexts then keep V
    // untransposed (one row per cell, as it reads). False: ggml's attention.
    bool                       specee_attention = false;
    kernels::isa               attention_isa    = kernels::isa::reference;
    bool                       output_copied = false;  // tied output offloaded: a second copy of tok_embd
    std::string                fingerprint;       // 16 hex digits, see fingerprint_of()
    uint64_t                   n_params   = 0;
    uint64_t                   size_bytes = 0;

    model() = default;
    model(const model &) = delete;
    model & operator=(const model &) = delete;
    ~model();
};

// Loads and validates a GGUF file into `m`; throws specee::error on any problem.
void load_model(model & m, const char * path, const specee_model_params & params);

} // namespace specee

// The public opaque handle is the internal model.
struct specee_model : specee::model {};
