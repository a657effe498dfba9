"""Bad input gets a clear error and leaves nothing broken."""
from __future__ import annotations

import random
import struct

import gguf
import numpy as np
import pytest

from specee.engine import (
    ContextFullError,
    InvalidArgumentError,
    InvalidModelError,
    Model,
    ModelIOError,
    SpeceeError,
    UnsupportedModelError,
)
from tiny_model import TinyConfig, write_tiny_model

U32, STR = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.STRING


# ---- files --------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelIOError, match="no such file"):
        Model(tmp_path / "nope.gguf")
    with pytest.raises(ModelIOError, match="not a regular file"):
        Model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file at all" * 10, bytes(range(256)) * 4])
def test_not_a_gguf(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(InvalidModelError, match="not a valid GGUF"):
        Model(p)


def test_truncated_file(tiny_llama, tmp_path):
    data = open(tiny_llama, "rb").read()
    p = tmp_path / "cut.gguf"
    for cut in (10, 100, 3000, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises((InvalidModelError, ModelIOError)) as info:
            Model(p)
        assert str(info.value)  # a message, not just a code


def test_truncated_tensor_data_names_the_tensor(tiny_llama, tmp_path):
    data = open(tiny_llama, "rb").read()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:-1000])
    with pytest.raises(ModelIOError, match="truncated: tensor"):
        Model(p)


def test_tensors_declared_past_the_end_are_refused_before_allocating(tmp_path):
    # A 7 KB file whose tensor infos declare 51 GB of F32 weights and hold none:
    # refused as truncated, before allocating them (it was OutOfMemoryError).
    n_embd, n_ff, n_vocab = 8192, 262144, 332
    w = gguf.GGUFWriter(tmp_path / "huge.gguf", "llama")
    for key, value in (("block_count", 2), ("embedding_length", n_embd), ("feed_forward_length", n_ff),
                       ("attention.head_count", 64)):
        w.add_key_value(f"llama.{key}", value, U32)
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    for il in range(2):
        for name in ("attn_norm", "ffn_norm"):
            shapes[f"blk.{il}.{name}.weight"] = (n_embd,)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{il}.{name}.weight"] = (n_embd, n_embd)
        shapes.update({f"blk.{il}.ffn_gate.weight": (n_ff, n_embd), f"blk.{il}.ffn_up.weight": (n_ff, n_embd),
                       f"blk.{il}.ffn_down.weight": (n_embd, n_ff)})
    for name, shape in shapes.items():
        w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(tmp_path / "huge.gguf", "ab") as f:
        f.write(bytes(64))  # the data section starts, and ends at once
    with pytest.raises(ModelIOError, match="truncated: tensor token_embd.weight"):
        Model(tmp_path / "huge.gguf")


def test_malicious_header_counts(tmp_path):
    # magic, version 3, n_tensors = 2^62, n_kv = 2^62: must not allocate or crash
    p = tmp_path / "evil.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62) + b"\0" * 64)
    with pytest.raises(InvalidModelError):
        Model(p)


def test_mutated_files_never_crash(tmp_path):
    """A small fixed-seed fuzz: random byte flips and cuts of a valid model
    either load and run, or fail with a SpeceeError."""
    src = write_tiny_model(tmp_path / "src.gguf", TinyConfig(n_layer=1, qtype="Q4_0"))
    data = src.read_bytes()
    rng = random.Random(1234)
    p = tmp_path / "mutated.gguf"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        b = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 8])):
            b[rng.randrange(min(len(b), 12000))] = rng.randrange(256)
        if rng.random() < 0.2:
            b = b[: rng.randrange(len(b))]
        p.write_bytes(bytes(b))
        try:
            with Model(p) as m, m.context(n_ctx=16) as ctx:
                ctx.prefill([1, 2, 3])
            outcomes["loaded"] += 1
        except SpeceeError as e:
            assert str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0


# ---- metadata and shapes ---------------------------------------------------------


