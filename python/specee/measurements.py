"""Measurements cached as JSON under the specee cache dir: the speculative
cost curves (decoding/speculative/cost.py) and the prompt layout chosen per
CPU (prompt_layout.py). A record is used only when its version matches; a
cache that cannot be written only costs the next run a measurement."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def read_record(path: Path, version: int) -> Optional[dict]:
    """The record at `path` if it is of `version`, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == version else None


def write_record(path: Path, record: dict, version: int, what: str) -> None:
    """Writes `record` (whole or not at all) with its version and the
    library's system line (which CPU features measured it)."""
    from .engine import system_info

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version, "system": system_info(), **record}, indent=1))
        tmp.replace(path)
    except OSError as e:
        log.warning("cannot cache %s at %s: %s", what, path, e)
