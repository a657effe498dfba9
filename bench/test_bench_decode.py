"""pytest-benchmark timings of one decode step on the default model: full
depth (vanilla) and speculative early exit with the heads that ship for it.

    pytest bench/test_bench_decode.py --benchmark-columns=mean,stddev,rounds

Not part of the test suite (tests/ is); speed is measured here, never asserted.
The early-exit rows record their exit statistics in extra_info, since a
faster step means nothing without its exit ratio and agreement.
"""
from __future__ import annotations

import pytest

from specee import engine
from specee.decoding.early_exit import exit_stats_summary
from specee.fetch import fetch_model
from specee.heads.shipped import default_heads

PROMPT = [6403, 1980, 253, 655, 28, 281, 253, 6560]  # "Once upon a time, in a village"
ROUNDS = 300


@pytest.fixture(scope="module")
def model():
    with engine.Model(fetch_model("smollm2-135m")) as m:
        yield m


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_step(benchmark, model, threads):
    ctx = model.context(n_ctx=1024, n_threads=threads)
    ctx.prefill(PROMPT)
    state = {"token": ctx.argmax()}

    def setup():
        if ctx.n_past >= ctx.n_ctx - 1:  # stay inside the context
            ctx.truncate(len(PROMPT))

    def step():
        state["token"] = ctx.decode(state["token"])

    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, warmup_rounds=20)
    benchmark.extra_info["threads"] = threads
    benchmark.extra_info["tok_s"] = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info["ggml"] = engine.ggml_version()
    ctx.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_specee_step(benchmark, model, threads):
    heads_path = default_heads(model.fingerprint)
    if heads_path is None:
        pytest.skip("no heads ship for the default model")
    heads = engine.Heads(model, heads_path)
    ctx = model.context(n_ctx=1024, n_threads=threads)
    ctx.set_heads(heads)
    ctx.prefill(PROMPT)
    token = ctx.argmax()
    state = {"token": token, "cands": ctx.draft_sync(token), "exit_layers": []}

    def setup():
        if ctx.n_past >= ctx.n_ctx - 1:  # start over inside the context
            ctx.truncate(len(PROMPT) - 1)
            ctx.prefill(PROMPT[-1:])
            state["token"] = ctx.argmax()
            state["cands"] = ctx.draft_sync(state["token"])

    def step():
        s = ctx.decode_with_candidates(state["token"], state["cands"])
        state["token"], state["cands"] = s.token, s.next
        state["exit_layers"].append(s.exit_layer)

    ctx.reset_exit_stats()
    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, warmup_rounds=20)
    stats = exit_stats_summary(ctx.exit_stats(), model.n_layer, [])
    benchmark.extra_info.update(threads=threads, tok_s=1.0 / benchmark.stats.stats.mean, heads=heads_path.name,
                                ggml=engine.ggml_version(),
                                **{k: v for k, v in stats.items() if k != "exit_layers"})
    ctx.close()
    heads.close()
