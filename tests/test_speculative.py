"""Speculative decoding on tiny models: exactly plain greedy's output for
every drafter (right, wrong, partly right, a full context, stop tokens),
plain sampling's distribution under speculative sampling (chi-square), the
draft-length decision on synthetic cost curves, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chisquare

from specee import cli
from specee.engine import Model
from specee.decoding.plain import generate
from specee.decoding.sampling import Sampler, probabilities
from specee.decoding.speculative import (CostCurve, DraftTree, DraftPolicy, Kind, LookupDrafter, ModelDrafter,
                                VocabularyMismatchError, generate_speculative, open_drafter, parse_draft)
from specee.decoding.speculative import cost as cost_module
from specee.decoding.speculative.drafters import empty_draft

PROMPT = [5, 77, 200, 13, 300, 42]
COPY_PROMPT = [5, 77, 200, 13, 300, 42, 9, 5, 77, 200, 13, 300]  # lookup finds a 5-token repeat
# untied output weights: the tiny model's greedy text varies and repeats now
# and then (with tied ones it repeats its last token forever)
UNTIED = dict(tied=False)
FLAT = CostCurve({1: 1.0, 17: 1.0})  # verification as cheap as one token: always worth drafting


@pytest.fixture(scope="module")
def untied(tiny_model_factory) -> str:
    return tiny_model_factory(**UNTIED)


class AlwaysDraft(DraftPolicy):
    """Verifies every draft whole: exercises verification whatever it costs."""

    def __init__(self, kinds):
        super().__init__(FLAT, kinds)

    def limits(self, cap):
        return {name: cap for name in self.kinds}

    def choose(self, draft, cap):
        return min(len(draft), cap)


class Scripted:
    """Knows the greedy continuation `ref` (prompt + output) and proposes it,
    right for the first `right(step)` tokens of each draft, wrong after."""

    name = "scripted"
    kinds = {"scripted": Kind(0.0, 0.5)}

    def __init__(self, ref, right, n_vocab):
        self.ref, self.right, self.n_vocab, self.step = ref, right, n_vocab, 0

    def propose(self, tokens, max_len, sampler=None, limits=None):
        assert list(tokens) == self.ref[:len(tokens)], "the loop fed a history that is not greedy decoding's"
        truth = self.ref[len(tokens):len(tokens) + max_len]
        good = self.right(self.step)
        self.step += 1
        out = [t if i < good else (t + 1) % self.n_vocab for i, t in enumerate(truth)]
        return DraftTree(out, [0.5] * len(out), "scripted") if out else empty_draft()

    def close(self):
        pass


def plain(model, prompt, n, n_ctx=64, **kw):
    with model.context(n_ctx=n_ctx, n_threads=1) as ctx:
        return generate(ctx, prompt, n, **kw)


def speculative(model, prompt, n, drafter, n_ctx=64, draft_max=4, policy=None, **kw):
    with model.context(n_ctx=n_ctx, n_threads=1) as ctx:
        return generate_speculative(ctx, prompt, n, drafter, draft_max=draft_max,
                                    policy=policy or AlwaysDraft(drafter.kinds), **kw)


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
@pytest.mark.parametrize("right, accepted", [
    (lambda step: 99, "all"),           # always right
    (lambda step: 0, "none"),           # always wrong
    (lambda step: step % 4, "some"),    # right for 0, 1, 2, 3 tokens in turn
])
def test_greedy_output_is_plain_greedy_for_any_draft(tiny_model_factory, qtype, right, accepted):
    with Model(tiny_model_factory(qtype=qtype, **UNTIED)) as m:
        want = plain(m, PROMPT, 30)
        drafter = Scripted(PROMPT + want.tokens, right, m.n_vocab)
        got = speculative(m, PROMPT, 30, drafter, draft_max=6)
    assert got.tokens == want.tokens and got.stop_reason == want.stop_reason == "length"
    x = got.extra
    assert x["verify_steps"] > 0 and x["drafted"] > 0
    if accepted == "all":
        assert x["accepted"] == x["drafted"] and x["tokens_per_verify"] > 4
    elif accepted == "none":
        # every step verifies a draft, but the last (a draft there would pass max_tokens)
        assert x["accepted"] == 0 and x["verify_steps"] == len(got.tokens) - 2 and x["plain_steps"] == 1
    else:
        assert 0 < x["accepted"] < x["drafted"]


def test_context_filling_up_mid_draft_ends_like_plain_decoding(untied):
    with Model(untied) as m:
        want = plain(m, PROMPT, 50, n_ctx=24)
        drafter = Scripted(PROMPT + want.tokens, lambda step: 99, m.n_vocab)
        got = speculative(m, PROMPT, 50, drafter, n_ctx=24, draft_max=8)
    assert want.stop_reason == got.stop_reason == "context"
    assert got.tokens == want.tokens and len(got.tokens) == 24 - len(PROMPT) + 1
    assert got.extra["accepted"] == got.extra["drafted"] > 0  # the drafts were shortened, never rejected


def test_stop_token_inside_an_accepted_draft_ends_the_output(untied):
    with Model(untied) as m:
        free = plain(m, PROMPT, 20).tokens
        stop = free[5]
        want = plain(m, PROMPT, 20, stop_ids={stop})
        streamed = []
        drafter = Scripted(PROMPT + free, lambda step: 99, m.n_vocab)
        got = speculative(m, PROMPT, 20, drafter, draft_max=8, stop_ids={stop}, on_token=streamed.append)
    assert got.tokens == want.tokens == streamed and got.stop_reason == "eos"


def test_lookup_drafter_on_copy_heavy_prompt_matches_plain(untied):
    with Model(untied) as m:
        want = plain(m, COPY_PROMPT, 40)
        got = speculative(m, COPY_PROMPT, 40, LookupDrafter(), draft_max=8)
    assert got.tokens == want.tokens
    assert got.extra["draft_source"] == "lookup" and got.extra["verify_steps"] > 0


def test_lookup_drafter_proposes_what_followed_the_most_recent_match():
    d = LookupDrafter()
    draft = d.propose([1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 1, 2, 3], 4)
    assert draft.tokens == [9, 8, 1, 2] and draft.kind == "lookup/3"
    one = d.propose([1, 2, 3, 4, 5, 7, 3], 2)
    assert one.tokens == [4, 5] and one.kind == "lookup/1"
    assert d.propose([4, 5, 6], 3).tokens == []  # no earlier occurrence of anything
    assert d.propose([4, 5, 6, 4], 8).tokens == [5, 6, 4] and d.propose([4, 5, 6, 4], 8).kind == "lookup/1"


def test_lookup_drafter_takes_the_occurrence_whose_context_matches_furthest_back():
    """A copy in progress finds its own place again, not the most recent
    occurrence of the last tokens; its kind is the match length's bucket."""
    source = [10, 11, 12, 13, 1, 2, 3, 20, 21]       # the text being copied
    other = [30, 1, 2, 3, 40, 41]                    # later, the same 3-gram elsewhere
    copy = [10, 11, 12, 13, 1, 2, 3]                 # the copy so far
    d = LookupDrafter()
    draft = d.propose(source + other + copy, 2)
    assert draft.tokens == [20, 21] and draft.kind == "lookup/6"  # matched 7 tokens back: bucket 6
    assert d.propose(source + other + [99, 1, 2, 3], 2).tokens == [40, 41]  # equal contexts: most recent
    assert d.propose(source + other + [99, 1, 2, 3], 2).kind == "lookup/3"
    long = list(range(100, 130))
    assert d.propose(long + [0] + long[:20], 3) == d.propose(long + [0] + long[:20], 3)  # same text, same draft
    assert d.propose(long + [0] + long[:20], 3).kind == "lookup/12"
    assert set(d.kinds) == {"lookup/1", "lookup/2", "lookup/3", "lookup/6", "lookup/12", "lookup/aligned"}


