"""Draft-head training on the tiny model: features from libspecee, torch
training, and the trained head running inside libspecee exactly as in torch."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specee.engine import Heads, Model  # noqa: E402
from specee.heads.head_file import constant_predictor, write_heads  # noqa: E402
from specee.train.draft_head import DraftConfig, DraftNet, _batch, _chunks, _losses, read_target, train_draft  # noqa: E402
from specee.train.draft_head_targets import extract_features, load_features  # noqa: E402


def corpus(n_vocab: int, n: int = 24, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, n_vocab, int(rng.integers(12, 40)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory(arch="qwen2", n_layer=3, tied=False, seed=9)


def test_features_are_the_final_normed_hidden_states_and_resume(tiny, tmp_path):
    seqs = corpus(300)
    fs = extract_features(tiny, seqs[:10], tmp_path / "f", progress=False)
    assert len(fs) == 10 and fs.features.shape == (sum(len(s) for s in seqs[:10]), 256)
    fs = extract_features(tiny, seqs, tmp_path / "f", progress=False)  # resumes after 10
    assert len(fs) == len(seqs)
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.set_hidden_output(m.n_layer, final_norm=True)
        ctx.prefill(seqs[13])
        tokens, feats = load_features(tmp_path / "f").sequence(13)
        assert tokens.tolist() == seqs[13]
        np.testing.assert_allclose(feats, ctx.hidden(), rtol=0, atol=2e-2)


# qwen2 (Q/K/V biases), and qwen3 with heads wider than n_embd / n_head: the
# draft's Q and attention output are then n_head x head_dim wide
DRAFT_TARGETS = {"qwen2": dict(arch="qwen2", n_layer=3, tied=False, seed=9),
                 "qwen3-wide": dict(arch="qwen3", head_dim=96, n_layer=3, tied=False, seed=9)}


def net_of(draft, info, embd, n_ff: int = 128) -> DraftNet:
    """The exported draft's weights back in a torch DraftNet."""
    net = DraftNet(info, n_ff, embd)
    sd = net.state_dict()
    sd.update({"fc.weight": torch.from_numpy(draft.fc), "fc.bias": torch.from_numpy(draft.fc_bias)})
    names = {"attn_norm": "attn_norm.weight", "attn_q": "q.weight", "attn_k": "k.weight", "attn_v": "v.weight",
             "attn_output": "o.weight", "ffn_norm": "ffn_norm.weight", "ffn_gate": "gate.weight",
             "ffn_up": "up.weight", "ffn_down": "down.weight", "attn_q_bias": "q.bias", "attn_k_bias": "k.bias",
             "attn_v_bias": "v.bias"}
    for k, v in draft.layer.items():
        sd[names[k]] = torch.from_numpy(v)
    net.load_state_dict(sd)
    return net


