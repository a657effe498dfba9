"""Inputs that crashed libspecee once (found by the fuzz targets, see
tests/test_fuzz.py) now load or fail with a clean error.

They live in tests/data/fuzz/model/ and tests/data/fuzz/heads/ (heads inputs
were fuzzed against the seed model of tests/fuzz/seeds.py, which is written
again here: the same bytes every time). Each kind is replayed in a
subprocess, because the bugs they caught aborted the host process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DATA = HERE / "data" / "fuzz"
sys.path.insert(0, str(HERE / "fuzz"))

import seeds  # noqa: E402

ERRORS = ("InvalidArgumentError", "ModelIOError", "InvalidModelError", "UnsupportedModelError",
          "ContextFullError", "OutOfMemoryError", "ComputeError")


def replay(*args: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    run = subprocess.run([sys.executable, str(HERE / "fuzz" / "replay.py"), *args],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, f"the library crashed the process (status {run.returncode}):\n{run.stderr[-4000:]}"
    return run.stdout.splitlines()


def check_outcomes(lines: list[str], files: list[Path]) -> None:
    assert len(lines) == len(files), lines
    for line, path in zip(lines, files):
        outcome = line.removeprefix(f"{path}: ")
        assert outcome == "ok" or outcome.split(":")[0] in ERRORS, line


def inputs(kind: str) -> list[Path]:
    return sorted((DATA / kind).glob("*"))


def test_model_inputs_fail_cleanly():
    files = inputs("model")
    if not files:
        pytest.skip("no model-loader crash found so far (tests/data/fuzz/model/ is empty)")
    check_outcomes(replay("model", *map(str, files)), files)


def test_heads_inputs_fail_cleanly(tmp_path):
    model = seeds.write_models(tmp_path)[seeds.SEED_MODEL]
    files = inputs("heads")
    lines = replay("heads", str(model), *map(str, files))
    check_outcomes(lines, files)
    # the head file whose declared tensor size made ggml abort: refused as truncated
    assert f"{DATA / 'heads' / 'huge_tensor_aborts_in_ggml_init.gguf'}: ModelIOError: file is truncated" in \
        "\n".join(lines)
