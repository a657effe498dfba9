"""The header compiles as C and C++, and a C program links the library."""
from __future__ import annotations

import ctypes as C
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specee import _ffi

HERE = Path(__file__).parent
CC = shutil.which("cc") or shutil.which("gcc")
CXX = shutil.which("c++") or shutil.which("g++")


def include_dir() -> Path:
    return _ffi._header_path().parent


@pytest.mark.skipif(CC is None, reason="no C compiler")
@pytest.mark.parametrize("std", ["c99", "c11"])
def test_header_compiles_as_c(tmp_path, std):
    src = tmp_path / "inc.c"
    src.write_text('#include "specee.h"\nint main(void) { return (int) specee_api_version() - SPECEE_API_VERSION; }\n')
    subprocess.run([CC, f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only",
                    f"-I{include_dir()}", str(src)], check=True)


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_ctypes_example_structs_match_the_header(tmp_path):
    """The example declares the structs it passes by value by hand: their
    sizes and field offsets must be the compiler's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ctypes_decode", HERE.parent / "examples" / "ctypes_decode.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pairs = {"specee_model_params": example.ModelParams, "specee_context_params": example.ContextParams,
             "specee_step": example.Step}
    lines = [f'printf("%zu", sizeof(struct {c}));' + "".join(
        f' printf(" %zu", offsetof(struct {c}, {name}));' for name, _ in py._fields_) + ' printf("\\n");'
        for c, py in pairs.items()]
    src = tmp_path / "sizes.c"
    src.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "specee.h"\nint main(void) {\n'
                   + "\n".join(lines) + "\nreturn 0; }\n")
    exe = tmp_path / "sizes"
    subprocess.run([CC, f"-I{include_dir()}", str(src), "-o", str(exe)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    for line, (c, py) in zip(got, pairs.items()):
        want = [C.sizeof(py)] + [getattr(py, name).offset for name, _ in py._fields_]
        assert [int(x) for x in line.split()] == want, c
        # and every field of the header's struct, in order: a field left out
        # can hide in padding and still pass the size check
        assert [name for name, _ in py._fields_] == [name for name, _ in _ffi.ffi.typeof(f"struct {c}").fields], c


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_header_compiles_as_cpp(tmp_path):
    src = tmp_path / "inc.cpp"
    src.write_text('#include "specee.h"\nint main() { return specee_model_free(nullptr), 0; }\n')
    subprocess.run([CXX, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{include_dir()}", str(src)],
                   check=True)


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_program_links_and_runs(tmp_path, tiny_llama):
    lib = _ffi._library_path()
    exe = tmp_path / "smoke"
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{include_dir()}",
                    str(HERE / "c" / "smoke.c"), "-o", str(exe), str(lib), f"-Wl,-rpath,{lib.parent}"], check=True)
    # with the sanitizer build (docs/hardening.md) LeakSanitizer checks this
    # program, which unlike Python leaks nothing of its own; elsewhere it is unused
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1"}
    run = subprocess.run([str(exe), tiny_llama], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "smoke ok" in run.stdout


def test_ctypes_example_decodes_like_the_package(tmp_path):
    """examples/ctypes_decode.py (ctypes alone) gives the tokens and exit
    layers of specee.decoding.early_exit.generate_specee (exact, exits
    always tried, one exit a verification) for the same heads, and those are plain greedy decoding's."""
    sys.path.insert(0, str(HERE / "fuzz"))
    import seeds
    from specee.decoding.early_exit import generate_specee
    from specee.engine import Heads, Model

    model_path = seeds.write_models(tmp_path / "model")[seeds.SEED_MODEL]
    heads_path = next(p for p in seeds.write_heads_seeds(model_path, tmp_path / "heads") if "draft_q8_0" in p.name)
    prompt, n = [5, 77, 200, 13], 12
    run = subprocess.run([sys.executable, str(HERE.parent / "examples" / "ctypes_decode.py"), str(_ffi._library_path()),
                          str(model_path), str(heads_path), "-n", str(n), "--prompt", ",".join(map(str, prompt))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    tokens = [int(t) for t in lines[-2].removeprefix("tokens:").split()]
    exit_layers = [int(t) for t in lines[-1].removeprefix("exit layers:").split()]

    from specee.decoding.plain import generate

    with Model(model_path) as m, Heads(m, heads_path) as heads, m.context(n_ctx=32, n_threads=1) as ctx:
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False)
        # the example verifies each exit by the next pass: no chains
        want = generate_specee(ctx, prompt, n, heads.n_candidates, exact=True, adaptive=False, chain=1)
        ctx.set_heads(None)
        ctx.truncate(0)
        plain = generate(ctx, prompt, n)
        n_layer = m.n_layer
    assert tokens == want.tokens == plain.tokens and exit_layers == want.extra["exit_layers"]
    assert min(exit_layers) < n_layer  # the heads do exit early
    assert want.extra["exit_drafts_verified"] > 0


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_example_decodes_like_the_package(tmp_path):
    """examples/c/early_exit_decode.c, compiled against the installed library
    (as CMake's SPECEE_BUILD_EXAMPLES builds it), prints the tokens and exit
    layers of the Python API's early-exit decoding for the same heads."""
    sys.path.insert(0, str(HERE / "fuzz"))
    import seeds
    from specee.decoding.early_exit import generate_specee
    from specee.decoding.plain import generate
    from specee.engine import Heads, Model

    lib = _ffi._library_path()
    exe = tmp_path / "early_exit_decode"
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{include_dir()}",
                    str(HERE.parent / "examples" / "c" / "early_exit_decode.c"), "-o", str(exe), str(lib),
                    f"-Wl,-rpath,{lib.parent}"], check=True)
    model_path = seeds.write_models(tmp_path / "model")[seeds.SEED_MODEL]
    heads_path = next(p for p in seeds.write_heads_seeds(model_path, tmp_path / "heads") if "draft_q8_0" in p.name)
    prompt, n = [5, 77, 200, 13], 12
    run = subprocess.run([str(exe), str(model_path), str(heads_path), str(n), *map(str, prompt)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    tokens = [int(t) for t in lines[-1].removeprefix("tokens:").split()]
    exit_layers = [int(line.split()[3]) for line in lines[:-1]]
    with Model(model_path) as m, Heads(m, heads_path) as heads, m.context(n_ctx=32, n_threads=1) as ctx:
        plain = generate(ctx, prompt, n).tokens
        ctx.truncate(0)
        ctx.set_heads(heads)
        ctx.set_exit_params(verify_full=False)
        want = generate_specee(ctx, prompt, n, heads.n_candidates, adaptive=False, chain=1)  # as the example
    assert tokens == want.tokens == plain and exit_layers == want.extra["exit_layers"]
    assert want.extra["exit_drafts_verified"] > 0  # the example's verification path ran
    bad = subprocess.run([str(exe), str(model_path), str(tmp_path / "missing.gguf"), "4", "1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: heads:")


def test_ctypes_example_reports_bad_input(tmp_path, tiny_llama):
    run = subprocess.run([sys.executable, str(HERE.parent / "examples" / "ctypes_decode.py"), str(_ffi._library_path()),
                          tiny_llama, str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "SPECEE_STATUS_IO_ERROR" in run.stderr
