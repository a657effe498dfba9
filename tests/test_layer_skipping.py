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


# ---- the decode loop's side: router, row order, verification ----

from specee.decoding.speculative.draft_tree import DraftTree  # noqa: E402
from specee.decoding.speculative.layer_skip import DepthRouter, pass_order, router_path_for  # noqa: E402
from specee.decoding.speculative.verify import verify_greedy  # noqa: E402


def table_router(n_layer: int = 6) -> DepthRouter:
    """Two buckets split at confidence 0.5: confident rows are right from
    depth 2 on, unsure ones (96% at depth 5) only at full depth for 0.97."""
    agreement = np.array([[0.2, 0.4, 0.6, 0.8, 0.96, 1.0][:n_layer],
                          [0.5, 0.97, 0.98, 0.99, 0.99, 1.0][:n_layer]])
    return DepthRouter([0.5], agreement, min_agreement=0.95)


def test_the_router_picks_the_shallowest_depth_that_agrees_enough():
    r = table_router()
    assert r.depth(0.9) == 2 and r.depth(0.1) == 5
    assert r.depth(0.1, min_agreement=0.97) == 6
    assert r.depth(0.9, min_agreement=0.4) == 1
    r.min_depth = 3
    assert r.depth(0.9) == 3


def test_row_depths_follow_confidence_and_never_pass_a_parent():
    # last -> 0 (sure) -> 2 (unsure) ; last -> 1 (unsure, a leaf)
    draft = DraftTree([10, 11, 12], [0.9, 0.3, 0.2], "eagle", None, [-1, -1, 0])
    depths = table_router().row_depths(draft)
    # row 0: full; node 0: its best child (node 2) is unsure -> 5; node 1: a
    # leaf, by its own 0.3 -> 5; node 2: a leaf at 0.2 -> 5, capped by node 0
    assert depths == [6, 5, 5, 5]
    draft = DraftTree([10, 11, 12], [0.9, 0.3, 0.8], "eagle", None, [-1, -1, 0])
    assert table_router().row_depths(draft) == [6, 2, 5, 2]
    assert pass_order([6, 2, 5, 2]) == [0, 2, 1, 3]


def test_router_files_round_trip_and_bad_ones_are_refused(tmp_path):
    r = table_router()
    r.save(tmp_path / "r.router.json")
    back = DepthRouter.load(tmp_path / "r.router.json")
    assert back.edges == r.edges and np.allclose(back.agreement, r.agreement)
    assert router_path_for(tmp_path / "h.gguf") == tmp_path / "h.router.json"
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(InvalidArgumentError, match="not a depth router"):
        DepthRouter.load(tmp_path / "bad.json")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        DepthRouter.load(tmp_path / "missing.json")
    with pytest.raises(InvalidArgumentError, match="trained for 6 layers"):
        back.check_model(4)


def test_training_makes_equal_buckets_of_the_traces_right_shares():
    pytest.importorskip("torch")  # train.predictors (the traces' home) needs the training extra
    from specee.train.predictors import Traces
    from specee.train.router import train_router

    rng = np.random.default_rng(0)
    n, n_layer = 400, 4
    conf = rng.random(n)
    # a confident token is right from layer 1 on, an unsure one only at the last
    label = np.zeros((n, n_layer), bool)
    label[:, -1] = True
    label[conf > 0.5, 1:] = True
    probs = np.stack([conf, conf / 2], axis=1).astype(np.float32)
    t = Traces(np.zeros((n, n_layer, 2), np.float32), label, label.copy(), draft_probs=probs)
    r = train_router(t, buckets=2)
    assert r.record["bucket_tokens"] == [200, 200]
    assert r.edges == pytest.approx([float(np.median(conf))])
    low, high = conf <= r.edges[0], conf > r.edges[0]
    np.testing.assert_allclose(r.agreement[0], label[low].mean(axis=0))
    np.testing.assert_allclose(r.agreement[1], label[high].mean(axis=0))
    assert r.depth(0.99) == 2 and r.depth(0.01) == n_layer


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def test_verification_with_depths_follows_the_lossy_rows(tiny6):
    """A tree whose rows must be reordered (a later sibling runs deeper):
    the emitted tokens are the walk over the reference's lossy rows, and the
    kept path continues as after early exits at those depths."""
    ref = Reference(tiny6)
    for t in PROMPT:
        ref.step(t)
    last = 7
    greedy = int(np.argmax(ref.step(last)[0]))  # the full model's token after `last`
    other = (greedy + 1) % 64
    # nodes: 0 = other (leaf), 1 = greedy, 2 = child of 1 chosen below
    depths = [6, 2, 5, 4]  # [last, node 0, node 1, node 2]
    r2 = Reference(tiny6)
    for t in PROMPT + [last]:
        r2.step(t)
    child = int(np.argmax(r2.step(greedy, n_layers=5)[0]))  # what node 1's lossy row picks
    after_child = r2.step(child, n_layers=4)[0]
    draft = DraftTree([other, greedy, child], [0.5, 0.5, 0.5], "eagle", None, [-1, -1, 1])
    with Model(tiny6) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        new, path = verify_greedy(ctx, last, draft, depths)
        assert path == [1, 2]
        assert new == [greedy, child, int(np.argmax(after_child))]
        assert ctx.n_past == len(PROMPT) + 3
        ctx.decode(new[-1])
        got = ctx.logits()
    want = r2.step(new[-1])[0]
    assert_near(got, want, "the token after the kept path")


