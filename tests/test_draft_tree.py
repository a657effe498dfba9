"""EAGLE-2 dynamic draft trees (specee_draft_tree): every node against the
draft head run along its path one step at a time (the numpy reference), the
returned nodes against the likeliest of the full expansion, the draft cache
afterwards, refused arguments, and greedy decoding with the tree drafter."""
from __future__ import annotations

import numpy as np
import pytest

from reference import DraftReference, Reference
from specee.engine import ContextFullError, Heads, InvalidArgumentError, Model
from specee.heads.head_file import constant_predictor, write_heads
from specee.decoding.speculative import EagleDrafter, generate_speculative, open_drafter
from specee.decoding.speculative.choice import eagle_shape, parse_draft
from specee.decoding.speculative.draft_tree import DraftTree
from specee.decoding.speculative.tree import best_first
from test_draft_head import random_draft
from test_speculative import COPY_PROMPT, PROMPT, AlwaysDraft, plain


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def heads_for(model_path: str, directory, dtype: str):
    path = directory / f"h_{dtype}.gguf"
    draft = random_draft(Reference(model_path), seed=11, reduced=64)
    with Model(model_path) as m:
        write_heads(path, m, {l: constant_predictor(-40.0) for l in range(m.n_layer - 1)}, draft=draft,
                    draft_dtype=dtype)
    return path, draft


@pytest.fixture(scope="module")
def heads_f32(tiny6, tmp_path_factory):
    return heads_for(tiny6, tmp_path_factory.mktemp("draft_tree"), "f32")


def softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max())
    return p / p.sum()


def synced_reference(model_path: str, draft, prompt: list[int], first: int) -> tuple[DraftReference, np.ndarray]:
    """The reference draft head after the sync (the prompt's features, then
    `first`), and its logits for the token after `first`."""
    ref = Reference(model_path)
    dref = DraftReference(ref, draft.tensors())
    features = [ref.step(t, keep_hidden=ref.n_layer, final_norm=True)[1] for t in prompt]
    for tok, f in zip(prompt[1:] + [first], features):
        logits = dref.step(tok, f)
    return dref, logits


def full_expansion(dref: DraftReference, logits: np.ndarray, depth: int, width: int, k: int) -> list[dict]:
    """EAGLE-2's expansion without any pruning, each expanded node run alone
    along its path (a fork of its parent's reference state): node dicts with
    token, parent, prob (given the parent), path (the product down to it)
    and key (the tokens from the first level down to it)."""
    nodes: list[dict] = []

    def add_children(logits: np.ndarray, parent: int) -> None:
        p = softmax(logits)
        rows = np.argsort(-p, kind="stable")[:k]
        for row, token in zip(rows, dref.top_k(logits, k)):
            base = nodes[parent] if parent >= 0 else {"path": 1.0, "key": ()}
            nodes.append({"token": token, "parent": parent, "prob": float(p[row]),
                          "path": base["path"] * float(p[row]), "key": base["key"] + (token,)})

    add_children(logits, -1)
    level = range(len(nodes))
    for _ in range(1, depth):
        end = len(nodes)
        for f in sorted(level, key=lambda i: (-nodes[i]["path"], i))[:width]:
            parent = nodes[f]["parent"]
            state = dref if parent < 0 else nodes[parent]["state"]
            run = state.fork()
            child_logits = run.step(nodes[f]["token"], state.predicted_feature)
            nodes[f]["state"] = run
            add_children(child_logits, f)
        level = range(end, len(nodes))
    return nodes


def keys_of(tokens: list[int], parents: list[int]) -> list[tuple]:
    keys: list[tuple] = []
    for tok, p in zip(tokens, parents):
        keys.append((keys[p] if p >= 0 else ()) + (tok,))
    return keys


# (depth, width, k, capacity): small capacities stop expanding nodes that can
# no longer get a descendant in; the last one keeps the whole expansion.
# Shapes that meet a near-tie of this draft head (at the cut, or between a
# node's k-th and next child) are left out: F16 rounding could flip those.
SHAPES = [(4, 3, 3, 10), (6, 2, 3, 4), (4, 3, 3, 12), (6, 3, 3, 6), (5, 2, 2, 12), (3, 4, 2, 64)]


