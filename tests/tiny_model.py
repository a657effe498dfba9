"""Tiny random Llama / Qwen2 / Qwen3 / Phi-3 GGUF models for unit tests, written with `gguf`.

Weights are quantized by ggml itself (`ggml_quantize_chunk` from the ggml
that libspecee is built with, through cffi), so every quant type the engine runs can
be tested; the numpy reference (reference.py) dequantizes them with the
`gguf` package's own, independent code.

A model carries the tiny test vocabulary (tiny_vocab.py), or a real one: the
tokenizer metadata of one of llama.cpp's ggml-vocab-*.gguf files, with the
embedding and output rows sized to it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import cffi
import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from specee.gguf_meta import read_gguf_metadata
from tiny_vocab import add_tiny_vocab, tiny_vocab


@dataclass(frozen=True)
class TinyConfig:
    arch: str = "llama"          # "llama", "qwen2", "qwen3" or "phi3"
    qtype: str = "F32"           # type of the weight matrices
    tied: bool = True            # output matrix shared with the embeddings
    n_layer: int = 3
    n_embd: int = 256            # K-quants need rows of 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 2
    n_ctx_train: int = 256
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    # Written only when set (the defaults leave the older configs' files as they were):
    head_dim: int | None = None      # attention.key_length/value_length (qwen3: wider than n_embd / n_head)
    rope_dim: int | None = None      # rope.dimension_count (phi3 may rotate part of a head)
    rope_freqs: bool = False         # Llama 3.1-style rope_freqs.weight frequency factors
    rope_scaling: str | None = None  # rope.scaling.type: "linear" (with rope_factor) or "longrope"
    rope_factor: float = 1.0         # rope.scaling.factor
    rope_orig_ctx: int | None = None  # rope.scaling.original_context_length (longrope switches past it)
    rope_attn_factor: float | None = None  # rope.scaling.attn_factor
    vocab: str | None = None         # a GGUF whose tokenizer.* keys the model carries (None: the tiny vocabulary)
    chat_template: str | None = None  # a Jinja file written as tokenizer.chat_template (over the vocabulary's own)

    @property
    def n_vocab(self) -> int:
        if self.vocab is not None:
            return len(tokenizer_metadata(self.vocab)["tokenizer.ggml.tokens"])
        return len(tiny_vocab()[0])

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def n_rot(self) -> int:
        return self.rope_dim or self.hd


# ---- quantization through ggml ---------------------------------------------

_ffi = cffi.FFI()
_ffi.cdef("""
    size_t ggml_quantize_chunk(int type, const float * src, void * dst, int64_t start,
                               int64_t nrows, int64_t n_per_row, const float * imatrix);
    size_t ggml_row_size(int type, int64_t ne);
""")
_ggml = None


def _ggml_lib():
    global _ggml
    if _ggml is None:
        from specee._ffi import LIBRARY_PATH

        # installed: next to libspecee.so; a CMake build tree: under ggml/src
        root = LIBRARY_PATH.parent
        candidates = sorted(root.glob("libggml-base.so*")) or sorted(root.glob("ggml/src/libggml-base.so*"))
        if not candidates:
            raise RuntimeError(f"libggml-base.so not found next to {LIBRARY_PATH}")
        _ggml = _ffi.dlopen(os.fspath(candidates[0]))
    return _ggml


def quantize(w: np.ndarray, qtype: QT) -> np.ndarray:
    """[rows, cols] float32 -> [rows, row_bytes] uint8 in ggml's `qtype` layout."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, cols = w.shape
    lib = _ggml_lib()
    row_bytes = int(lib.ggml_row_size(int(qtype), cols))
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), _ffi.from_buffer("float[]", w), _ffi.from_buffer(out),
                                      0, rows, cols, _ffi.NULL)
    assert written == out.nbytes
    return out


def _add_matrix(writer: gguf.GGUFWriter, name: str, w: np.ndarray, qtype: QT) -> None:
    """Adds a weight matrix stored as numpy [rows = ne1, cols = ne0]."""
    if qtype == QT.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == QT.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(w, qtype), raw_dtype=qtype)


# ---- a real vocabulary ------------------------------------------------------

# numpy element types of GGUF arrays; integer scalars are written as uint32,
# the type llama.cpp reads token ids and counts with
_ARRAY_TYPES = {np.dtype(np.float32): gguf.GGUFValueType.FLOAT32, np.dtype(np.int32): gguf.GGUFValueType.INT32,
                np.dtype(np.uint32): gguf.GGUFValueType.UINT32, np.dtype(np.uint8): gguf.GGUFValueType.UINT8}


@functools.lru_cache(maxsize=4)
def tokenizer_metadata(path: str) -> dict:
    """The tokenizer.* keys of the GGUF at `path` (read once per session)."""
    return {k: v for k, v in read_gguf_metadata(path).items() if k.startswith("tokenizer.")}


def add_metadata(writer: gguf.GGUFWriter, key: str, value) -> None:
    """Writes a value as read by read_gguf_metadata back with its GGUF type."""
    V = gguf.GGUFValueType
    if isinstance(value, np.ndarray):
        writer.add_key_value(key, value.tolist(), V.ARRAY, sub_type=_ARRAY_TYPES[value.dtype])
    elif isinstance(value, list):
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.STRING)
    else:
        vtype = {bool: V.BOOL, int: V.UINT32, float: V.FLOAT32, str: V.STRING}[type(value)]
        writer.add_key_value(key, value, vtype)


# ---- the model --------------------------------------------------------------


