"""Sampling tests. Every random draw is seeded, so none of these can flake."""

from __future__ import annotations

import numpy as np
import pytest

from specee.decoding.sampling import Sampler, probabilities, sample


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(123).standard_normal((20, 49152)).astype(np.float32) * 4


def test_greedy_is_argmax(rows: np.ndarray) -> None:
    greedy = Sampler()
    assert greedy.greedy
    for row in rows:
        assert greedy.sample(row) == int(np.argmax(row))
        assert sample(row) == int(np.argmax(row))  # no rng needed when greedy


def test_greedy_ties_pick_lowest_id() -> None:
    assert sample(np.array([0.0, 3.0, 3.0, 1.0])) == 1


def test_seeded_reproducibility(rows: np.ndarray) -> None:
    a = Sampler(temperature=1.5, top_k=100, top_p=0.95, seed=7)
    b = Sampler(temperature=1.5, top_k=100, top_p=0.95, seed=7)
    seq_a = [a.sample(row) for row in rows]
    assert seq_a == [b.sample(row) for row in rows]
    a.reset()
    assert seq_a == [a.sample(row) for row in rows]
    # a flat distribution over 49k tokens: 20 equal draws from another seed are impossible in practice
    c = Sampler(temperature=1e6, seed=8)
    assert seq_a != [c.sample(row) for row in rows]


def test_explicit_rng_is_used(rows: np.ndarray) -> None:
    s = Sampler(temperature=1.0, seed=0)
    first = [s.sample(row, np.random.default_rng(5)) for row in rows[:3]]
    again = [s.sample(row, np.random.default_rng(5)) for row in rows[:3]]
    assert first == again


def test_top_k_1_is_greedy(rows: np.ndarray) -> None:
    s = Sampler(temperature=5.0, top_k=1, seed=0)
    assert s.greedy
    for row in rows:
        assert s.sample(row) == int(np.argmax(row))


def test_tiny_top_p_is_greedy(rows: np.ndarray) -> None:
    s = Sampler(temperature=2.0, top_p=1e-9, seed=0)
    for row in rows:
        assert s.sample(row) == int(np.argmax(row))
    s = Sampler(temperature=2.0, top_k=50, top_p=1e-9, seed=0)
    for row in rows:
        assert s.sample(row) == int(np.argmax(row))


def test_top_k_limits_support(rows: np.ndarray) -> None:
    s = Sampler(temperature=10.0, top_k=5, seed=1)
    row = rows[0]
    allowed = set(np.argsort(row)[-5:].tolist())
    draws = {s.sample(row) for _ in range(300)}
    assert draws <= allowed
    assert len(draws) > 1


def test_top_p_limits_support() -> None:
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    s = Sampler(temperature=1.0, top_p=0.75, seed=2)  # nucleus = {1 (0.5), 3 (0.3)}
    draws = [s.sample(np.log(probs)) for _ in range(2000)]
    assert set(draws) == {1, 3}


def test_top_p_on_large_row_uses_partial_sort(rows: np.ndarray) -> None:
    # peaked row: the nucleus lies within the first partition; flat row: full sort path
    peaked = rows[0] * 3
    flat = rows[1] / 100
    for row in (peaked, flat):
        s = Sampler(temperature=1.0, top_p=0.5, seed=3)
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p)
        nucleus = set(order[: int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1].tolist())
        assert {s.sample(row) for _ in range(200)} <= nucleus


def _frequencies(s: Sampler, logits: np.ndarray, n: int) -> np.ndarray:
    return np.bincount([s.sample(logits) for _ in range(n)], minlength=logits.size) / n


def test_distribution_matches_softmax() -> None:
    p = np.array([0.2, 0.3, 0.5])
    n = 20000
    freq = _frequencies(Sampler(temperature=1.0, seed=11), np.log(p), n)
    # seeded, so deterministic; the bound is still 6 standard errors wide
    assert np.all(np.abs(freq - p) < 6 * np.sqrt(p * (1 - p) / n))


def test_temperature_sharpens_and_flattens() -> None:
    p = np.array([0.2, 0.3, 0.5])
    n = 20000
    for temperature in (0.5, 2.0):
        q = p ** (1 / temperature)
        q /= q.sum()
        freq = _frequencies(Sampler(temperature=temperature, seed=12), np.log(p), n)
        assert np.all(np.abs(freq - q) < 6 * np.sqrt(q * (1 - q) / n))


def test_masked_logits_never_drawn() -> None:
    logits = np.array([0.0, -np.inf, 0.0, -np.inf], dtype=np.float32)
    s = Sampler(temperature=1.0, seed=4)
    assert {s.sample(logits) for _ in range(500)} == {0, 2}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        sample(np.array([0.0, np.nan]), np.random.default_rng(0), temperature=1.0)
    with pytest.raises(ValueError):
        sample(np.full(3, -np.inf), np.random.default_rng(0), temperature=1.0)
    with pytest.raises(ValueError):
        sample(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        sample(np.zeros(3), None, temperature=1.0)
    with pytest.raises(ValueError):
        Sampler(top_p=0.0)
    with pytest.raises(ValueError):
        Sampler(top_k=-1)


def test_min_p_drops_tokens_below_its_share_of_the_most_likely():
    logits = np.log(np.array([0.5, 0.3, 0.04, 0.02, 0.14]))
    p = probabilities(logits, temperature=1.0, min_p=0.1)  # keeps p >= 0.05
    assert np.flatnonzero(p).tolist() == [0, 1, 4]
    assert p.sum() == pytest.approx(1.0) and p[0] / p[1] == pytest.approx(0.5 / 0.3)
    assert np.count_nonzero(probabilities(logits, temperature=1.0, min_p=0.0)) == 5
    assert np.flatnonzero(probabilities(logits, temperature=1.0, min_p=1.0)).tolist() == [0]
    sampler = Sampler(temperature=1.0, min_p=0.1, seed=3)
    assert {sampler.sample(logits) for _ in range(300)} == {0, 1, 4}
    np.testing.assert_array_equal(sampler.probabilities(logits), p)
    with pytest.raises(ValueError, match="min_p"):
        Sampler(temperature=1.0, min_p=1.5)


def test_the_cli_samples_with_llama_cpp_s_defaults():
    from specee import cli

    args = cli.build_parser().parse_args(["generate", "--prompt", "x"])
    assert (args.temp, args.top_k, args.top_p, args.min_p) == (0.8, 40, 0.95, 0.05)