def test_lookup_drafter_picks_up_a_copy_after_an_edit():
    """After an edited word the context no longer matches, but of the
    occurrences of the next token the one where the copy goes on wins, and
    the draft is of kind lookup/aligned."""
    source = [5, 6, 7, 8, 50, 9, 10, 11, 12, 13, 14, 15, 9, 30, 31]
    d = LookupDrafter()
    text = source + [5, 6, 7, 8]
    assert d.propose(text, 3).tokens == [50, 9, 10]         # copying along
    text += [77, 78]                                         # the model wrote 77 78 instead of 50
    d.propose(text, 3)
    text += [9]                                              # and goes on with the copy
    draft = d.propose(text, 3)
    assert draft.tokens == [10, 11, 12] and draft.kind == "lookup/aligned"  # not 30 31 after the later 9
    fresh = LookupDrafter()
    assert fresh.propose(text, 3).tokens == [30, 31, 5]       # without the copy in progress: most recent
    assert fresh.propose(text, 3).kind == "lookup/1"
    # another text, longer than the first, whose occurrences of its last token lie where the old
    # copy would have gone on: no copy in progress there, so the most recent wins, as lookup/1
    other = [70 + i for i in range(6)] + [9, 40] + [80 + i for i in range(14)] + [9, 41, 42, 9]
    assert len(other) > len(text) and fresh.propose(other, 1).tokens == [41]
    assert d.propose(other, 1).tokens == [41] and d.propose(other, 1).kind == "lookup/1"


