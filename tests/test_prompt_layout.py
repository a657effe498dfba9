"""The prompt layout chosen per CPU (specee.prompt_layout): measured once in
both layouts, cached, kept; llama.cpp's repacked layout without measuring
where the choice does not apply."""
from __future__ import annotations

import json
import statistics

import pytest

from specee import prompt_layout
from specee.engine import Model


@pytest.fixture
def measured_everything(monkeypatch, tmp_path):
    """Every model is big enough to measure; a fresh cache."""
    monkeypatch.setattr(prompt_layout, "MIN_BYTES", 0)
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))
    return tmp_path


def test_measured_once_then_cached_and_the_model_follows_it(tiny_model_factory, measured_everything, monkeypatch):
    path = tiny_model_factory(qtype="Q4_K")  # ggml repacks Q4_K: both layouts exist
    choice = prompt_layout.use_repack(path, "specee")  # the default thread count, as Model's default
    (record_file,) = (measured_everything / "layouts").glob("repack-*.json")
    record = json.loads(record_file.read_text())
    assert len(record["plain_s"]) == len(record["repacked_s"]) == prompt_layout.ROUNDS
    assert choice is record["use_repack"] is (statistics.median(record["repacked_s"]) <
                                              statistics.median(record["plain_s"]))

    def no_second_measurement(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(prompt_layout, "measure", no_second_measurement)
    assert prompt_layout.use_repack(path, "specee") is choice
    with Model(path, kernels="specee") as m:  # use_repack=None: the cached choice
        assert (m.n_repacked > 0) is choice


def test_no_measurement_where_the_choice_does_not_apply(tiny_model_factory, measured_everything, monkeypatch):
    calls = []
    monkeypatch.setattr(prompt_layout, "measure", lambda *a: calls.append(a) or {"use_repack": False})
    q4k = tiny_model_factory(qtype="Q4_K")
    assert prompt_layout.use_repack(q4k, "ggml") is True  # llama.cpp's numerics: its default layout
    assert prompt_layout.use_repack(str(measured_everything / "missing.gguf"), "specee") is True  # the load says why
    monkeypatch.setattr(prompt_layout, "MIN_BYTES", 1 << 40)
    assert prompt_layout.use_repack(q4k, "specee") is True  # too small to be worth it
    assert calls == []


def test_nothing_repacked_nothing_timed(tiny_model_factory, measured_everything):
    record = prompt_layout.measure(tiny_model_factory(qtype="Q8_0"), 1)
    assert record == {"use_repack": True, "why": "ggml repacks none of this model's matrices"}


def test_a_file_that_does_not_load_is_left_to_the_load(tmp_path, measured_everything):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    assert prompt_layout.use_repack(bad, "specee", n_threads=1) is True
    assert not (measured_everything / "layouts").exists()
