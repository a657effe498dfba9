"""Choosing the checked layers by expected gain (train/schedule.py): the
replay of the exit policy on hand-made traces, and `specee train schedule`
on a hand-made run."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")  # the training extra
from specee.cli import main  # noqa: E402
from specee.heads.head_file import Predictor  # noqa: E402
from specee.train.pipeline import load_predictors, save_predictors  # noqa: E402
from specee.train.predictors import PredictorConfig, Traces  # noqa: E402
from specee.train.schedule import ExitReplay, StepCosts, choose_schedule, reschedule  # noqa: E402

COSTS = StepCosts(layer_ms=1.0, lm_head_ms=2.0, check_ms=0.5, draft_ms=1.0)  # full depth: 4 x 1 + 2 = 6 ms


def replay() -> ExitReplay:
    # 3 tokens, 4 layers (predictors after layers 0-2)
    probs = np.array([[0.95, 0.0, 0.0],    # fires after layer 0, rightly
                      [0.0, 0.95, 0.0],    # fires after layer 1, wrongly
                      [0.0, 0.0, 0.5]])    # never fires at 0.9
    ok = np.array([[True, True, True, True],
                   [False, False, True, True],
                   [False, False, False, True]])
    return ExitReplay(probs, ok, COSTS)


def test_replay_prices_exits_checks_and_mistakes():
    r = replay().run([0, 1], threshold=0.9)
    # token 0: draft 1 + 1 layer + 1 check; token 1: 1 + 2 layers + 2 checks;
    # token 2: 1 + full 6 + 2 checks
    assert r["speedup"] == pytest.approx(6.0 / ((2.5 + 4.0 + 8.0) / 3))
    assert r["agreement"] == pytest.approx(2 / 3) and r["exit_ratio"] == pytest.approx(2 / 3)
    no_checks = replay().run([], threshold=0.9)
    assert no_checks["speedup"] == pytest.approx(6.0 / 7.0) and no_checks["agreement"] == 1.0


def test_greedy_schedule_keeps_agreement():
    g = replay().greedy_schedule(threshold=0.9, min_agreement=1.0)
    assert g["layers"] == [0] and g["agreement"] == 1.0  # layer 1 would buy speed with a wrong token
    assert replay().greedy_schedule(threshold=0.9, min_agreement=0.5)["layers"] == [0, 1]


def test_choice_over_thresholds_and_costly_checks():
    best, sweep = choose_schedule(replay(), [0.4, 0.9], min_agreement=1.0)
    assert [r["threshold"] for r in sweep] == [0.4, 0.9]
    # at 0.4 token 2's predictor fires too (wrongly after layer 2): same choice, [0]
    assert best["layers"] == [0]
    dear = ExitReplay(replay().probs, replay().ok, StepCosts(1.0, 2.0, check_ms=10.0, draft_ms=1.0))
    assert choose_schedule(dear, [0.9], 1.0)[0] is None  # a check costs more than any exit saves


def test_replay_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        ExitReplay(np.zeros((3, 3)), np.zeros((3, 3), bool), COSTS)


def constant(p: float, k: int = 4) -> Predictor:
    """A predictor that says p whatever it sees."""
    return Predictor(np.zeros((2, 3 * k), np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                     float(np.log(p / (1 - p))))


def hand_made_run(tmp_path, n: int = 200):
    """4 layers; the best candidate is right from layer 1 on; the predictor
    after layer 0 fires always (and is always wrong), after layer 1 always,
    after layer 2 never. Trained schedule: [0, 1, 2] at 0.5."""
    rng = np.random.default_rng(0)
    ok = np.zeros((n, 4), bool)
    ok[:, 1:] = True
    Traces(rng.standard_normal((n, 4, 4)).astype(np.float32), ok.copy(), ok.copy(), ok.copy()).save(
        tmp_path / "traces.npz")
    save_predictors(tmp_path / "predictors.npz", {0: constant(0.99), 1: constant(0.99), 2: constant(0.01)},
                    [0, 1, 2], PredictorConfig(threshold=0.5, verify_full=False))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"estimated_ms_per_layer": 1.0, "verify_ms_per_fire": 2.0,
                                   "specee_step_ms_by_stage": {"draft": 0.5}}))
    return profile


def test_reschedule_writes_the_chosen_schedule_and_its_record(tmp_path):
    profile = hand_made_run(tmp_path)
    before, _, _, _ = load_predictors(tmp_path / "predictors.npz")
    record = reschedule(tmp_path, profile, [0.5, 0.9], min_agreement=0.98, check_ms=0.1)
    assert record["trained"]["agreement"] == 0.0  # layer 0 fires first, always wrong
    assert record["chosen"]["layers"] == [1] and record["chosen"]["agreement"] == 1.0
    preds, offline, threshold, verify_full = load_predictors(tmp_path / "predictors.npz")
    assert offline == [1] and threshold == pytest.approx(record["chosen"]["threshold"]) and not verify_full
    assert all(np.array_equal(preds[i].w1, before[i].w1) and preds[i].b2 == before[i].b2 for i in before)
    assert json.loads((tmp_path / "schedule.json").read_text())["chosen"]["layers"] == [1]
    assert record["heldout_by"] == "token" and record["n_heldout_tokens"] == 40  # traces without prompt indices


def test_reschedule_replays_the_held_out_prompts(tmp_path):
    profile = hand_made_run(tmp_path)
    t = Traces.load(tmp_path / "traces.npz")
    t.prompt = np.repeat(np.arange(8), 25).astype(np.int32)
    t.save(tmp_path / "traces.npz")
    record = reschedule(tmp_path, profile, [0.5], min_agreement=0.98, check_ms=0.1)
    assert record["heldout_by"] == "prompt" and record["n_heldout_tokens"] == 50  # 2 of 8 prompts, 25 tokens each
    assert record["chosen"]["layers"] == [1]


def test_reschedule_refuses_bad_input_and_leaves_the_run_as_it_was(tmp_path):
    profile = hand_made_run(tmp_path)
    saved = (tmp_path / "predictors.npz").read_bytes()
    with pytest.raises(ValueError, match="no schedule keeps agreement"):
        reschedule(tmp_path, profile, [0.5], min_agreement=1.0, check_ms=100.0)
    with pytest.raises(ValueError, match="min_agreement"):
        reschedule(tmp_path, profile, [0.5], min_agreement=0.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an exit profile"):
        reschedule(tmp_path, tmp_path / "bad.json", [0.5], min_agreement=0.9)
    assert (tmp_path / "predictors.npz").read_bytes() == saved and not (tmp_path / "schedule.json").exists()


def test_cli_schedule(tmp_path, capsys):
    profile = hand_made_run(tmp_path)
    assert main(["train", "schedule", "--out", str(tmp_path), "--profile", str(profile),
                 "--thresholds", "0.5,0.9", "--check-ms", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["chosen"]["layers"] == [1]
    for bad in (["--thresholds", "0.5,1.5"], ["--thresholds", "-0.1"], ["--thresholds", ""],
                ["--min-agreement", "0"], ["--check-ms", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["train", "schedule", "--out", str(tmp_path), "--profile", str(profile), *bad])
        assert e.value.code == 2


def test_threshold_list_takes_the_engines_range():
    """--thresholds accepts exactly what reschedule and the engine accept:
    [0, 1], ends included."""
    import argparse

    from specee.cli_args import threshold_list

    assert threshold_list("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("1.01", "-0.1", "nan", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            threshold_list(bad)