@pytest.mark.parametrize("depth, width, k, capacity", SHAPES)
@pytest.mark.parametrize("flash_attn", [False, True])
def test_the_tree_is_the_likeliest_of_the_expansion_run_path_by_path(tiny6, heads_f32, depth, width, k, capacity,
                                                                     flash_attn):
    path, draft = heads_f32
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64, flash_attn=flash_attn) as ctx:
        ctx.set_heads(heads)
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        runs = ctx.perf()["n_graph_runs"]
        tree = ctx.draft_tree(first, depth, width, k, capacity)
        passes = ctx.perf()["n_graph_runs"] - runs - 1  # the sync's one, then one per level
    assert passes <= depth - 1
    if (depth, width, k, capacity) == (6, 2, 3, 4):
        assert passes < depth - 1, "the last levels could not get a node in: not expanded"
    dref, logits = synced_reference(tiny6, draft, PROMPT, first)
    want = full_expansion(dref, logits, depth, width, k)
    by_key = {n["key"]: n for n in want}
    assert len(by_key) == len(want)

    assert all(-1 <= p < i for i, p in enumerate(tree.parents))
    assert np.all(np.diff(tree.path_probs) <= 0), "best first"
    for i, key in enumerate(keys_of(tree.tokens, tree.parents)):
        # the node is among its parent's k best, run step by step along its path
        assert key in by_key, f"node {i} {key} is not in the expansion"
        # the engine's draft K/V are F16 (and flash attention sums in F16): within 2%
        np.testing.assert_allclose(tree.probs[i], by_key[key]["prob"], rtol=0.02, atol=1e-3, err_msg=f"node {i}")
        np.testing.assert_allclose(tree.path_probs[i], by_key[key]["path"], rtol=0.02, atol=1e-3)
        assert tree.path_probs[i] == pytest.approx(tree.probs[i] * (tree.path_probs[tree.parents[i]]
                                                                    if tree.parents[i] >= 0 else 1.0), rel=1e-6)

    # one order in both languages: tree.best_first (which orders merged drafts) keeps the engine's
    as_draft = DraftTree(list(tree.tokens), [float(p) for p in tree.probs], "eagle", None, list(tree.parents))
    ordered = best_first(as_draft)
    assert ordered.tokens == as_draft.tokens and ordered.parent_of == as_draft.parent_of

    ranked = sorted(want, key=lambda n: -n["path"])
    assert len(tree.tokens) == min(capacity, len(want))
    if len(want) > capacity:
        # no near-tie at the cut: the engine's probabilities are within 2% of
        # the reference's (F16 K/V), so rounding cannot move a node across it
        assert ranked[capacity - 1]["path"] > 1.2 * ranked[capacity]["path"]
    assert set(keys_of(tree.tokens, tree.parents)) == {n["key"] for n in ranked[:capacity]}


@pytest.mark.parametrize("depth, width, k", [(4, 3, 4), (6, 2, 3), (6, 3, 3), (6, 3, 2)])
def test_nodes_left_unexpanded_change_nothing(tiny6, heads_f32, depth, width, k):
    """The nodes that cannot get a descendant in are not expanded: the tree
    is still the first `capacity` nodes of the whole expansion (a capacity
    above its size), as the engine itself computes it."""
    path, _ = heads_f32
    with Model(tiny6) as m, Heads(m, path) as heads:
        def tree(capacity: int):
            with m.context(n_ctx=128) as ctx:  # a fresh context each time: the same sums
                ctx.set_heads(heads)
                ctx.prefill(PROMPT)
                # (after 252 a node just above the cut has a likely child: expanding it matters)
                return ctx.draft_tree(252, depth, width, k, capacity)

        whole = tree(10_000)
        keys = keys_of(whole.tokens, whole.parents)
        for capacity in (2, 4, 6, 8, 10, 12):
            got = tree(capacity)
            assert keys_of(got.tokens, got.parents) == keys[:capacity], f"capacity {capacity}"
            # levels of other widths sum in other orders: about 1e-4 apart
            np.testing.assert_allclose(got.path_probs, whole.path_probs[:capacity], rtol=1e-3)


def after_prompt(heads, *contexts) -> int:
    """Attaches `heads` to each context and prefills PROMPT; the first
    context's next token."""
    for c in contexts:
        c.set_heads(heads)
        c.prefill(PROMPT)
    return contexts[0].argmax()


def test_width_one_and_one_child_is_the_chain(tiny6, heads_f32):
    path, _ = heads_f32
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64) as a, m.context(n_ctx=64) as b:
        first = after_prompt(heads, a, b)
        tree = a.draft_tree(first, 5, 1, 1, 5)
        tokens, probs = b.draft_chain(first, 5, 1)
    assert tree.tokens == [int(t) for t in tokens[:, 0]]
    assert tree.parents == [-1, 0, 1, 2, 3]
    np.testing.assert_allclose(tree.probs, probs[:, 0], rtol=1e-6)