def broken(tmp_path, name, **kwargs):
    return write_tiny_model(tmp_path / f"{name}.gguf", TinyConfig(n_layer=2), **kwargs)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"llama.block_count": (None, None)}, InvalidModelError, "block_count is missing"),
        ({"llama.block_count": ("two", STR)}, InvalidModelError, "expected an integer"),
        ({"llama.attention.head_count": (0, U32)}, InvalidModelError, "outside"),
        ({"llama.attention.head_count_kv": (3, U32)}, InvalidModelError, "not a multiple"),
        ({"llama.embedding_length": (128, U32)}, InvalidModelError, "has shape"),
        ({"llama.block_count": (1, U32)}, InvalidModelError, "more layers than block_count"),
        ({"llama.block_count": (3, U32)}, InvalidModelError, "blk.2.attn_norm.weight is missing"),
        # key_length is the head size: 32 makes attn_q [256, 128], which the file's is not
        ({"llama.attention.key_length": (32, U32)}, InvalidModelError, "attn_q.weight has shape"),
        ({"llama.attention.value_length": (32, U32)}, UnsupportedModelError, "value_length = 32 differs"),
        ({"llama.rope.dimension_count": (32, U32)}, UnsupportedModelError, "rotates whole heads"),
        ({"llama.rope.scaling.type": ("yarn", STR)}, UnsupportedModelError, "'yarn' is not supported"),
        ({"llama.rope.freq_base": (float("nan"), gguf.GGUFValueType.FLOAT32)}, InvalidModelError, "outside"),
        ({"tokenizer.ggml.bos_token_id": (100000, U32)}, InvalidModelError, "outside the vocabulary"),
    ],
)
def test_bad_metadata(tmp_path, overrides, error, message):
    p = broken(tmp_path, "meta", overrides=overrides)
    with pytest.raises(error, match=message):
        Model(p)


def test_missing_tensor(tmp_path):
    p = broken(tmp_path, "missing", skip_tensors=("blk.1.attn_q.weight",))
    with pytest.raises(InvalidModelError, match="blk.1.attn_q.weight is missing"):
        Model(p)


def test_qwen2_needs_biases(tmp_path):
    cfg = TinyConfig(arch="qwen2", n_layer=1)
    p = write_tiny_model(tmp_path / "q.gguf", cfg, skip_tensors=("blk.0.attn_k.bias",))
    with pytest.raises(InvalidModelError, match="attn_k.bias is missing"):
        Model(p)


# ---- run-time arguments ---------------------------------------------------------


def test_bad_tokens_leave_the_context_usable(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=32) as ctx:
        with pytest.raises(InvalidArgumentError, match="empty input"):
            ctx.prefill([])
        with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
            ctx.prefill([1, 2, m.n_vocab])
        with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
            ctx.prefill([-1])
        with pytest.raises(InvalidArgumentError):
            ctx.prefill([2**40])
        assert ctx.n_past == 0
        ctx.prefill([1, 2, 3])
        with pytest.raises(InvalidArgumentError):
            ctx.decode(m.n_vocab)
        assert ctx.n_past == 3
        assert 0 <= ctx.decode(4) < m.n_vocab


def test_bad_context_arguments(tiny_llama):
    with Model(tiny_llama) as m:
        with pytest.raises(InvalidArgumentError, match="n_ctx"):
            m.context(n_ctx=1 << 30)
        for name in ("n_ctx", "n_batch", "n_threads"):
            with pytest.raises(InvalidArgumentError, match=f"{name} must be an integer >= 0"):
                m.context(**{name: -1})
        with m.context(n_ctx=8) as ctx:
            with pytest.raises(InvalidArgumentError, match="hidden layer"):
                ctx.set_hidden_output(m.n_layer + 1)
            with pytest.raises(InvalidArgumentError, match="no logits"):
                ctx.logits()
            with pytest.raises(ContextFullError):
                ctx.prefill(list(range(9)))


def test_closed_objects_raise(tiny_llama):
    m = Model(tiny_llama)
    ctx = m.context(n_ctx=8)
    m.close()  # closes its contexts too
    with pytest.raises(InvalidArgumentError, match="closed"):
        ctx.prefill([1])
    with pytest.raises(InvalidArgumentError, match="closed"):
        m.n_layer
    m.close()  # twice is fine