def test_ngram_index_match_length():
    from specee.decoding.speculative.ngram_index import NgramIndex

    index = NgramIndex(3)
    index.sync([5, 1, 2, 3, 9, 7, 5, 1, 2, 3])
    assert index.earlier_matches(3) == [1]
    assert index.match_length(1, 3, cap=10) == 4   # 5 1 2 3 both times; nothing before the first 5
    assert index.match_length(1, 3, cap=3) == 3


def test_draft_model_drafter_matches_plain_and_follows_the_text(tiny_model_factory):
    target_path, draft_path = tiny_model_factory(**UNTIED), tiny_model_factory(seed=1, **UNTIED)
    with Model(target_path) as m:
        want = plain(m, PROMPT, 30)
        with m.context(n_ctx=64, n_threads=1) as ctx:
            drafter = open_drafter(f"model:{draft_path}", m, n_ctx=64, n_threads=1)
            try:
                got = generate_speculative(ctx, PROMPT, 30, drafter, draft_max=4, policy=AlwaysDraft(drafter.kinds))
                # its cache holds the text, plus the drafts it made after it
                assert drafter._cached[:len(PROMPT) + 30] == PROMPT + got.tokens[:len(drafter._cached) - len(PROMPT)]
            finally:
                drafter.close()
        # a target that drafts for itself: every draft is accepted
        with m.context(n_ctx=64, n_threads=1) as ctx:
            self_draft = ModelDrafter(target_path, m, n_ctx=64, n_threads=1, p_min=0.0)
            try:
                same = generate_speculative(ctx, PROMPT, 30, self_draft, draft_max=4,
                                            policy=AlwaysDraft(self_draft.kinds))
            finally:
                self_draft.close()
    assert got.tokens == want.tokens == same.tokens
    assert same.extra["accepted"] == same.extra["drafted"] > 0


