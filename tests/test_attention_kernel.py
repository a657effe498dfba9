"""specee's attention kernel (libspecee/kernels/attention.h), driven by
tests/c/attention_check.cpp without ggml: the reference against numpy, every
instruction set against the reference bit for bit, and a row whose visible
cells lie apart (a token tree's row, its siblings masked in between) against
the same cells side by side, bit for bit: what makes a tree row equal its
one-token step. In the model: test_specee_kernels.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kernels import CXX, ISAS, build_driver

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")
SCALE = 0.125  # attention_check's, 1 / sqrt(64)


@pytest.fixture(scope="module")
def attention_check(tmp_path_factory) -> Path:
    return build_driver(tmp_path_factory.mktemp("attention"), "attention_check")


def run(exe: Path, d: Path, q, k, v, mask, isa: str = "reference") -> np.ndarray:
    """Writes the problem to d, runs the kernel set `isa`, returns [rows, n_head * hd]."""
    n_rows, n_head, hd = q.shape
    n_kv, kv_embd = k.shape
    q.astype(np.float32).tofile(d / "q.f32")
    k.astype(np.float16).tofile(d / "k.f16")
    v.astype(np.float16).tofile(d / "v.f16")
    kind = "f16" if mask.dtype == np.float16 else "f32"
    mask.tofile(d / f"mask.{kind}")
    res = subprocess.run([str(exe), str(n_rows), str(n_head), str(kv_embd // hd), str(hd), str(n_kv), kind, isa,
                          str(d)], capture_output=True, text=True, timeout=60)
    if res.returncode == 3:
        pytest.skip(res.stderr.strip())
    assert res.returncode == 0, res.stderr
    return np.fromfile(d / f"out_{isa}.f32", dtype=np.float32).reshape(n_rows, n_head * hd)


def problem(seed: int, n_rows=5, n_head=4, n_head_kv=2, hd=64, n_kv=70):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_rows, n_head, hd)).astype(np.float32)
    k = rng.normal(size=(n_kv, n_head_kv * hd)).astype(np.float16)
    v = rng.normal(size=(n_kv, n_head_kv * hd)).astype(np.float16)
    visible = rng.random((n_rows, n_kv)) < 0.7
    visible[:, 0] = True
    mask = np.where(visible, 0.0, -np.inf).astype(np.float16)
    return q, k, v, mask


def numpy_attention(q, k, v, mask) -> np.ndarray:
    n_rows, n_head, hd = q.shape
    group = n_head // (k.shape[1] // hd)
    out = np.zeros((n_rows, n_head, hd))
    for i in range(n_rows):
        for h in range(n_head):
            g = h // group
            kh = k[:, g * hd:(g + 1) * hd].astype(np.float64)
            vh = v[:, g * hd:(g + 1) * hd].astype(np.float64)
            s = kh @ q[i, h].astype(np.float64) * SCALE + mask[i].astype(np.float64)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ vh
    return out.reshape(n_rows, n_head * hd)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mask_type", [np.float16, np.float32])
def test_reference_is_attention(attention_check, tmp_path, seed, mask_type):
    q, k, v, mask = problem(seed)
    mask = mask.astype(mask_type)
    got = run(attention_check, tmp_path, q, k, v, mask)
    np.testing.assert_allclose(got, numpy_attention(q, k, v, mask), rtol=2e-5, atol=2e-6)


def test_large_scores_keep_their_weights(attention_check, tmp_path):
    """Scores far apart (e^(s - max) under 1e-38 for most cells): the exp's
    range reduction and its zero below -86, against numpy."""
    q, k, v, mask = problem(5, n_kv=40)
    q *= 40.0
    got = run(attention_check, tmp_path, q, k, v, mask)
    np.testing.assert_allclose(got, numpy_attention(q, k, v, mask), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [64, 128, 48])
def test_every_instruction_set_gives_the_reference_bits(attention_check, tmp_path, isa, hd):
    q, k, v, mask = problem(3, hd=hd, n_kv=133)
    want = run(attention_check, tmp_path, q, k, v, mask)
    np.testing.assert_array_equal(run(attention_check, tmp_path, q, k, v, mask, isa), want)


@pytest.mark.parametrize("isa", ["reference", *ISAS])
def test_a_row_depends_only_on_the_cells_it_sees(attention_check, tmp_path, isa):
    """Row 0 sees cells 0..39 then 43, 47, 52 (a tree row: siblings masked in
    between, more cells after); the same K/V placed at cells 0..42 with
    nothing after gives the same bits."""
    q, k, v, _ = problem(7, n_rows=1, n_kv=64)
    seen = list(range(40)) + [43, 47, 52]
    apart = np.full((1, 64), -np.inf, dtype=np.float16)
    apart[0, seen] = 0.0
    k2, v2 = np.zeros_like(k), np.zeros_like(v)
    k2[:len(seen)], v2[:len(seen)] = k[seen], v[seen]
    packed = np.full((1, 64), -np.inf, dtype=np.float16)
    packed[0, :len(seen)] = 0.0
    a = run(attention_check, tmp_path, q, k, v, apart, isa)
    b = run(attention_check, tmp_path, q, k2, v2, packed, isa)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(attention_check, tmp_path, q, k2, v2, np.where(
        np.arange(64) < len(seen) - 1, 0.0, -np.inf).astype(np.float16)[None], isa))  # one cell fewer differs
