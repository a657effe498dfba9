"""Chains of exact early exits (docs/exact-specee.md#chains): the step for
an exit's draft may exit too, never above the last exit layer, and one pass
verifies every draft of the chain. Tiny models with forced exits give chains
with hits and misses at any row; rows must be one-token steps bit for bit and
the output plain decoding's."""
from __future__ import annotations

import numpy as np
import pytest

from specee.decoding.early_exit import generate_specee
from specee.decoding.sampling import Sampler
from specee.engine import ContextFullError, Heads, InvalidArgumentError, Model
from specee.heads.head_file import constant_predictor, write_heads
from test_exact_early_exit import (ALWAYS, PROMPT, Fixed, always_exit_heads, first_token_and_next_distribution,
                                  seeded_decoders, vanilla_tokens)

NEVER = -40.0


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def plain_logits(m: Model, tokens: list[int]) -> list[np.ndarray]:
    """The logits of one-token steps after each of `tokens` (after PROMPT)."""
    out = []
    with m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        for t in tokens:
            ctx.decode(t)
            out.append(ctx.logits().copy())
    return out


def wrong(k: int, *avoid: int) -> list[int]:
    return [t for t in range(3, 3 + k + len(avoid)) if t not in avoid][:k]


def test_every_row_of_a_chain_is_a_plain_step_bit_for_bit(tiny6, tmp_path):
    """Three exits in a chain (each at layer 3), then one pass: rows 0-2
    enter at layer 3, row 3 (the last draft) runs every layer."""
    want = vanilla_tokens(tiny6, 5)
    with Model(tiny6) as m:
        ref = plain_logits(m, want[:4])
        with always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=64) as ctx:
            k = heads.n_candidates
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False, exact=True, use_online=False, max_chain=3)
            ctx.prefill(PROMPT)
            token = want[0]
            for i in range(3):
                step = ctx.decode_with_candidates(token, [want[i + 1]] * k)
                assert (step.token, step.exit_layer) == (want[i + 1], 3)
                token = step.token
            with pytest.raises(InvalidArgumentError, match="waits for its verification"):
                ctx.decode_with_candidates(token, [3] * k)  # max_chain reached
            ctx.verify_exit(token)
            for i in range(4):
                np.testing.assert_array_equal(ctx.logits(i), ref[i])
            assert ctx.n_past == len(PROMPT) + 4
            ctx.decode(ctx.argmax(3))  # the context goes on at full depth
            np.testing.assert_array_equal(ctx.logits(), plain_logits(m, want[:5])[4])


def test_a_chained_step_stops_at_the_last_exit_layer(tiny6, tmp_path):
    """Checks at layers 1 and 3, and each fire needs the layer's argmax among
    the candidates (verify_full). The first step exits at layer 2; the
    chained step checks layer 1 only (layer 3 is above the chain's exit
    layer), finds no candidate there and stops at layer 2 with no token. The
    pass then has only late rows."""
    want = vanilla_tokens(tiny6, 1)
    path = tmp_path / "h.gguf"
    with Model(tiny6) as m:
        write_heads(path, m, {1: constant_predictor(ALWAYS), 3: constant_predictor(ALWAYS)}, exit_layers=[1, 3])
        with Heads(m, path) as heads:
            k = heads.n_candidates
            with m.context(n_ctx=64) as trace:  # the argmax after layer 2 of the two steps
                trace.set_heads(heads)
                trace.prefill(PROMPT)
                first_exit = int(trace.trace_step(want[0], wrong(k))[2][1])
                second_exit = int(trace.trace_step(first_exit, wrong(k))[2][1])
            ref = plain_logits(m, [want[0], first_exit])
            with m.context(n_ctx=64) as ctx:
                ctx.set_heads(heads)
                ctx.set_exit_params(verify_full=True, exact=True, use_online=False, max_chain=4)
                ctx.prefill(PROMPT)
                step = ctx.decode_with_candidates(want[0], [first_exit] + wrong(k - 1, first_exit))
                assert (step.token, step.exit_layer) == (first_exit, 2) and ctx.last_checks()[0] == [1]
                step = ctx.decode_with_candidates(first_exit, wrong(k, second_exit))
                assert (step.token, step.exit_layer) == (-1, 2) and ctx.last_checks()[0] == [1]
                with pytest.raises(InvalidArgumentError, match="waits for its verification"):
                    ctx.decode_with_candidates(3, wrong(k))  # a step that chose nothing ends the chain
                with pytest.raises(InvalidArgumentError, match="not the token the last exit chose"):
                    ctx.verify_exit(first_exit)
                ctx.verify_exit(-1)
                assert ctx.n_outputs == 2 and ctx.n_past == len(PROMPT) + 2
                np.testing.assert_array_equal(ctx.logits(0), ref[0])
                np.testing.assert_array_equal(ctx.logits(1), ref[1])


