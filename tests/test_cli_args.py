"""Out-of-range values are refused with a message naming the option and the
allowed range, before any model is fetched or loaded."""
from __future__ import annotations

import math

import pytest

from specee import cli
from specee.decoding.early_exit import PromptLookup, attach_heads
from specee.evaluation.run import check_evaluation
from specee.ranges import COUNT, THRESHOLD, TOP_P, Range
from specee.decoding.sampling import Sampler, sample


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes any model fetch fail the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was fetched before the arguments were checked")
    monkeypatch.setattr(cli, "fetch_model", refuse)


def parser_error(argv: list[str], capsys) -> str:
    """Runs the CLI expecting argparse to refuse `argv`; returns its message."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


GENERATE = ["generate", "--prompt", "hi"]
TRAIN = ["train", "all", "--out", "unused-out"]


@pytest.mark.parametrize("extra, message", [
    (["--temp", "-1"], "argument --temp: must be a number >= 0, got '-1'"),
    (["--temp", "nan"], "argument --temp: must be a number >= 0, got 'nan'"),
    (["--temp", "warm"], "argument --temp: must be a number >= 0, got 'warm'"),
    (["--top-p", "1.5"], "argument --top-p: must be a number in (0, 1], got '1.5'"),
    (["--top-p", "0"], "argument --top-p: must be a number in (0, 1], got '0'"),
    (["--top-k", "-3"], "argument --top-k: must be an integer >= 0, got '-3'"),
    (["-n", "0"], "argument -n/--n-predict: must be an integer >= 1, got '0'"),
    (["-n", "-4"], "argument -n/--n-predict: must be an integer >= 1, got '-4'"),
    (["-n", "2.5"], "argument -n/--n-predict: must be an integer >= 1, got '2.5'"),
    (["--threads", "-5"], "argument --threads: must be an integer >= 0, got '-5'"),
    (["--ctx-size", "0"], "argument --ctx-size: must be an integer >= 1, got '0'"),
    (["--threshold", "2"], "argument --threshold: must be a number in [0, 1], got '2'"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["--heads", "missing.gguf"], "argument --heads: no such file: 'missing.gguf'"),
])
def test_generate_refuses_out_of_range_values(extra, message, capsys, no_model_load):
    assert parser_error(GENERATE + extra, capsys).endswith(message)


def test_generate_refuses_a_missing_prompt_file(capsys, no_model_load):
    msg = parser_error(["generate", "--prompt-file", "no/such/prompt.txt"], capsys)
    assert msg.endswith("argument --prompt-file: no such file: 'no/such/prompt.txt'")


def test_generate_refuses_lossy_sampling_with_candidate_verification(capsys, no_model_load):
    assert cli.main(GENERATE + ["--mode", "specee", "--lossy", "--temp", "0.7", "--verify", "candidates"]) == 1
    assert "--verify full or --temp 0" in capsys.readouterr().err


def test_generate_refuses_lossy_with_plain_decoding(capsys, no_model_load):
    assert cli.main(GENERATE + ["--mode", "vanilla", "--lossy"]) == 1
    assert "vanilla is the model itself" in capsys.readouterr().err


def test_serve_refuses_layer_skipping(capsys):
    with pytest.raises(SystemExit, match="layer skipping"):
        cli.main(["serve", "--mode", "speculative", "--lossy"])


@pytest.mark.parametrize("extra, message", [
    (["--limit", "0"], "argument --limit: must be an integer >= 1, got '0'"),
    (["-n", "0"], "argument -n/--n-predict: must be an integer >= 1, got '0'"),
    (["--threads", "-1"], "argument --threads: must be an integer >= 0, got '-1'"),
    (["--threshold", "1.5"], "argument --threshold: must be a number in [0, 1], got '1.5'"),
    (["--dataset", "mtbench,gsm8k"], "argument --dataset: unknown data set(s) gsm8k; known: asdiv, csqa"),
    (["--modes", "vanilla,fast"], "argument --modes: unknown mode 'fast'"),
    (["--modes", "specee@1.2"], "argument --modes: mode 'specee@1.2': the threshold must lie in [0, 1]"),
    (["--sweep-threshold", "0.9:0.3:0.1"], "need START <= STOP and STEP > 0"),
    (["--heads", "missing.gguf"], "argument --heads: no such file: 'missing.gguf'"),
])
def test_eval_refuses_out_of_range_values(extra, message, capsys, no_model_load):
    assert message in parser_error(["eval"] + extra, capsys)


@pytest.mark.parametrize("out, message", [
    ("results.txt", "give a file name ending in .json"),
    ("a_dir.json", "is a directory"),
    ("a_file/r.json", "cannot create the folder"),
])
def test_eval_refuses_a_bad_out_path_before_the_work(tmp_path, out, message, capsys, no_model_load):
    (tmp_path / "a_dir.json").mkdir()
    (tmp_path / "a_file").write_text("")
    assert cli.main(["eval", "--out", str(tmp_path / out)]) == 1
    assert message in capsys.readouterr().err


def test_eval_makes_the_out_folder_before_the_work(tmp_path, capsys, no_model_load):
    out = tmp_path / "new" / "deeper" / "r.json"
    with pytest.raises(AssertionError, match="fetched before"):
        cli.main(["eval", "--out", str(out)])
    assert out.parent.is_dir() and not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--conversations", "0"], "argument --conversations: must be an integer >= 1, got '0'"),
    (["--max-len", "1"], "argument --max-len: must be an integer >= 2, got '1'"),
    (["--seq-len", "1"], "argument --seq-len: must be an integer >= 2, got '1'"),
    (["--draft-steps", "0"], "argument --draft-steps: must be an integer >= 1, got '0'"),
    (["--draft-vocab", "-8"], "argument --draft-vocab: must be an integer >= 0, got '-8'"),
    (["--draft-ff", "-1"], "argument --draft-ff: must be an integer >= 0, got '-1'"),
    (["--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["--trace-prompts", "0"], "argument --trace-prompts: must be an integer >= 1, got '0'"),
    (["--trace-tokens", "-2"], "argument --trace-tokens: must be an integer >= 1, got '-2'"),
    (["--predictor-epochs", "0"], "argument --predictor-epochs: must be an integer >= 1, got '0'"),
    (["--predictor-hidden", "0"], "argument --predictor-hidden: must be an integer >= 1, got '0'"),
    (["--offline-layers", "0"], "argument --offline-layers: must be an integer >= 1, got '0'"),
    (["--threshold", "-0.1"], "argument --threshold: must be a number in [0, 1], got '-0.1'"),
    (["--threads", "-2"], "argument --threads: must be an integer >= 0, got '-2'"),
    (["--sharegpt", "no.json"], "argument --sharegpt: no such file: 'no.json'"),
])
def test_train_refuses_out_of_range_values(extra, message, capsys, no_model_load):
    assert parser_error(TRAIN + extra, capsys).endswith(message)


def test_train_recut_and_pack_refuse_bad_values(capsys, no_model_load):
    msg = parser_error(["train", "recut", "--out", "o", "--from", "no/such/run"], capsys)
    assert msg.endswith("argument --from: no such directory: 'no/such/run'")
    msg = parser_error(["pack", "--out", "o", "--threshold", "3"], capsys)
    assert msg.endswith("argument --threshold: must be a number in [0, 1], got '3'")


def test_train_refuses_an_out_that_is_a_file(tmp_path, capsys, no_model_load):
    pytest.importorskip("torch")
    (tmp_path / "f").write_text("")
    assert cli.main(["train", "draft", "--out", str(tmp_path / "f")]) == 1
    assert "--out" in capsys.readouterr().err


def test_train_predictors_needs_the_draft_before_loading(tmp_path, capsys, no_model_load):
    pytest.importorskip("torch")
    assert cli.main(["train", "predictors", "--out", str(tmp_path / "run")]) == 1
    assert "draft_only.gguf is missing" in capsys.readouterr().err


# ---- the same ranges in the Python API ----------------------------------------------


def test_range_membership_and_words():
    assert 1 in COUNT and 0 not in COUNT and 1.0 not in COUNT and True not in COUNT
    assert 0.0 in THRESHOLD and 1 in THRESHOLD and math.nan not in THRESHOLD and math.inf not in THRESHOLD
    assert 0.0 not in TOP_P and 1.0 in TOP_P
    assert Range(float, 0, 1, lo_open=True, hi_open=True).describe() == "a number in (0, 1)"
    assert Range(int, hi=3).describe() == "an integer <= 3" and 3 in Range(int, hi=3) and 4 not in Range(int, hi=3)
    with pytest.raises(ValueError, match=r"^limit must be an integer >= 1, got 0$"):
        COUNT.check("limit", 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0}, "temperature must be a number >= 0"),
    ({"temperature": math.inf}, "temperature must be a number >= 0"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"top_k": -3}, "top_k must be an integer >= 0"),
    ({"seed": -7}, "seed must be an integer >= 0"),
])
def test_sampler_refuses_out_of_range_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampler(**kwargs)


def test_sample_refuses_a_negative_temperature():
    import numpy as np

    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        sample(np.zeros(4), np.random.default_rng(0), temperature=-0.5)


def test_early_exit_arguments():
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\], got 1.5"):
        attach_heads(None, None, threshold=1.5)  # refused before the context is touched
    with pytest.raises(ValueError, match="max_ngram must be an integer >= 1"):
        PromptLookup(max_ngram=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"datasets": ["gsm8k"]}, "unknown data set"),
    ({"modes": []}, "no modes"),
    ({"modes": ["specee@2"]}, "threshold must lie in"),
    ({"limit": 0}, "limit must be an integer >= 1"),
    ({"n_predict": 0}, r"n_predict \(n_ctx = 2048\) must be an integer in \[1, 2046\], got 0"),
    ({"threads": -1}, "threads must be an integer >= 0"),
    ({"threshold": -0.5}, "threshold must be a number in"),
    ({"n_predict": 100, "n_ctx": 101}, r"n_predict \(n_ctx = 101\) must be an integer in \[1, 99\], got 100"),
])
def test_evaluate_arguments(kwargs, message):
    args = {"datasets": ["mtbench"], "modes": ["vanilla"], **kwargs}
    with pytest.raises(ValueError, match=message):
        check_evaluation(**args)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch", 0), ("seq_len", 1), ("lr", 0.0),
                                          ("heldout", 1.0), ("draft_vocab", -1), ("seed", -1)])
def test_draft_config_ranges(field, value):
    pytest.importorskip("torch")
    from specee.train.draft_head import DraftConfig

    with pytest.raises(ValueError, match=f"^{field} must be"):
        DraftConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("epochs", 0), ("hidden", 0), ("threshold", 1.1), ("n_offline", 0),
                                          ("heldout", 0.0), ("batch", -1)])
def test_predictor_config_ranges(field, value):
    pytest.importorskip("torch")
    from specee.train.predictors import PredictorConfig

    with pytest.raises(ValueError, match=f"^{field} must be"):
        PredictorConfig(**{field: value})


def test_recut_refuses_a_negative_vocabulary(tmp_path):
    pytest.importorskip("torch")
    from specee.train.recut import recut_draft

    with pytest.raises(ValueError, match="draft_vocab must be an integer >= 0, got -5"):
        recut_draft("unused.gguf", tmp_path / "a", tmp_path / "b", -5, "q8_0")
