// model.cpp — reads a GGUF file, validates every key and tensor we use, and
// copies the weights into the buffers of the devices they run on.
#include "model/model.h"

#include "kernels/attention.h"

#include "api/error.h"
#include "api/ggml_log.h"
#include "model/gguf_meta.h"

#include "ggml-cpu.h"
#include "gguf.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <map>
#include <set>

namespace specee {

model::~model() {
    ggml_free(meta);
}

// ---- tensor type and shape checks ------------------------------------------

// The weight types the issue asks for; ggml's CPU backend computes all of them.
static bool is_supported_weight_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K:
            return true;
        default:
            return false;
    }
}

namespace {

struct tensor_finder {
    ggml_context        * meta;
    std::set<std::string> used;

    // Finds `name` and checks its shape; `matrix` tensors may be any supported
    // weight type, vectors (norms, biases) must be F32.
    ggml_tensor * get(const std::string & name, std::initializer_list<int64_t> shape, bool required = true) {
        ggml_tensor * t = ggml_get_tensor(meta, name.c_str());
        if (t == nullptr) {
            if (required) {
                fail(SPECEE_STATUS_INVALID_MODEL, "tensor %s is missing", name.c_str());
            }
            return nullptr;
        }
        used.insert(name);
        const int n_dims = int(shape.size());
        int i = 0;
        bool ok = ggml_n_dims(t) <= n_dims;
        for (int64_t ne : shape) {
            ok = ok && t->ne[i] == ne;
            i++;
        }
        for (; i < GGML_MAX_DIMS; i++) {
            ok = ok && t->ne[i] == 1;
        }
        if (!ok) {
            std::string want, got;
            for (int64_t ne : shape) {
                want += (want.empty() ? "" : ", ") + std::to_string(ne);
            }
            for (int d = 0; d < GGML_MAX_DIMS; d++) {
                got += (got.empty() ? "" : ", ") + std::to_string(t->ne[d]);
            }
            fail(SPECEE_STATUS_INVALID_MODEL, "tensor %s has shape [%s], expected [%s]",
                 name.c_str(), got.c_str(), want.c_str());
        }
        if (n_dims == 1 && t->type != GGML_TYPE_F32) {
            fail(SPECEE_STATUS_UNSUPPORTED, "tensor %s has type %s; norms and biases must be F32",
                 name.c_str(), ggml_type_name(t->type));
        }
        if (!is_supported_weight_type(t->type)) {
            fail(SPECEE_STATUS_UNSUPPORTED, "tensor %s has type %s, which libspecee does not run",
                 name.c_str(), ggml_type_name(t->type));
        }
        return t;
    }
};

} // namespace

// ---- hyper-parameters -------------------------------------------------------

// The architectures read_hparams accepts, for the message that refuses the others.
static const char * const k_supported_archs = "llama, qwen2, qwen3, phi3";