def test_draft_model_with_another_vocabulary_is_refused(tiny_llama, tmp_path):
    import gguf

    other = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.add_token_list(["a", "b", "c"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with Model(tiny_llama) as m:
        with pytest.raises(VocabularyMismatchError, match="has 3 tokens.*needs the target's vocabulary"):
            open_drafter(f"model:{other}", m, n_ctx=64)


@pytest.mark.parametrize("spec, message", [
    ("ngram", "unknown drafter 'ngram'"),
    ("model:", "unknown drafter"),
    ("model:/no/such.gguf", "neither a known model"),
    ("lookup:0", "unknown drafter"),
    ("lookup:99", "unknown drafter"),
    ("lookup+auto", "parts of A\\+B"),
    ("model:a+model:b", "neither a known model"),
])
def test_bad_drafter_names(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_draft(spec)


# ---- sampling keeps the target's distribution ----


def exact_joint(model, prompt, sampler, depth):
    """Plain sampling's exact distribution of the first `depth` tokens."""
    out = {}
    with model.context(n_ctx=64, n_threads=1) as ctx:
        def walk(prefix, mass):
            ctx.truncate(0)
            ctx.prefill(prompt + prefix)
            p = probabilities(ctx.logits(), sampler.temperature, sampler.top_k, sampler.top_p)
            for t in np.flatnonzero(p):
                if len(prefix) + 1 == depth:
                    out[tuple(prefix + [int(t)])] = mass * p[t]
                else:
                    walk(prefix + [int(t)], mass * p[t])
        walk([], 1.0)
    return out


def assert_same_distribution(counts: dict, exact: dict, n_samples: int) -> None:
    """Chi-square test of observed outcome counts against exact chances."""
    # pool the rarest outcomes so every expected count is at least 5
    keys = sorted(exact, key=exact.get)
    observed, expected, pool_o, pool_e = [], [], 0, 0.0
    for key in keys:
        pool_o += counts[key]
        pool_e += exact[key] * n_samples
        if pool_e >= 5:
            observed.append(pool_o)
            expected.append(pool_e)
            pool_o, pool_e = 0, 0.0
    expected[-1] += pool_e
    observed[-1] += pool_o
    assert len(observed) > 10
    result = chisquare(observed, np.array(expected) * sum(observed) / sum(expected))
    assert result.pvalue > 0.001, (result, counts)


class Likeliest:
    """Proposes the target's own likeliest chain as point masses: accepted often, not always."""

    name = "likeliest"
    kinds = {"likeliest": Kind(0.0, 0.5)}

    def __init__(self, model):
        self.ctx = model.context(n_ctx=64, n_threads=1)

    def propose(self, tokens, max_len, sampler=None, limits=None):
        self.ctx.truncate(0)
        self.ctx.prefill(list(tokens))
        out = [self.ctx.argmax()]
        while len(out) < max_len:
            out.append(self.ctx.decode(out[-1]))
        return DraftTree(out, [0.5] * len(out), "likeliest")

    def close(self):
        self.ctx.close()


class SampledTree:
    """Two independent draws from a draft model's distribution at the root
    (siblings, possibly the same token), each with one drawn child; plus the
    target's own likeliest token as a point-mass sibling: every case the
    multi-step scheme handles."""

    name = "sampled-tree"
    kinds = {"tree": Kind(0.0, 0.5)}

    def __init__(self, target: Model, draft_path: str):
        self.draft = Model(draft_path)
        self.dctx = self.draft.context(n_ctx=64, n_threads=1)
        self.tctx = target.context(n_ctx=64, n_threads=1)

    def _q(self, tokens, sampler):
        self.dctx.truncate(0)
        self.dctx.prefill(list(tokens))
        return probabilities(self.dctx.logits(), sampler.temperature, sampler.top_k, sampler.top_p)

    def propose(self, tokens, max_len, sampler=None, limits=None):
        rng = sampler.rng
        q0 = self._q(tokens, sampler)
        out, parents, qs = [], [], []
        for _ in range(2):
            x = int(rng.choice(q0.size, p=q0))
            out.append(x)
            parents.append(-1)
            qs.append(q0)
            q1 = self._q(list(tokens) + [x], sampler)
            out.append(int(rng.choice(q1.size, p=q1)))
            parents.append(len(out) - 2)
            qs.append(q1)
        self.tctx.truncate(0)
        self.tctx.prefill(list(tokens))
        out.append(self.tctx.argmax())
        parents.append(-1)
        qs.append(None)
        n = min(max_len, len(out))
        return DraftTree(out[:n], [0.5] * n, "tree", qs[:n], parents[:n])

    def close(self):
        self.dctx.close()
        self.tctx.close()
        self.draft.close()


@pytest.mark.parametrize("which", ["likeliest", "draft model", "sampled tree"])
def test_speculative_sampling_keeps_the_target_distribution(tiny_model_factory, which):
    # top-k keeps at most 4^3 outcomes
    settings = dict(temperature=1.0, top_k=4, top_p=0.95)
    n_samples, depth = 1500, 3
    with Model(tiny_model_factory(**UNTIED)) as m:
        exact = exact_joint(m, PROMPT, Sampler(**settings), depth)
        # the target's weights in 4 bits: a draft distribution near the target's, not equal
        near = tiny_model_factory(qtype="Q4_0", **UNTIED)
        drafter = (Likeliest(m) if which == "likeliest"
                   else SampledTree(m, near) if which == "sampled tree"  # SpecInfer's multi-step case
                   else ModelDrafter(near, m, n_ctx=64, n_threads=1, p_min=0.0))
        counts = dict.fromkeys(exact, 0)
        drafted = accepted = 0
        try:
            with m.context(n_ctx=64, n_threads=1) as ctx:
                for seed in range(n_samples):
                    ctx.truncate(0)
                    r = generate_speculative(ctx, PROMPT, depth, drafter, Sampler(**settings, seed=seed),
                                             draft_max=5, policy=AlwaysDraft(drafter.kinds))
                    counts[tuple(r.tokens)] += 1  # a KeyError here: an outcome plain sampling never makes
                    drafted += r.extra["drafted"]
                    accepted += r.extra["accepted"]
        finally:
            drafter.close()
    assert 0 < accepted < drafted  # both acceptances and rejections were exercised
    assert_same_distribution(counts, exact, n_samples)


# ---- the decision: draft only when it pays ----

SMOLLM_LIKE = CostCurve({1: 1.0, 2: 2.3, 4: 3.2, 8: 4.6})  # verification cost shape measured on SmolLM2-135M


def test_policy_drafts_nothing_when_acceptance_is_low():
    policy = DraftPolicy(SMOLLM_LIKE, {"k": Kind(0.0, 0.5)})
    assert policy.best_length([0.5] * 7, 0.0) == 0      # E = 2 tokens for 4.6: plain is better
    assert policy.best_length([0.95] * 7, 0.0) == 7     # E = 6.6 tokens for 4.6
    assert policy.best_length([0.99] * 1, 0.0) == 0     # 2 tokens at most for 2.3
    # a free verification of one extra token pays at any acceptance above the margin
    assert DraftPolicy(CostCurve({1: 1.0, 2: 1.0}), {}).best_length([0.1], 0.0) == 1
    # the draft's own cost counts before drafting
    assert policy.best_length([0.9] * 7, 0.0) == 7 and policy.best_length([0.9] * 7, 0.5) == 0


def test_policy_learns_acceptance_per_kind():
    policy = DraftPolicy(SMOLLM_LIKE, {"lookup/3": Kind(0.0, 0.6), "lookup/1": Kind(0.0, 0.2)})
    good = DraftTree([1] * 7, [0.6] * 7, "lookup/3")
    assert policy.choose(good, 7) == 0 and policy.limits(7) == {"lookup/3": 0, "lookup/1": 0}
    for _ in range(20):
        policy.verified(good, range(7), [1] * 8)  # every draft accepted
    assert policy.choose(good, 7) == 7 and policy.limits(7)["lookup/3"] == 7
    # one draft token never pays here (2 tokens at most, for 2.3); lookup/1 learned nothing
    assert policy.limits(7)["lookup/1"] == 0 and policy.choose(good.cut(1), 1) == 0
    for _ in range(20):
        policy.verified(good, [], [2])  # the text moved on: all rejected
    assert policy.choose(good, 7) == 0
    # free drafts are scored while not verified: followed along the plain steps
    for _ in range(100):
        policy.plain_step(good, produced=1)
    assert policy.choose(good, 7) == 7


def test_free_drafts_are_scored_on_every_token_not_just_the_first():
    """A lookup draft whose first token is right and whose second is wrong
    scores one accepted of two reached, as a verification would have, not
    a success for its first token."""
    policy = DraftPolicy(SMOLLM_LIKE, {"lookup/3": Kind(0.0, 0.6)})
    draft = DraftTree([1, 1, 1, 1], [0.6] * 4, "lookup/3")
    for step in range(400):
        policy.plain_step(draft, produced=1 if step % 2 == 0 else 2)  # the text: 1 2 1 2 ...
    stats = policy.stats["lookup/3"]
    assert stats.first.accepted / stats.first.reached == pytest.approx(0.5, abs=0.02)  # the 1s
    assert stats.rest.accepted / stats.rest.reached == pytest.approx(0.0, abs=0.02)    # never 1 1
    assert policy.choose(draft, 4) == 0  # half right is not worth a verification here


QWEN_LIKE = CostCurve({1: 1.0, 2: 1.64, 4: 2.39, 8: 3.67, 9: 4.04})  # exact verification, Qwen2.5-Coder-1.5B


def test_policy_keeps_first_token_and_continuation_acceptance_apart():
    """Drafts right all along 60% of the time and wrong from their first
    token otherwise: a long draft pays (5.4 tokens for 4.04), which one
    per-token rate (about 0.83, a geometric run) would undervalue."""
    policy = DraftPolicy(QWEN_LIKE, {"lookup/6": Kind(0.0, 0.5)})
    draft = DraftTree([1] * 8, [0.5] * 8, "lookup/6")
    for i in range(40):
        policy.verified(draft, *((range(8), [1] * 9) if i % 5 < 3 else ([], [2])))
    stats = policy.stats["lookup/6"]
    assert stats.rate(first=True) == pytest.approx(0.6, abs=0.08) and stats.rate(first=False) > 0.9
    pooled = policy.best_length([0.83] * 8, 0.0)  # one rate for all tokens
    assert policy.choose(draft, 8) >= 7 > pooled and policy.limits(8)["lookup/6"] >= 7


def test_followed_free_drafts_move_on_through_verifications():
    """A free draft being followed is not dropped when a verification
    moves the text on by several tokens: it is scored along them, token by
    token as the text shows them, so long right drafts count (dropping them
    would keep only the wrong ones)."""
    policy = DraftPolicy(QWEN_LIKE, {"lookup/3": Kind(0.0, 0.5), "other": Kind(0.0, 0.5)})
    policy.plain_step(DraftTree([1, 2, 3, 4, 5], [0.5] * 5, "lookup/3"), produced=1)
    stats = policy.stats["lookup/3"]
    assert (stats.first.reached, stats.first.accepted, stats.rest.reached) == (1, 1, 0)
    policy.verified(DraftTree([2, 3, 9], [0.5] * 3, "other"), [0, 1], produced=[2, 3, 4])
    assert (stats.rest.reached, stats.rest.accepted) == (3, 3) and policy._shadows  # still followed
    policy.plain_step(empty_draft(), produced=5)
    assert (stats.first.reached, stats.first.accepted) == (1, 1)
    assert (stats.rest.reached, stats.rest.accepted) == (4, 4)  # as a verification of all 5 would have
    assert not policy._shadows


def test_policy_probes_a_costly_drafter_now_and_then():
    policy = DraftPolicy(SMOLLM_LIKE, {"model": Kind(0.3, 0.3)}, probe_interval=5, probe_len=2)
    assert policy.limits(8) == {"model": 0}
    for _ in range(5):
        policy.plain_step(empty_draft(), 0)
    assert policy.limits(8) == {"model": 2}
    probe = DraftTree([3, 4], [0.2, 0.2], "model")
    assert policy.choose(probe, 8) == 2
    policy.verified(probe, [], [probe.tokens[0] + 1])
    assert policy.limits(8) == {"model": 0}


def test_policy_never_probes_a_drafter_that_could_not_pay_if_always_right():
    # Qwen2.5-Coder-1.5B's measured verification costs, and 0.5B (Q8_0) drafting for it: 0.48 of a step per token
    qwen_like = CostCurve({1: 1.0, 2: 1.9, 4: 3.2, 8: 4.9})
    policy = DraftPolicy(qwen_like, {"model": Kind(0.48, 0.6)}, probe_interval=5, probe_len=2)
    assert not policy.could_pay(policy.kinds["model"], 8)
    for _ in range(50):
        policy.plain_step(empty_draft(), 0)
    assert policy.limits(8) == {"model": 0}
    assert policy.choose(DraftTree([3, 4], [0.2, 0.2], "model"), 8) == 0
    # the same drafter beside a target whose verification is nearly free does get probed
    cheap = DraftPolicy(FLAT, {"model": Kind(0.48, 0.01)}, probe_interval=5, probe_len=2)
    for _ in range(5):
        cheap.plain_step(empty_draft(), 0)
    assert cheap.limits(8) == {"model": 2}

def test_cost_curve_interpolates_and_is_cached(tmp_path, monkeypatch, tiny_llama):
    curve = CostCurve({1: 1.0, 2: 2.0, 4: 3.0})
    assert curve(3) == 2.5 and curve(6) == 4.0
    with pytest.raises(ValueError, match="cost\\(1\\) = 1"):
        CostCurve({2: 2.0})
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    with Model(tiny_llama) as m, m.context(n_ctx=64, n_threads=1) as ctx:
        measured = cost_module.for_context(ctx, PROMPT, 5)
        assert ctx.n_past == 0  # calibration leaves the cache as it was
        assert sorted(measured.points) == [1, 2, 3, 4, 5] and all(c >= 1.0 for c in measured.points.values())
        path = cost_module.cache_path(m.fingerprint, 1, kernels=m.kernels)
        assert json.loads(path.read_text())["points"]["5"] == measured.points[5]
        assert cost_module.for_context(ctx, PROMPT, 5).points == measured.points  # from the cache
        assert cost_module.load(m.fingerprint, 1, 9, kernels=m.kernels) is None  # the cache does not reach 9

        # the curve is clamped: at least one step, at most n, never below a shorter pass
        values = [measured.points[n] for n in sorted(measured.points)]
        assert values == sorted(values) and all(c <= n for n, c in measured.points.items())


def test_cost_curves_are_cached_per_kernel_choice(tmp_path, monkeypatch, tiny_llama):
    """A pass costs what its kernels cost: a curve measured with ggml's
    kernels is never read back for specee's, and the other way round."""
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    with Model(tiny_llama) as m:
        cost_module.save(CostCurve({1: 1.0, 2: 1.9, 3: 2.8}), m.fingerprint, 1)
        assert cost_module.load(m.fingerprint, 1, 3, kernels="specee") is None
        assert cost_module.load(m.fingerprint, 1, 3).points[2] == 1.9
    with Model(tiny_llama, kernels="specee") as m, m.context(n_ctx=64, n_threads=1) as ctx:
        cost_module.for_context(ctx, PROMPT, 3)  # measured, not the ggml curve
        assert cost_module.cache_path(m.fingerprint, 1, kernels="specee").exists()
        assert cost_module.load(m.fingerprint, 1, 3).points[2] == 1.9  # the ggml one untouched


def test_draft_model_step_cost_is_measured_once_and_cached(tiny_model_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    target_path, draft_path = tiny_model_factory(n_layer=4, seed=3), tiny_model_factory(n_layer=1, seed=3)
    with Model(target_path) as target, target.context(n_ctx=64, n_threads=1) as ctx:
        drafter = ModelDrafter(draft_path, target, 64, 1, target_ctx=ctx)
        try:
            ratio = drafter.kinds["model"].cost_per_token
            assert ratio > 0 and ctx.n_past == 0 and drafter.ctx.n_past == 0  # both caches left empty
            (cached,) = (tmp_path / "speculative").glob("step-*.json")
            assert json.loads(cached.read_text())["ratio"] == ratio
            assert cost_module.step_ratio(drafter.ctx, ctx) == ratio  # read back, not measured again
        finally:
            drafter.close()

def test_adaptive_policy_with_measured_curve_stays_exact(untied, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    with Model(untied) as m:
        want = plain(m, COPY_PROMPT, 40)
        with m.context(n_ctx=64, n_threads=1) as ctx:
            got = generate_speculative(ctx, COPY_PROMPT, 40, LookupDrafter(), draft_max=8)
    assert got.tokens == want.tokens
    x = got.extra
    assert x["verify_steps"] + x["plain_steps"] >= 1 and x["calibrate_s"] > 0


# ---- command line and evaluation ----


def test_eval_speculative_mode_reproduces_vanilla(untied, tmp_path, monkeypatch):
    from pathlib import Path

    from specee.evaluation.run import evaluate, parse_mode

    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    assert parse_mode("speculative") == ("speculative", None)
    data = Path(__file__).parent / "data" / "datasets"
    res = evaluate(untied, ["humaneval"], ["vanilla", "speculative"], limit=2, n_predict=16, threads=1, n_ctx=512,
                   progress=False, dataset_paths={"humaneval": data / "humaneval.jsonl"})
    s = res["datasets"]["humaneval"]["speculative"]
    assert s["n_items"] == 2 and s["rouge_l_vs_vanilla"] == 1.0 and s["exact_prefix_tokens"] > 0


def test_cli_speculative_json(untied, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    args = ["-q", "generate", "--model", untied, "--prompt", "hello world hello world hello", "-n", "12",
            "--json", "--threads", "1", "--temp", "0"]
    assert cli.main(args) == 0
    vanilla = json.loads(capsys.readouterr().out)
    assert cli.main(args + ["--mode", "speculative", "--drafter", "lookup", "--draft-max", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"] == vanilla["tokens"] and record["mode"] == "speculative"
    for key in ("draft_source", "drafted", "accepted", "acceptance_rate", "verify_steps", "tokens_per_verify"):
        assert key in record
    assert record["draft_source"] == "lookup"


@pytest.mark.parametrize("extra, message", [
    (["--draft-max", "17"], "--draft-max: must be an integer in \\[1, 16\\]"),
    (["--draft-max", "0"], "--draft-max: must be an integer in \\[1, 16\\]"),
    (["--draft", "ngram"], "unknown drafter 'ngram'"),
    (["--draft", "model:/no/such.gguf"], "neither a known model"),
])
def test_cli_refuses_bad_speculative_options_before_loading(tiny_llama, capsys, extra, message):
    import re

    args = ["generate", "--model", tiny_llama, "--prompt", "x", "--mode", "speculative"] + extra
    with pytest.raises(SystemExit):
        cli.main(args)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.real_model
def test_real_model_chain_verification_follows_plain_greedy(real_model_path):
    """On a real model the output is plain greedy's up to float rounding:
    this library's batched and single-token passes differ (up to ~0.5 in a
    logit on SmolLM2 Q4_1), so the two may part at a near-tie, and only
    there: at the first difference plain decoding's top two logits must be
    within 1.0 of each other."""
    from specee.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(real_model_path)
    text = ("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
            "Rewrite both functions with type hints:\n\n")
    ids = tok.encode(text, parse_special=False)
    with Model(real_model_path) as m:
        want = plain(m, ids, 48, n_ctx=256).tokens
        got = speculative(m, ids, 48, LookupDrafter(), n_ctx=256, draft_max=8)
        assert got.extra["verify_steps"] > 0 and got.extra["accepted"] > 0
        if got.tokens != want:
            d = next(i for i, (a, b) in enumerate(zip(got.tokens, want)) if a != b)
            with m.context(n_ctx=256, n_threads=1) as ctx:  # replay plain decoding up to the difference
                ctx.prefill(ids)
                for t in want[:d]:
                    ctx.decode(t)
                top2 = np.sort(ctx.logits())[-2:]
            assert top2[1] - top2[0] < 1.0, f"parted from plain greedy at token {d}, not a near-tie: {top2}"
