"""Exact early exit (docs/exact-specee.md): an exit's token is a draft, and
one pass completes the exited token's layers beside it. Tiny models with
forced exits (predictors that always fire, candidates that are often wrong)
give exits at every layer, hits and misses; the output must be plain
decoding's, greedy token for token and sampled in distribution."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Reference
from specee.decoding.early_exit import EarlyExitDecoder, generate_specee
from specee.decoding.exit_switch import ExitSwitch, shared
from specee.decoding.plain import generate
from specee.decoding.sampling import Sampler
from specee.engine import ContextFullError, Heads, InvalidArgumentError, Model, kernels_isa
from specee.heads.head_file import constant_predictor, write_heads
from test_draft_head import random_draft

PROMPT = [5, 77, 200, 13, 300, 42]
ALWAYS = 40.0


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def always_exit_heads(path, model, layers, draft=None) -> Heads:
    write_heads(path, model, {l: constant_predictor(ALWAYS) for l in layers}, exit_layers=list(layers), draft=draft)
    return Heads(model, path)


class Fixed:
    """Candidates that are right every `period`-th step (the token plain
    decoding writes next), else never: exits then hit and miss in turn."""

    def __init__(self, truth: list[int], prompt_len: int, period: int = 2):
        self.truth, self.n_prompt, self.period = truth, prompt_len, period

    def candidates(self, tokens, k):
        i = len(tokens) - self.n_prompt  # index into the generated tokens of the next one
        right = self.truth[i] if i < len(self.truth) else 0
        pool = [t for t in range(3, 3 + k + 1) if t != right]
        return ([right] + pool[:k - 1]) if i % self.period == 0 else pool[:k]


def vanilla_tokens(path: str, n: int, n_ctx: int = 64, **model_kw) -> list[int]:
    with Model(path, **model_kw) as m, m.context(n_ctx=n_ctx) as ctx:
        return generate(ctx, PROMPT, n).tokens


@pytest.mark.parametrize("exit_layer", [0, 2, 4])
@pytest.mark.parametrize("verify", ["full", "candidates"])
def test_greedy_output_is_plain_decodings(tiny6, tmp_path, exit_layer, verify):
    want = vanilla_tokens(tiny6, 24)
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [exit_layer]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=verify == "full", use_online=False)
        got = generate_specee(ctx, PROMPT, 24, heads.n_candidates, source=Fixed(want, len(PROMPT)),
                              adaptive=False)
    assert got.tokens == want
    verified, accepted = got.extra["exit_drafts_verified"], got.extra["exit_drafts_accepted"]
    assert got.extra["exact"] is True
    if verify == "candidates":  # every check fires and exits: hits and misses both happen
        assert 0 < accepted < verified
    assert got.extra["exit_ratio"] > 0


def test_rows_of_the_verification_pass_are_plain_steps_bit_for_bit(tiny6, tmp_path):
    """Row 0 (the exited token, entering at its exit layer) and row 1 (the
    draft, every layer) give the one-token steps' logits to the last bit."""
    with Model(tiny6) as m:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            first = ctx.argmax()
            second = ctx.decode(first)
            want0 = ctx.logits()
            ctx.decode(second)
            want1 = ctx.logits()
        with always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False, exact=True, use_online=False)
            ctx.prefill(PROMPT)
            step = ctx.decode_with_candidates(first, [second, 3, 4, 5][:heads.n_candidates])
            assert step.exit_layer == 3 and step.token == second
            ctx.verify_exit(second)
            np.testing.assert_array_equal(ctx.logits(0), want0)
            np.testing.assert_array_equal(ctx.logits(1), want1)
            assert ctx.n_past == len(PROMPT) + 2
            ctx.decode(ctx.argmax(1))  # the context goes on at full depth
            assert ctx.n_past == len(PROMPT) + 3


@pytest.mark.skipif(kernels_isa() == "none", reason="no specee kernel runs on this CPU")
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_1"])
@pytest.mark.parametrize("kernels", ["ggml", "specee"])
@pytest.mark.parametrize("chain", [1, 4])
def test_quantized_models_stay_exact(tiny_model_factory, tmp_path, qtype, kernels, chain):
    path = tiny_model_factory(arch="qwen2", qtype=qtype, tied=False, n_layer=4, seed=3)
    want = vanilla_tokens(path, 16, kernels=kernels)
    with Model(path, kernels=kernels) as m, always_exit_heads(tmp_path / "h.gguf", m, [1]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, use_online=False)
        got = generate_specee(ctx, PROMPT, 16, heads.n_candidates, source=Fixed(want, len(PROMPT), period=3),
                              adaptive=False, chain=chain)
    assert got.tokens == want
    assert 0 < got.extra["exit_drafts_accepted"] < got.extra["exit_drafts_verified"]
    assert (got.extra["verification_passes"] < got.extra["exit_drafts"]) == (chain > 1)


