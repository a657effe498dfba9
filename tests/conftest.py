"""Shared fixtures: tiny generated models (cached per session), the real
default model and llama.cpp's test files (both fetched from PyPI on first use)."""
from __future__ import annotations

import os

import pytest

from tiny_model import TinyConfig, write_tiny_model


@pytest.fixture(autouse=True)
def fresh_exit_switches(tmp_path, monkeypatch):
    """Every test's exit switches start unmeasured: the costs an earlier run
    kept in the cache (exit_switch.store_dir) would change which steps a
    test's decoding takes."""
    from specee.decoding import exit_switch

    monkeypatch.setattr(exit_switch, "store_dir", lambda: tmp_path / "exit_switch")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Returns make(**TinyConfig fields) -> path of a tiny GGUF, written once
    per distinct configuration."""
    cache: dict[TinyConfig, str] = {}
    root = tmp_path_factory.mktemp("tiny_models")

    def make(**fields) -> str:
        cfg = TinyConfig(**fields)
        if cfg not in cache:
            # file-valued fields (vocab, chat_template) by their file name
            name = "_".join(f"{k}-{os.path.basename(str(v))}" for k, v in sorted(fields.items())) or "default"
            cache[cfg] = os.fspath(write_tiny_model(root / f"{name}.gguf", cfg))
        return cache[cfg]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> str:
    return tiny_model_factory()


@pytest.fixture(scope="session")
def real_model_path() -> str:
    """SmolLM2-135M-Instruct Q4_1 from PyPI (skipped with SPECEE_OFFLINE=1)."""
    if os.environ.get("SPECEE_OFFLINE") == "1":
        pytest.skip("SPECEE_OFFLINE=1: the real model is not fetched")
    from specee.fetch import fetch_model

    return os.fspath(fetch_model("smollm2-135m", progress=False))


@pytest.fixture
def hide_matplotlib(monkeypatch) -> None:
    """Makes `import matplotlib...` fail as if it were not installed."""
    import sys

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="session")
def llama_cpp_files():
    """Directory of llama.cpp's vocabulary test files and chat templates,
    extracted from the pinned llama-cpp-python sdist (skipped with SPECEE_OFFLINE=1)."""
    if os.environ.get("SPECEE_OFFLINE") == "1":
        pytest.skip("SPECEE_OFFLINE=1: llama.cpp's test files are not fetched")
    from specee.fetch import fetch_llama_cpp_test_files

    return fetch_llama_cpp_test_files(progress=False)


@pytest.fixture(scope="session")
def llama_cpp():
    """llama.cpp's greedy tokens through llama-cpp-python in a child process
    (tests/llama_cpp_golden.py says where it is looked for); skipped, with the
    reason, when none is usable."""
    from llama_cpp_golden import find_llama_cpp

    ref, why_not = find_llama_cpp()
    if ref is None:
        pytest.skip(why_not)
    return ref


# Lines tests want shown after the run (e.g. a pass count over many vectors).
_SUMMARY = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARY] = []


@pytest.fixture(scope="session")
def summary_lines(pytestconfig: pytest.Config) -> list:
    """Append strings here to print them in pytest's final summary."""
    return pytestconfig.stash[_SUMMARY]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    for line in config.stash.get(_SUMMARY, []):
        terminalreporter.write_line(line)
