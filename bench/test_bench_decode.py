"""pytest-benchmark timings of one full-depth decode step on the default model.

    pytest bench/test_bench_decode.py --benchmark-columns=mean,stddev,rounds

Not part of the test suite (tests/ is); speed is measured here, never asserted.
"""
from __future__ import annotations

import pytest

from specee import engine
from specee.fetch import fetch_model

PROMPT = [6403, 1980, 253, 655, 28, 281, 253, 6560]  # "Once upon a time, in a village"


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

    benchmark.pedantic(step, setup=setup, rounds=300, warmup_rounds=20)
    benchmark.extra_info["threads"] = threads
    benchmark.extra_info["tok_s"] = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info["ggml"] = engine.ggml_version()
    ctx.close()
