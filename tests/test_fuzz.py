"""Coverage-guided fuzzing of the two file loaders, bounded for CI.

libFuzzer (clang) drives the targets in tests/fuzz/ against an instrumented
libspecee (ASan + UBSan + coverage; cmake/sanitizers.cmake), seeded with the
tiny models and head files of tests/fuzz/seeds.py and with every input that
crashed once (tests/data/fuzz/). A run fails on any crash, sanitizer report,
leak or timeout, and names the input that caused it. Without clang and its
libFuzzer runtime it is skipped; docs/usage.md "Hardening" says how to run longer.

SPECEE_FUZZ_SECONDS sets the time per target (default 25),
SPECEE_FUZZ_SEED libFuzzer's random seed (default 1, so CI runs repeat).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent
BUILD = REPO / "build" / "fuzz-test"  # kept between runs: rebuilds are incremental
sys.path.insert(0, str(HERE / "fuzz"))

import seeds  # noqa: E402

SECONDS = int(os.environ.get("SPECEE_FUZZ_SECONDS", "25"))
SEED = int(os.environ.get("SPECEE_FUZZ_SEED", "1"))
# clang links its own sanitizer runtimes into the fuzz targets: a run of this
# suite under GCC's ASan (docs/hardening.md) must not pass its settings on
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def libfuzzer_missing(tmp: Path) -> str | None:
    """Why libFuzzer cannot be used here, or None."""
    for tool in ("clang", "clang++", "cmake"):
        if shutil.which(tool) is None:
            return f"{tool} not found (libFuzzer needs clang: apt-get install clang)"
    probe = tmp / "probe.c"
    probe.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                     "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n")
    run = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(probe), "-o", str(tmp / "probe")],
                         capture_output=True, text=True, env=CLEAN_ENV)
    if run.returncode != 0:
        return f"clang cannot link libFuzzer (its compiler-rt runtime is missing): {run.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory) -> Path:
    why = libfuzzer_missing(tmp_path_factory.mktemp("probe"))
    if why:
        pytest.skip(why)
    configure = ["cmake", "-S", str(REPO), "-B", str(BUILD), "-DSPECEE_FUZZ=ON",
                 "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    # ggml's sources as `pip install .` unpacked them (saves fetching the sdist again)
    unpacked = sorted(REPO.glob("build/*/_ggml_sdist/llama_cpp_python-*/vendor/llama.cpp/ggml/CMakeLists.txt"))
    if unpacked:
        configure.append(f"-DSPECEE_GGML_SOURCE_DIR={unpacked[0].parent}")
    for cmd in (configure, ["cmake", "--build", str(BUILD), "-j2"]):
        run = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV)
        assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return BUILD


@pytest.fixture(scope="module")
def seed_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_seeds")
    models = seeds.write_models(root / "model")
    seeds.write_heads_seeds(models[seeds.SEED_MODEL], root / "heads")
    return root


def fuzz(build: Path, target: str, kind: str, seed_root: Path, work: Path, env: dict[str, str]) -> None:
    corpus, artifacts = work / "corpus", work / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    regressions = REPO / "tests" / "data" / "fuzz" / kind  # inputs that crashed once
    cmd = [str(build / target), f"-max_total_time={SECONDS}", f"-seed={SEED}", "-timeout=20",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus), str(seed_root / kind),
           *([str(regressions)] if regressions.is_dir() else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**CLEAN_ENV, **env}, timeout=SECONDS + 120)
    found = sorted(artifacts.iterdir())
    assert run.returncode == 0 and not found, (
        f"{target} found a bug (status {run.returncode}); input(s): {[str(p) for p in found]}. "
        f"Fix it and commit the input under tests/data/fuzz/{kind}/ as a regression.\n{run.stderr[-6000:]}")
    # it really fuzzed: libFuzzer ran many inputs beyond the seeds
    runs = [line for line in run.stderr.splitlines() if line.startswith("stat::number_of_executed_units:")]
    assert runs and int(runs[0].split(":")[-1]) > 1000, run.stderr[-2000:]


def test_fuzz_model_loader(fuzz_build, seed_dirs, tmp_path):
    fuzz(fuzz_build, "fuzz_model_load", "model", seed_dirs, tmp_path, {})


def test_fuzz_heads_loader(fuzz_build, seed_dirs, tmp_path):
    model = seed_dirs / "model" / seeds.SEED_MODEL
    fuzz(fuzz_build, "fuzz_heads_load", "heads", seed_dirs, tmp_path, {"SPECEE_FUZZ_MODEL": str(model)})
