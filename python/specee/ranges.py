"""Allowed ranges of numeric parameters, checked before any work starts.

One table serves the Python API and the command line alike:
``TEMPERATURE.check("temperature", t)`` raises ValueError naming the
parameter and its range, and ``TEMPERATURE.arg`` is an argparse ``type=``
that raises ArgumentTypeError, so argparse's message names the option
(``argument --temp: must be a number >= 0, got '-1'``).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Optional, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Range:
    """Integers or finite numbers from `lo` to `hi` (None: unbounded);
    `lo_open` and `hi_open` leave `lo` and `hi` themselves out."""

    kind: type  # int or float
    lo: Optional[Number] = None
    hi: Optional[Number] = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        """Words for the range: "an integer >= 1", "a number in (0, 1]"."""
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{noun} {'<' if self.hi_open else '<='} {self.hi:g}"
        return noun

    def check(self, name: str, value: Number) -> Number:
        """`value` if it lies in the range, else ValueError naming `name`."""
        if value not in self:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return value

    def check_optional(self, name: str, value: Optional[Number]) -> Optional[Number]:
        """Like check, with None allowed (meaning "the default")."""
        return None if value is None else self.check(name, value)

    def arg(self, text: str) -> Number:
        """argparse ``type=``: the parsed value, or ArgumentTypeError."""
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or value not in self:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def check_fields(obj: object, ranges: dict[str, Range]) -> None:
    """Checks the named attributes of a settings object (a dataclass's
    __post_init__), each against its range."""
    for name, allowed in ranges.items():
        allowed.check(name, getattr(obj, name))


# tokens to generate, items, steps, epochs, widths: at least one
COUNT = Range(int, lo=1)
# threads (0: the available cores), top-k (0: off), draft vocabulary and width (0: the default)
ZERO_OR_MORE = Range(int, lo=0)
# predictor thresholds: the predictor's output is a probability
THRESHOLD = Range(float, 0.0, 1.0)
CHAIN = Range(int, 1, 16)  # exits one exact verification takes (SPECEE_MAX_EXIT_CHAIN)
TEMPERATURE = Range(float, lo=0.0)  # 0: greedy
TOP_P = Range(float, 0.0, 1.0, lo_open=True)  # 1: off
MIN_P = Range(float, 0.0, 1.0)  # 0: off
SEED = Range(int, lo=0)  # numpy's generators take non-negative seeds
PORT = Range(int, 1, 65535)
# a port to listen on: 0 lets the system choose a free one
LISTEN_PORT = Range(int, 0, 65535)
# tokens per training sequence: a sequence teaches the next token, so two at least
SEQUENCE_LENGTH = Range(int, lo=2)
LEARNING_RATE = Range(float, lo=0.0, lo_open=True)
WEIGHT = Range(float, lo=0.0)  # a loss weight
# the share of the data held out for measuring: some, but not all of it
HELD_OUT_SHARE = Range(float, 0.0, 1.0, lo_open=True, hi_open=True)
AGREEMENT = Range(float, 0.0, 1.0, lo_open=True)  # a floor on the share of tokens equal to full depth's
MILLISECONDS = Range(float, lo=0.0)  # a measured cost