// Head size, rotary dimensions and RoPE scaling, from the keys llama.cpp
// reads (see docs/architectures.md).
static void read_rope(hparams & hp, const gguf_meta & kv, const std::string & a) {
    // Head size: attention.key_length where given (qwen3 heads are wider than
    // n_embd / n_head), else n_embd / n_head.
    const auto key_length = kv.get_int(a + "attention.key_length", 1, 1 << 16);
    if (!key_length && hp.n_embd % hp.n_head != 0) {
        fail(SPECEE_STATUS_INVALID_MODEL, "embedding_length %d is not a multiple of head_count %d", hp.n_embd, hp.n_head);
    }
    hp.n_embd_head = key_length ? int32_t(*key_length) : hp.n_embd / hp.n_head;
    const auto value_length = kv.get_int(a + "attention.value_length", 1, 1 << 16);
    if (value_length && *value_length != hp.n_embd_head) {
        fail(SPECEE_STATUS_UNSUPPORTED, "%sattention.value_length = %lld differs from key_length %d; libspecee "
             "needs equal K and V head sizes", a.c_str(), (long long) *value_length, hp.n_embd_head);
    }
    if (int64_t(hp.n_embd_head) * hp.n_head > (1 << 18)) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head size %d times head_count %d is too large", hp.n_embd_head, hp.n_head);
    }

    // Rotary dimensions: llama and qwen3 rotate whole heads (llama.cpp
    // refuses less for llama); phi3 may rotate a leading part.
    hp.n_rot = int32_t(kv.get_int(a + "rope.dimension_count", 1, 1 << 16).value_or(hp.n_embd_head));
    const bool partial_ok = hp.architecture == arch::phi3;
    if (hp.n_rot > hp.n_embd_head || (!partial_ok && hp.n_rot != hp.n_embd_head)) {
        fail(SPECEE_STATUS_UNSUPPORTED, "%srope.dimension_count = %d with head size %d: %s", a.c_str(), hp.n_rot,
             hp.n_embd_head, partial_ok ? "cannot rotate more than a head" : "this architecture rotates whole heads");
    }
    if (hp.n_rot % 2 != 0) {
        fail(SPECEE_STATUS_INVALID_MODEL, "%srope.dimension_count = %d is odd; RoPE needs pairs", a.c_str(), hp.n_rot);
    }

    hp.rope_base  = float(kv.get_float(a + "rope.freq_base", 1e-3, 1e12).value_or(10000.0));
    hp.n_ctx_orig = int32_t(kv.get_int(a + "rope.scaling.original_context_length", 1, 1 << 24).value_or(hp.n_ctx_train));
    hp.rope_attn_factor = float(kv.get_float(a + "rope.scaling.attn_factor", 1e-6, 1e6).value_or(1.0));

    // Scaling: "none", "linear" and "longrope" (factor tensors, bound in
    // bind_tensors) run; YaRN does not. As in llama.cpp, a factor divides the
    // positions under any type but "none", and no type means linear.
    const std::string type = kv.get_string(a + "rope.scaling.type").value_or("linear");
    auto factor = kv.get_float(a + "rope.scaling.factor", 0.0, 1e6);
    if (!factor) {
        factor = kv.get_float(a + "rope.scale_linear", 0.0, 1e6);  // the older key
    }
    if (type != "none" && factor && *factor != 0.0) {
        hp.rope_freq_scale = float(1.0 / *factor);
    }
    if (type != "none" && type != "linear" && type != "longrope") {
        fail(SPECEE_STATUS_UNSUPPORTED, "%srope.scaling.type '%s' is not supported (none, linear, longrope are)",
             a.c_str(), type.c_str());
    }
}

static void read_hparams(model & m, const gguf_meta & kv) {
    const auto arch_name = kv.get_string("general.architecture");
    if (!arch_name) {
        fail(SPECEE_STATUS_INVALID_MODEL, "general.architecture is missing");
    }
    hparams & hp = m.hp;
    m.arch_name = *arch_name;
    // RoPE pairing: llama GGUFs store Q/K permuted for (2i, 2i + 1) pairs,
    // the others rotate (i, i + n_rot/2) (ref: llama.cpp llama_model_rope_type()).
    if (m.arch_name == "llama") {
        hp.architecture = arch::llama;
        hp.rope_mode    = GGML_ROPE_TYPE_NORMAL;
    } else if (m.arch_name == "qwen2") {
        hp.architecture = arch::qwen2;
        hp.rope_mode    = GGML_ROPE_TYPE_NEOX;
    } else if (m.arch_name == "qwen3") {
        hp.architecture = arch::qwen3;
        hp.rope_mode    = GGML_ROPE_TYPE_NEOX;
    } else if (m.arch_name == "phi3") {
        hp.architecture = arch::phi3;
        hp.rope_mode    = GGML_ROPE_TYPE_NEOX;
    } else {
        fail(SPECEE_STATUS_UNSUPPORTED, "architecture '%s' is not supported (%s are)", m.arch_name.c_str(),
             k_supported_archs);
    }
    const std::string a = m.arch_name + ".";

    hp.n_layer     = int32_t(kv.require_int(a + "block_count",              1, 1024));
    hp.n_embd      = int32_t(kv.require_int(a + "embedding_length",         1, 1 << 16));
    hp.n_ff        = int32_t(kv.require_int(a + "feed_forward_length",      1, 1 << 18));
    hp.n_head      = int32_t(kv.require_int(a + "attention.head_count",     1, 1024));
    hp.n_head_kv   = int32_t(kv.get_int(a + "attention.head_count_kv",      1, 1024).value_or(hp.n_head));
    hp.n_ctx_train = int32_t(kv.get_int(a + "context_length",               1, 1 << 24).value_or(2048));
    hp.rms_eps     = float(kv.get_float(a + "attention.layer_norm_rms_epsilon", 1e-12, 1.0).value_or(1e-5));

    if (hp.n_head % hp.n_head_kv != 0) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head_count %d is not a multiple of head_count_kv %d", hp.n_head, hp.n_head_kv);
    }
    read_rope(hp, kv, a);

    const auto n_tokens = kv.array_size("tokenizer.ggml.tokens");
    hp.n_vocab = int32_t(kv.get_int(a + "vocab_size", 1, 1 << 24).value_or(n_tokens ? int64_t(*n_tokens) : 0));
    if (n_tokens && int64_t(*n_tokens) != hp.n_vocab) {
        fail(SPECEE_STATUS_INVALID_MODEL, "vocab_size %d differs from the %zu tokenizer tokens", hp.n_vocab, *n_tokens);
    }
    hp.bos = int32_t(kv.get_int("tokenizer.ggml.bos_token_id", 0, INT32_MAX).value_or(-1));
    hp.eos = int32_t(kv.get_int("tokenizer.ggml.eos_token_id", 0, INT32_MAX).value_or(-1));
}

