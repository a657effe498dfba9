// heads.cpp — reads and checks a SpecEE head file (format: docs/heads.md).
#include "heads/heads.h"

#include "api/error.h"
#include "api/ggml_log.h"
#include "model/gguf_meta.h"

#include "gguf.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

namespace specee {

heads::~heads() {
    ggml_backend_buffer_free(data_buffer);
    ggml_free(data);
}

float exit_predictor::operator()(const float * x) const {
    float y = b2;
    for (int32_t j = 0; j < hidden; j++) {
        const float * row = &w1[size_t(j) * size_t(n_in)];
        float a = b1[size_t(j)];
        for (int32_t i = 0; i < n_in; i++) {
            a += row[i] * x[i];
        }
        y += w2[size_t(j)] * std::max(a, 0.0f);
    }
    return 1.0f / (1.0f + std::exp(-y));
}

namespace {

// Fails unless `t` has exactly the dimensions `ne` (the rest 1).
void check_shape(const ggml_tensor * t, const std::string & name, std::initializer_list<int64_t> ne) {
    int d = 0;
    for (int64_t n : ne) {
        if (t->ne[d++] != n) {
            fail(SPECEE_STATUS_INVALID_MODEL, "head file: tensor %s has the wrong shape", name.c_str());
        }
    }
    for (; d < GGML_MAX_DIMS; d++) {
        if (t->ne[d] != 1) {
            fail(SPECEE_STATUS_INVALID_MODEL, "head file: tensor %s has the wrong shape", name.c_str());
        }
    }
}

// An F32 tensor of the head file with exactly the shape `ne`, as floats.
std::vector<float> read_f32(ggml_context * data, const std::string & name, std::initializer_list<int64_t> ne) {
    ggml_tensor * t = ggml_get_tensor(data, name.c_str());
    if (t == nullptr) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file: tensor %s is missing", name.c_str());
    }
    if (t->type != GGML_TYPE_F32) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file: tensor %s has type %s, expected F32", name.c_str(),
             ggml_type_name(t->type));
    }
    check_shape(t, name, ne);
    std::vector<float> v(size_t(ggml_nelements(t)));
    std::memcpy(v.data(), t->data, v.size() * sizeof(float));
    for (float f : v) {
        if (!std::isfinite(f)) {
            fail(SPECEE_STATUS_INVALID_MODEL, "head file: tensor %s holds NaN/Inf", name.c_str());
        }
    }
    return v;
}

// An I32 vector tensor of n entries.
std::vector<int32_t> read_i32(ggml_context * data, const std::string & name, int64_t n) {
    ggml_tensor * t = ggml_get_tensor(data, name.c_str());
    if (t == nullptr || t->type != GGML_TYPE_I32 || ggml_nelements(t) != n || t->ne[0] != n) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file: %s must be an I32 vector of %lld entries", name.c_str(),
             (long long) n);
    }
    const auto * p = static_cast<const int32_t *>(t->data);
    return std::vector<int32_t>(p, p + n);
}

// A draft tensor with shape `ne`; vectors must be F32, matrices F32, F16,
// Q8_0 or Q4_0 (what write_heads stores).
ggml_tensor * draft_tensor(ggml_context * data, const std::string & name, std::initializer_list<int64_t> ne,
                           bool required = true) {
    ggml_tensor * t = ggml_get_tensor(data, name.c_str());
    if (t == nullptr) {
        if (required) {
            fail(SPECEE_STATUS_INVALID_MODEL, "head file: draft tensor %s is missing", name.c_str());
        }
        return nullptr;
    }
    check_shape(t, name, ne);
    const bool vector = ne.size() == 1;
    if (vector ? t->type != GGML_TYPE_F32 : !(t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 ||
                                               t->type == GGML_TYPE_Q8_0 || t->type == GGML_TYPE_Q4_0)) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file: draft tensor %s has type %s", name.c_str(), ggml_type_name(t->type));
    }
    return t;
}

