"""The threading contract of include/specee.h: "a model may be shared by any
number of contexts and threads; a context must not be used by two threads at
once".

Two threads, each with its own context on one shared model (and one shared
set of heads), do the same work as a sequential run, at the same time, and
must produce the same tokens and the same logits bit for bit. cffi releases
the GIL for every C call (cffi >= 0.3), so the two threads' library calls
really overlap; each thread creates its own context, so context creation on a
shared model is exercised concurrently too.
"""
from __future__ import annotations

import threading

import numpy as np

from specee.engine import Heads, Model
from specee.heads.head_file import constant_predictor, write_heads

PROMPTS = ([5, 77, 200, 13, 300, 42], [9, 8, 150, 3, 31])
N_TOKENS, ROUNDS = 32, 3


def plain_decode(model: Model, prompt: list[int]) -> list:
    with model.context(n_ctx=64, n_threads=1) as ctx:
        ctx.prefill(prompt)
        token, out = ctx.argmax(), []
        for _ in range(N_TOKENS):
            token = ctx.decode(token)
            out.append((token, ctx.logits().tobytes()))
    return out


def early_exit_decode(model: Model, heads: Heads, prompt: list[int], guesses: list[int]) -> list:
    """Early-exit steps whose candidates are `guesses[i]` (the full model's
    tokens, so that steps can exit) and three fixed others."""
    with model.context(n_ctx=64, n_threads=1) as ctx:
        ctx.set_heads(heads)
        ctx.prefill(prompt)
        token, out = ctx.argmax(), []
        for guess in guesses:
            candidates = [guess] + [t for t in (3, 4, 5, 6) if t != guess][:3]
            step = ctx.decode_with_candidates(token, candidates)
            token = step.token
            out.append((step.token, step.exit_layer))
    return out


def test_two_contexts_in_two_threads_match_sequential_work(tiny_model_factory, tmp_path):
    path = tiny_model_factory(n_layer=4, tied=False, seed=7)
    with Model(path) as model:
        n_vocab = model.n_vocab
        # predictors that fire at layer 1 and 2: steps exit there when the layer's argmax is a candidate
        write_heads(tmp_path / "h.gguf", model, {l: constant_predictor(40.0 if l in (1, 2) else -40.0) for l in range(3)})
        with Heads(model, tmp_path / "h.gguf") as heads:
            plain = [plain_decode(model, p) for p in PROMPTS]
            jobs = [lambda p=p: plain_decode(model, p) for p in PROMPTS] + \
                   [lambda p=p, g=g: early_exit_decode(model, heads, p, [t for t, _ in g]) for p, g in zip(PROMPTS, plain)]
            expected = [job() for job in jobs]

            # thread i runs jobs i, i+2, ... ROUNDS times, starting together
            results: dict[int, list] = {}
            errors: list[BaseException] = []
            start = threading.Barrier(2)

            def worker(first: int) -> None:
                try:
                    start.wait()
                    for r in range(ROUNDS):
                        for j in range(first, len(jobs), 2):
                            results[r * len(jobs) + j] = jobs[j]()
                except BaseException as e:  # reported below, not lost in the thread
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert not errors, errors
    assert len(results) == ROUNDS * len(jobs)
    for key, got in results.items():
        assert got == expected[key % len(jobs)], f"job {key % len(jobs)} in round {key // len(jobs)} differs"
    # the work is not degenerate: varied tokens, and some early exits
    assert len({t for t, _ in expected[0]}) > 1
    assert any(layer < 4 for _, layer in expected[2] + expected[3])
    assert np.frombuffer(expected[0][0][1], np.float32).size == n_vocab  # whole logit rows compared