// ---- tensors ----------------------------------------------------------------

static void bind_tensors(model & m) {
    hparams & hp = m.hp;
    tensor_finder tf{m.meta, {}};

    if (hp.n_vocab == 0) {
        // No vocabulary size in the metadata: take it from the embedding matrix.
        ggml_tensor * t = ggml_get_tensor(m.meta, "token_embd.weight");
        if (t == nullptr || t->ne[1] < 1 || t->ne[1] > (1 << 24)) {
            fail(SPECEE_STATUS_INVALID_MODEL, "cannot tell the vocabulary size");
        }
        hp.n_vocab = int32_t(t->ne[1]);
    }
    if (hp.bos >= hp.n_vocab || hp.eos >= hp.n_vocab) {
        fail(SPECEE_STATUS_INVALID_MODEL, "bos/eos token id (%d/%d) outside the vocabulary of %d", hp.bos, hp.eos, hp.n_vocab);
    }

    const int64_t E = hp.n_embd, Q = hp.n_embd_q(), KV = hp.n_embd_kv(), F = hp.n_ff, V = hp.n_vocab;
    const int64_t HD = hp.n_embd_head, ROT2 = hp.n_rot / 2;
    m.tok_embd    = tf.get("token_embd.weight", {E, V});
    m.output_norm = tf.get("output_norm.weight", {E});
    m.output      = tf.get("output.weight", {E, V}, /*required=*/false);
    if (m.output == nullptr) {
        m.output = m.tok_embd;  // tied embeddings (SmolLM2, small Qwen2.5)
    }
    // RoPE frequency factors: Llama 3.1+ write rope_freqs, longrope models
    // (phi3 128k) a long and a short set; llama.cpp's names, one copy for all layers.
    m.rope_freqs = tf.get("rope_freqs.weight", {ROT2}, false);
    m.rope_long  = tf.get("rope_factors_long.weight", {ROT2}, false);
    m.rope_short = tf.get("rope_factors_short.weight", {ROT2}, false);
    if ((m.rope_long == nullptr) != (m.rope_short == nullptr) || (m.rope_freqs && m.rope_long)) {
        fail(SPECEE_STATUS_INVALID_MODEL, "RoPE factors must be rope_freqs.weight alone or both "
             "rope_factors_long.weight and rope_factors_short.weight");
    }

    const bool biases  = hp.architecture == arch::qwen2;
    const bool qk_norm = hp.architecture == arch::qwen3;
    const bool phi3    = hp.architecture == arch::phi3;
    m.layers.resize(size_t(hp.n_layer));
    for (int il = 0; il < hp.n_layer; il++) {
        layer_weights & L = m.layers[size_t(il)];
        const std::string p = "blk." + std::to_string(il) + ".";
        L.attn_norm = tf.get(p + "attn_norm.weight",   {E});
        // phi3 GGUFs fuse Q, K and V into one matrix (llama.cpp also accepts them apart)
        L.wqkv      = phi3 ? tf.get(p + "attn_qkv.weight", {E, Q + 2 * KV}, false) : nullptr;
        if (L.wqkv == nullptr) {
            L.wq    = tf.get(p + "attn_q.weight",      {E, Q});
            L.wk    = tf.get(p + "attn_k.weight",      {E, KV});
            L.wv    = tf.get(p + "attn_v.weight",      {E, KV});
        }
        L.wo        = tf.get(p + "attn_output.weight", {Q, E});
        L.bq        = tf.get(p + "attn_q.bias",        {Q},  biases);
        L.bk        = tf.get(p + "attn_k.bias",        {KV}, biases);
        L.bv        = tf.get(p + "attn_v.bias",        {KV}, biases);
        L.q_norm    = tf.get(p + "attn_q_norm.weight", {HD}, qk_norm);
        L.k_norm    = tf.get(p + "attn_k_norm.weight", {HD}, qk_norm);
        L.ffn_norm  = tf.get(p + "ffn_norm.weight",    {E});
        L.ffn_gate  = phi3 ? nullptr : tf.get(p + "ffn_gate.weight", {E, F});
        L.ffn_up    = tf.get(p + "ffn_up.weight",      {E, phi3 ? 2 * F : F});  // phi3: gate rows, then up rows
        L.ffn_down  = tf.get(p + "ffn_down.weight",    {F, E});
        if (!biases && (L.bq || L.bk || L.bv)) {
            fail(SPECEE_STATUS_INVALID_MODEL, "layer %d has attention biases, which architecture %s has not", il,
                 m.arch_name.c_str());
        }
        if (!qk_norm && (L.q_norm || L.k_norm)) {
            fail(SPECEE_STATUS_INVALID_MODEL, "layer %d has Q/K norms, which architecture %s has not", il,
                 m.arch_name.c_str());
        }
    }
    // Layers beyond block_count would mean the metadata lies about the depth.
    const std::string next = "blk." + std::to_string(hp.n_layer) + ".attn_norm.weight";
    if (ggml_get_tensor(m.meta, next.c_str()) != nullptr) {
        fail(SPECEE_STATUS_INVALID_MODEL, "the file holds more layers than block_count = %d", hp.n_layer);
    }
    // A tensor we do not bind is a part of the model we would silently skip
    // (a bias, a MoE router, a norm another architecture adds): refuse it.
    for (ggml_tensor * t = ggml_get_first_tensor(m.meta); t; t = ggml_get_next_tensor(m.meta, t)) {
        if (tf.used.count(ggml_get_name(t)) == 0) {
            fail(SPECEE_STATUS_UNSUPPORTED, "tensor %s is not part of architecture %s as libspecee runs it",
                 ggml_get_name(t), m.arch_name.c_str());
        }
    }
}

