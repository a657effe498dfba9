"""Token trees (specee_decode_tree / specee_tree_accept) and several contexts
in one pass (specee_decode_batch), against one-by-one decoding."""
from __future__ import annotations

import numpy as np
import pytest

from specee.engine import Heads, InvalidArgumentError, Model, decode_batch
from specee.heads.head_file import constant_predictor, write_heads
from test_draft_head import random_draft
from reference import Reference

PROMPT = [5, 77, 200, 13, 300, 42]
# a tree of 7 tokens: 0 -> (1 -> (3, 4), 2 -> 5 -> 6)
TREE_TOKENS = [11, 23, 34, 45, 56, 67, 78]
TREE_PARENTS = [-1, 0, 0, 1, 1, 2, 5]


def assert_close(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Equal up to summation order (batches of other sizes sum in other
    orders: about 1e-4 of the logits' scale here); a wrong attention mask
    moves these tiny models' logits by more than 10% of it."""
    np.testing.assert_allclose(got, want, atol=5e-4 * float(np.abs(want).max()), err_msg=what)


def path_to(node: int, parents=TREE_PARENTS) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=4, seed=5)


def sequential_logits(model: Model, tokens: list[int], flash_attn: bool = False) -> np.ndarray:
    """Logits after the last of `tokens`, decoded one token at a time."""
    with model.context(n_ctx=64, flash_attn=flash_attn) as ctx:
        ctx.prefill(tokens[:1])
        for t in tokens[1:]:
            ctx.decode(t)
        return ctx.logits()


@pytest.mark.parametrize("flash_attn", [False, True])
def test_every_tree_row_is_its_path_decoded_alone(tiny, flash_attn):
    with Model(tiny) as m, m.context(n_ctx=64, flash_attn=flash_attn) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS)
        rows = ctx.all_logits()
        assert rows.shape[0] == len(TREE_TOKENS)
        assert ctx.n_past == len(PROMPT) + len(TREE_TOKENS)
        for node in range(len(TREE_TOKENS)):
            want = sequential_logits(m, PROMPT + [TREE_TOKENS[i] for i in path_to(node)], flash_attn)
            assert_close(rows[node], want, f"tree row {node}")
            assert int(rows[node].argmax()) == int(want.argmax())


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_K"])
def test_chain_rows_are_plain_steps_bit_for_bit(tiny_model_factory, qtype):
    """A verified chain sees exactly plain decoding's numbers: each row of a
    chain pass equals the step that decodes the same tokens one at a time
    after the same prefill, to the last bit (F32/F16/Q8_0/Q4_0 products of
    several columns go through llamafile's sgemm, repacked Q4_0/Q4_K
    through the 4-column gemm: both sum in other orders than one column).
    A branch of a tree is only close: its ancestors' cells have its
    siblings' masked cells between them, which shifts the attention's sums
    into other SIMD lanes."""
    path = tiny_model_factory(n_layer=2, seed=5, qtype=qtype, tied=False)
    with Model(path) as m, m.context(n_ctx=64) as chain, m.context(n_ctx=64) as steps:
        chain.prefill(PROMPT)
        chain.decode_tree(TREE_TOKENS)  # parents None: a chain
        steps.prefill(PROMPT)
        for i, token in enumerate(TREE_TOKENS):
            steps.decode(token)
            np.testing.assert_array_equal(chain.all_logits()[i], steps.logits(), err_msg=f"{qtype} chain row {i}")


def test_batched_verify_is_a_prefill_with_every_row(tiny):
    """exact_verify=False: a chain pass runs ggml's batched kernels, the same
    graph as a prefill that keeps every row's logits."""
    with Model(tiny) as m, m.context(n_ctx=64, exact_verify=False) as a, m.context(n_ctx=64) as b:
        a.prefill(PROMPT)
        b.prefill(PROMPT)
        a.decode_tree(TREE_TOKENS)  # parents None: a chain
        b.prefill(TREE_TOKENS, logits_all=True)
        np.testing.assert_array_equal(a.all_logits(), b.all_logits())


