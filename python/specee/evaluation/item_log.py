"""The per-item log of `specee eval`: one JSON line per finished item, so an
evaluation stopped part way (hours of HumanEval on a 2-core machine) resumes
at the first item it has not done.

Line 1 holds the run's settings; a resumed run must have the same ones, or
its figures would mix two different evaluations.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class ItemLog:
    """Append-only, flushed after every item. `resume` keeps the items of an
    earlier run with equal settings; without it an existing log is refused
    rather than overwritten (it may hold hours of work)."""

    def __init__(self, path: str | os.PathLike, settings: dict, resume: bool):
        self.path = Path(path)
        self._done: dict[str, dict[int, dict]] = {}
        settings = json.loads(json.dumps(settings))  # as read back: tuples become lists
        if resume and self.path.exists():
            self._read(settings)
            self._file = self.path.open("a", encoding="utf-8")
        elif self.path.exists():
            raise FileExistsError(f"{self.path} holds the items of an earlier evaluation: resume it (--resume) "
                                  "or remove it to start over")
        else:
            self._file = self.path.open("w", encoding="utf-8")
            self._write({"settings": settings})

    def _read(self, settings: dict) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            header = None
        if header is None:
            raise ValueError(f"{self.path}: not an evaluation item log; remove it or give another --out")
        changed = sorted(k for k in set(header) | set(settings) if header.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{self.path}: logged with other settings ({', '.join(changed)}); "
                             "remove it (or give another --out) to start over")
        kept = 1
        for line in lines[1:]:
            try:
                item = json.loads(line)
            except ValueError:
                break  # a line cut short when the run was stopped: redo that item
            self._done.setdefault(item["dataset"], {})[item["item"]] = item["modes"]
            kept += 1
        # rewrite without a cut-short tail so appends start on a fresh line
        self.path.write_text("".join(line + "\n" for line in lines[:kept]), encoding="utf-8")

    def done(self, dataset: str) -> dict[int, dict]:
        """Item index -> {mode: record} of the items already evaluated."""
        return self._done.get(dataset, {})

    def add(self, dataset: str, item: int, modes: dict) -> None:
        self._write({"dataset": dataset, "item": item, "modes": modes})
        self._done.setdefault(dataset, {})[item] = modes

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
