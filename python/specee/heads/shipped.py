"""Trained SpecEE heads that ship inside the package (python/specee/heads/),
found by the fingerprint of the model they were trained for, so that any
copy of the same GGUF finds them. Each `NAME.gguf` comes with
`NAME.record.json`: the command, data slice, seeds and metrics that made it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import gguf

HEADS_DIR = Path(__file__).parent  # the trained heads lie beside this module


def _fingerprint(heads_path: Path) -> Optional[str]:
    try:
        field = gguf.GGUFReader(heads_path).get_field("specee.base.fingerprint")
    except (OSError, ValueError):
        return None
    return field.contents() if field is not None else None


def shipped_heads() -> list[Path]:
    """Every head file in the package."""
    return sorted(HEADS_DIR.glob("*.gguf")) if HEADS_DIR.is_dir() else []


def default_heads(model_fingerprint: str) -> Optional[Path]:
    """The shipped head file trained for the model with this fingerprint
    (engine.Model.fingerprint), or None."""
    for path in shipped_heads():
        if _fingerprint(path) == model_fingerprint:
            return path
    return None
