"""Every architecture libspecee runs, on tiny generated models, against the
numpy reference: logits, greedy tokens, early exit; and the refusals.

What each configuration exercises:
  llama3       Llama 3.1-style rope_freqs.weight factors, a large rope base
  llama-linear linear RoPE scaling (positions divided by rope.scaling.factor)
  qwen3        per-head Q/K RMSNorm before RoPE, heads wider than n_embd / n_head
  phi3         fused Q/K/V and gate/up matrices, NEOX RoPE
  phi3-partial phi3 rotating half of each head, longrope factors, a scaling factor and attn_factor
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from reference import DraftReference, Reference
from specee.engine import Heads, InvalidModelError, Model, UnsupportedModelError
from specee.heads.head_file import constant_predictor, write_heads
from test_forward import batched_and_stepped_logits, rel_err
from tiny_model import TinyConfig, write_tiny_model

PROMPT = [5, 77, 200, 13, 300, 42, 1, 9]
N_GREEDY = 12
ALWAYS = 40.0  # a predictor logit whose sigmoid is 1: the check always fires

CONFIGS = {
    "llama3": dict(arch="llama", rope_freqs=True, rope_base=500000.0),
    "llama-linear": dict(arch="llama", rope_scaling="linear", rope_factor=4.0),
    "qwen3": dict(arch="qwen3", head_dim=96, rope_base=1000000.0),
    "phi3": dict(arch="phi3"),
    "phi3-partial": dict(arch="phi3", rope_dim=32, rope_scaling="longrope", rope_factor=2.0, rope_orig_ctx=64,
                         rope_attn_factor=1.2),
}
# matches the bounds of test_forward: a wrong graph is off by O(1)
TOLERANCE = {"F32": 2e-3, "Q8_0": 3e-2}


def reference_greedy(ref: Reference, prompt: list[int], n: int) -> list[int]:
    logits = ref.forward(prompt)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, _ = ref.step(out[-1])
    return out


def engine_greedy(ctx, prompt: list[int], n: int) -> list[int]:
    ctx.prefill(prompt)
    out = [ctx.argmax()]
    while len(out) < n:
        out.append(ctx.decode(out[-1]))
    return out


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_reference(tiny_model_factory, name, qtype):
    path = tiny_model_factory(qtype=qtype, tied=False, **CONFIGS[name])
    want = Reference(path, n_ctx=64).forward(PROMPT)
    with Model(path) as m, m.context(n_ctx=64, n_threads=1) as ctx:
        assert m.arch == CONFIGS[name]["arch"]
        batched, stepped = batched_and_stepped_logits(ctx, PROMPT)
    assert rel_err(batched, want) < TOLERANCE[qtype]
    assert rel_err(stepped, want) < TOLERANCE[qtype]


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_reference(tiny_model_factory, name, flash_attn):
    path = tiny_model_factory(tied=False, **CONFIGS[name])
    want = reference_greedy(Reference(path, n_ctx=64), PROMPT, N_GREEDY)
    with Model(path) as m, m.context(n_ctx=64, flash_attn=flash_attn) as ctx:
        got = engine_greedy(ctx, PROMPT, N_GREEDY)
    assert got == want
    assert len(set(want)) > 1  # not a degenerate repetition


def test_longrope_switches_factors_with_the_context_size(tiny_model_factory):
    """llama.cpp's rule: contexts longer than original_context_length rotate
    with the long factors, shorter ones with the short factors."""
    path = tiny_model_factory(tied=False, **CONFIGS["phi3-partial"])
    logits = {}
    for n_ctx in (64, 128):  # original_context_length is 64
        want = Reference(path, n_ctx=n_ctx).forward(PROMPT)
        with Model(path) as m, m.context(n_ctx=n_ctx) as ctx:
            ctx.prefill(PROMPT, logits_all=True)
            logits[n_ctx] = ctx.all_logits()
        assert rel_err(logits[n_ctx], want) < 2e-3
    assert rel_err(logits[64], logits[128]) > 1e-2  # the two factor sets differ


def test_scaling_type_none_ignores_the_factor(tiny_model_factory, tmp_path):
    """llama.cpp's rule: a factor divides positions under every scaling type but "none"."""
    fields = dict(n_layer=2, rope_scaling="none", rope_factor=4.0)
    path = write_tiny_model(tmp_path / "none.gguf", TinyConfig(**fields))
    plain = tiny_model_factory(n_layer=2)  # the same weights, no scaling keys
    results = []
    for p in (path, plain):
        with Model(p) as m, m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT, logits_all=True)
            results.append(ctx.all_logits())
    np.testing.assert_array_equal(results[0], results[1])
    assert rel_err(results[0], Reference(path).forward(PROMPT)) < 2e-3