@pytest.mark.parametrize("chain", [1, 4])
def test_with_a_draft_head_the_output_stays_plain(tiny6, tmp_path, chain):
    """The draft head proposes the candidates; after each verification it
    syncs on every position's full-depth features (and after a miss on the
    kept ones only). In a chain it guesses the next candidates from the exit
    layer's feature."""
    want = vanilla_tokens(tiny6, 24)
    with Model(tiny6) as m, \
            always_exit_heads(tmp_path / "h.gguf", m, [2], draft=random_draft(Reference(tiny6), seed=7)) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, use_online=False)
        got = generate_specee(ctx, PROMPT, 24, heads.n_candidates, adaptive=False, chain=chain)
        assert got.extra["draft"] == "draft head" and got.extra["exit_drafts_verified"] > 0
        assert (got.extra["verification_passes"] < got.extra["exit_drafts"]) == (chain > 1)
    assert got.tokens == want


def first_token_and_next_distribution(m: Model, sampler_kw: dict) -> tuple[int, np.ndarray]:
    """Greedy's first token after PROMPT, and the sampler's distribution after it."""
    with m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        ctx.decode(first)
        return first, Sampler(**sampler_kw).probabilities(ctx.logits())


def seeded_decoders(m: Model, heads_path, sampler_kw: dict, source, n: int, chain: int = 1):
    """For seeds 0..n-1, an exact early-exit decoder (exits forced at layer
    3) just after PROMPT in a fresh cache, sampling with `sampler_kw`."""
    with always_exit_heads(heads_path, m, [2]) as heads, m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, use_online=False)
        for seed in range(n):
            ctx.truncate(0)
            ctx.prefill(PROMPT)
            yield EarlyExitDecoder(ctx, Sampler(seed=seed, **sampler_kw), heads.n_candidates, source=source,
                                   adaptive=False, chain=chain)


def test_sampling_keeps_plain_samplings_distribution(tiny6, tmp_path):
    """The token after an exit whose draft is always the same token: accepted
    with chance p(draft), else drawn from p without it. Over many seeds its
    distribution is plain sampling's (total variation within sampling noise)."""
    sampler_kw = dict(temperature=1.5, top_k=6)
    with Model(tiny6) as m:
        first, p = first_token_and_next_distribution(m, sampler_kw)
        draft = int(np.argsort(p)[-2])  # the second likeliest: accepted about p(draft) of the time
        n, counts = 3000, np.zeros(p.size)
        for decoder in seeded_decoders(m, tmp_path / "h.gguf", sampler_kw, _Always(draft), n):
            counts[decoder.step(first, 2)[0]] += 1
    tv = 0.5 * np.abs(counts / n - p).sum()
    assert tv < 0.04, (tv, np.nonzero(p)[0], counts[np.nonzero(p)[0]] / n, p[np.nonzero(p)[0]])
    assert 0.0 < p[draft] < 1.0 and counts[draft] > 0


class _Always:
    def __init__(self, token: int):
        self.token = token

    def candidates(self, tokens, k):
        return [self.token] + [t for t in range(3, 3 + k) if t != self.token][:k - 1]


def test_nothing_else_runs_while_an_exit_waits(tiny6, tmp_path):
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, exact=True)
        with pytest.raises(InvalidArgumentError, match="no early exit waits"):
            ctx.verify_exit(3)
        ctx.prefill(PROMPT)
        step = ctx.decode_with_candidates(ctx.argmax(), [3, 4, 5, 6][:heads.n_candidates])
        assert step.exit_layer < m.n_layer
        for call in (lambda: ctx.decode(3), lambda: ctx.prefill([3, 4]), lambda: ctx.set_heads(None),
                     lambda: ctx.set_exit_params(exact=False),
                     lambda: ctx.decode_with_candidates(3, [3, 4, 5, 6][:heads.n_candidates])):
            with pytest.raises(InvalidArgumentError, match="waits for its verification"):
                call()
        with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
            ctx.verify_exit(m.n_vocab)
        ctx.truncate(len(PROMPT))  # the exited token goes, and nothing waits any more
        assert ctx.decode(3) >= 0
        with pytest.raises(InvalidArgumentError, match="neither fill_kv"):
            ctx.set_exit_params(fill_kv=True)


def test_a_full_context_ends_with_plain_steps(tiny6, tmp_path):
    """Near the end of the context there is no cell for a draft beside the
    exited token: the decoder takes plain steps there and stops cleanly,
    with plain decoding's tokens and stop reason."""
    n_ctx = 16
    with Model(tiny6) as m:
        with m.context(n_ctx=n_ctx) as ctx:
            want = generate(ctx, PROMPT, 64)
        with always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=n_ctx) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False, use_online=False)
            got = generate_specee(ctx, PROMPT, 64, heads.n_candidates, source=Fixed(want.tokens, len(PROMPT)))
    assert got.tokens == want.tokens and got.stop_reason == want.stop_reason
    assert got.extra["exit_drafts_verified"] > 0