@pytest.mark.parametrize("target", list(DRAFT_TARGETS))
def test_trained_draft_runs_in_libspecee_as_in_torch(tiny_model_factory, tmp_path, target):
    tiny = tiny_model_factory(**DRAFT_TARGETS[target])
    seqs = corpus(300, n=30)
    fs = extract_features(tiny, seqs, tmp_path / "f", progress=False)
    cfg = DraftConfig(steps=80, seq_len=32, batch=4, lr=3e-3, checkpoint_every=40, draft_vocab=64, n_ff=128)
    draft, metrics = train_draft(tiny, fs, tmp_path / "d", cfg, progress=False)
    log = (tmp_path / "d" / "draft_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and 0 <= metrics["top1"] <= metrics["top4"] <= 1

    # the same weights in torch and in libspecee give the same candidates
    info, embd, out = read_target(tiny)
    net = net_of(draft, info, embd)

    # it learned: the training loss over all the data, against a fresh draft's
    torch.manual_seed(cfg.seed)
    fresh = DraftNet(info, 128, embd)
    out_rows = torch.from_numpy(out[draft.vocab])
    batch = _batch(fs, _chunks(fs, list(range(len(fs))), cfg.seq_len))
    with torch.no_grad():
        before, after = (_losses(n, out_rows, batch, cfg.ce_weight)[0].item() for n in (fresh, net))
    assert after < 0.8 * before, (before, after)  # measured: 0.99 -> 0.59 (qwen2), 0.99 -> 0.58 (qwen3-wide)

    with Model(tiny) as m:
        write_heads(tmp_path / "h.gguf", m, {0: constant_predictor(-40.0)}, draft=draft, draft_dtype="f32")
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            prompt = seqs[0][:10]
            ctx.prefill(prompt)
            feats = torch.from_numpy(ctx.hidden())
            first = ctx.argmax()
            cands = ctx.draft_sync(first)
    with torch.no_grad():
        pred = net(torch.tensor([prompt[1:] + [first]]), feats[None])[0, -1]
        logits = torch.from_numpy(draft.output) @ pred
    want = [int(draft.vocab[i]) for i in logits.topk(4).indices]
    assert cands[0] == want[0] and set(cands) == set(want)


def test_train_all_end_to_end(tiny_model_factory, tmp_path):
    """features -> draft -> traces -> predictors -> pack -> load -> decode, on the tiny model."""
    from specee.decoding.early_exit import generate_specee
    from specee.train.predictors import PredictorConfig
    from specee.train.pipeline import train_all

    path = tiny_model_factory(n_layer=4, tied=False, seed=21)
    seqs = corpus(300, n=30, seed=1)
    prompts = corpus(300, n=4, seed=2)
    heads_path = train_all(path, tmp_path / "run", seqs, prompts,
                           DraftConfig(steps=20, seq_len=32, batch=4, checkpoint_every=10, n_ff=128),
                           PredictorConfig(hidden=16, epochs=3, n_offline=2), n_new=16, progress=False)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["n_trace_tokens"] == 4 * 16 and len(record["predictors"]) == 3
    # held out by prompt: one of the 4 continuations (20% rounds to 1), whole
    assert {r["n_heldout"] for r in record["predictors"].values()} == {16}
    assert json.loads((tmp_path / "run" / "predictors.json").read_text())["heldout_by"] == "prompt"
    assert 1 <= len(record["offline_layers"]) <= 2
    with Model(path) as m, Heads(m, heads_path) as heads, m.context(n_ctx=128) as ctx:
        assert heads.has_draft
        ctx.set_heads(heads)
        assert ctx.exit_params()["verify_full"] is True  # the defaults the head file records
        assert ctx.exit_params()["use_online"] is True
        result = generate_specee(ctx, prompts[0], 16, heads.n_candidates, exact=False)
    assert result.n_generated == 16 and len(result.extra["exit_layers"]) == 15

    # traces hold both labels; where full verification would exit correctly,
    # the best candidate is the final token too
    from specee.train.predictors import Traces

    t = Traces.load(tmp_path / "run" / "traces.npz")
    assert t.best_cand_ok.shape == t.label.shape and t.best_cand_ok[:, -1].mean() == t.exit_ok(False)[:, -1].mean()
    np.testing.assert_array_equal(t.prompt, np.repeat(np.arange(4), 16))
    assert not (t.exit_ok(True) & ~t.exit_ok(False)).any()
    assert t.exit_ok(False)[:, -1].sum() >= t.exit_ok(True)[:, -1].sum()
    # and the signals for studying new features: each layer's move, the draft's probabilities (best first)
    assert t.layer_change.shape == t.label.shape and (t.layer_change > 0).all() and np.isfinite(t.layer_change).all()
    assert t.draft_probs.shape == (len(t.label), heads.n_candidates)
    assert ((t.draft_probs > 0) & (t.draft_probs <= 1)).all() and (np.diff(t.draft_probs, axis=1) <= 0).all()

    # traces resume from their per-prompt parts: one part gone, only it is made again, same traces
    from specee.train.predictors import collect_traces

    parts = tmp_path / "run" / "traces.parts"
    assert sorted(p.name for p in parts.iterdir()) == [f"{i:05d}.npz" for i in range(4)]
    kept = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}
    (parts / "00002.npz").unlink()
    again = collect_traces(path, tmp_path / "run" / "draft_only.gguf", prompts, n_new=16, progress=False, parts=parts)
    assert {p.name: p.stat().st_mtime_ns for p in parts.iterdir() if p.name != "00002.npz"} == \
        {k: v for k, v in kept.items() if k != "00002.npz"}
    for field in ("cand_logits", "label", "in_cands") + Traces.OPTIONAL:
        np.testing.assert_array_equal(getattr(again, field), getattr(t, field))
    # a part saved before prompt indices gets its prompt's index on resuming
    old = Traces.load(parts / "00001.npz")
    old.prompt = None
    old.save(parts / "00001.npz")
    again = collect_traces(path, tmp_path / "run" / "draft_only.gguf", prompts, n_new=16, progress=False, parts=parts)
    np.testing.assert_array_equal(again.prompt, t.prompt)
    assert t.hidden is None and again.hidden is None  # only on request: they are large
    with pytest.raises(ValueError, match="without hidden states"):
        collect_traces(path, tmp_path / "run" / "draft_only.gguf", prompts, n_new=16, progress=False, parts=parts,
                       keep_hidden=True)

    # with hidden states (--trace-hidden): the same steps, and each token's
    # state after each layer, whose argmax over the lm_head gives the labels
    from reference import Reference

    hid = collect_traces(path, tmp_path / "run" / "draft_only.gguf", prompts[:2], n_new=8, progress=False,
                         keep_hidden=True)
    first8 = np.r_[0:8, 16:24]  # prompts 0 and 1, their first 8 steps of 16
    np.testing.assert_array_equal(hid.label, t.label[first8])
    np.testing.assert_array_equal(hid.cand_logits, t.cand_logits[first8])
    lm_head = Reference(path).out
    assert hid.hidden.dtype == np.float16 and hid.hidden.shape == (16, 4, lm_head.shape[1])
    layer_argmax = (hid.hidden.astype(np.float32) @ lm_head.T).argmax(-1)  # [16, 4]
    from specee.decoding.plain import generate

    for i in range(2):
        with Model(path) as m, m.context(n_ctx=128) as ctx:
            greedy = generate(ctx, prompts[i], 9).tokens
        assert list(layer_argmax[8 * i:8 * i + 8, -1]) == greedy[1:]  # step j's last state chose token j + 1
    same = layer_argmax == layer_argmax[:, -1:]  # the label: this layer's argmax is the final token
    assert same[hid.label].mean() >= 0.95 and (~same[~hid.label]).mean() >= 0.95

    # the stages one by one (as `specee train predictors` and `specee pack`):
    # predictors for candidate-only exits over the same traces, packed with
    # another default threshold; the head file says both
    from specee import cli
    from specee.train.pipeline import train_predictors_stage

    (tmp_path / "run" / "heads.gguf").unlink()
    train_predictors_stage(path, tmp_path / "run", prompts, PredictorConfig(hidden=16, epochs=3, n_offline=2,
                                                                            verify_full=False), progress=False)
    assert cli.main(["-q", "pack", "--model", str(path), "--out", str(tmp_path / "run"), "--threshold", "0.7",
                     "--no-online"]) == 0
    with Model(path) as m, Heads(m, heads_path) as heads, m.context(n_ctx=128) as ctx:
        assert ctx.exit_params()["use_online"] is True  # the library's default before heads
        ctx.set_heads(heads)
        params = ctx.exit_params()
        assert params["verify_full"] is False and params["threshold"] == pytest.approx(0.7)
        assert params["use_online"] is False
        assert generate_specee(ctx, prompts[0], 8, heads.n_candidates).n_generated == 8

    # recut: the trained draft over the 64 most frequent tokens, stored as
    # Q4_0, in a new run that traces, trains predictors and packs on its own
    cut = tmp_path / "cut"
    assert cli.main(["-q", "train", "recut", "--model", str(path), "--from", str(tmp_path / "run"), "--out", str(cut),
                     "--draft-vocab", "64", "--draft-dtype", "q4_0"]) == 0
    record = json.loads((cut / "draft" / "recut.json").read_text())
    assert record["draft_vocab"] == 64 and 0 <= record["draft_heldout"]["top4"] <= 1
    src, dst = np.load(tmp_path / "run" / "draft" / "draft_head.npz"), np.load(cut / "draft" / "draft_head.npz")
    np.testing.assert_array_equal(src["draft.blk.ffn_down.weight"], dst["draft.blk.ffn_down.weight"])
    vocab = dst["draft.vocab"]
    assert len(vocab) == 64 and str(dst["storage_dtype"]) == "q4_0"
    train_predictors_stage(path, cut, prompts, PredictorConfig(hidden=16, epochs=3, n_offline=2, verify_full=False),
                           n_new=8, progress=False)
    assert cli.main(["-q", "pack", "--model", str(path), "--out", str(cut)]) == 0
    from gguf import GGMLQuantizationType, GGUFReader

    types = {t.name: t.tensor_type for t in GGUFReader(cut / "heads.gguf").tensors}
    assert types["draft.output.weight"] == types["draft.blk.ffn_down.weight"] == GGMLQuantizationType.Q4_0
    with Model(path) as m, Heads(m, cut / "heads.gguf") as heads, m.context(n_ctx=128) as ctx:
        ctx.set_heads(heads)
        ctx.prefill(prompts[0])
        token = ctx.argmax()
        cands = ctx.draft_sync(token)
        for _ in range(8):
            assert set(cands) <= set(vocab.tolist())
            step = ctx.decode_with_candidates(token, cands)
            token, cands = step.token, step.next
    assert cli.main(["-q", "train", "recut", "--model", str(path), "--from", str(cut), "--out", str(cut)]) == 1

    (tmp_path / "run" / "predictors.npz").unlink()
    assert cli.main(["-q", "pack", "--model", str(path), "--out", str(tmp_path / "run")]) == 1


def test_offline_layers_skip_predictors_that_never_fire():
    from specee.train.predictors import Traces, choose_offline_layers

    # 4 layers, k = 2; first possible exits: layer 0 for 5 tokens, layer 2 for 3, never layer 1
    label = np.zeros((8, 4), bool)
    label[:5, 0] = label[5:, 2] = True
    label[:, 3] = True
    t = Traces(np.zeros((8, 4, 2), np.float32), label, np.ones((8, 4), bool))
    assert choose_offline_layers(t, 2) == [0, 2]
    with pytest.raises(ValueError, match="predate"):
        choose_offline_layers(t, 2, verify_full=False)
    t.best_cand_ok = np.zeros((8, 4), bool)
    t.best_cand_ok[:, 1] = True  # with candidates alone, every token could exit at layer 1
    assert choose_offline_layers(t, 2, verify_full=False) == [1]
    report = {0: {"fire_rate": 0.0, "precision": 0.0}, 1: {"fire_rate": 0.1, "precision": 0.9},
              2: {"fire_rate": 0.2, "precision": 0.8}}
    assert choose_offline_layers(t, 2, report) == [2]  # layer 0 would never fire; layer 1 sees no exits


def test_bf16_draft_training_learns(tiny, tmp_path):
    """Products in bfloat16 (autocast), weights and optimizer in fp32: the
    draft still learns, judged by the fp32 loss."""
    seqs = corpus(300, n=30)
    fs = extract_features(tiny, seqs, tmp_path / "f", progress=False)
    cfg = DraftConfig(steps=80, seq_len=32, batch=4, lr=3e-3, checkpoint_every=40, draft_vocab=64, n_ff=128,
                      precision="bf16")
    draft, metrics = train_draft(tiny, fs, tmp_path / "d", cfg, progress=False)
    assert draft.fc.dtype == np.float32 and 0 <= metrics["top1"] <= metrics["top4"] <= 1
    info, embd, out = read_target(tiny)
    torch.manual_seed(cfg.seed)
    fresh, net = DraftNet(info, 128, embd), net_of(draft, info, embd)
    batch = _batch(fs, _chunks(fs, list(range(len(fs))), cfg.seq_len))
    with torch.no_grad():
        before, after = (_losses(n, torch.from_numpy(out[draft.vocab]), batch, cfg.ce_weight)[0].item()
                         for n in (fresh, net))
    assert after < 0.8 * before, (before, after)