@pytest.mark.parametrize("fill_kv", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_early_exit_matches_reference(tiny_model_factory, tmp_path, name, fill_kv):
    """An exit after 2 of 4 layers, then a full-depth step over the cache it
    left (holes, or K/V filled from the exit state): both match the reference."""
    path = tiny_model_factory(tied=False, n_layer=4, **CONFIGS[name])
    ref = Reference(path, n_ctx=64)
    ref.forward(PROMPT)
    with Model(path) as m:
        with m.context(n_ctx=64) as ctx:
            ctx.set_hidden_output(2, final_norm=True)
            ctx.prefill(PROMPT)
            first = ctx.argmax()
        heads_path = tmp_path / "heads.gguf"
        write_heads(heads_path, m, {1: constant_predictor(ALWAYS)}, exit_layers=[1])
        with Heads(m, heads_path) as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(fill_kv=fill_kv)
            ctx.prefill(PROMPT)
            exit_logits, _ = ref.step(first, n_layers=2, fill_kv=fill_kv)
            early = int(np.argmax(exit_logits))
            step = ctx.decode_with_candidates(first, [early] + [t for t in (3, 4, 5, 6) if t != early][:3])
            assert (step.token, step.exit_layer) == (early, 2)
            np.testing.assert_allclose(ctx.logits(), exit_logits, rtol=0, atol=2e-3 * np.abs(exit_logits).max())
            ctx.decode(step.token)  # full depth
            want, _ = ref.step(step.token)
            np.testing.assert_allclose(ctx.logits(), want, rtol=0, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("name", ["llama3", "phi3-partial", "qwen3"])
def test_draft_head_keeps_plain_rope(tiny_model_factory, tmp_path, name):
    """The draft layer is trained with plain RoPE over whole heads
    (train/draft_head.py), whatever scaling the target uses, with the target's head
    size (qwen3: wider than n_embd / n_head): its candidates in libspecee
    match the numpy draft doing the same."""
    from test_draft_head import random_draft

    path = tiny_model_factory(tied=False, **CONFIGS[name])
    ref = Reference(path, n_ctx=64)
    draft = random_draft(ref, seed=11)
    dref = DraftReference(ref, draft.tensors())
    with Model(path) as m:
        write_heads(tmp_path / "h.gguf", m, {l: constant_predictor(-40.0) for l in range(m.n_layer - 1)},
                    draft=draft, draft_dtype="f32")
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            cands = ctx.draft_sync(ctx.argmax())
            features = [ref.step(t, keep_hidden=m.n_layer, final_norm=True)[1] for t in PROMPT]
            for tok, f in zip(PROMPT[1:] + [ctx.argmax()], features):
                logits = dref.step(tok, f)
    assert cands[0] == dref.top_k(logits, 4)[0]
    assert set(cands) == set(dref.top_k(logits, 4))


# llama.cpp rounds its context up to a multiple of 256, and longrope picks
# its factor set from that size: both sides run 256 cells. phi3-partial
# (original context 64) rotates with the long factors there, phi3-short with
# the short ones.
LLAMA_CPP_N_CTX = 256
GOLDEN = CONFIGS | {"phi3-short": CONFIGS["phi3-partial"] | dict(rope_orig_ctx=LLAMA_CPP_N_CTX)}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_same_tokens_as_llama_cpp(tiny_model_factory, llama_cpp, name):
    """llama.cpp's greedy tokens on the same file equal the engine's (the
    `llama_cpp` fixture: skipped where no llama-cpp-python is found)."""
    path = tiny_model_factory(tied=False, **GOLDEN[name])
    want = llama_cpp.greedy(path, PROMPT, N_GREEDY, n_ctx=LLAMA_CPP_N_CTX)
    with Model(path) as m, m.context(n_ctx=LLAMA_CPP_N_CTX) as ctx:
        assert engine_greedy(ctx, PROMPT, N_GREEDY) == want
    assert len(set(want)) > 1


# ---- refusals ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gemma2", "mamba"])
def test_unsupported_architecture_names_the_supported_ones(tmp_path, arch):
    p = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(str(p), arch)
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError,
                       match=rf"architecture '{arch}' is not supported \(llama, qwen2, qwen3, phi3 are\)"):
        Model(p)


U32 = gguf.GGUFValueType.UINT32


@pytest.mark.parametrize(
    "fields, skip, overrides, error, message",
    [
        (dict(arch="qwen3"), ("blk.0.attn_k_norm.weight",), {}, InvalidModelError, "attn_k_norm.weight is missing"),
        (dict(arch="qwen3"), (), {"qwen3.rope.dimension_count": (32, U32)}, UnsupportedModelError,
         "rotates whole heads"),
        (dict(arch="phi3"), ("blk.1.attn_qkv.weight",), {}, InvalidModelError, "blk.1.attn_q.weight is missing"),
        (dict(arch="phi3", rope_dim=32), (), {"phi3.rope.dimension_count": (96, U32)}, UnsupportedModelError,
         "cannot rotate more than a head"),
        (dict(arch="phi3", rope_scaling="longrope"), ("rope_factors_short.weight",), {}, InvalidModelError,
         "both rope_factors_long.weight and rope_factors_short.weight"),
        (dict(arch="llama", rope_freqs=True), (), {"llama.rope.dimension_count": (32, U32)}, UnsupportedModelError,
         "rotates whole heads"),
    ],
)
def test_broken_architecture_files_are_refused(tmp_path, fields, skip, overrides, error, message):
    p = write_tiny_model(tmp_path / "m.gguf", TinyConfig(n_layer=2, **fields), skip_tensors=skip, overrides=overrides)
    with pytest.raises(error, match=message):
        Model(p)


def test_tensors_of_another_architecture_are_refused(tmp_path):
    """A llama file with qwen3's Q/K norms, a qwen2 one without: nothing
    half-loads, and a tensor no architecture binds is named."""
    src = write_tiny_model(tmp_path / "qwen3.gguf", TinyConfig(arch="qwen3", n_layer=1))
    r = gguf.GGUFReader(src)
    for arch, extra, message in [("llama", None, "Q/K norms, which architecture llama has not"),
                                 ("qwen3", "blk.0.ffn_gate_inp.weight", "tensor blk.0.ffn_gate_inp.weight is not part")]:
        p = tmp_path / f"{arch}.gguf"
        w = gguf.GGUFWriter(str(p), arch)
        for field in r.fields.values():
            if field.name.startswith("qwen3."):
                w.add_key_value(arch + field.name[len("qwen3"):], field.contents(), field.types[0])
            elif field.name.startswith("tokenizer."):
                w.add_key_value(field.name, field.contents(), field.types[0],
                                sub_type=field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
        for t in r.tensors:
            w.add_tensor(t.name, np.array(t.data).reshape(tuple(int(x) for x in reversed(t.shape))))
        if extra:
            w.add_tensor(extra, np.zeros((4, 256), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises((InvalidModelError, UnsupportedModelError), match=message):
            Model(p)