def test_verification_refuses_a_full_context(tiny6, tmp_path):
    n_ctx = 8
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, \
            m.context(n_ctx=n_ctx) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, exact=True)
        ctx.prefill(PROMPT + [7])  # 7 of 8 cells
        step = ctx.decode_with_candidates(9, [3, 4, 5, 6][:heads.n_candidates])
        assert step.exit_layer < m.n_layer and ctx.n_past == n_ctx
        with pytest.raises(ContextFullError):
            ctx.verify_exit(step.token)
        ctx.truncate(n_ctx - 1)  # the exit goes; the context is as before the step
        assert ctx.decode(9) >= 0


def test_the_exit_switch_keeps_the_output_and_tries_both_kinds(tiny6, tmp_path):
    """With the switch (the default), windows of exit steps and of plain steps
    alternate as measured; the tokens stay plain decoding's."""
    want = vanilla_tokens(tiny6, 60, n_ctx=128)
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=128) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, use_online=False)
        got = generate_specee(ctx, PROMPT, 60, heads.n_candidates, source=Fixed(want, len(PROMPT)))
    assert got.tokens == want
    assert got.extra["plain_steps"] >= 16 and got.extra["exit_drafts_verified"] > 0


def test_exit_switch_keeps_to_the_cheaper_kind():
    switch = ExitSwitch(window=4, explore_every=3, max_explore_every=12)
    seen = []
    for _ in range(400):
        kind = switch.use_exits()
        seen.append(kind)
        switch.record(kind, 0.52 if kind else 0.5, 1)  # exits cost 4% more per token
    windows = [seen[i] for i in range(0, 400, 5)]  # a window: a warm-up step and 4 measured
    assert windows[:2] == [True, False]  # each kind measured once
    explored = [i for i, kind in enumerate(windows) if kind and i > 0]
    assert len(explored) >= 3  # exits tried again now and then,
    gaps = [b - a for a, b in zip(explored, explored[1:])]
    assert gaps == sorted(gaps) and gaps[-1] == 13  # less and less often, up to every 12 plain windows
    # when exits become the cheaper kind, the switch follows
    for _ in range(400):
        kind = switch.use_exits()
        switch.record(kind, 0.25 if kind else 0.5, 1)
    assert switch.best is True and switch.use_exits()
    with pytest.raises(ValueError):
        ExitSwitch(window=0)


def test_exit_switch_leaves_out_each_windows_first_step():
    """The first step of a window pays for what the other kind left (a graph
    built on first use): a slow one does not make its kind look dearer."""
    switch = ExitSwitch(window=4, explore_every=3, max_explore_every=12)
    for step in range(10):  # a window of exits, then one of plain steps whose first step is slow
        kind = switch.use_exits()
        switch.record(kind, (50.0 if step == 5 else 0.5) if not kind else 1.0, 1)
    assert switch.cost == {True: 1.0, False: 0.5} and switch.use_exits() is False


def test_one_slow_window_does_not_decide_the_switch():
    """Plain steps measured once on a slowed host (1.3 a token), then at
    their true 1.0, against exits at 1.03: each kind's cost is the mean of its
    two cheapest recent windows, so the slow window soon stops counting and
    plain steps win back."""
    switch = ExitSwitch(window=1, explore_every=2, max_explore_every=8)
    plain_windows = 0
    for _ in range(40):
        kind = switch.use_exits()
        switch.record(kind, 99.0, 1)  # the window's warm-up step, left out
        if not kind:
            plain_windows += 1
        switch.record(kind, 1.03 if kind else (1.3 if plain_windows == 1 else 1.0), 1)
    assert switch.best is False and switch.cost == {True: 1.03, False: 1.0}


def test_exit_switch_hardly_looks_again_at_a_kind_far_behind():
    """Exits at twice a plain step's cost (more than the 10% margin): once
    measured twice, the switch explores them only every 12 windows."""
    switch = ExitSwitch(window=4, explore_every=3, max_explore_every=12)
    seen = []
    for _ in range(400):
        kind = switch.use_exits()
        seen.append(kind)
        switch.record(kind, 1.0 if kind else 0.5, 1)
    windows = [seen[i] for i in range(0, 400, 5)]  # a window: a warm-up step and 4 measured
    explored = [i for i, kind in enumerate(windows) if kind]
    assert explored[:2] == [0, 4]  # measured once: explored again after the usual 3 windows
    assert len(explored) > 4 and all(b - a == 13 for a, b in zip(explored[1:], explored[2:]))


