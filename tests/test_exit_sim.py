"""bench/exit_sim.py's replay of the exit policy, on hand-made traces."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
exit_sim = pytest.importorskip("exit_sim")  # needs torch (the training extra)


def policy() -> "exit_sim.Policy":
    # 3 tokens, 4 layers (predictors after layers 0-2); layer cost 1, lm_head 2,
    # check 0.5, draft 1: full depth 4 x 1 + 2 = 6 ms
    probs = np.array([[0.95, 0.0, 0.0],    # fires after layer 0, rightly
                      [0.0, 0.95, 0.0],    # fires after layer 1, wrongly
                      [0.0, 0.0, 0.5]])    # never fires
    ok = np.array([[True, True, True, True],
                   [False, False, True, True],
                   [False, False, False, True]])
    return exit_sim.Policy(probs, ok, layer_ms=1.0, lm_head_ms=2.0, check_ms=0.5, draft_ms=1.0)


def test_policy_prices_exits_checks_and_mistakes():
    r = policy().run([0, 1], threshold=0.9)
    # token 0: draft 1 + 1 layer + 1 check; token 1: 1 + 2 layers + 2 checks;
    # token 2: 1 + full 6 + 2 checks
    assert r["speedup"] == pytest.approx(6.0 / ((2.5 + 4.0 + 8.0) / 3))
    assert r["agreement"] == pytest.approx(2 / 3) and r["exit_ratio"] == pytest.approx(2 / 3)
    no_checks = policy().run([], threshold=0.9)
    assert no_checks["speedup"] == pytest.approx(6.0 / 7.0) and no_checks["agreement"] == 1.0


def test_greedy_schedule_keeps_agreement():
    g = policy().greedy_schedule(threshold=0.9, min_agreement=1.0)
    assert g["layers"] == [0] and g["agreement"] == 1.0  # layer 1 would buy speed with a wrong token
    assert policy().greedy_schedule(threshold=0.9, min_agreement=0.5)["layers"] == [0, 1]
