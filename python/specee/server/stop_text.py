"""Stop strings over streamed text.

Text arrives piece by piece; a stop string may be split across pieces, so
the end of the text that could still grow into a stop string is held back
until the next piece decides. What is released never contains a stop string
or the text after one.
"""
from __future__ import annotations

from typing import Sequence


class StopText:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Adds `piece`; returns the text that is now safe to send. After a
        stop string, `stopped` is True and everything else is dropped."""
        if self.stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of generation (no stop string came)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest
