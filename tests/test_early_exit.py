"""Speculative early exit on tiny models with hand-made heads."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Reference
from specee.engine import Heads, InvalidArgumentError, InvalidModelError, Model, ModelIOError
from specee.heads.head_file import Predictor, constant_predictor, write_heads

PROMPT = [5, 77, 200, 13, 300, 42]
NEVER, ALWAYS = -40.0, 40.0  # predictor logits: sigmoid gives 0 or 1


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    # untied output, F32: varied greedy output and no quantization noise
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def make_heads(tmp_path, model, logit, layers=range(5), exit_layers=None, name="h.gguf"):
    path = tmp_path / name
    write_heads(path, model, {l: constant_predictor(logit) for l in layers}, exit_layers=exit_layers)
    return Heads(model, path)


def candidates_with(token: int, n_vocab: int) -> list[int]:
    others = [t for t in (3, 4, 5, 6, 7) if t != token]
    return [token] + others[:3]


def candidates_without(token: int) -> list[int]:
    return [t for t in (3, 4, 5, 6, 7) if t != token][:4]


def test_never_firing_predictors_give_vanilla_output(tiny6, tmp_path):
    with Model(tiny6) as m, make_heads(tmp_path, m, NEVER) as heads:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            vanilla, tok = [], ctx.argmax()
            for _ in range(16):
                tok = ctx.decode(tok)
                vanilla.append((tok, ctx.logits()))
        with m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            tok = ctx.argmax()
            for want_tok, want_logits in vanilla:
                step = ctx.decode_with_candidates(tok, candidates_with(want_tok, m.n_vocab))
                assert step.token == want_tok and step.exit_layer == m.n_layer
                np.testing.assert_array_equal(ctx.logits(), want_logits)
                tok = step.token
            stats = ctx.exit_stats()
    assert len({t for t, _ in vanilla}) > 1  # the sequence is not degenerate
    assert stats["n_steps"] == 16 and stats["n_exits"] == 0 and stats["n_fires"] == 0
    assert stats["n_checks"] == 16 * 5 and stats["sum_exit_layers"] == 16 * 6


def layer_argmax(path: str, prompt: list[int], token: int, n_layers: int) -> int:
    """The full-vocabulary argmax after `n_layers` layers for `token` after `prompt`."""
    with Model(path) as m, m.context(n_ctx=64) as ctx:
        ctx.set_hidden_output(n_layers, final_norm=True)
        ctx.prefill(prompt + [token])
        h = ctx.hidden()[-1]
    ref = Reference(path)
    return int(np.argmax(ref.out @ h))


def test_always_firing_predictor_exits_exactly_when_the_layer_argmax_is_a_candidate(tiny6, tmp_path):
    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=[1], exit_layers=[1]) as heads:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            first = ctx.argmax()
        early = layer_argmax(tiny6, PROMPT, first, 2)
        with m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            hit = ctx.decode_with_candidates(first, candidates_with(early, m.n_vocab))
            assert (hit.token, hit.exit_layer) == (early, 2)
            assert ctx.exit_layer == 2
            assert [ctx.cell_valid(layer, len(PROMPT)) for layer in range(6)] == [True] * 2 + [False] * 4

            ctx.truncate(len(PROMPT))
            ctx.reset_exit_stats()
            miss = ctx.decode_with_candidates(first, candidates_without(early))
            assert miss.exit_layer == m.n_layer
            stats = ctx.exit_stats()
            assert (stats["n_fires"], stats["n_false_fires"], stats["n_exits"]) == (1, 1, 0)
            assert all(ctx.cell_valid(layer, len(PROMPT)) for layer in range(6))
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            assert miss.token == ctx.decode(first)


@pytest.mark.parametrize("fill_kv", [False, True])
def test_skipped_layers_match_the_reference(tiny6, tmp_path, fill_kv):
    """After an exit at 2 layers, the deeper layers either never see that
    position (masking) or get K/V projected from the exit hidden state
    (fill_kv): the next full-depth step must match a numpy model doing the same."""
    ref = Reference(tiny6)
    ref.forward(PROMPT)
    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=[1], exit_layers=[1]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(fill_kv=fill_kv)
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        early = layer_argmax(tiny6, PROMPT, first, 2)
        step = ctx.decode_with_candidates(first, candidates_with(early, m.n_vocab))
        assert step.exit_layer == 2
        assert [ctx.cell_valid(layer, len(PROMPT)) for layer in range(6)] == [True] * 2 + [fill_kv] * 4
        exit_logits, _ = ref.step(first, n_layers=2, fill_kv=fill_kv)
        np.testing.assert_allclose(ctx.logits(), exit_logits, rtol=0, atol=2e-3 * np.abs(exit_logits).max())
        ctx.decode(step.token)  # full depth, over a cache with holes
        want, _ = ref.step(step.token)
        np.testing.assert_allclose(ctx.logits(), want, rtol=0, atol=2e-3 * np.abs(want).max())


def test_full_depth_debug_reports_both_tokens(tiny6, tmp_path):
    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=[1], exit_layers=[1]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(full_depth=True)
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        early = layer_argmax(tiny6, PROMPT, first, 2)
        step = ctx.decode_with_candidates(first, candidates_with(early, m.n_vocab))
        assert (step.token, step.exit_layer) == (early, 2)
        with m.context(n_ctx=64) as plain:
            plain.prefill(PROMPT)
            assert step.full_token == plain.decode(first)
        assert all(ctx.cell_valid(layer, len(PROMPT)) for layer in range(6))


def expected_checks(offline: list[int], exits: list[int], n_layer: int) -> list[int]:
    """docs/design.md#schedule, written out: offline set, plus e-2, e, e+2
    for the exit layers of the last 5 exits once there are 5; never the last layer."""
    out = set(offline)
    if len(exits) >= 5:
        out |= {x for e in exits[-5:] for x in (e - 2, e, e + 2)}
    return sorted(x for x in out if 0 <= x < n_layer - 1)


def test_schedule_offline_online_and_switches(tiny6, tmp_path):
    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=range(5), exit_layers=[4]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        assert ctx.checked_layers() == [4]
        ctx.set_exit_params(use_offline=False)
        assert ctx.checked_layers() == []
        ctx.set_exit_params(use_offline=True)
        ctx.prefill(PROMPT)
        tok = ctx.argmax()
        exits = []
        for _ in range(16):
            # the full model's next token as the first candidate (found by a
            # full-depth step rolled back), so that exits happen
            n = ctx.n_past
            full = ctx.decode(tok)
            ctx.truncate(n)
            step = ctx.decode_with_candidates(tok, candidates_with(full, m.n_vocab))
            if step.exit_layer < m.n_layer:
                exits.append(step.exit_layer - 1)  # the index of the layer it exited after
            tok = step.token
            assert ctx.checked_layers() == expected_checks([4], exits, m.n_layer)
        assert len(exits) >= 5  # the online part was exercised
        assert len(set(ctx.checked_layers())) > 1
        ctx.set_exit_params(use_online=False)
        assert ctx.checked_layers() == [4]
        with pytest.raises(InvalidArgumentError, match="threshold"):
            ctx.set_exit_params(threshold=1.5)


# ---- bad heads and bad calls ---------------------------------------------------------


def test_heads_for_another_model_are_refused(tiny_model_factory, tiny6, tmp_path):
    other_weights = tiny_model_factory(n_layer=6, tied=False, seed=4)
    other_shape = tiny_model_factory(n_layer=4, tied=False, seed=3)
    with Model(tiny6) as m:
        write_heads(tmp_path / "h.gguf", m, {1: constant_predictor(0.0)})
    for path, message in ((other_weights, "fingerprint"), (other_shape, "another model")):
        with Model(path) as m2, pytest.raises(InvalidArgumentError, match=message):
            Heads(m2, tmp_path / "h.gguf")


def test_corrupt_and_incomplete_head_files(tiny6, tmp_path):
    with Model(tiny6) as m:
        with pytest.raises(ModelIOError):
            Heads(m, tmp_path / "missing.gguf")
        with pytest.raises(InvalidModelError, match="not a SpecEE head file"):
            Heads(m, tiny6)  # a model file, not heads
        write_heads(tmp_path / "h.gguf", m, {1: constant_predictor(0.0)})
        data = (tmp_path / "h.gguf").read_bytes()
        (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 7])
        with pytest.raises(InvalidModelError):
            Heads(m, tmp_path / "cut.gguf")
        bad = constant_predictor(0.0)
        bad.w1[0, 0] = np.nan
        write_heads(tmp_path / "nan.gguf", m, {1: bad})
        with pytest.raises(InvalidModelError, match="NaN"):
            Heads(m, tmp_path / "nan.gguf")
        with pytest.raises(InvalidModelError, match="no predictor"):
            write_heads(tmp_path / "sched.gguf", m, {1: constant_predictor(0.0)}, exit_layers=[3])
            Heads(m, tmp_path / "sched.gguf")
        with pytest.raises(ValueError, match="features"):
            write_heads(tmp_path / "k.gguf", m, {1: Predictor(np.zeros((4, 10), np.float32), np.zeros(4, np.float32),
                                                              np.zeros(4, np.float32), 0.0)})


def test_bad_calls_leave_the_context_usable(tiny6, tmp_path):
    with Model(tiny6) as m, make_heads(tmp_path, m, NEVER) as heads, m.context(n_ctx=8) as ctx:
        ctx.prefill(PROMPT)
        with pytest.raises(InvalidArgumentError, match="no heads"):
            ctx.decode_with_candidates(1, [1, 2, 3, 4])
        ctx.set_heads(heads)
        with pytest.raises(InvalidArgumentError, match="trained for 4"):
            ctx.decode_with_candidates(1, [1, 2, 3])
        with pytest.raises(InvalidArgumentError, match="vocabulary"):
            ctx.decode_with_candidates(1, [1, 2, 3, m.n_vocab])
        with pytest.raises(InvalidArgumentError, match="vocabulary"):
            ctx.decode_with_candidates(-5, [1, 2, 3, 4])
        assert ctx.n_past == len(PROMPT)
        ctx.decode_with_candidates(1, [1, 2, 3, 4])
        ctx.decode_with_candidates(1, [1, 2, 3, 4])
        with pytest.raises(Exception, match="context is full"):
            ctx.decode_with_candidates(1, [1, 2, 3, 4])
        assert ctx.n_past == 8


def test_trace_step_records_every_layer(tiny6, tmp_path):
    """The predictors' training data: per layer, the candidates' logits, the
    full-vocabulary argmax, how much the layer moved the residual stream and
    the final-normed hidden state, against the numpy reference."""
    ref = Reference(tiny6)
    ref.forward(PROMPT)
    with Model(tiny6) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        token = ctx.argmax()
        cands = [token, 3, 4, 5] if token not in (3, 4, 5) else [3, 4, 5, 6]
        step, cand_logits, layer_argmax = ctx.trace_step(token, cands)
        assert cand_logits.shape == (6, 4) and layer_argmax.shape == (6,)
        change, hidden = ctx.trace_change(), ctx.trace_hidden()
        assert change.shape == (6,) and hidden.shape == (6, ref.out.shape[1])
        for layer in range(6):
            before, after = (Reference(tiny6) for _ in range(2))
            for r in (before, after):
                r.forward(PROMPT)
            x0 = before.step(token, keep_hidden=layer)[1]
            x1 = after.step(token, keep_hidden=layer + 1)[1]
            assert change[layer] == pytest.approx(np.linalg.norm(x1 - x0) / np.linalg.norm(x1), rel=2e-3, abs=1e-4)
        for layer in range(6):
            ref_l = Reference(tiny6)
            ref_l.forward(PROMPT)
            _, h = ref_l.step(token, keep_hidden=layer + 1, final_norm=True)
            np.testing.assert_allclose(hidden[layer], h, rtol=0, atol=2e-3 * np.abs(h).max())
            want = ref.out @ h
            np.testing.assert_allclose(cand_logits[layer], want[cands], rtol=0, atol=2e-3 * np.abs(want).max())
            assert layer_argmax[layer] == int(np.argmax(want))
        assert step.token == layer_argmax[-1]
        with m.context(n_ctx=64) as plain:
            plain.prefill(PROMPT)
            assert step.token == plain.decode(token)
        assert ctx.n_past == len(PROMPT) + 1 and all(ctx.cell_valid(layer, len(PROMPT)) for layer in range(6))


def candidate_logits(path: str, prompt: list[int], token: int, n_layers: int, cands: list[int]) -> np.ndarray:
    """The candidates' logits after `n_layers` layers, from the numpy reference."""
    with Model(path) as m, m.context(n_ctx=64) as ctx:
        ctx.set_hidden_output(n_layers, final_norm=True)
        ctx.prefill(prompt + [token])
        h = ctx.hidden()[-1]
    return Reference(path).out[cands] @ h


def test_candidate_only_verification_exits_with_the_best_candidate(tiny6, tmp_path):
    """verify_full=False: a fire always exits, with the candidate of highest
    logit at that layer, even when the layer's full argmax is not a candidate."""
    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=[1], exit_layers=[1]) as heads:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            first = ctx.argmax()
        early = layer_argmax(tiny6, PROMPT, first, 2)
        without = candidates_without(early)
        best = without[int(np.argmax(candidate_logits(tiny6, PROMPT, first, 2, without)))]
        with m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False)
            assert ctx.exit_params()["verify_full"] is False
            ctx.prefill(PROMPT)
            step = ctx.decode_with_candidates(first, without)
            assert (step.token, step.exit_layer) == (best, 2)
            assert [ctx.cell_valid(layer, len(PROMPT)) for layer in range(6)] == [True] * 2 + [False] * 4
            with pytest.raises(InvalidArgumentError):
                ctx.logits()  # no full-vocabulary pass, no logits
            stats = ctx.exit_stats()
            assert (stats["n_fires"], stats["n_false_fires"], stats["n_exits"]) == (1, 0, 1)

            ctx.truncate(len(PROMPT))
            hit = ctx.decode_with_candidates(first, candidates_with(early, m.n_vocab))
            assert (hit.token, hit.exit_layer) == (early, 2)
            ctx.decode(hit.token)  # the context stays usable at full depth
            assert ctx.logits().shape == (m.n_vocab,)


def test_lossy_sampling_needs_full_verification(tiny6, tmp_path):
    """The lossy exit samples from the exit layer's logits, which verification
    by candidates never computes; the exact exit needs none (its draft is a
    point mass the full model checks)."""
    from specee.decoding.early_exit import generate_specee
    from specee.decoding.sampling import Sampler

    with Model(tiny6) as m, make_heads(tmp_path, m, ALWAYS, layers=[1], exit_layers=[1]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False)
        with pytest.raises(InvalidArgumentError, match="verify_full"):
            generate_specee(ctx, PROMPT, 4, heads.n_candidates, sampler=Sampler(temperature=0.8, seed=1),
                            exact=False)
        assert len(generate_specee(ctx, PROMPT, 4, heads.n_candidates, exact=False).tokens) == 4
        ctx.truncate(0)
        sampled = generate_specee(ctx, PROMPT, 4, heads.n_candidates, sampler=Sampler(temperature=0.8, seed=1))
        assert len(sampled.tokens) == 4 and sampled.extra["exit_drafts_verified"] > 0


def test_graphs_rebuilt_in_place_across_varied_exits(tiny_model_factory, tmp_path):
    """Exits at a different layer step after step, with the online schedule
    moving the checked layers around them, over several KV blocks: more
    segment shapes than the graph slots keep, so graphs keep replacing each
    other in them, and the context goes on working. (Each new graph is
    planned anew: ggml's allocator reuses a slot's plan for a graph with as
    many nodes and leafs without comparing the leafs, which crashed SmolLM2
    with a 2-layer offline schedule after about 15 MT-Bench answers; this
    tiny model does not hit that coincidence.)"""
    path = tiny_model_factory(n_layer=12, tied=False, seed=5)
    heads_path = tmp_path / "graded.gguf"
    with Model(path) as m:
        # the predictor after layer l says about l / 12: each step's threshold picks where it exits
        write_heads(heads_path, m, {l: constant_predictor(float(np.log((l + 0.5) / (11.5 - l))))
                                    for l in range(m.n_layer - 1)}, exit_layers=[3, 8], verify_full=False)
        rng = np.random.default_rng(0)
        with Heads(m, heads_path) as heads, m.context(n_ctx=1024, n_threads=1) as ctx:
            ctx.set_heads(heads)
            ctx.prefill([1, 2, 3])
            token, layers = ctx.argmax(), set()
            for _ in range(700):
                ctx.set_exit_params(threshold=float(rng.uniform(0.05, 0.95)))
                s = ctx.decode_with_candidates(token, [int(x) for x in rng.integers(0, m.n_vocab, 4)])
                layers.add(s.exit_layer)
                token = s.token
            assert ctx.n_past == 703 and len(layers) > 6
            assert ctx.perf()["n_graph_builds"] > 33  # slots were rebuilt (33 single-token slots are kept)