@pytest.mark.parametrize("path", [[0, 2, 5, 6], [0, 1, 4], [0], []])
def test_an_accepted_path_continues_as_if_decoded_one_by_one(tiny, path):
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS)
        ctx.tree_accept(path)
        assert ctx.n_past == len(PROMPT) + len(path)
        nxt = ctx.decode(99)
        want = sequential_logits(m, PROMPT + [TREE_TOKENS[i] for i in path] + [99])
        assert_close(ctx.logits(), want)
        assert nxt == int(want.argmax())


def test_a_pending_tree_blocks_new_tokens_until_accepted(tiny):
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS)
        for call in (lambda: ctx.decode(1), lambda: ctx.prefill([1, 2]),
                     lambda: ctx.decode_tree([1], None), lambda: ctx.truncate(len(PROMPT) + 1)):
            with pytest.raises(InvalidArgumentError, match="token tree is pending"):
                call()
        assert ctx.n_past == len(PROMPT) + len(TREE_TOKENS)
        ctx.truncate(len(PROMPT) - 2)  # back into the cache before the tree: allowed, drops it
        assert ctx.n_past == len(PROMPT) - 2
        ctx.decode(3)


@pytest.mark.parametrize("tokens, parents, match", [
    ([1, 2, 3], [-1, 1, 0], "parent 1 of tree token 1"),
    ([1, 2, 3], [-1, 0, 5], "parent 5 of tree token 2"),
    ([1, 2], [-1, -2], "parent -2"),
    ([1, 10**6], [-1, 0], "outside the vocabulary"),
    ([], None, "empty input"),
])
def test_bad_trees_are_refused_and_change_nothing(tiny, tokens, parents, match):
    with Model(tiny) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        with pytest.raises(InvalidArgumentError, match=match):
            ctx.decode_tree(tokens, parents)
        assert ctx.n_past == len(PROMPT)
        ctx.decode(3)  # nothing pending


def test_bad_paths_are_refused(tiny):
    with Model(tiny) as m, m.context(n_ctx=64, n_batch=8) as ctx:
        ctx.prefill(PROMPT)
        with pytest.raises(InvalidArgumentError, match="no token tree is pending"):
            ctx.tree_accept([0])
        with pytest.raises(InvalidArgumentError, match="larger than n_batch = 8"):
            ctx.decode_tree(list(range(1, 10)))
        ctx.decode_tree(TREE_TOKENS, TREE_PARENTS)
        for rows, match in (([1], "not a path from a root"), ([0, 5], "not a path"), ([0, 9], "outside the tree"),
                            ([0, 1, 3, 4], "not a path")):
            with pytest.raises(InvalidArgumentError, match=match):
                ctx.tree_accept(rows)
        ctx.tree_accept([0, 1, 3])
        assert ctx.n_past == len(PROMPT) + 3


def test_the_draft_head_follows_the_accepted_path(tiny, tmp_path):
    """After a tree and an accepted path, the draft head's candidates are
    those of a context that decoded the path one token at a time."""
    draft = random_draft(Reference(tiny), seed=4)
    path = [0, 2, 5]
    with Model(tiny) as m:
        write_heads(tmp_path / "h.gguf", m, {0: constant_predictor(-40.0)}, draft=draft, draft_dtype="f16")
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=64) as a, m.context(n_ctx=64) as b:
            a.set_heads(heads)
            b.set_heads(heads)
            a.prefill(PROMPT)
            b.prefill(PROMPT)
            a.draft_sync(TREE_TOKENS[0])
            b.draft_sync(TREE_TOKENS[0])
            a.decode_tree(TREE_TOKENS, TREE_PARENTS)
            a.tree_accept(path)
            for i in path:
                b.decode(TREE_TOKENS[i])
            assert a.draft_sync(7) == b.draft_sync(7)


