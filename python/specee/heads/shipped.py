"""Trained SpecEE heads that ship inside the package (python/specee/heads/),
found by the fingerprint of the model they were trained for, so that any
copy of the same GGUF finds them. Each `NAME.gguf` comes with
`NAME.record.json`: the command, data slice, seeds and metrics that made it.
"""
from __future__ import annotations

import os
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


class NoHeadsError(ValueError):
    """A mode needs heads, none were given and none ship for the model."""


def heads_or_shipped(given: Optional[str | os.PathLike], model_fingerprint: str, model_name: str,
                     purpose: str = "early exit") -> Path:
    """`given`, else the shipped heads for the model; the one error every
    entry point (CLI, server, eval, the eagle drafter) gives when neither is there."""
    path = given or default_heads(model_fingerprint)
    if path is None:
        raise NoHeadsError(f"{purpose} needs a head file: no trained heads ship for {model_name}; give --heads "
                           "PATH (train them with `specee train all`)")
    return Path(path)