def test_unknown_training_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        DraftConfig(precision="fp8")


def test_bad_draft_storage_type_is_refused_before_training(tiny, tmp_path):
    fs = extract_features(tiny, corpus(300, n=4), tmp_path / "f", progress=False)
    with pytest.raises(ValueError, match="storage type"):
        train_draft(tiny, fs, tmp_path / "d", DraftConfig(steps=5, dtype="q3_k"), progress=False)
    assert not (tmp_path / "d" / "draft.pt").exists()


def test_read_target_pairs_and_head_size(tiny_model_factory):
    """qwen3 and phi3 rotate NEOX pairs like qwen2; the draft's heads take the
    target's size, key_length where the file gives one."""
    info, _, _ = read_target(tiny_model_factory(arch="phi3", n_layer=1))
    assert info.neox and not info.has_qkv_bias and info.head_dim == 256 // 4
    info, _, _ = read_target(tiny_model_factory(arch="qwen3", n_layer=1))
    assert info.neox and not info.has_qkv_bias
    info, embd, _ = read_target(tiny_model_factory(arch="qwen3", n_layer=1, head_dim=96))
    assert info.head_dim == 96
    net = DraftNet(info, 128, embd)
    assert net.q.weight.shape == (4 * 96, 256) and net.o.weight.shape == (256, 4 * 96)


