"""cmake/ggml-patches: the patch series applies to the pinned ggml, is
skipped once applied, and stops the build on a ggml it does not fit
(cmake/ggml_patches.cmake run in CMake's script mode on files unpacked from
the pinned sdist that `pip install .` fetched)."""
from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATCHES = sorted((REPO / "cmake" / "ggml-patches").glob("*.patch"))
# the files the series touches, as paths inside the ggml tree
TOUCHED = sorted({line[6:].strip() for p in PATCHES for line in p.read_text().splitlines() if line.startswith("+++ b/")})


def pristine_ggml(dest: Path) -> Path:
    """The touched files as the sdist ships them, under dest/ggml."""
    sdists = sorted(REPO.glob("build/*/_ggml_sdist/llama_cpp_python-*.tar.gz"))
    if not sdists or shutil.which("cmake") is None or shutil.which("git") is None:
        pytest.skip("needs the sdist that `pip install .` fetched, cmake and git")
    with tarfile.open(sdists[0]) as tar:
        root = sdists[0].name[: -len(".tar.gz")]
        for rel in TOUCHED:
            member = tar.getmember(f"{root}/vendor/llama.cpp/ggml/{rel}")
            out = dest / "ggml" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return dest / "ggml"


def apply(ggml: Path) -> subprocess.CompletedProcess:
    script = ggml.parent / "apply.cmake"
    script.write_text(f'include("{REPO}/cmake/ggml_patches.cmake")\nspecee_apply_ggml_patches("{ggml}")\n')
    return subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True)


def test_the_series_says_why_and_touches_only_ggml_rpc():
    assert [p.name[:5] for p in PATCHES] == ["0001-", "0002-"]
    for p in PATCHES:
        header = p.read_text().split("\n--- a/")[0]
        assert "Why:" in header and "Test:" in header, p.name
    assert TOUCHED == ["src/ggml-rpc/ggml-rpc.cpp", "src/ggml-rpc/transport.cpp"]


def test_applies_once_then_is_skipped_and_a_foreign_ggml_stops_the_build(tmp_path):
    ggml = pristine_ggml(tmp_path)
    first = apply(ggml)
    assert first.returncode == 0, first.stderr
    for p in PATCHES:
        assert f"ggml patch {p.name} applied" in first.stdout + first.stderr
    assert "check_alive" in (ggml / "src/ggml-rpc/ggml-rpc.cpp").read_text()
    assert "MSG_NOSIGNAL" in (ggml / "src/ggml-rpc/transport.cpp").read_text()

    again = apply(ggml)
    assert again.returncode == 0, again.stderr
    for p in PATCHES:
        assert f"ggml patch {p.name} already applied" in again.stdout + again.stderr

    rpc = ggml / "src/ggml-rpc/ggml-rpc.cpp"
    rpc.write_text(rpc.read_text().replace("check_alive", "checked_elsewhere"))  # half of patch 1 undone by hand
    broken = apply(ggml)
    assert broken.returncode != 0
    assert "0001-rpc-lost-server-is-an-exception.patch neither applies" in broken.stderr