void load_draft(draft_weights & d, ggml_context * data, const model & m) {
    if (ggml_get_tensor(data, "draft.fc.weight") == nullptr) {
        return;  // exit predictors only; candidates come from the caller
    }
    const hparams & hp = m.hp;
    const int64_t E = hp.n_embd, Q = hp.n_embd_q(), KV = hp.n_embd_kv();
    ggml_tensor * gate = ggml_get_tensor(data, "draft.blk.ffn_gate.weight");
    if (gate == nullptr || gate->ne[1] < 1 || gate->ne[1] > (1 << 18)) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file: draft tensor draft.blk.ffn_gate.weight is missing or bad");
    }
    d.n_ff = int32_t(gate->ne[1]);
    const int64_t F = d.n_ff;
    d.fc   = draft_tensor(data, "draft.fc.weight", {2 * E, E});
    d.fc_b = draft_tensor(data, "draft.fc.bias", {E}, false);
    layer_weights & L = d.layer;
    L.attn_norm = draft_tensor(data, "draft.blk.attn_norm.weight", {E}, false);
    L.wq        = draft_tensor(data, "draft.blk.attn_q.weight", {E, Q});
    L.wk        = draft_tensor(data, "draft.blk.attn_k.weight", {E, KV});
    L.wv        = draft_tensor(data, "draft.blk.attn_v.weight", {E, KV});
    L.wo        = draft_tensor(data, "draft.blk.attn_output.weight", {Q, E});
    L.bq        = draft_tensor(data, "draft.blk.attn_q.bias", {Q}, false);
    L.bk        = draft_tensor(data, "draft.blk.attn_k.bias", {KV}, false);
    L.bv        = draft_tensor(data, "draft.blk.attn_v.bias", {KV}, false);
    L.ffn_norm  = draft_tensor(data, "draft.blk.ffn_norm.weight", {E});
    L.ffn_gate  = draft_tensor(data, "draft.blk.ffn_gate.weight", {E, F});
    L.ffn_up    = draft_tensor(data, "draft.blk.ffn_up.weight", {E, F});
    L.ffn_down  = draft_tensor(data, "draft.blk.ffn_down.weight", {F, E});

    ggml_tensor * out = ggml_get_tensor(data, "draft.output.weight");
    if (out != nullptr) {
        const int64_t n_rows = out->ne[1];
        if (n_rows < 1 || n_rows > hp.n_vocab) {
            fail(SPECEE_STATUS_INVALID_MODEL, "head file: draft.output.weight has %lld rows", (long long) n_rows);
        }
        d.output = draft_tensor(data, "draft.output.weight", {E, n_rows});
        if (n_rows < hp.n_vocab) {
            const auto ids = read_i32(data, "draft.vocab", n_rows);
            for (int32_t id : ids) {
                if (id < 0 || id >= hp.n_vocab) {
                    fail(SPECEE_STATUS_INVALID_MODEL, "head file: draft.vocab holds token %d, outside the vocabulary", id);
                }
            }
            d.vocab = ids;
        }
    }
    d.present = true;
}

} // namespace

