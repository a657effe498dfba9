"""The exit predictors see at inference exactly the features they are trained
on: training computes them from traces with the library's own code
(specee_exit_features), and a check during decoding computes the same values,
whatever the schedule (docs/heads.md, feature version 2)."""
from __future__ import annotations

import numpy as np
import pytest

import specee.heads.head_file as heads_file
from specee.engine import EXIT_FEATURE_VERSION, Heads, InvalidArgumentError, Model, UnsupportedModelError, exit_features
from specee.heads.head_file import Predictor, write_heads
from specee.train.predictors import layer_features

PROMPT = [5, 77, 200, 13, 300, 42]


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


def random_predictors(layers, n_in: int, seed: int = 0) -> dict[int, Predictor]:
    rng = np.random.default_rng(seed)
    return {l: Predictor(rng.normal(size=(16, n_in)).astype(np.float32), rng.normal(size=16).astype(np.float32),
                         rng.normal(size=16).astype(np.float32), 0.0) for l in layers}


def candidates(step: int) -> list[int]:
    return [3 + (step * 7 + i * 11) % 50 for i in range(4)]


def test_features_are_softmax_and_change_since_the_layer_before():
    logits = np.array([[[1.0, 2.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]], np.float32)
    f = exit_features(logits)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert f.shape == (1, 3, 12)
    np.testing.assert_array_equal(f[..., :4], logits)
    np.testing.assert_allclose(f[..., 4:8], p, rtol=1e-6)
    np.testing.assert_array_equal(f[0, 0, 8:], 0.0)                     # layer 0: no layer before
    np.testing.assert_allclose(f[0, 1:, 8:], p[0, 1:] - p[0, :-1], atol=1e-6)
    np.testing.assert_array_equal(layer_features(logits), f)            # training uses this very code


@pytest.mark.parametrize("offline", [[0, 1, 2, 3, 4], [1, 3], [2, 4]])
def test_training_features_equal_what_the_engine_checks(tiny6, tmp_path, offline):
    """Trace steps (training data) and early-exit steps over the same tokens
    and candidates: every check's features equal the trace's features of
    that layer, bit for bit, for schedules with gaps too."""
    path = tmp_path / "h.gguf"
    with Model(tiny6) as m:
        write_heads(path, m, random_predictors(range(5), 12), exit_layers=offline, threshold=1.0)
        with Heads(m, path) as heads, m.context(n_ctx=64) as trace, m.context(n_ctx=64) as live:
            live.set_heads(heads)
            live.set_exit_params(threshold=1.0, use_online=False)   # never exits: both stay full depth
            trace.set_heads(heads)
            trace.prefill(PROMPT)
            live.prefill(PROMPT)
            tok = trace.argmax()
            n_checked = 0
            for i in range(12):
                step, cand_logits, _ = trace.trace_step(tok, candidates(i))
                live_step = live.decode_with_candidates(tok, candidates(i))
                assert live_step.token == step.token
                layers, features = live.last_checks()
                assert layers == offline
                want = layer_features(cand_logits[None])[0]
                np.testing.assert_array_equal(features, want[layers])
                n_checked += len(layers)
                tok = step.token
    assert n_checked == 12 * len(offline)


def test_head_files_with_old_features_are_refused(tiny6, tmp_path, monkeypatch):
    path = tmp_path / "old.gguf"
    with Model(tiny6) as m:
        monkeypatch.setattr(heads_file, "EXIT_FEATURE_VERSION", 1)
        write_heads(path, m, random_predictors([2], 12))
        with pytest.raises(UnsupportedModelError, match="exit features version 1.*train them again"):
            Heads(m, path)
        monkeypatch.setattr(heads_file, "EXIT_FEATURE_VERSION", EXIT_FEATURE_VERSION)
        write_heads(path, m, random_predictors([2], 12))
        with Heads(m, path) as heads:
            assert heads.n_candidates == 4


def test_bad_feature_inputs_are_refused():
    with pytest.raises(InvalidArgumentError, match="candidates"):
        exit_features(np.zeros((2, 3, 9), np.float32))        # more than SPECEE_MAX_CANDIDATES
    with pytest.raises(InvalidArgumentError, match="n_layer, k"):
        exit_features(np.zeros(4, np.float32))


def test_predictor_reference_takes_batches():
    p = random_predictors([0], 12)[0]
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    batch = p(x)
    assert batch.shape == (5,)
    np.testing.assert_allclose([float(p(row)) for row in x], batch, rtol=1e-5)


def test_numpy_predictor_is_the_engines_mlp(tiny6, tmp_path):
    """heads_file.Predictor (training, replays) against the MLP the engine
    runs at every check (specee_heads_predict): one computation, held to one
    place, up to float summation order."""
    path = tmp_path / "p.gguf"
    predictors = random_predictors([1, 3], 12, seed=4)
    x = np.random.default_rng(5).normal(size=(64, 12)).astype(np.float32)
    with Model(tiny6) as m:
        write_heads(path, m, predictors)
        with Heads(m, path) as heads:
            for layer, p in predictors.items():
                np.testing.assert_allclose(heads.predict(layer, x), p(x), rtol=2e-6, atol=1e-7)
            with pytest.raises(InvalidArgumentError, match="no exit predictor for layer 2"):
                heads.predict(2, x)
