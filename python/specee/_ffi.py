"""cffi binding of libspecee: the declarations come from the real header.

No logic lives here: `engine` turns status codes into exceptions and handles
into objects.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cffi

_PKG_DIR = Path(__file__).resolve().parent


def _header_path(name: str = "specee.h") -> Path:
    installed = _PKG_DIR / "include" / name
    if installed.exists():
        return installed
    # running from a source checkout (python/specee next to include/)
    return _PKG_DIR.parent.parent / "include" / name


def _library_path() -> Path:
    # SPECEE_LIBRARY points a development build at another libspecee.so.
    override = os.environ.get("SPECEE_LIBRARY")
    return Path(override) if override else _PKG_DIR / "libspecee.so"


def _cdef_from_header(text: str) -> str:
    """The part of a header between the cffi-begin and cffi-end markers,
    without the export macro."""
    match = re.search(r"/\* cffi-begin.*?\*/(.*?)/\* cffi-end \*/", text, re.S)
    if match is None:
        raise ImportError("a libspecee header has no cffi-begin/cffi-end block")
    body = match.group(1).replace("SPECEE_API ", "")
    # cffi understands integer #defines; other preprocessor lines go
    keep = [line for line in body.splitlines()
            if not line.lstrip().startswith("#") or re.match(r"\s*#define\s+\w+\s+\d+\s*$", line)]
    return "\n".join(keep)


ffi = cffi.FFI()
ffi.cdef(_cdef_from_header(_header_path().read_text()))
# the research hooks (trace signals), kept out of the stable header
ffi.cdef(_cdef_from_header(_header_path("specee_research.h").read_text()))

LIBRARY_PATH = _library_path()
if not LIBRARY_PATH.exists():
    raise ImportError(f"libspecee not found at {LIBRARY_PATH}; was the package built (pip install .)?")
lib = ffi.dlopen(str(LIBRARY_PATH))