def random_weights(cfg: TinyConfig) -> dict[str, np.ndarray]:
    """Float32 weights, numpy shape [out, in] for matrices (ggml ne = [in, out])."""
    rng = np.random.default_rng(cfg.seed)
    hd = cfg.hd
    q_dim, kv_dim = hd * cfg.n_head, hd * cfg.n_head_kv

    def mat(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((cfg.n_vocab, cfg.n_embd)).astype(np.float32),
        "output_norm.weight": norm(cfg.n_embd),
    }
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, cfg.n_embd)

    def factors() -> np.ndarray:
        # per rotation frequency divisors, like Llama 3.1's (1 for fast pairs up to 8 for slow ones)
        return np.linspace(1.0, 8.0, cfg.n_rot // 2).astype(np.float32) * (1.0 + 0.1 * rng.random(cfg.n_rot // 2)).astype(np.float32)

    if cfg.rope_freqs:
        w["rope_freqs.weight"] = factors()
    if cfg.rope_scaling == "longrope":
        w["rope_factors_long.weight"] = 2.0 * factors()  # long contexts stretch slow pairs further
        w["rope_factors_short.weight"] = factors()
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        w[p + "attn_norm.weight"] = norm(cfg.n_embd)
        q, k, v = mat(q_dim, cfg.n_embd), mat(kv_dim, cfg.n_embd), mat(kv_dim, cfg.n_embd)
        if cfg.arch == "phi3":  # one matrix: Q rows, then K, then V
            w[p + "attn_qkv.weight"] = np.concatenate([q, k, v])
        else:
            w[p + "attn_q.weight"], w[p + "attn_k.weight"], w[p + "attn_v.weight"] = q, k, v
        w[p + "attn_output.weight"] = mat(cfg.n_embd, q_dim)
        if cfg.arch == "qwen2":
            w[p + "attn_q.bias"] = (0.1 * rng.standard_normal(q_dim)).astype(np.float32)
            w[p + "attn_k.bias"] = (0.1 * rng.standard_normal(kv_dim)).astype(np.float32)
            w[p + "attn_v.bias"] = (0.1 * rng.standard_normal(kv_dim)).astype(np.float32)
        if cfg.arch == "qwen3":
            w[p + "attn_q_norm.weight"] = norm(hd)
            w[p + "attn_k_norm.weight"] = norm(hd)
        w[p + "ffn_norm.weight"] = norm(cfg.n_embd)
        gate, up = mat(cfg.n_ff, cfg.n_embd), mat(cfg.n_ff, cfg.n_embd)
        if cfg.arch == "phi3":  # one matrix: gate rows, then up rows
            w[p + "ffn_up.weight"] = np.concatenate([gate, up])
        else:
            w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"] = gate, up
        w[p + "ffn_down.weight"] = mat(cfg.n_embd, cfg.n_ff)
    return w


def write_tiny_model(path: str | os.PathLike, cfg: TinyConfig = TinyConfig(),
                     skip_tensors: tuple[str, ...] = (), overrides: dict | None = None,
                     tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Writes the tiny model; `skip_tensors` and `overrides` (metadata key ->
    (value, GGUFValueType)) make broken variants for the bad-input tests;
    `tensors` replaces weights by name (for logits a test must control)."""
    path = Path(path)
    qtype = QT[cfg.qtype]
    overrides = dict(overrides or {})
    writer = gguf.GGUFWriter(os.fspath(path), cfg.arch)
    a = cfg.arch

    def put(key: str, value, vtype: gguf.GGUFValueType) -> None:
        if key in overrides:
            value, vtype = overrides.pop(key)
            if value is None:  # override with None: leave the key out
                return
        writer.add_key_value(key, value, vtype)

    U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    put(f"{a}.block_count", cfg.n_layer, U32)
    put(f"{a}.context_length", cfg.n_ctx_train, U32)
    put(f"{a}.embedding_length", cfg.n_embd, U32)
    put(f"{a}.feed_forward_length", cfg.n_ff, U32)
    put(f"{a}.attention.head_count", cfg.n_head, U32)
    put(f"{a}.attention.head_count_kv", cfg.n_head_kv, U32)
    put(f"{a}.rope.freq_base", cfg.rope_base, F32)
    put(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_eps, F32)
    if cfg.head_dim is not None:
        put(f"{a}.attention.key_length", cfg.head_dim, U32)
        put(f"{a}.attention.value_length", cfg.head_dim, U32)
    if cfg.rope_dim is not None:
        put(f"{a}.rope.dimension_count", cfg.rope_dim, U32)
    if cfg.rope_scaling is not None:
        put(f"{a}.rope.scaling.type", cfg.rope_scaling, gguf.GGUFValueType.STRING)
        put(f"{a}.rope.scaling.factor", cfg.rope_factor, F32)
    if cfg.rope_orig_ctx is not None:
        put(f"{a}.rope.scaling.original_context_length", cfg.rope_orig_ctx, U32)
    if cfg.rope_attn_factor is not None:
        put(f"{a}.rope.scaling.attn_factor", cfg.rope_attn_factor, F32)
    if cfg.vocab is None:
        if cfg.chat_template is not None:
            raise ValueError("chat_template is for models with a real vocabulary (vocab=...)")
        add_tiny_vocab(writer)
    else:
        for key, value in tokenizer_metadata(cfg.vocab).items():
            if key not in overrides and not (cfg.chat_template and key == "tokenizer.chat_template"):
                add_metadata(writer, key, value)
    if cfg.chat_template is not None:
        writer.add_string("tokenizer.chat_template", Path(cfg.chat_template).read_text(encoding="utf-8"))
    for key, (value, vtype) in overrides.items():  # the rest, tokenizer keys included
        writer.add_key_value(key, value, vtype)

    for name, w in {**random_weights(cfg), **(tensors or {})}.items():
        if name in skip_tensors:
            continue
        if w.ndim == 1:
            writer.add_tensor(name, w)
        else:
            _add_matrix(writer, name, w, qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
