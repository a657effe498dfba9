"""The EAGLE draft head as a speculative drafter: specee_draft_chain against
the numpy reference, the draft's cache after a chain, and greedy output
equal to plain greedy with the eagle drafter (tree and chain) alone and
merged with lookup. Dynamic trees: test_draft_tree.py."""
from __future__ import annotations

import numpy as np
import pytest

from reference import DraftReference, Reference
from specee.engine import Heads, InvalidArgumentError, Model
from specee.heads.head_file import constant_predictor, write_heads
from specee.decoding.speculative import EagleDrafter, MergedDrafter, generate_speculative, open_drafter
from test_draft_head import random_draft
from test_draft_tree import after_prompt
from test_speculative import COPY_PROMPT, PROMPT, AlwaysDraft, plain


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


@pytest.fixture(scope="module")
def heads_file(tiny6, tmp_path_factory):
    path = tmp_path_factory.mktemp("eagle") / "h.gguf"
    draft = random_draft(Reference(tiny6), seed=11, reduced=64)
    with Model(tiny6) as m:
        write_heads(path, m, {l: constant_predictor(-40.0) for l in range(5)}, draft=draft, draft_dtype="f16")
    return path, draft


def test_draft_chain_runs_ahead_on_its_own_predictions(tiny6, heads_file):
    path, draft = heads_file
    ref = Reference(tiny6)
    dref = DraftReference(ref, draft.tensors())
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64) as ctx:
        ctx.set_heads(heads)
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        tokens, probs = ctx.draft_chain(first, 4, 3)
    features = [ref.step(t, keep_hidden=6, final_norm=True)[1] for t in PROMPT]
    for tok, f in zip(PROMPT[1:] + [first], features):
        logits = dref.step(tok, f)
    for s in range(4):
        assert tokens[s, 0] == dref.top_k(logits, 1)[0], f"step {s}"
        p = np.exp(logits - logits.max())
        p /= p.sum()
        # f16 weights against float64: the drafts drift apart a little step by step
        np.testing.assert_allclose(probs[s], np.sort(p)[::-1][:3], rtol=0.02, atol=2e-3)
        logits = dref.step(int(tokens[s, 0]), dref.predicted_feature)


def test_a_chain_leaves_the_draft_cache_as_a_sync_does(tiny6, heads_file):
    path, _ = heads_file
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64) as a, m.context(n_ctx=64) as b:
        first = after_prompt(heads, a, b)
        a.draft_chain(first, 5, 2)
        b.draft_sync(first)
        for c in (a, b):
            c.decode(first)
        assert a.draft_sync(9) == b.draft_sync(9)


def test_bad_chains_are_refused(tiny6, heads_file, tiny_llama):
    path, _ = heads_file
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64) as ctx:
        with pytest.raises(InvalidArgumentError, match="no draft head is attached"):
            ctx.prefill(PROMPT)
            ctx.draft_chain(1, 2, 2)
        ctx.truncate(0)
        ctx.set_heads(heads)
        ctx.prefill(PROMPT)
        with pytest.raises(InvalidArgumentError, match="more than the draft's 64 tokens"):
            ctx.draft_chain(1, 2, 65)
        with pytest.raises(InvalidArgumentError, match="at least 1"):
            ctx.draft_chain(1, 0, 2)
        with pytest.raises(InvalidArgumentError, match="needs an empty context"):
            EagleDrafter(ctx, heads, path)


@pytest.mark.parametrize("spec", ["eagle", "eagle:chain", "eagle:chain:2+lookup:2"])
def test_eagle_drafter_greedy_is_plain_greedy(tiny6, heads_file, spec):
    path, _ = heads_file
    with Model(tiny6) as m:
        for prompt in (PROMPT, COPY_PROMPT):
            want = plain(m, prompt, 30)
            with m.context(n_ctx=64, n_threads=1) as ctx:
                drafter = open_drafter(spec, m, 64, 1, ctx=ctx, heads_path=path)
                try:
                    assert isinstance(drafter, MergedDrafter if "+" in spec else EagleDrafter)
                    got = generate_speculative(ctx, prompt, 30, drafter, draft_max=6,
                                               policy=AlwaysDraft(drafter.kinds))
                finally:
                    drafter.close()
            assert got.tokens == want.tokens
            assert got.extra["verify_steps"] > 0


def test_eagle_needs_heads_with_a_draft(tiny6, tmp_path):
    with Model(tiny6) as m:
        write_heads(tmp_path / "nodraft.gguf", m, {0: constant_predictor(-40.0)})
        with m.context(n_ctx=64) as ctx:
            with pytest.raises(InvalidArgumentError, match="has no draft head"):
                open_drafter("eagle", m, 64, ctx=ctx, heads_path=tmp_path / "nodraft.gguf")
            with pytest.raises(ValueError, match="no trained heads ship"):
                open_drafter("eagle", m, 64, ctx=ctx)


def test_an_eagle_drafter_leaves_heads_it_was_given_open(tiny6, heads_file):
    """The server and `specee eval` share one set of heads between requests
    and items: closing a drafter must not close them."""
    path, _ = heads_file
    with Model(tiny6) as m, Heads(m, path) as heads:
        for _ in range(2):
            with m.context(n_ctx=64, n_threads=1) as ctx:
                drafter = open_drafter("eagle", m, 64, 1, ctx=ctx, heads=heads)
                drafter.close()
                assert ctx.heads is None
        with m.context(n_ctx=64, n_threads=1) as ctx:
            ctx.set_heads(heads)  # still open and usable
            ctx.prefill(PROMPT)
            assert len(ctx.draft_sync(1)) == heads.n_candidates
        with m.context(n_ctx=64, n_threads=1) as ctx:
            drafter = open_drafter("eagle", m, 64, 1, ctx=ctx, heads_path=path)
            opened = drafter.heads
            drafter.close()
            with pytest.raises(Exception):
                ctx.set_heads(opened)  # the drafter opened these: they went with it
