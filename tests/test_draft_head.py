"""The draft head inside libspecee against a numpy reference."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from reference import DraftReference, Reference
from specee.engine import Heads, InvalidArgumentError, Model
from specee.heads.head_file import DraftHead, constant_predictor, write_heads

PROMPT = [5, 77, 200, 13, 300, 42]


def random_draft(ref: Reference, seed: int, reduced: int | None = None, attn_norm: bool = True) -> DraftHead:
    rng = np.random.default_rng(seed)
    d, q, kv, ff = ref.n_embd, ref.n_head * ref.hd, ref.n_head_kv * ref.hd, 128

    def mat(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    layer = {"attn_q": mat(q, d), "attn_k": mat(kv, d), "attn_v": mat(kv, d), "attn_output": mat(d, q),
             "ffn_norm": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
             "ffn_gate": mat(ff, d), "ffn_up": mat(ff, d), "ffn_down": mat(d, ff)}
    if attn_norm:
        layer["attn_norm"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    output = vocab = None
    if reduced:
        vocab = np.sort(rng.choice(ref.n_vocab, reduced, replace=False)).astype(np.int32)
        output = (rng.standard_normal((reduced, d)) * 0.5).astype(np.float32)
    return DraftHead(fc=mat(d, 2 * d), layer=layer, fc_bias=(0.1 * rng.standard_normal(d)).astype(np.float32),
                     output=output, vocab=vocab)


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


@pytest.mark.parametrize("reduced, attn_norm, dtype",
                         [(None, True, "f16"), (64, False, "f16"), (None, True, "q8_0"), (64, True, "q4_0")])
def test_draft_candidates_match_reference(tiny6, tmp_path, reduced, attn_norm, dtype):
    ref = Reference(tiny6)
    draft = random_draft(ref, seed=11, reduced=reduced, attn_norm=attn_norm)
    tensors = draft.tensors()
    if dtype != "f16":  # the reference computes with the weights as stored
        q = gguf.GGMLQuantizationType[dtype.upper()]
        tensors = {k: dequantize(quantize(v, q), q) if v.ndim == 2 else v for k, v in tensors.items()}
    dref = DraftReference(ref, tensors)
    with Model(tiny6) as m:
        write_heads(tmp_path / "h.gguf", m, {l: constant_predictor(-40.0) for l in range(5)}, draft=draft,
                    draft_dtype=dtype)
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=64) as ctx:
            assert heads.has_draft
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            features = ctx.hidden()  # the draft's features: final-normed last hidden states
            first = ctx.argmax()
            cands = ctx.draft_sync(first)

            want_features = np.stack([ref.step(t, keep_hidden=6, final_norm=True)[1] for t in PROMPT])
            np.testing.assert_allclose(features, want_features, rtol=0, atol=2e-3 * np.abs(want_features).max())
            nxt = PROMPT[1:] + [first]
            for tok, f in zip(nxt, want_features):
                logits = dref.step(tok, f)
            assert cands == dref.top_k(logits, 4)
            p = np.exp(logits - logits.max())
            want_probs = np.sort(p / p.sum())[::-1][:4]  # softmax over the draft's own vocabulary
            np.testing.assert_allclose(ctx.draft_probs(), want_probs, rtol=0, atol=2e-3)
            if reduced:
                assert set(cands) <= set(draft.vocab.tolist())

            token = first
            for _ in range(5):
                step = ctx.decode_with_candidates(token, cands)
                full_logits, feature = ref.step(token, keep_hidden=6, final_norm=True)
                assert step.token == int(np.argmax(full_logits))
                want = dref.top_k(dref.step(step.token, feature), 4)
                # same top-1 and the same set: near-ties among the rest may swap (float32 vs float64);
                # with quantized weights ggml also rounds the activations to 8 bits, which may swap the
                # 4th candidate with the 5th
                assert step.next[0] == want[0]
                assert len(set(step.next) & set(want)) >= (3 if dtype.startswith("q") else 4)
                token, cands = step.token, step.next


def test_draft_follows_truncation(tiny6, tmp_path):
    ref = Reference(tiny6)
    with Model(tiny6) as m:
        write_heads(tmp_path / "h.gguf", m, {l: constant_predictor(-40.0) for l in range(5)},
                    draft=random_draft(ref, seed=5))
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            first = ctx.argmax()
            runs = []
            for _ in range(2):
                cands, token, seen = ctx.draft_sync(first), first, []
                for _ in range(4):
                    step = ctx.decode_with_candidates(token, cands)
                    seen.append((step.token, tuple(step.next)))
                    token, cands = step.token, step.next
                runs.append(seen)
                ctx.truncate(len(PROMPT) - 2)  # back into the prompt: the draft must follow
                ctx.prefill(PROMPT[-2:])
            assert runs[0] == runs[1]


def test_draft_misuse_is_refused(tiny6, tmp_path):
    ref = Reference(tiny6)
    with Model(tiny6) as m:
        write_heads(tmp_path / "d.gguf", m, {1: constant_predictor(-40.0)}, draft=random_draft(ref, seed=1))
        write_heads(tmp_path / "p.gguf", m, {1: constant_predictor(-40.0)})
        with Heads(m, tmp_path / "d.gguf") as with_draft, Heads(m, tmp_path / "p.gguf") as plain:
            with m.context(n_ctx=64) as ctx:
                ctx.prefill(PROMPT)
                with pytest.raises(InvalidArgumentError, match="before the prompt"):
                    ctx.set_heads(with_draft)
                ctx.set_heads(plain)
                with pytest.raises(InvalidArgumentError, match="no draft head"):
                    ctx.draft_sync(1)
            with m.context(n_ctx=64) as ctx:
                ctx.set_heads(with_draft)
                with pytest.raises(InvalidArgumentError, match="seen every position"):
                    ctx.draft_sync(1)


def test_bad_draft_tensors_are_refused(tiny6, tmp_path):
    ref = Reference(tiny6)
    draft = random_draft(ref, seed=2, reduced=16)
    draft.vocab[3] = ref.n_vocab + 5
    with Model(tiny6) as m:
        write_heads(tmp_path / "bad.gguf", m, {1: constant_predictor(0.0)}, draft=draft)
        with pytest.raises(Exception, match="draft.vocab"):
            Heads(m, tmp_path / "bad.gguf")
        draft = random_draft(ref, seed=2)
        draft.layer["attn_q"] = draft.layer["attn_q"][:, :-1]
        write_heads(tmp_path / "shape.gguf", m, {1: constant_predictor(0.0)}, draft=draft, draft_dtype="f32")
        with pytest.raises(Exception, match="wrong shape"):
            Heads(m, tmp_path / "shape.gguf")


def test_specee_loop_uses_the_draft_head(tiny6, tmp_path):
    from specee.decoding.early_exit import generate_specee
    from specee.decoding.plain import generate

    ref = Reference(tiny6)
    with Model(tiny6) as m:
        write_heads(tmp_path / "h.gguf", m, {l: constant_predictor(-40.0) for l in range(5)},
                    draft=random_draft(ref, seed=7))
        with Heads(m, tmp_path / "h.gguf") as heads:
            with m.context(n_ctx=64) as ctx:
                vanilla = generate(ctx, PROMPT, 12).tokens
            with m.context(n_ctx=64) as ctx:
                ctx.set_heads(heads)
                result = generate_specee(ctx, PROMPT, 12, heads.n_candidates)
                # a draft pass is a graph run too: host time (runs beyond their compute) never goes negative
                ctx.truncate(0)
                ctx.prefill(PROMPT)
                ctx.reset_perf()
                ctx.draft_sync(ctx.argmax())
                perf = ctx.perf()
    assert result.tokens == vanilla  # never-firing predictors: exact
    assert perf["n_graph_runs"] == 1 and perf["t_compute_ms"] > 0 and perf["t_host_ms"] >= 0
    assert result.extra["draft"] == "draft head"
    assert 0.0 <= result.extra["draft_top1"] <= result.extra["draft_topk"] <= 1.0


def test_candidate_only_exit_feeds_the_draft_the_same_feature(tiny6, tmp_path):
    """With verify_full off, the draft's feature comes from the check segment
    instead of the full-vocabulary pass: the same exit gives the same next
    candidates either way."""
    ref = Reference(tiny6)
    with Model(tiny6) as m:
        write_heads(tmp_path / "h.gguf", m, {1: constant_predictor(40.0)}, exit_layers=[1],
                    draft=random_draft(ref, seed=5))
        with m.context(n_ctx=64) as ctx:
            ctx.set_hidden_output(2, final_norm=True)
            ctx.prefill(PROMPT)
            first = ctx.argmax()
            ctx.prefill([first])
            early = int(np.argmax(ref.out @ ctx.hidden()[-1]))  # the argmax after 2 layers
        cands = [early] + [t for t in (3, 4, 5, 6) if t != early][:3]
        steps = {}
        with Heads(m, tmp_path / "h.gguf") as heads:
            for verify_full in (True, False):
                with m.context(n_ctx=64) as ctx:
                    ctx.set_heads(heads)
                    ctx.set_exit_params(verify_full=verify_full)
                    ctx.prefill(PROMPT)
                    ctx.draft_sync(first)
                    steps[verify_full] = ctx.decode_with_candidates(first, cands)
    a, b = steps[True], steps[False]
    assert (a.token, a.exit_layer) == (b.token, b.exit_layer) == (early, 2)
    assert len(a.next) == 4 and a.next == b.next


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "q4_0"])
def test_import_draft_round_trips_a_head_files_draft(tiny6, tmp_path, dtype):
    """`specee train predictors --draft-from`: the draft taken out of a head
    file and written again is the same tensors, byte for byte, in the same type."""
    from specee.train.pipeline import import_draft

    draft = random_draft(Reference(tiny6), seed=5, reduced=64)
    with Model(tiny6) as m:
        write_heads(tmp_path / "src.gguf", m, {2: constant_predictor(-40.0)}, draft=draft, draft_dtype=dtype)
    assert import_draft(tiny6, tmp_path / "src.gguf", tmp_path / "run") == dtype

    def draft_tensors(path):
        return {t.name: (t.tensor_type, np.asarray(t.data).tobytes())
                for t in gguf.GGUFReader(path).tensors if t.name.startswith("draft.")}

    want = draft_tensors(tmp_path / "src.gguf")
    assert "draft.output.weight" in want and want == draft_tensors(tmp_path / "run" / "draft_only.gguf")


def test_train_predictors_takes_its_draft_from_a_head_file_into_a_new_folder(tiny6, tmp_path, monkeypatch):
    """`specee train predictors --draft-from HEADS --out NEW`: the draft is
    imported into NEW before the traces, not asked for as already there."""
    from specee import cli
    from specee.train import pipeline

    draft = random_draft(Reference(tiny6), seed=5, reduced=64)
    with Model(tiny6) as m:
        write_heads(tmp_path / "src.gguf", m, {2: constant_predictor(-40.0)}, draft=draft)
    seen = []
    monkeypatch.setattr(cli, "_sharegpt_slices", lambda *a, **k: (None, [[1, 2, 3]], ""))
    monkeypatch.setattr(pipeline, "train_predictors_stage",
                        lambda model, out, prompts, *a, **k: seen.append((out / "draft_only.gguf").exists())
                        or (None, {}, [2], {}))
    args = ["-q", "train", "predictors", "--model", str(tiny6), "--out", str(tmp_path / "new"), "--draft-from",
            str(tmp_path / "src.gguf")]
    assert cli.main(args) == 0 and seen == [True]
    assert cli.main(args[:-2][:-2] + ["--out", str(tmp_path / "other")]) == 1  # no draft anywhere: refused
    assert seen == [True]
