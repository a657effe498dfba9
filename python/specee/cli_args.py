"""Checks of command-line values that run before any model loads.

argparse ``type=`` functions (a bad value stops the parser with a message
naming the option and what it allows), and the preparation of output paths
(their folders are made, or refused, before the long work rather than after).
The numeric ranges live in ranges.py, shared with the Python API.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .evaluation.datasets import known_datasets
from .evaluation.run import parse_mode, sweep_modes
from .ranges import THRESHOLD
from .decoding.speculative.choice import parse_draft


def existing_file(text: str) -> str:
    """A path naming an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def existing_dir(text: str) -> str:
    """A path naming an existing directory."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return text


def prompt_file(text: str) -> str:
    """An existing file, or '-' for standard input."""
    return text if text == "-" else existing_file(text)


def threshold_list(text: str) -> list[float]:
    """Comma-separated predictor thresholds, each in THRESHOLD's range [0, 1]
    (what the schedule search and the engine accept)."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(v in THRESHOLD for v in values):
        raise argparse.ArgumentTypeError(f"give thresholds, each {THRESHOLD.describe()}, comma-separated; got {text!r}")
    return values


def dataset_list(text: str) -> list[str]:
    """Comma-separated names of known data sets."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in known_datasets()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown data set(s) {', '.join(unknown) or repr(text)}; "
                                         f"known: {', '.join(known_datasets())}")
    return names


def mode_list(text: str) -> list[str]:
    """Comma-separated evaluation modes (evaluation.run.parse_mode)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise argparse.ArgumentTypeError("give at least one mode: vanilla, specee, specee@THRESHOLD, speculative")
    try:
        for m in modes:
            parse_mode(m)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return modes


def draft_spec(text: str) -> str:
    """A drafter: lookup, model:NAME_OR_PATH or auto."""
    try:
        parse_draft(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def threshold_sweep(text: str) -> list[str]:
    """START:STOP:STEP -> the early-exit modes at each threshold."""
    try:
        return sweep_modes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def output_file(text: str, option: str, suffix: str) -> Path:
    """The output file `text` ending in `suffix`, its folder made now so that
    a bad path fails before the work, not after it."""
    out = Path(text)
    if out.suffix != suffix:
        raise ValueError(f"{option} {text!r}: give a file name ending in {suffix}")
    if out.is_dir():
        raise ValueError(f"{option} {text!r} is a directory; give a file name ending in {suffix}")
    _make_dir(out.parent, option, text)
    return out


def output_dir(text: str, option: str) -> Path:
    """The output directory `text`, made now (with its parents) if missing."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {text!r} is a file, not a directory")
    _make_dir(out, option, text)
    return out


def _make_dir(folder: Path, option: str, text: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option} {text!r}: cannot create the folder {os.fspath(folder)!r} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {text!r}: the folder {os.fspath(folder)!r} is not writable")
