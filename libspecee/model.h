// model.h — a Llama-family model loaded from GGUF: hyper-parameters, weights.
#pragma once

#include "specee.h"

#include "ggml.h"
#include "ggml-backend.h"

#include "devices.h"

#include <cstdint>
#include <string>
#include <vector>

namespace specee {

enum class arch { llama, qwen2 };

struct hparams {
    arch     architecture = arch::llama;
    int32_t  n_layer      = 0;
    int32_t  n_embd       = 0;
    int32_t  n_ff         = 0;
    int32_t  n_head       = 0;
    int32_t  n_head_kv    = 0;
    int32_t  n_embd_head  = 0;   // n_embd / n_head
    int32_t  n_vocab      = 0;
    int32_t  n_ctx_train  = 0;
    float    rms_eps      = 1e-5f;
    float    rope_base    = 10000.0f;
    int      rope_mode    = 0;   // GGML_ROPE_TYPE_NORMAL (llama) or _NEOX (qwen2)
    int32_t  bos          = -1;
    int32_t  eos          = -1;

    int32_t n_embd_q()  const { return n_embd_head * n_head; }
    int32_t n_embd_kv() const { return n_embd_head * n_head_kv; }
};

struct layer_weights {
    ggml_tensor * attn_norm = nullptr;  // [n_embd]
    ggml_tensor * wq        = nullptr;  // [n_embd, n_embd_q]
    ggml_tensor * wk        = nullptr;  // [n_embd, n_embd_kv]
    ggml_tensor * wv        = nullptr;  // [n_embd, n_embd_kv]
    ggml_tensor * wo        = nullptr;  // [n_embd_q, n_embd]
    ggml_tensor * bq        = nullptr;  // [n_embd_q]  (qwen2 only)
    ggml_tensor * bk        = nullptr;  // [n_embd_kv] (qwen2 only)
    ggml_tensor * bv        = nullptr;  // [n_embd_kv] (qwen2 only)
    ggml_tensor * ffn_norm  = nullptr;  // [n_embd]
    ggml_tensor * ffn_gate  = nullptr;  // [n_embd, n_ff]
    ggml_tensor * ffn_up    = nullptr;  // [n_embd, n_ff]
    ggml_tensor * ffn_down  = nullptr;  // [n_ff, n_embd]
};

struct model {
    hparams                    hp;
    std::string                arch_name;
    ggml_tensor              * tok_embd    = nullptr;  // [n_embd, n_vocab]
    ggml_tensor              * output_norm = nullptr;  // [n_embd]
    ggml_tensor              * output      = nullptr;  // [n_embd, n_vocab]; == tok_embd when tied
    std::vector<layer_weights> layers;

    ggml_context             * meta   = nullptr;  // tensor metadata from gguf (shapes only)

    // Where the layers run (CPU, or offload devices: devices.h), and the
    // weights' storage: one ggml context and buffer per buffer type, as
    // llama.cpp's loader keeps them (plain CPU memory; ggml's CPU "extra"
    // type that repacks matrices into the layouts its faster kernels read;
    // each offload device's memory).
    device_map devices;
    struct weight_store {
        ggml_backend_buffer_type_t buft = nullptr;
        ggml_context             * ctx  = nullptr;
        ggml_backend_buffer_t      buf  = nullptr;
    };
    std::vector<weight_store>  stores;
    int                        n_repacked   = 0;  // tensors in the CPU's repacked layout
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
