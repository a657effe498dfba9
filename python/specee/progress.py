"""A tiny dependency-free progress bar for long byte- or item-counting work.

Usage::

    with Progress(total=n_bytes, desc="hashing", unit="B") as bar:
        for chunk in chunks:
            bar.update(len(chunk))

The bar redraws at most every ``min_interval`` seconds on a terminal; on a
non-terminal stream (a log file, CI) it writes a plain line at start, every
25 % and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_size"]


def format_size(n: float, unit: str = "B") -> str:
    """Human-readable size: ``format_size(98362432) == '93.8 MiB'``."""
    if unit != "B":
        return f"{n:,.0f} {unit}" if unit else f"{n:,.0f}"
    for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(n) < 1024 or prefix == "Ti":
            return f"{n:.0f} B" if prefix == "" else f"{n:.1f} {prefix}B"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Progress bar on a text stream (stderr by default).

    ``total`` may be ``None`` when unknown (only the count and rate are shown).
    ``initial`` starts the count part-way (e.g. the second of several files).
    ``enabled=False`` makes every method a no-op, so callers never need to
    branch on whether progress is wanted.
    """

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        unit: str = "B",
        stream: TextIO | None = None,
        enabled: bool = True,
        width: int = 30,
        min_interval: float = 0.1,
        initial: float = 0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.min_interval = min_interval
        self.n: float = initial
        self._initial = initial  # excluded from the rate (work done before this bar)
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_quarter = -1
        self._closed = False
        try:
            self._tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self._tty = False
        if self.enabled and not self._tty:
            self._plain_line(force=True)

    # -- public ---------------------------------------------------------------

    def update(self, n: float = 1) -> None:
        """Advance by ``n`` units and redraw if enough time has passed."""
        if not self.enabled or self._closed:
            return
        self.n += n
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self._draw()
        else:
            self._plain_line(force=False)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._tty:
            self._draw()
            self.stream.write("\n")
        else:
            # skip the duplicate line when update() already printed 100 %
            self._plain_line(force=not self.total or self._last_quarter < 4)
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- drawing --------------------------------------------------------------

    def _status(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._initial) / elapsed
        done = format_size(self.n, self.unit)
        speed = f"{format_size(rate, self.unit)}/s"
        if self.total:
            frac = min(self.n / self.total, 1.0)
            return f"{frac:6.1%} {done} / {format_size(self.total, self.unit)} {speed}"
        return f"{done} {speed}"

    def _draw(self) -> None:
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(self.n / self.total, 1.0)
            filled = int(frac * self.width)
            bar = "[" + "#" * filled + "-" * (self.width - filled) + "] "
        else:
            bar = ""
        self.stream.write(f"\r{prefix}{bar}{self._status()}\x1b[K")
        self.stream.flush()

    def _plain_line(self, force: bool) -> None:
        quarter = int(4 * self.n / self.total) if self.total else 0
        if not force and quarter == self._last_quarter:
            return
        self._last_quarter = quarter
        prefix = f"{self.desc}: " if self.desc else ""
        self.stream.write(f"{prefix}{self._status()}\n")
        self.stream.flush()