def test_a_tree_leaves_the_draft_cache_as_a_sync_does(tiny6, heads_f32):
    path, _ = heads_f32
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=64) as a, m.context(n_ctx=64) as b:
        first = after_prompt(heads, a, b)
        a.draft_tree(first, 5, 3, 3, 12)
        b.draft_sync(first)
        for c in (a, b):
            c.decode(first)
        tokens_a, probs_a = a.draft_chain(9, 3, 3)
        tokens_b, probs_b = b.draft_chain(9, 3, 3)
    np.testing.assert_array_equal(tokens_a, tokens_b)
    np.testing.assert_array_equal(probs_a, probs_b)


def test_bad_trees_are_refused_and_change_nothing(tiny6, heads_f32):
    path, _ = heads_f32
    with Model(tiny6) as m, Heads(m, path) as heads, m.context(n_ctx=16, n_batch=8) as ctx, \
            m.context(n_ctx=16, n_batch=8) as fresh:
        ctx.prefill(PROMPT)
        with pytest.raises(InvalidArgumentError, match="no draft head is attached"):
            ctx.draft_tree(1, 2, 2, 2, 4)
        ctx.truncate(0)
        for c in (ctx, fresh):
            c.set_heads(heads)
            c.prefill(PROMPT)
        for args, error, match in (
            ((0, 2, 2, 4), InvalidArgumentError, "depth >= 1"),
            ((2, 2, 0, 4), InvalidArgumentError, "k >= 1"),
            ((2, 2, 2, 0), InvalidArgumentError, "capacity >= 1"),
            ((2, 0, 2, 4), InvalidArgumentError, r"width = 0 must be in \[1, n_batch = 8\]"),
            ((2, 9, 2, 4), InvalidArgumentError, r"width = 9 must be in \[1, n_batch = 8\]"),
            ((2, 2, 65, 4), InvalidArgumentError, "more than the draft's 64 tokens"),
            # 6 synced cells, then 3 + 3 + 3 + 3 rows for levels 2..5 > 16
            ((5, 3, 3, 8), ContextFullError, "needs up to 12 draft cache cells after the 6 synced ones"),
        ):
            with pytest.raises(error, match=match):
                ctx.draft_tree(1, *args)
        with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
            ctx.draft_tree(10**6, 2, 2, 2, 4)
        ctx.decode_tree([3, 4])
        with pytest.raises(InvalidArgumentError, match="token tree is pending"):
            ctx.draft_tree(1, 2, 2, 2, 4)
        ctx.tree_accept([])
        assert ctx.n_past == len(PROMPT)
        # the draft still has the prompt to catch up on, as a context that was never asked
        got, want = ctx.draft_tree(1, 4, 3, 3, 8), fresh.draft_tree(1, 4, 3, 3, 8)
        assert (got.tokens, got.parents) == (want.tokens, want.parents)
        np.testing.assert_array_equal(got.probs, want.probs)


def test_drafter_specs_name_the_shape():
    assert parse_draft("eagle") == ("eagle", None)
    assert parse_draft("eagle:chain:2") == ("eagle", "chain:2")
    assert [eagle_shape(parse_draft(s)[1]) for s in ("eagle", "eagle:5", "eagle:chain", "eagle:chain:2")] == \
        [("tree", 3), ("tree", 5), ("chain", 3), ("chain", 2)]
    for bad in ("eagle:tree", "eagle:chain:0", "eagle:chain:", "eagle:chainy"):
        with pytest.raises(ValueError, match="unknown drafter"):
            parse_draft(bad)


@pytest.mark.parametrize("qtype, dtype", [("F32", "f16"), ("Q8_0", "q8_0")])
def test_tree_drafter_greedy_is_plain_greedy(tiny_model_factory, tmp_path, qtype, dtype):
    model_path = tiny_model_factory(qtype=qtype, n_layer=4, tied=False, seed=3)
    path, _ = heads_for(model_path, tmp_path, dtype)
    with Model(model_path) as m:
        for prompt in (PROMPT, COPY_PROMPT):
            want = plain(m, prompt, 30)
            with m.context(n_ctx=64, n_threads=1) as ctx:
                drafter = open_drafter("eagle", m, 64, 1, ctx=ctx, heads_path=path)
                try:
                    assert isinstance(drafter, EagleDrafter) and drafter.shape == "tree"
                    got = generate_speculative(ctx, prompt, 30, drafter, draft_max=8,
                                               policy=AlwaysDraft(drafter.kinds))
                finally:
                    drafter.close()
            assert got.tokens == want.tokens
            assert got.extra["verify_steps"] > 0