def test_misuse_of_a_chain_is_refused_and_changes_nothing(tiny6, tmp_path):
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=64) as ctx:
        k = heads.n_candidates
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, exact=True, max_chain=3)
        for bad in (0, 17):
            with pytest.raises(InvalidArgumentError, match="max_chain"):
                ctx.set_exit_params(max_chain=bad)
        ctx.prefill(PROMPT)
        d1 = ctx.decode_with_candidates(ctx.argmax(), [7] * k).token
        with pytest.raises(InvalidArgumentError, match="continues with the draft"):
            ctx.decode_with_candidates(d1 + 1, [7] * k)
        with pytest.raises(InvalidArgumentError, match="waits for its verification"):
            ctx.set_exit_params(max_chain=1)  # fewer than the chain may have
        assert ctx.n_past == len(PROMPT) + 1
        d2 = ctx.decode_with_candidates(d1, [8] * k).token
        assert ctx.n_past == len(PROMPT) + 2
        ctx.truncate(len(PROMPT) + 1)  # d1's position goes: the first exit waits again, with its draft
        assert ctx.exit_params()["max_chain"] == 3
        d2 = ctx.decode_with_candidates(d1, [8] * k).token
        ctx.verify_exit(d2)
        assert ctx.n_past == len(PROMPT) + 3
        ctx.truncate(len(PROMPT))
        assert ctx.decode(3) >= 0  # nothing waits


def test_verification_of_a_chain_refuses_a_full_context(tiny6, tmp_path):
    n_ctx = 9
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=n_ctx) as ctx:
        k = heads.n_candidates
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, exact=True, max_chain=4)
        ctx.prefill(PROMPT + [7])  # 7 of 9 cells
        d1 = ctx.decode_with_candidates(9, [5] * k).token
        d2 = ctx.decode_with_candidates(d1, [6] * k).token
        with pytest.raises(ContextFullError):
            ctx.decode_with_candidates(d2, [5] * k)
        with pytest.raises(ContextFullError):
            ctx.verify_exit(d2)
        assert ctx.n_past == n_ctx
        ctx.truncate(n_ctx - 1)  # the chain loses its last token; the first exit still waits
        ctx.verify_exit(d1)
        assert ctx.n_past == n_ctx


@pytest.mark.parametrize("period", [2, 3, 5])
@pytest.mark.parametrize("chain", [2, 4, 16])
def test_greedy_output_with_chains_is_plain_decodings(tiny6, tmp_path, period, chain):
    """Candidates right every `period`-th step: chains break at every row."""
    want = vanilla_tokens(tiny6, 30)
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [1, 3]) as heads, \
            m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False, use_online=False)
        got = generate_specee(ctx, PROMPT, 30, heads.n_candidates, source=Fixed(want, len(PROMPT), period),
                              adaptive=False, chain=chain)
    assert got.tokens == want
    extra = got.extra
    assert extra["max_chain"] == chain
    assert extra["verification_passes"] < extra["exit_drafts"]  # chains formed
    assert 0 < extra["exit_drafts_accepted"] < extra["exit_drafts_verified"]


def test_a_chains_missed_drafts_leave_the_online_schedule_as_it_was(tiny6, tmp_path):
    """Chains of two exits at layer 3 (offline layer 2), the first draft right
    and the second wrong: each chain leaves one exit for the online schedule
    to learn. After five chains it knows five exits and checks layer 0 first
    (e - 2), not after three, as it would if the missed exits counted."""
    want = vanilla_tokens(tiny6, 24)
    path = tmp_path / "h.gguf"
    with Model(tiny6) as m:
        write_heads(path, m, {l: constant_predictor(ALWAYS) for l in range(5)}, exit_layers=[2])
        with Heads(m, path) as heads, m.context(n_ctx=64) as ctx:
            k = heads.n_candidates
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=False, exact=True, use_online=True, max_chain=2)
            ctx.prefill(PROMPT)
            tok, n, checked = want[0], 1, []
            for _ in range(6):
                step = ctx.decode_with_candidates(tok, [want[n]] * k)
                checked.append(ctx.last_checks()[0])
                assert step.token == want[n]
                second = ctx.decode_with_candidates(step.token, wrong(k, want[n + 1]))
                ctx.verify_exit(second.token)
                assert ctx.argmax(0) == want[n] and ctx.argmax(1) != second.token
                ctx.truncate(ctx.n_past - 1)  # the second draft's position goes
                tok, n = ctx.argmax(1), n + 2
    assert checked == [[2]] * 5 + [[0]]


def test_sampling_after_a_chain_keeps_plain_samplings_distribution(tiny6, tmp_path):
    """The first two tokens after a chain of two exits whose drafts are
    always the same two tokens: accepted row by row with chance p(draft),
    else drawn from p without it. Their joint distribution over many seeds
    is plain sampling's."""
    sampler_kw = dict(temperature=1.5, top_k=4)
    with Model(tiny6) as m:
        first, p1 = first_token_and_next_distribution(m, sampler_kw)
        joint = np.zeros((p1.size, p1.size))
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT + [first])
            for x1 in np.nonzero(p1)[0]:
                ctx.truncate(len(PROMPT) + 1)
                ctx.decode(int(x1))
                joint[x1] = p1[x1] * Sampler(**sampler_kw).probabilities(ctx.logits())
        draft = int(np.argsort(p1)[-2])  # accepted about p(draft) of the time
        n, counts = 3000, np.zeros_like(joint)
        for decoder in seeded_decoders(m, tmp_path / "h.gguf", sampler_kw, _Same(draft), n, chain=2):
            out = decoder.step(first, 3)
            while len(out) < 2:
                out += decoder.step(out[-1], 3 - len(out))
            counts[out[0], out[1]] += 1
    tv = 0.5 * np.abs(counts / n - joint).sum()
    assert tv < 0.08, tv
    assert counts[draft].sum() > 0


class _Same:
    """Every candidate the same token: each exit's draft is that token."""

    def __init__(self, token: int):
        self.token = token

    def candidates(self, tokens, k):
        return [self.token] * k
