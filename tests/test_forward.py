"""The engine's logits and hidden states against the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Reference
from tiny_model import TinyConfig, write_tiny_model
from specee.engine import Model

TOKENS = [5, 77, 200, 13, 300, 42, 1, 9, 250, 3]

# Quantized weights: ggml also quantizes the activations (to Q8) inside each
# matrix product, so the match is looser than for float weights. A wrong
# graph (RoPE, mask, GQA, bias) is off by O(1), far beyond either bound.
TOLERANCE = {"F32": 2e-3, "F16": 2e-3}
QUANT_TOLERANCE = 3e-2
QTYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K"]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def batched_and_stepped_logits(ctx, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Every token's logits from one prefill, then from one decode each (the
    context is emptied in between)."""
    ctx.prefill(tokens, logits_all=True)
    batched = ctx.all_logits()
    ctx.truncate(0)
    stepped = []
    for t in tokens:
        ctx.decode(t)
        stepped.append(ctx.logits())
    return batched, np.stack(stepped)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_logits_match_reference(tiny_model_factory, arch, qtype):
    path = tiny_model_factory(arch=arch, qtype=qtype)
    want = Reference(path).forward(TOKENS)
    tol = TOLERANCE.get(qtype, QUANT_TOLERANCE)
    with Model(path) as m, m.context(n_ctx=64, n_threads=1) as ctx:
        batched, stepped = batched_and_stepped_logits(ctx, TOKENS)
        assert batched.shape == (len(TOKENS), m.n_vocab)
    assert rel_err(batched, want) < tol
    assert rel_err(stepped, want) < tol


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K"])
def test_repacked_weights_match_reference(tiny_model_factory, qtype):
    """ggml repacks these types into its faster CPU layout (as llama.cpp
    does); the numbers must not change beyond quantization noise."""
    path = tiny_model_factory(arch="qwen2", qtype=qtype, tied=False)
    want = Reference(path).forward(TOKENS)
    results = {}
    for repack in (True, False):
        with Model(path, use_repack=repack) as m, m.context(n_ctx=64, n_threads=2) as ctx:
            results[repack] = m.n_repacked
            ctx.prefill(TOKENS, logits_all=True)
            assert rel_err(ctx.all_logits(), want) < QUANT_TOLERANCE
    assert results[True] > 0 and results[False] == 0


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("flash_attn", [False, True])
def test_output_matrix_and_attention_kernels(tiny_model_factory, tied, flash_attn):
    path = tiny_model_factory(arch="qwen2", qtype="F16", tied=tied)
    want = Reference(path).forward(TOKENS)
    with Model(path) as m, m.context(n_ctx=64, n_threads=2, flash_attn=flash_attn) as ctx:
        ctx.prefill(TOKENS[:4], logits_all=True)
        first = ctx.all_logits()
        ctx.prefill(TOKENS[4:], logits_all=True)  # continues at n_past = 4
        rest = ctx.all_logits()
    assert rel_err(np.concatenate([first, rest]), want) < 2e-3


def test_prefill_keeps_last_logits_and_argmax(tiny_llama):
    want = Reference(tiny_llama).forward(TOKENS)
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(TOKENS)
        assert ctx.n_outputs == 1
        assert rel_err(ctx.logits(), want[-1]) < 2e-3
        assert ctx.argmax() == int(np.argmax(ctx.logits()))
        next_token = ctx.decode(ctx.argmax())
        assert next_token == int(np.argmax(ctx.logits()))


def test_argmax_is_the_first_maximum_with_ties(tmp_path):
    """Rows 0-19 of the output matrix are zero, then w and -w alternate: the
    logits are 0, then s and -s repeated, so the maximum is tied many times
    and only its first index is llama.cpp's greedy choice."""
    cfg = TinyConfig(tied=False)
    w = np.random.default_rng(1).standard_normal(cfg.n_embd).astype(np.float32)
    rows = [np.zeros(cfg.n_embd, np.float32)] * 20 + [w, -w] * ((cfg.n_vocab - 20) // 2)
    out = np.stack(rows + [np.zeros(cfg.n_embd, np.float32)] * (cfg.n_vocab - len(rows)))
    path = write_tiny_model(tmp_path / "ties.gguf", cfg, tensors={"output.weight": out})
    with Model(str(path)) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(TOKENS, logits_all=True)
        for i in range(ctx.n_outputs):
            logits = ctx.logits(i)
            first = 20 if logits[20] > 0 else 21
            assert logits[first] > 0 and np.sum(logits == logits[first]) > 2  # the premise: a tied maximum
            assert ctx.argmax(i) == first == int(np.argmax(logits))


def test_prefill_split_into_batches_equals_one_batch(tiny_llama):
    with Model(tiny_llama) as m:
        with m.context(n_ctx=64, n_batch=3) as ctx:
            ctx.prefill(TOKENS, logits_all=True)
            split = ctx.all_logits()
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(TOKENS, logits_all=True)
            whole = ctx.all_logits()
    assert split.shape == whole.shape
    assert rel_err(split, whole) < 1e-4


@pytest.mark.parametrize("layer", [0, 1, 3])
@pytest.mark.parametrize("final_norm", [False, True])
def test_hidden_state_readout(tiny_llama, layer, final_norm):
    ref = Reference(tiny_llama)
    want = np.stack([ref.step(t, keep_hidden=layer, final_norm=final_norm)[1] for t in TOKENS])
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        ctx.set_hidden_output(layer, final_norm=final_norm)
        ctx.prefill(TOKENS[:6])
        first = ctx.hidden()
        assert first.shape == (6, m.n_embd)
        ctx.decode(TOKENS[6])
        second = ctx.hidden()
        ctx.set_hidden_output(None)
        ctx.decode(TOKENS[7])
        with pytest.raises(ValueError):
            ctx.hidden()
    assert rel_err(np.concatenate([first, second]), want[:7]) < 2e-3


def test_model_metadata(tiny_model_factory):
    path = tiny_model_factory(arch="qwen2", qtype="Q8_0", tied=False)
    with Model(path) as m:
        assert (m.arch, m.n_layer, m.n_embd, m.n_head, m.n_head_kv) == ("qwen2", 3, 256, 4, 2)
        assert m.n_vocab == Reference(path).n_vocab
        assert (m.bos, m.eos) == (1, 2)
        assert m.n_ctx_train == 256
        assert m.n_params > 0 and m.size_bytes > 0
