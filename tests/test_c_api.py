"""The header compiles as C and C++, and a C program links the library."""
from __future__ import annotations

import shutil
import subprocess
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
    run = subprocess.run([str(exe), tiny_llama], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "smoke ok" in run.stdout
