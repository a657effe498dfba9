"""Layer skipping inside a verification pass (SpaDec; specee_decode_tree_depths):
each row runs its own number of layers, against the numpy reference that
runs each token of the row's path as a lossy early exit at that depth."""
from __future__ import annotations

import numpy as np
import pytest

from specee.engine import InvalidArgumentError, Model
from reference import Reference
from test_token_tree import PROMPT, TREE_PARENTS, TREE_TOKENS, path_to

N_LAYER = 4
# never rising along the rows; rows 3 and 4 (children of 1) stop below it,
# row 6 (child of 5) after one layer
TREE_DEPTHS = [4, 3, 3, 3, 2, 2, 1]


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=N_LAYER, seed=5)


def reference_logits(path: str, tokens: list[int], depths: list[int]) -> np.ndarray:
    """The prompt at full depth, then `tokens` each run for its depth (an
    early exit: deeper layers never see it); the last token's logits."""
    ref = Reference(path)
    for t in PROMPT:
        ref.step(t)
    logits = None
    for t, d in zip(tokens, depths):
        logits, _ = ref.step(t, n_layers=d)
    return logits


def assert_near(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max(), err_msg=what)


def test_every_row_is_its_path_with_early_exits_at_the_rows_depths(tiny):
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS, depths=TREE_DEPTHS)
        rows = ctx.all_logits()
    for node in range(len(TREE_TOKENS)):
        path = path_to(node)
        want = reference_logits(tiny, [TREE_TOKENS[i] for i in path], [TREE_DEPTHS[i] for i in path])
        assert_near(rows[node], want, f"row {node}")
        assert int(rows[node].argmax()) == int(want.argmax())


def test_tree_rows_equal_their_paths_run_alone_bit_for_bit(tiny_model_factory):
    """Q4_K through specee's kernels (every column as a one-column step, and
    its attention kernel): a tree row with depths is the chain of its path
    with the same depths, to the last bit, however many rows leave around it."""
    path = tiny_model_factory(n_layer=N_LAYER, seed=5, qtype="Q4_K", tied=False)
    with Model(path) as m:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            ctx.decode_tree(TREE_TOKENS, TREE_PARENTS, depths=TREE_DEPTHS)
            rows = ctx.all_logits()
        for node in range(len(TREE_TOKENS)):
            nodes = path_to(node)
            with m.context(n_ctx=64) as ctx:
                ctx.prefill(PROMPT)
                ctx.decode_tree([TREE_TOKENS[i] for i in nodes], depths=[TREE_DEPTHS[i] for i in nodes])
                np.testing.assert_array_equal(rows[node], ctx.all_logits()[-1], err_msg=f"row {node}")


def test_full_depths_are_the_ordinary_pass_bit_for_bit(tiny):
    with Model(tiny) as m:
        out = []
        for depths in (None, [N_LAYER] * len(TREE_TOKENS)):
            with m.context(n_ctx=64) as ctx:
                ctx.prefill(PROMPT)
                ctx.decode_tree(TREE_TOKENS, TREE_PARENTS, depths=depths)
                out.append(ctx.all_logits())
    np.testing.assert_array_equal(out[0], out[1])


def test_an_accepted_path_keeps_no_kv_above_its_rows_depths(tiny):
    """After keeping the path 0 -> 2 -> 5 -> 6, the next token sees those
    cells only at the layers their rows ran, as after early exits."""
    path, nxt = [0, 2, 5, 6], 99
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS, depths=TREE_DEPTHS)
        ctx.tree_accept(path)
        ctx.decode(nxt)
        got = ctx.logits()
    want = reference_logits(tiny, [TREE_TOKENS[i] for i in path] + [nxt], [TREE_DEPTHS[i] for i in path] + [N_LAYER])
    assert_near(got, want, "the token after the path")


@pytest.mark.parametrize("depths, match", [
    ([4, 3, 4, 3, 2, 2, 1], "rises"),
    ([4, 3, 3, 3, 2, 2, 0], "outside"),
    ([5, 3, 3, 3, 2, 2, 1], "outside"),
    ([4, 3, 3], "depths for"),
])
def test_bad_depths_are_refused_and_change_nothing(tiny, depths, match):
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        before = ctx.logits()
        with pytest.raises(InvalidArgumentError, match=match):
            ctx.decode_tree(TREE_TOKENS, TREE_PARENTS, depths=depths)
        assert ctx.n_past == len(PROMPT)
        np.testing.assert_array_equal(ctx.logits(), before)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS)  # the context still works
        assert ctx.n_past == len(PROMPT) + len(TREE_TOKENS)