def test_decode_batch_is_each_context_decoded_alone(tiny):
    prompts = [PROMPT, PROMPT[:2], [9] * 11]
    with Model(tiny) as m:
        batch = [m.context(n_ctx=64, flash_attn=i == 1) for i in range(3)]
        alone = [m.context(n_ctx=64, flash_attn=i == 1) for i in range(3)]
        for p, a, b in zip(prompts, batch, alone):
            a.prefill(p)
            b.prefill(p)
        tokens = [a.argmax() for a in batch]
        builds = batch[0].perf()["n_graph_builds"]
        for step in range(3):
            got = decode_batch(batch, tokens)
            want = [b.decode(t) for b, t in zip(alone, tokens)]
            for a, b in zip(batch, alone):
                assert_close(a.logits(), b.logits())
                assert a.n_past == b.n_past
            assert got == want
            tokens = got
        assert batch[0].perf()["n_graph_builds"] == builds + 1  # the same batch reuses its graph
        for c in batch + alone:
            c.close()


def test_decode_batch_refuses_bad_input_and_changes_nothing(tiny, tiny_model_factory):
    other = tiny_model_factory(n_layer=2, seed=9)
    with Model(tiny) as m, Model(other) as m2, m.context(n_ctx=64) as a, m.context(n_ctx=64) as b, \
            m.context(n_ctx=32) as short, m2.context(n_ctx=64) as foreign:
        for c in (a, b, short, foreign):
            c.prefill([1, 2, 3])
        for ctxs, tokens, match in (([a, a], [1, 2], "given twice"),
                                    ([a, foreign], [1, 2], "another model or n_ctx"),
                                    ([a, short], [1, 2], "another model or n_ctx"),
                                    ([a, b], [1, 10**6], "outside the vocabulary"),
                                    ([a, b], [1], "2 contexts for 1 tokens")):
            with pytest.raises(InvalidArgumentError, match=match):
                decode_batch(ctxs, tokens)
        assert (a.n_past, b.n_past) == (3, 3)
        b.decode_tree([4, 5])
        with pytest.raises(InvalidArgumentError, match="token tree is pending"):
            decode_batch([a, b], [1, 2])
        assert a.n_past == 3


def test_contexts_sharing_one_thread_pool_decode_as_before(tiny):
    with Model(tiny) as m:
        a, b, c = (m.context(n_ctx=64, n_threads=2) for _ in range(3))
        alone = m.context(n_ctx=64, n_threads=2)
        b.share_threads(a)
        c.share_threads(b)  # b's pool is a's now
        a.close()           # the pool lives on with b and c
        for ctx in (b, c, alone):
            ctx.prefill(PROMPT)
        assert decode_batch([b, c], [3, 3]) == [alone.decode(3)] * 2
        assert b.n_threads == c.n_threads == 2
        for ctx in (b, c, alone):
            ctx.close()


def test_amx_decode_copies_only_where_the_cpu_has_amx(tiny_model_factory):
    """Off by default; with it on an AMX CPU, decode steps read the AMX
    copies, prompts (multi-token graphs) the plain ones, and a tiny model
    still picks the plain kernels' tokens."""
    path = tiny_model_factory(qtype="Q8_0", n_layer=2, seed=4)
    # AMX copies serve ggml's kernels (specee's take the matrices they pack)
    with Model(path, kernels="ggml") as plain_model, Model(path, amx_decode=True, kernels="ggml") as amx:
        assert plain_model.n_decode_copies == 0
        if amx.n_decode_copies == 0:
            pytest.skip("this CPU (or ggml build) has no AMX layout")
        assert amx.n_decode_copies == 2 * 7  # every matrix of both layers (the F32 output has no AMX kernel)
        with plain_model.context(n_ctx=64) as a, amx.context(n_ctx=64) as b:
            a.prefill(PROMPT)
            b.prefill(PROMPT)
            want = [a.decode(t) for t in (3, 4, 5, 6)]
            assert [b.decode(t) for t in (3, 4, 5, 6)] == want
