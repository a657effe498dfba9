"""specee's own CPU kernels (libspecee/kernels/, docs/kernels.md), driven by
tests/c/kernel_check.cpp without ggml: the reference kernel against numpy
over gguf's own dequantization, the CPU's fastest kernel against the
reference bit for bit, and every column of a batched call against the
one-column call bit for bit (what makes a verification row equal a
one-token step)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "libspecee" / "kernels"
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
FLAGS = {"mul_mat_avx2.cpp": ["-mavx2", "-mf16c", "-mfma"],
         "mul_mat_avx512_vnni.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma"],
         "attention_avx2.cpp": ["-mavx2", "-mf16c", "-mfma"],
         "attention_avx512.cpp": ["-mavx512f", "-mf16c", "-mfma"]}
ISAS = ["avx2", "avx512_vnni"]
TYPES = {"q4_k": GGMLQuantizationType.Q4_K, "q6_k": GGMLQuantizationType.Q6_K, "q8_0": GGMLQuantizationType.Q8_0,
         "q5_0": GGMLQuantizationType.Q5_0, "q4_1": GGMLQuantizationType.Q4_1}

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def build_driver(out: Path, driver: str) -> Path:
    """tests/c/<driver>.cpp linked with the kernels, compiled as
    CMakeLists.txt compiles them."""
    common = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
              "-Wno-maybe-uninitialized", f"-I{ROOT / 'libspecee'}", "-c"]
    objs = []
    for src in [*sorted(KERNELS.glob("*.cpp")), ROOT / "tests" / "c" / f"{driver}.cpp"]:
        obj = out / (src.stem + ".o")
        subprocess.run(common + FLAGS.get(src.name, []) + [str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / driver
    subprocess.run([CXX, *objs, "-o", str(exe)], check=True)
    return exe


@pytest.fixture(scope="module")
def kernel_check(tmp_path_factory) -> Path:
    return build_driver(tmp_path_factory.mktemp("kernels"), "kernel_check")


def run_check(exe: Path, tmp_path: Path, kind: str, rows: int, cols: int, n_x: int, seed: int, *extra: str):
    """Runs the driver; `extra`: the kernel set to use (default: the CPU's best)."""
    run = subprocess.run([str(exe), kind, str(rows), str(cols), str(n_x), str(seed), str(tmp_path), *extra],
                         capture_output=True, text=True, timeout=120)
    if run.returncode == 3:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stderr
    y = {name: np.fromfile(tmp_path / f"y_{name}.f32", dtype=np.float32).reshape(n_x, rows)
         for name in ("reference", "batched", "one")}
    return run.stdout.strip(), y


def activation_columns(path: Path, kind: str, n_x: int, cols: int) -> np.ndarray:
    """x = d * qs from the activation blocks: Q8_K (float d, 256 int8, 16 int16
    sums) for the k-quants, Q8_0 (fp16 d, 32 int8) for the others."""
    if kind.endswith("_k"):
        block = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
    else:
        block = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
    b = np.fromfile(path, dtype=block).reshape(n_x, -1)
    return (b["d"][..., None].astype(np.float64) * b["qs"]).reshape(n_x, cols)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", sorted(TYPES))
@pytest.mark.parametrize("n_x", [1, 5, 9, 17])  # tiles of 8 (AVX2: 2): one, a partial tile, tiles and leftovers
def test_kernels_match_numpy_and_each_other(kernel_check, tmp_path, kind, n_x, isa):
    """Each kernel set the CPU runs (AVX2 on AVX-512 machines too)."""
    rows, cols = 64, 512
    got_isa, y = run_check(kernel_check, tmp_path, kind, rows, cols, n_x, n_x, isa)
    assert got_isa == isa
    raw = np.fromfile(tmp_path / "weights.bin", dtype=np.uint8).reshape(rows, -1)
    w = dequantize(raw, TYPES[kind]).astype(np.float64)
    x = activation_columns(tmp_path / "x.bin", kind, n_x, cols)
    want = x @ w.T
    scale = np.abs(x) @ np.abs(w).T  # what rounding in the sums is relative to
    assert np.all(np.abs(y["reference"] - want) <= 1e-5 * scale + 1e-30), "reference kernel vs numpy"
    assert y["batched"].tobytes() == y["reference"].tobytes(), f"{isa} kernel vs reference"
    assert y["one"].tobytes() == y["batched"].tobytes(), "a batched column vs the one-column call"


@pytest.mark.parametrize("kind", ["q8_0", "q5_0", "q4_1"])
def test_rows_of_any_multiple_of_32(kernel_check, tmp_path, kind):
    """SmolLM2's rows are 576 long, Qwen2.5-Coder-0.5B's 896: not multiples of 256."""
    rows, cols, n_x = 32, 576, 3
    _, y = run_check(kernel_check, tmp_path, kind, rows, cols, n_x, 11)
    w = dequantize(np.fromfile(tmp_path / "weights.bin", dtype=np.uint8).reshape(rows, -1), TYPES[kind])
    x = activation_columns(tmp_path / "x.bin", kind, n_x, cols)
    want = x @ w.astype(np.float64).T
    assert np.all(np.abs(y["reference"] - want) <= 1e-5 * (np.abs(x) @ np.abs(w).T) + 1e-30)
    assert y["batched"].tobytes() == y["reference"].tobytes() == y["one"].tobytes()


def test_forced_reference_is_the_reference(kernel_check, tmp_path):
    isa, y = run_check(kernel_check, tmp_path, "q6_k", 32, 256, 3, 7, "reference")
    assert isa == "reference"
    assert y["batched"].tobytes() == y["reference"].tobytes() == y["one"].tobytes()


@pytest.mark.parametrize("rows, cols", [(24, 256), (32, 300), (0, 256)])
def test_repack_refuses_shapes_off_the_layout(kernel_check, tmp_path, rows, cols):
    run = subprocess.run([str(kernel_check), "q4_k", str(rows), str(cols), "1", "1", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "rows must be a multiple of 16 and columns of 256" in run.stderr