// ---- weight placement -------------------------------------------------------

// Every tensor pointer of the model, for remapping.
static std::vector<ggml_tensor **> weight_slots(model & m) {
    std::vector<ggml_tensor **> v = {&m.tok_embd, &m.output_norm, &m.output, &m.rope_freqs, &m.rope_long,
                                     &m.rope_short};
    for (auto & L : m.layers) {
        for (ggml_tensor ** t : {&L.attn_norm, &L.wqkv, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv,
                                 &L.q_norm, &L.k_norm, &L.ffn_norm, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) {
            v.push_back(t);
        }
    }
    return v;
}

// The CPU device's extra buffer types (ggml's repacked layouts: AMX, AVX
// repacks, ...), in ggml's order of preference.
static std::vector<ggml_backend_buffer_type_t> cpu_extra_buffer_types() {
    std::vector<ggml_backend_buffer_type_t> out;
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    auto get_extra = dev ? (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
                               ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts")
                         : nullptr;
    for (ggml_backend_buffer_type_t * buft = get_extra ? get_extra(dev) : nullptr; buft && *buft; buft++) {
        out.push_back(*buft);
    }
    return out;
}

static bool is_amx(ggml_backend_buffer_type_t buft) {
    return std::strcmp(ggml_backend_buft_name(buft), "AMX") == 0;
}

// Whether the CPU runs a product of n_tokens tokens with weight w held in
// buffer type `buft`. Asked the way llama.cpp asks: a mock product whose
// weight sits in a (zero-size) buffer of that type.
static bool product_supported(ggml_backend_buffer_type_t buft, const ggml_tensor * w, int64_t n_tokens) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_init_params ip = {ggml_tensor_overhead() * 4, nullptr, true};
    std::unique_ptr<ggml_context, decltype(&ggml_free)> tmp(ggml_init(ip), ggml_free);
    ggml_tensor * wt = ggml_dup_tensor(tmp.get(), w);
    ggml_tensor * op = ggml_mul_mat(tmp.get(), wt, ggml_new_tensor_2d(tmp.get(), GGML_TYPE_F32, w->ne[0], n_tokens));
    ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
    wt->buffer = dummy;
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    ggml_backend_buffer_free(dummy);
    return ok;
}

// The CPU extra buffer type that can hold `w` as the weight of every product
// (prompts included), or nullptr. Never the AMX one: its multi-token kernels
// fault on some AMX machines (docs/results.md, "Plain decoding against `llama-bench`");
// place_decode_copies uses it for single-token graphs only.
static ggml_backend_buffer_type_t repack_buffer_type(const ggml_tensor * w) {
    for (ggml_backend_buffer_type_t buft : cpu_extra_buffer_types()) {
        if (!is_amx(buft) && product_supported(buft, w, 512)) {
            return buft;
        }
    }
    return nullptr;
}

// The matrices of a layer (the weights of its products; null where absent).
static std::array<ggml_tensor **, 8> matrix_slots(layer_weights & L) {
    return {&L.wqkv, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down};
}

// On AMX CPUs: copies of the matrices (and the output) in the AMX layout for
// single-token graphs (model::decode_layers). Same names as the plain ones,
// so read_weights fills both copies from the file.
static void place_decode_copies(model & m, size_t n_tensors) {
    const std::vector<ggml_backend_buffer_type_t> extra = cpu_extra_buffer_types();
    const auto found = std::find_if(extra.begin(), extra.end(), is_amx);
    if (found == extra.end()) {
        return;
    }
    ggml_backend_buffer_type_t amx = *found;
    auto amx_copy = [&](ggml_tensor * t) {
        if (t == nullptr || !product_supported(amx, t, 1)) {
            return t;
        }
        ggml_tensor * copy = ggml_dup_tensor(m.weights.context_for(amx, n_tensors + 2), t);
        ggml_set_name(copy, ggml_get_name(t));
        m.n_decode_copies++;
        return copy;
    };
    m.decode_layers = m.layers;
    for (layer_weights & L : m.decode_layers) {
        for (ggml_tensor ** w : matrix_slots(L)) {
            *w = amx_copy(*w);
        }
    }
    m.decode_output = amx_copy(m.output);
}

// The layer a tensor of `m` belongs to, or -1 (embeddings, output).
static int layer_of(const model & m, const ggml_tensor * t) {
    for (size_t il = 0; il < m.layers.size(); il++) {
        const layer_weights & L = m.layers[il];
        for (const ggml_tensor * w : {L.attn_norm, L.wqkv, L.wq, L.wk, L.wv, L.wo, L.bq, L.bk, L.bv, L.q_norm,
                                      L.k_norm, L.ffn_norm, L.ffn_gate, L.ffn_up, L.ffn_down}) {
            if (w != nullptr && w == t) {
                return int(il);
            }
        }
    }
    return -1;
}

// Decides where each tensor lives (its layer's device; on the CPU, the
// repacked layout where ggml has one for it), allocates every store, and
// points the model at the new tensors.
static void place_weights(model & m, bool allow_repack, bool amx_decode) {
    std::set<const ggml_tensor *> matmul_weights;
    for (auto & L : m.layers) {
        for (ggml_tensor ** t : matrix_slots(L)) {
            if (*t != nullptr) {
                matmul_weights.insert(*t);
            }
        }
    }
    // The output matrix stays plain: early exit reads candidate rows of it
    // with get_rows, which repacked layouts do not support.

    size_t n_tensors = 0;
    for (ggml_tensor * t = ggml_get_first_tensor(m.meta); t; t = ggml_get_next_tensor(m.meta, t)) {
        n_tensors++;
    }
    ggml_backend_buffer_type_t cpu = ggml_backend_cpu_buffer_type();
    ggml_backend_buffer_type_t repack_buft = nullptr;
    std::map<const ggml_tensor *, ggml_tensor *> moved;
    const bool tied = m.output == m.tok_embd;
    for (ggml_tensor * t = ggml_get_first_tensor(m.meta); t; t = ggml_get_next_tensor(m.meta, t)) {
        const int il = layer_of(m, t);
        ggml_backend_buffer_type_t buft = il >= 0 ? m.devices.layer_buft(il) : nullptr;
        if ((t == m.output && !tied) || t == m.output_norm) {
            buft = m.devices.output_buft();
        }
        if (buft == nullptr && allow_repack && matmul_weights.count(t)) {
            buft = repack_buffer_type(t);
            if (buft && repack_buft && buft != repack_buft) {
                buft = nullptr;  // one extra buffer type is all we keep
            }
            if (buft) {
                repack_buft = buft;
                m.n_repacked++;
            }
        }
        ggml_tensor * copy = ggml_dup_tensor(m.weights.context_for(buft ? buft : cpu, n_tensors + 2), t);
        ggml_set_name(copy, ggml_get_name(t));
        moved[t] = copy;
    }
    ggml_tensor * output_copy = nullptr;
    if (tied && m.devices.output_dev) {
        // the output runs on the device, the embedding lookup on the CPU: two copies
        output_copy = ggml_dup_tensor(m.weights.context_for(m.devices.output_buft(), n_tensors + 2), m.tok_embd);
        ggml_set_name(output_copy, "output.weight (tied)");
    }
    for (ggml_tensor ** slot : weight_slots(m)) {
        if (*slot) {
            *slot = moved.at(*slot);
        }
    }
    if (output_copy) {
        m.output        = output_copy;
        m.output_copied = true;
    }
    if (allow_repack && amx_decode) {
        place_decode_copies(m, n_tensors);
    }

    m.weights.allocate("the weights", GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
}

// ---- weight data ------------------------------------------------------------

// Every placed copy of the tensor called `name` (a tied output matrix
// offloaded has two: the embeddings and the output).
static std::vector<ggml_tensor *> placed(const model & m, const char * name) {
    std::vector<ggml_tensor *> out;
    for (const tensor_stores::store & s : m.weights.all()) {
        if (ggml_tensor * t = ggml_get_tensor(s.ctx, name)) {
            out.push_back(t);
        }
    }
    if (m.output_copied && std::strcmp(name, "token_embd.weight") == 0) {
        out.push_back(m.output);
    }
    return out;
}

// A cheap identity for head files: FNV-1a 64 over the bytes of three norm
// vectors (final norm, first and last layer norms), which differ between any
// two trained models of the same shape. Read from the file's bytes, since
// the tensors may live on another device.
static void hash_bytes(uint64_t & h, const uint8_t * p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
}

// The weight types specee's kernels cover, as theirs.
static bool kernel_type(ggml_type t, kernels::weight_type & out) {
    switch (t) {
        case GGML_TYPE_Q4_K: out = kernels::weight_type::q4_k; return true;
        case GGML_TYPE_Q6_K: out = kernels::weight_type::q6_k; return true;
        case GGML_TYPE_Q8_0: out = kernels::weight_type::q8_0; return true;
        case GGML_TYPE_Q5_0: out = kernels::weight_type::q5_0; return true;
        case GGML_TYPE_Q4_1: out = kernels::weight_type::q4_1; return true;
        default:             return false;
    }
}

// The matrices specee's kernels take (kernels = SPECEE_KERNELS_SPECEE): the
// layers' matrices and the output matrix of a type they cover, on a CPU
// that runs them, in a model that offloads nothing. Empty otherwise.
static std::set<const ggml_tensor *> matrices_to_pack(model & m, const specee_model_params & params) {
    std::set<const ggml_tensor *> out;
    if (params.kernels != SPECEE_KERNELS_SPECEE || kernels::best_isa() == kernels::isa::reference ||
        m.devices.any_offload()) {
        return out;
    }
    auto consider = [&](const ggml_tensor * t) {
        kernels::weight_type type;
        if (t != nullptr && kernel_type(t->type, type) && t->ne[1] % kernels::ROW_GROUP == 0 &&
            t->ne[0] % kernels::source_block_weights(type) == 0) {
            out.insert(t);
        }
    };
    for (auto & L : m.layers) {
        for (ggml_tensor ** t : matrix_slots(L)) {
            consider(*t);
        }
    }
    consider(m.output);
    return out;
}

static void pack_matrix(model & m, const ggml_tensor * t, const void * bytes) {
    model::packed_weight & pw = m.packed[t];
    pw.isa                    = kernels::best_isa();
    std::string          why;
    kernels::weight_type type = kernels::weight_type::q4_k;
    kernel_type(t->type, type);
    if (!kernels::repack(type, bytes, t->ne[1], t->ne[0], pw.matrix, &why)) {
        fail(SPECEE_STATUS_INTERNAL, "cannot repack %s: %s", ggml_get_name(t), why.c_str());
    }
}

// Whether the environment variable `name` is "0": the switches that turn
// off a load-time speed-up, for tests and A/B runs.
static bool switched_off(const char * name) {
    const char * value = std::getenv(name);
    return value != nullptr && std::strcmp(value, "0") == 0;
}

// The packed sets (model::packed_set): matrices of one layer that read the
// same input, all packed, with the same activation blocks.
static void group_packed(model & m) {
    const bool fold_norm = !switched_off("SPECEE_FOLD_NORMS");
    auto group = [&](std::initializer_list<const ggml_tensor *> ts) {
        model::packed_set set;
        set.rms_eps   = m.hp.rms_eps;
        set.fold_norm = fold_norm;
        for (const ggml_tensor * t : ts) {
            const model::packed_weight * pw = m.packed_for(t);
            if (pw == nullptr || (!set.parts.empty() &&
                                  kernels::takes_q8_k(pw->matrix.type) != kernels::takes_q8_k(set.parts[0]->matrix.type))) {
                return;
            }
            set.parts.push_back(pw);
        }
        m.packed_sets[*ts.begin()] = std::move(set);
    };
    for (const layer_weights & L : m.layers) {
        if (L.wq != nullptr) {
            group({L.wq, L.wk, L.wv});
        }
        if (L.ffn_gate != nullptr) {
            group({L.ffn_gate, L.ffn_up});
        }
    }
}

// The matrices of `nodes` (a decode step's product nodes, in order) moved
// into one weight_block, one after another (packed_matrix::placed): in 2 MB
// pages a step translates a few dozen addresses instead of tens of
// thousands. Decode 1.05x SmolLM2-135M, 1.06x Qwen2.5-Coder-0.5B, 1.04x
// -1.5B; loading up to 0.9 s slower on the VMs measured, which back fresh
// 2 MB pages slowly (docs/kernels.md, "Packed weights in 2 MB pages").
// SPECEE_HUGE_PAGES=0 at load leaves them where they are. Each matrix's own
// copy is freed as it moves, so loading peaks at the block plus one matrix;
// without the memory for the block the matrices stay where they are.
static void place_in_step_order(model & m, const std::vector<std::vector<const model::packed_weight *>> & nodes) {
    if (switched_off("SPECEE_HUGE_PAGES")) {
        return;
    }
    constexpr size_t align = 64;  // every matrix starts on a cache line
    auto rounded = [](size_t n) { return (n + align - 1) / align * align; };
    size_t total = 0;
    for (const auto & node : nodes) {
        for (const model::packed_weight * pw : node) {
            total += rounded(pw->matrix.n_bytes());
        }
    }
    weight_block block(total);
    if (block.data() == nullptr) {
        return;
    }
    constexpr size_t ahead = size_t(64) << 20;  // faulted in ahead of the copies, 64 MB at a time
    size_t faulted = 0;
    uint8_t * at = block.data();
    for (const auto & node : nodes) {
        for (const model::packed_weight * part : node) {
            kernels::packed_matrix & w = const_cast<model::packed_weight *>(part)->matrix;
            if (w.placed != nullptr) {  // a matrix in two nodes (none in today's graphs)
                continue;
            }
            for (const size_t need = size_t(at - block.data()) + w.n_bytes(); faulted < need; faulted += ahead) {
                block.fault_in(faulted, ahead);
            }
            std::memcpy(at, w.data.data(), w.n_bytes());
            w.placed = at;
            std::vector<uint8_t>().swap(w.data);
            at += rounded(w.n_bytes());
        }
    }
    m.packed_block = std::move(block);
}

// Each product node's successor in a decode step (packed_weight::next):
// per layer Q/K/V, the attention output, gate/up, down; then the output.
static void link_packed_order(model & m) {
    std::vector<std::vector<const model::packed_weight *>> nodes;
    auto add = [&](std::initializer_list<const ggml_tensor *> ts) {
        if (const model::packed_set * set = m.packed_set_for(*ts.begin())) {
            nodes.push_back(set->parts);
            return;
        }
        for (const ggml_tensor * t : ts) {
            if (const model::packed_weight * pw = m.packed_for(t)) {
                nodes.push_back({pw});
            }
        }
    };
    for (const layer_weights & L : m.layers) {
        add({L.wqkv});
        add({L.wq, L.wk, L.wv});
        add({L.wo});
        add({L.ffn_gate, L.ffn_up});
        add({L.ffn_down});
    }
    add({m.output});
    for (size_t i = 0; i + 1 < nodes.size(); ++i) {
        const_cast<model::packed_weight *>(nodes[i].front())->next = nodes[i + 1];
    }
    place_in_step_order(m, nodes);
}

static void read_weights(model & m, gguf_context * gctx, FILE * f, bool check,
                         const std::set<const ggml_tensor *> & to_pack) {
    const uint64_t data_offset = gguf_get_data_offset(gctx);
    const int64_t  n_tensors   = gguf_get_n_tensors(gctx);
    const std::string fp_names[3] = {ggml_get_name(m.output_norm), ggml_get_name(m.layers.front().attn_norm),
                                     ggml_get_name(m.layers.back().ffn_norm)};
    std::vector<uint8_t> fp_bytes[3];
    std::vector<uint8_t> staging;  // for buffers that are not plain host memory
    for (int64_t i = 0; i < n_tensors; i++) {
        const char * name = gguf_get_tensor_name(gctx, i);
        const std::vector<ggml_tensor *> copies = placed(m, name);
        if (copies.empty()) {
            fail(SPECEE_STATUS_INTERNAL, "tensor %s vanished from the weight contexts", name);
        }
        ggml_tensor * t = copies.front();
        const uint64_t offset = data_offset + gguf_get_tensor_offset(gctx, i);
        const uint64_t nbytes = ggml_nbytes(t);  // inside the file: check_tensor_extents
        // plain CPU memory is read into directly; repacked or device memory through ggml
        const bool direct = copies.size() == 1 && ggml_backend_buffer_is_host(t->buffer) &&
                            ggml_backend_buffer_get_type(t->buffer) == ggml_backend_cpu_buffer_type();
        void * dst = t->data;
        if (!direct) {
            staging.resize(nbytes);
            dst = staging.data();
        }
        if (fseeko(f, off_t(offset), SEEK_SET) != 0 || fread(dst, 1, nbytes, f) != nbytes) {
            fail(SPECEE_STATUS_IO_ERROR, "cannot read tensor %s", name);
        }
        if (check && !ggml_validate_row_data(t->type, dst, nbytes)) {
            fail(SPECEE_STATUS_INVALID_MODEL, "tensor %s holds NaN/Inf or invalid block scales", name);
        }
        if (!direct) {
            for (ggml_tensor * c : copies) {
                ggml_backend_tensor_set(c, dst, 0, nbytes);
            }
        }
        if (to_pack.count(t)) {
            pack_matrix(m, t, dst);
        }
        for (int k = 0; k < 3; k++) {
            if (fp_names[k] == name) {
                fp_bytes[k].assign(static_cast<const uint8_t *>(dst), static_cast<const uint8_t *>(dst) + nbytes);
            }
        }
        m.n_params   += uint64_t(ggml_nelements(t));
        m.size_bytes += nbytes;
    }
    uint64_t h = 1469598103934665603ull;
    for (const auto & bytes : fp_bytes) {
        hash_bytes(h, bytes.data(), bytes.size());
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long) h);
    m.fingerprint = buf;
}

void load_model(model & m, const char * path, const specee_model_params & params) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fail(SPECEE_STATUS_IO_ERROR, "cannot open %s: no such file", path);
    }
    if (!S_ISREG(st.st_mode)) {
        fail(SPECEE_STATUS_IO_ERROR, "%s is not a regular file", path);
    }

    gguf_context * gctx = nullptr;
    {
        log_capture log;
        gguf_init_params gp = {/*no_alloc=*/true, /*ctx=*/&m.meta};
        gctx = gguf_init_from_file(path, gp);
        if (gctx == nullptr) {
            const std::string why = log.text();
            fail(SPECEE_STATUS_INVALID_MODEL, "%s is not a valid GGUF file%s%s", path,
                 why.empty() ? "" : ": ", why.c_str());
        }
    }
    std::unique_ptr<gguf_context, decltype(&gguf_free)> gctx_owner(gctx, gguf_free);

    read_hparams(m, gguf_meta(gctx));
    bind_tensors(m);

    std::unique_ptr<FILE, decltype(&fclose)> f(std::fopen(path, "rb"), fclose);
    if (!f) {
        fail(SPECEE_STATUS_IO_ERROR, "cannot open %s", path);
    }
    check_tensor_extents(gctx, uint64_t(st.st_size));  // before allocating what they declare
    m.devices = plan_devices(m.hp.n_layer, params.n_gpu_layers, params.rpc_servers);
    // The CPU layers of a partly offloaded model stay in the plain layout:
    // ggml's repacked layouts are not exercised under its scheduler here.
    if (params.kernels != SPECEE_KERNELS_GGML && params.kernels != SPECEE_KERNELS_SPECEE) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "kernels = %d: expected SPECEE_KERNELS_GGML (0) or SPECEE_KERNELS_SPECEE (1)",
             int(params.kernels));
    }
    if (params.kernels == SPECEE_KERNELS_SPECEE && params.amx_decode) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "amx_decode and kernels = SPECEE_KERNELS_SPECEE both choose the "
             "single-token kernels: ask for one of them");
    }
    place_weights(m, params.use_repack && !m.devices.any_offload(), params.amx_decode);
    read_weights(m, gctx, f.get(), params.check_tensors, matrices_to_pack(m, params));
    group_packed(m);
    link_packed_order(m);
    m.attention_isa    = kernels::best_isa();
    m.specee_attention = params.kernels == SPECEE_KERNELS_SPECEE && m.attention_isa != kernels::isa::reference &&
                         !m.devices.any_offload() && m.hp.n_embd_head % kernels::ATTENTION_LANES == 0;
}

} // namespace specee