def test_train_all_on_a_wide_head_qwen3(tiny_model_factory, tmp_path):
    """`train all` on a qwen3 whose heads are wider than n_embd / n_head: the
    packed draft has the target's head size, and early exit decodes with it."""
    from specee.decoding.early_exit import generate_specee
    from specee.decoding.plain import generate
    from specee.train.pipeline import train_all
    from specee.train.predictors import PredictorConfig

    path = tiny_model_factory(arch="qwen3", head_dim=96, n_layer=4, tied=False, seed=21)
    seqs, prompts = corpus(300, n=30, seed=1), corpus(300, n=4, seed=2)
    heads_path = train_all(path, tmp_path / "run", seqs, prompts,
                           DraftConfig(steps=20, seq_len=32, batch=4, checkpoint_every=10, n_ff=128, dtype="f16"),
                           PredictorConfig(hidden=16, epochs=3, n_offline=2), n_new=16, progress=False)
    draft = np.load(tmp_path / "run" / "draft" / "draft_head.npz")
    assert draft["draft.blk.attn_q.weight"].shape == (4 * 96, 256)
    assert draft["draft.blk.attn_output.weight"].shape == (256, 4 * 96)
    with Model(path) as m, Heads(m, heads_path) as heads:
        assert heads.has_draft
        with m.context(n_ctx=128) as ctx:
            plain = generate(ctx, prompts[0], 16).tokens
        with m.context(n_ctx=128) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(threshold=1.0)  # no predictor fires: full depth, the draft still runs
            never = generate_specee(ctx, prompts[0], 16, heads.n_candidates)
        with m.context(n_ctx=128) as ctx:
            ctx.set_heads(heads)
            result = generate_specee(ctx, prompts[0], 16, heads.n_candidates, exact=False)
    assert never.tokens == plain and never.extra["draft"] == "draft head"
    assert 0 <= never.extra["draft_topk"] <= 1
    assert result.n_generated == 16 and len(result.extra["exit_layers"]) == 15
    assert all(1 <= layer <= 4 for layer in result.extra["exit_layers"])


def test_traces_keep_an_optional_array_only_where_every_part_has_it(tmp_path):
    from specee.train.predictors import Traces

    def part(n: int, with_signals: bool) -> Traces:
        z = np.zeros((n, 3), bool)
        signals = dict(layer_change=np.ones((n, 3), np.float32), draft_probs=np.full((n, 2), 0.5, np.float32))
        return Traces(np.zeros((n, 3, 2), np.float32), z, z, z, **(signals if with_signals else {}))

    both = Traces.concatenate([part(2, True), part(3, True)])
    assert both.layer_change.shape == (5, 3) and both.draft_probs.shape == (5, 2)
    mixed = Traces.concatenate([part(2, True), part(3, False)])  # a part collected before the signals existed
    assert mixed.layer_change is None and mixed.draft_probs is None and mixed.best_cand_ok.shape == (5, 3)
    both.save(tmp_path / "t.npz")
    back = Traces.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.draft_probs, both.draft_probs)
    mixed.save(tmp_path / "m.npz")
    assert Traces.load(tmp_path / "m.npz").layer_change is None


def test_heldout_split_holds_out_whole_prompts():
    from specee.train.predictors import PredictorConfig, heldout_by, heldout_split

    prompt = np.repeat(np.arange(10), 7)
    held, train = heldout_split(len(prompt), PredictorConfig(heldout=0.2, seed=3), prompt)
    held, train = held.numpy(), train.numpy()
    assert sorted(np.r_[held, train]) == list(range(70))
    held_prompts = set(prompt[held])
    assert len(held_prompts) == 2 and not held_prompts & set(prompt[train])  # two prompts, whole
    assert (np.diff(train) < 0).any()  # training order shuffled, not prompt by prompt
    again, _ = heldout_split(len(prompt), PredictorConfig(heldout=0.2, seed=3), prompt)
    np.testing.assert_array_equal(again.numpy(), held)
    other, _ = heldout_split(len(prompt), PredictorConfig(heldout=0.2, seed=4), prompt)
    assert set(prompt[other.numpy()]) != held_prompts or len(held_prompts) == 10
    # traces from before prompt indices, or from one prompt: single tokens
    assert heldout_by(prompt) == "prompt" and heldout_by(None) == "token" and heldout_by(np.zeros(9, int)) == "token"
    held, train = heldout_split(70, PredictorConfig(heldout=0.2, seed=3))
    assert len(held) == 14 and len(train) == 56
    with pytest.raises(ValueError, match="prompt indices"):
        heldout_split(69, PredictorConfig(), prompt)