@pytest.fixture(scope="module")
def eagle_heads(tiny6, tmp_path_factory):
    from specee.heads.head_file import constant_predictor, write_heads
    from test_draft_head import random_draft

    path = tmp_path_factory.mktemp("skip") / "h.gguf"
    with Model(tiny6) as m:
        write_heads(path, m, {l: constant_predictor(-40.0) for l in range(5)},
                    draft=random_draft(Reference(tiny6), seed=11, reduced=64), draft_dtype="f16")
    return path


def lossy_decode(tiny6, heads, prompt, n, **kw):
    from specee.decoding.decoders import decode
    from specee.decoding.modes import open_decoder
    from specee.decoding.sampling import Sampler
    from specee.decoding.speculative import open_drafter

    with Model(tiny6) as m, m.context(n_ctx=64, n_threads=1) as ctx:
        drafter = open_drafter("eagle:chain", m, 64, 1, ctx=ctx, heads_path=heads)
        try:
            decoder = open_decoder(ctx, "speculative", Sampler(), drafter=drafter, draft_max=4, lossy=True, **kw)
            decoder.policy = AlwaysDraftPolicy(drafter.kinds)
            return decode(decoder, ctx, prompt, n)
        finally:
            drafter.close()


def AlwaysDraftPolicy(kinds):
    from test_speculative import AlwaysDraft
    return AlwaysDraft(kinds)


def test_a_router_that_never_skips_gives_plain_output(tiny6, eagle_heads, tmp_path):
    from test_speculative import plain

    never = DepthRouter([0.5], np.array([[0.0] * 5 + [1.0]] * 2))
    never.save(router_path_for(eagle_heads))  # found beside the head file
    got = lossy_decode(tiny6, eagle_heads, PROMPT, 24)
    with Model(tiny6) as m:
        want = plain(m, PROMPT, 24)
    assert got.tokens == want.tokens
    assert got.extra["exact"] is False and got.extra["layer_skip_depth"] == 6.0
    assert got.extra["layer_skip_rows"] > 0


def test_a_router_that_skips_runs_rows_shallower(tiny6, eagle_heads, tmp_path):
    always = DepthRouter([0.5], np.ones((2, 6)), min_depth=3)
    always.save(tmp_path / "r.json")
    got = lossy_decode(tiny6, eagle_heads, PROMPT, 24, router=tmp_path / "r.json")
    x = got.extra
    # row 0 of each pass runs 6 layers, every drafted row 3
    assert x["layer_skip_rows"] == x["verify_steps"] + x["drafted"] > 0
    want = (6 * x["verify_steps"] + 3 * x["drafted"]) / x["layer_skip_rows"]
    assert x["layer_skip_depth"] == pytest.approx(want, abs=1e-3)
    assert len(got.tokens) == 24


def test_layer_skipping_is_refused_where_it_cannot_route(tiny6, eagle_heads, tmp_path):
    from specee.decoding.modes import check_mode, open_decoder
    from specee.decoding.sampling import Sampler
    from specee.decoding.speculative import open_drafter

    with pytest.raises(InvalidArgumentError, match="vanilla"):
        check_mode("vanilla", True, lossy=True)
    with Model(tiny6) as m, m.context(n_ctx=64, n_threads=1) as ctx:
        lookup = open_drafter("lookup", m, 64, 1, ctx=ctx)
        with pytest.raises(InvalidArgumentError, match="EAGLE"):
            open_decoder(ctx, "speculative", Sampler(), drafter=lookup, lossy=True)
        eagle = open_drafter("eagle:chain", m, 64, 1, ctx=ctx, heads_path=eagle_heads)
        try:
            with pytest.raises(InvalidArgumentError, match="no depth router"):
                open_decoder(ctx, "speculative", Sampler(), drafter=eagle, lossy=True, router=tmp_path / "none.json")
            wrong = DepthRouter([], np.ones((1, 4)))
            wrong.save(tmp_path / "four.json")
            with pytest.raises(InvalidArgumentError, match="trained for 4 layers"):
                open_decoder(ctx, "speculative", Sampler(), drafter=eagle, lossy=True, router=tmp_path / "four.json")
        finally:
            eagle.close()


def test_eval_runs_eagle_and_spadec_beside_plain_decoding(tiny6, eagle_heads):
    from specee.evaluation.run import evaluate, parse_mode

    assert parse_mode("spadec@0.9") == ("spadec", 0.9)
    with pytest.raises(ValueError, match="agreement"):
        parse_mode("spadec@0")
    DepthRouter([0.5], np.array([[0.0] * 5 + [1.0]] * 2)).save(router_path_for(eagle_heads))  # never skips
    data = [{"question_id": i, "category": "writing", "turns": [f"say {w}"]} for i, w in enumerate(["a", "b"])]
    import json
    path = eagle_heads.parent / "mt.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in data) + "\n")
    out = evaluate(tiny6, ["mtbench"], ["vanilla", "eagle", "spadec"], heads_path=eagle_heads, n_predict=12,
                   threads=1, n_ctx=128, progress=False, dataset_paths={"mtbench": path})
    s = out["datasets"]["mtbench"]
    # lossless, and a router that never skips: both write plain decoding's tokens
    assert s["eagle"]["same_tokens_as_vanilla"] == 2 and s["spadec"]["same_tokens_as_vanilla"] == 2