def test_the_exit_switch_starts_where_an_earlier_process_left_it(tmp_path):
    store = tmp_path / "switch.json"
    first = ExitSwitch(window=2, explore_every=3, store=store)
    for _ in range(6):  # a window of each kind (a warm-up step and two measured): plain steps are cheaper
        kind = first.use_exits()
        first.record(kind, 1.0 if kind else 0.5, 1)
    assert store.exists() and first.best is False
    second = ExitSwitch(window=2, explore_every=3, store=store)
    assert second.use_exits() is False and second.cost == first.cost  # no window of exits first
    store.write_text("not json")
    assert ExitSwitch(store=store).use_exits() is True  # an unreadable store: measure again


def test_a_wrong_stored_cost_is_measured_again_after_the_usual_gap(tmp_path):
    """An earlier process read plain steps as dearer than exits (a slowed
    window): this one starts with exits but measures plain steps again after
    `explore_every` windows, and keeps to them once they prove cheaper."""
    store = tmp_path / "switch.json"
    ExitSwitch(store=store)  # nothing to load yet
    from specee.measurements import write_record
    from specee.decoding.exit_switch import STORE_VERSION
    write_record(store, {"cost_exits": 1.0, "cost_plain": 2.0}, STORE_VERSION, "test")
    switch = ExitSwitch(window=1, explore_every=3, store=store)
    kinds = []
    for _ in range(8):
        kind = switch.use_exits()
        kinds.append(kind)
        switch.record(kind, 99.0, 1)  # the warm-up step
        switch.record(kind, 1.0 if kind else 0.5, 1)
    assert kinds[:4] == [True, True, True, False] and kinds[4:] == [False] * 4
    assert switch.cost == {True: 1.0, False: 0.5}


def test_contexts_of_the_same_heads_and_threads_share_a_switch(tiny6, tmp_path):
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads:
        with m.context(n_ctx=64, n_threads=1) as a, m.context(n_ctx=64, n_threads=1) as b, \
                m.context(n_ctx=64, n_threads=2) as c:
            for ctx in (a, b, c):
                ctx.set_heads(heads)
            switches = [EarlyExitDecoder(ctx, Sampler(), heads.n_candidates).switch for ctx in (a, b, c)]
    assert switches[0] is switches[1] is shared(heads, 1) and switches[2] is not switches[0]


@pytest.mark.parametrize("right", [False, True])
def test_a_missed_exit_leaves_the_online_schedule_as_it_was(tiny6, tmp_path, right):
    """Exits at layer 2 (the head file's one offline layer) with candidates
    always wrong: every draft misses and is truncated away, so the online
    schedule never learns an exit and keeps checking layer 2 alone. With
    candidates always right, the same exits count: after five of them the
    schedule adds layers 0 and 4 (e - 2 and e + 2), and layer 0 fires first."""
    want = vanilla_tokens(tiny6, 24)
    path = tmp_path / "h.gguf"
    with Model(tiny6) as m:
        write_heads(path, m, {l: constant_predictor(ALWAYS) for l in range(5)}, exit_layers=[2])
        with Heads(m, path) as heads, m.context(n_ctx=64) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False, exact=True, use_online=True)
            ctx.prefill(PROMPT)
            tok, n = ctx.argmax(), 1  # the next input, and how many of `want` the context has seen
            checked = []
            for _ in range(10):
                nxt = want[n]
                cands = [nxt] * heads.n_candidates if right else [t for t in range(3, 9) if t != nxt]
                step = ctx.decode_with_candidates(tok, cands[:heads.n_candidates])
                checked.append(ctx.last_checks()[0])
                assert step.exit_layer == (1 if checked[-1] == [0] else 3)
                ctx.verify_exit(step.token)
                assert (ctx.argmax(0) == step.token) == right
                if right:  # the draft stays: the next input is what follows it
                    tok, n = ctx.argmax(1), n + 2
                else:      # the draft's cell goes
                    ctx.truncate(ctx.n_past - 1)
                    tok, n = ctx.argmax(0), n + 1
    assert checked[:5] == [[2]] * 5
    # with hits, the sixth step checks layer 0 first (online), which fires: the exit is at layer 0
    assert checked[5:] == ([[0]] * 5 if right else [[2]] * 5)


def test_exit_stats_without_exit_steps_say_no_step_left_early():
    from specee.decoding.early_exit import exit_stats_summary

    raw = {"n_steps": 0, "sum_exit_layers": 0, "n_exits": 0, "n_false_fires": 0, "n_checks": 0, "n_fires": 0,
           "n_draft_top1": 0, "n_draft_topk": 0}
    s = exit_stats_summary(raw, 30, [])
    assert s["mean_exit_layer"] == 30.0 and s["exit_ratio"] == 0.0