void load_heads(heads & h, const model & m, const char * path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        fail(SPECEE_STATUS_IO_ERROR, "cannot open head file %s", path);
    }
    ggml_context * data = nullptr;
    gguf_context * gctx = nullptr;
    // Loading with the data allocates what the tensor shapes declare, and
    // ggml aborts the process when that fails: read the metadata alone first.
    for (const bool no_alloc : {true, false}) {
        log_capture log;
        gguf_init_params gp = {no_alloc, /*ctx=*/no_alloc ? nullptr : &data};
        gctx = gguf_init_from_file(path, gp);
        if (gctx == nullptr) {
            const std::string why = log.text();
            fail(SPECEE_STATUS_INVALID_MODEL, "%s is not a valid GGUF head file%s%s", path, why.empty() ? "" : ": ",
                 why.c_str());
        }
        if (no_alloc) {
            std::unique_ptr<gguf_context, decltype(&gguf_free)> meta(gctx, gguf_free);
            check_tensor_extents(meta.get(), uint64_t(st.st_size));
        }
    }
    std::unique_ptr<gguf_context, decltype(&gguf_free)> gctx_owner(gctx, gguf_free);
    h.data = data;  // owned by h from here on
    // The tensors live in the ggml context's own memory; a CPU buffer over it
    // lets ggml's scheduler (offloaded models) see where they are.
    h.data_buffer = ggml_backend_cpu_buffer_from_ptr(ggml_get_mem_buffer(data), ggml_get_mem_size(data));
    if (h.data_buffer == nullptr) {
        fail(SPECEE_STATUS_OUT_OF_MEMORY, "cannot wrap the head file's tensors");
    }
    for (ggml_tensor * t = ggml_get_first_tensor(data); t; t = ggml_get_next_tensor(data, t)) {
        t->buffer = h.data_buffer;
    }
    const gguf_meta kv(gctx);

    if (kv.get_string("general.architecture").value_or("") != "specee-heads") {
        fail(SPECEE_STATUS_INVALID_MODEL, "%s is not a SpecEE head file (general.architecture != specee-heads)", path);
    }
    if (kv.require_int("specee.format_version", 0, 1 << 20) != 1) {
        fail(SPECEE_STATUS_UNSUPPORTED, "head file format version is not 1");
    }

    // ---- the base model it was trained for ----
    const hparams & hp = m.hp;
    const std::string base_arch = kv.get_string("specee.base.architecture").value_or("");
    const int64_t n_layer = kv.require_int("specee.base.n_layer", 1, 1024);
    const int64_t n_embd  = kv.require_int("specee.base.n_embd", 1, 1 << 16);
    const int64_t n_vocab = kv.require_int("specee.base.n_vocab", 1, 1 << 24);
    const std::string fingerprint = kv.get_string("specee.base.fingerprint").value_or("");
    if (base_arch != m.arch_name || n_layer != hp.n_layer || n_embd != hp.n_embd || n_vocab != hp.n_vocab) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "head file is for another model (%s, %lld layers, n_embd %lld, vocab %lld); this one is %s, %d layers, "
             "n_embd %d, vocab %d", base_arch.c_str(), (long long) n_layer, (long long) n_embd, (long long) n_vocab,
             m.arch_name.c_str(), hp.n_layer, hp.n_embd, hp.n_vocab);
    }
    if (fingerprint != m.fingerprint) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "head file is for another model with the same shape (weights fingerprint %s, this model's is %s)",
             fingerprint.c_str(), m.fingerprint.c_str());
    }

    // ---- exit settings and predictors ----
    h.n_cand    = int32_t(kv.get_int("specee.draft.k", 1, 8).value_or(4));
    h.threshold = float(kv.get_float("specee.exit.threshold", 0.0, 1.0).value_or(0.5));
    h.verify_full = kv.get_bool("specee.exit.verify_full").value_or(true);
    h.use_online  = kv.get_bool("specee.exit.use_online").value_or(true);
    // predictors see the features they were trained on, or none at all
    const int64_t features = kv.get_int("specee.exit.feature_version", 0, 1 << 20).value_or(1);
    if (features != SPECEE_EXIT_FEATURE_VERSION) {
        fail(SPECEE_STATUS_UNSUPPORTED,
             "head file's predictors were trained on exit features version %lld; this library computes version %d "
             "(docs/heads.md): train them again (specee train predictors, then specee pack)",
             (long long) features, SPECEE_EXIT_FEATURE_VERSION);
    }
    const int32_t n_in   = SPECEE_EXIT_FEATURES_PER_CANDIDATE * h.n_cand;
    const int32_t hidden = int32_t(kv.require_int("specee.exit.hidden", 1, 1 << 16));

    for (int32_t il = 0; il + 1 < hp.n_layer; il++) {  // the last layer is never checked
        const std::string p = "exit." + std::to_string(il) + ".";
        if (ggml_get_tensor(data, (p + "fc1.weight").c_str()) == nullptr) {
            continue;
        }
        exit_predictor e;
        e.n_in   = n_in;
        e.hidden = hidden;
        e.w1 = read_f32(data, p + "fc1.weight", {n_in, hidden});
        e.b1 = read_f32(data, p + "fc1.bias", {hidden});
        e.w2 = read_f32(data, p + "fc2.weight", {hidden});
        e.b2 = read_f32(data, p + "fc2.bias", {1})[0];
        h.predictors[il] = std::move(e);
    }
    if (h.predictors.empty()) {
        fail(SPECEE_STATUS_INVALID_MODEL, "head file has no exit predictors");
    }

    const int64_t id = gguf_find_key(gctx, "specee.exit.layers");
    if (id >= 0) {
        if (gguf_get_kv_type(gctx, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(gctx, id) != GGUF_TYPE_INT32) {
            fail(SPECEE_STATUS_INVALID_MODEL, "specee.exit.layers must be an array of int32");
        }
        const auto * layers = static_cast<const int32_t *>(gguf_get_arr_data(gctx, id));
        for (size_t i = 0; i < gguf_get_arr_n(gctx, id); i++) {
            if (h.predictors.count(layers[i]) == 0) {
                fail(SPECEE_STATUS_INVALID_MODEL, "specee.exit.layers names layer %d, which has no predictor", layers[i]);
            }
            h.offline_layers.push_back(layers[i]);
        }
    } else {
        for (const auto & kvp : h.predictors) {
            h.offline_layers.push_back(kvp.first);
        }
    }
    std::sort(h.offline_layers.begin(), h.offline_layers.end());
    h.offline_layers.erase(std::unique(h.offline_layers.begin(), h.offline_layers.end()), h.offline_layers.end());

    load_draft(h.draft, data, m);
}

} // namespace specee
