"""The batch cost curve: what verifying n tokens in one pass costs,
relative to one plain decode step (cost(1) = 1).

Measured once per model and thread count with a short calibration (a few
passes of each size, median of each, timed against single-token decodes)
and cached as JSON under the specee cache dir (speculative/), so later runs
start at once. Sizes in between the measured ones are interpolated; sizes
beyond the last are extrapolated along the last segment.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ...engine import Context
from ...fetch import cache_dir
from ...measurements import read_record, write_record

log = logging.getLogger(__name__)

CURVE_VERSION = 3


class CostCurve:
    """cost(n) / cost(1) for a batch of n tokens with every row's logits."""

    def __init__(self, points: Mapping[int, float]):
        pts = {int(n): float(c) for n, c in points.items()}
        if pts.get(1) != 1.0 or any(n < 1 or not c > 0 for n, c in pts.items()):
            raise ValueError(f"a cost curve needs cost(1) = 1 and positive costs at sizes >= 1, got {pts}")
        self.points = dict(sorted(pts.items()))
        self._n = np.array(list(self.points), dtype=np.float64)
        self._c = np.array(list(self.points.values()), dtype=np.float64)
        # the sizes the decode loop asks about at every step, looked up instead of interpolated
        self._table = [self._interpolate(n) for n in range(0, 2 * int(self._n[-1]) + 2)]

    @property
    def max_measured(self) -> int:
        return int(self._n[-1])

    def __call__(self, n: int) -> float:
        return self._table[n] if 0 <= n < len(self._table) else self._interpolate(n)

    def _interpolate(self, n: int) -> float:
        if n <= self._n[-1] or len(self._n) == 1:
            return float(np.interp(n, self._n, self._c)) if len(self._n) > 1 else float(n)
        slope = (self._c[-1] - self._c[-2]) / (self._n[-1] - self._n[-2])
        return float(self._c[-1] + slope * (n - self._n[-1]))


def calibration_sizes(max_n: int) -> list[int]:
    return sorted({n for n in (1, 2, 3, 4, 6, 8, 12, 16) if n <= max_n} | {max_n})


def _verify_pass(ctx: Context, feed: Sequence[int], base: int) -> None:
    if len(feed) == 1:
        ctx.decode(feed[0])  # what a plain step runs
    else:
        ctx.decode_tree(feed)
        ctx.tree_accept([])
    ctx.truncate(base)


def _median_s(ctx: Context, feed: Sequence[int], base: int, reps: int) -> float:
    """Median seconds of `reps` verification passes over `feed` after `base` cached tokens."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _verify_pass(ctx, feed, base)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(ctx: Context, tokens: Sequence[int], max_n: int, reps: int = 3) -> CostCurve:
    """Times passes of 1..max_n tokens after the context's cached ones, run
    as verifications run them (a token chain through specee_decode_tree,
    every row computed as a plain step would); the cache is left as it was.
    `tokens`: any ids to feed (repeated if short)."""
    base = ctx.n_past
    max_n = max(1, min(max_n, ctx.n_ctx - base))
    feed = (list(tokens) * (max_n // max(len(tokens), 1) + 1))[:max_n]
    for n in calibration_sizes(max_n):  # warm-up: first runs build graphs and fault in weights
        _verify_pass(ctx, feed[:n], base)
    median_s = {n: _median_s(ctx, feed[:n], base, reps) for n in calibration_sizes(max_n)}
    one = median_s[1]
    # clamp measurement noise: a pass of n tokens costs at least one step and at
    # most n (its rows are at worst n steps), and never less than a shorter pass
    points, floor = {}, 1.0
    for n in sorted(median_s):
        floor = points[n] = 1.0 if n == 1 else min(max(median_s[n] / one, floor), float(n))
    return CostCurve(points)


def cache_path(fingerprint: str, n_threads: int, exact: bool = True, kernels: str = "ggml") -> Path:
    # verification passes cost what their kernels cost: ggml's exact planes,
    # its batched kernels, or specee's (Model(kernels=...))
    suffix = ("" if exact else "-batched") + ("" if kernels == "ggml" else f"-k{kernels}")
    return cache_dir() / "speculative" / f"cost-{fingerprint}-t{n_threads}{suffix}.json"


def load(fingerprint: str, n_threads: int, max_n: int, exact: bool = True,
         kernels: str = "ggml") -> Optional[CostCurve]:
    """The cached curve if there is one that reaches max_n."""
    record = read_record(cache_path(fingerprint, n_threads, exact, kernels), CURVE_VERSION)
    try:
        curve = CostCurve({int(n): c for n, c in record["points"].items()})
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return curve if curve.max_measured >= max_n else None


def save(curve: CostCurve, fingerprint: str, n_threads: int, exact: bool = True, kernels: str = "ggml") -> None:
    write_record(cache_path(fingerprint, n_threads, exact, kernels),
                 {"model": fingerprint, "threads": n_threads, "points": curve.points}, CURVE_VERSION,
                 "the batch cost curve")


def for_context(ctx: Context, tokens: Sequence[int], max_n: int) -> CostCurve:
    """The cached curve for this model and thread count, else a fresh
    measurement (cached for next time)."""
    fingerprint, threads, exact, kernels = ctx.model.fingerprint, ctx.n_threads, ctx.exact_verify, ctx.model.kernels
    curve = load(fingerprint, threads, max_n, exact, kernels)
    if curve is None:
        t0 = time.perf_counter()
        curve = measure(ctx, tokens, max_n)
        log.info("batch cost curve measured in %.2f s: %s", time.perf_counter() - t0,
                 {n: round(c, 2) for n, c in curve.points.items()})
        if curve.max_measured >= max_n:  # not cut short by a small context
            save(curve, fingerprint, threads, exact, kernels)
    return curve


def step_ratio(draft: Context, target: Context, steps: int = 6) -> float:
    """One decode step of `draft` over one of `target` (both caches empty, and
    left so), measured once per pair of models and thread count and cached:
    what a draft model's token costs in target steps. A file-size ratio
    underestimates it for small models (per-layer overheads weigh more)."""
    path = cache_dir() / "speculative" / (f"step-{draft.model.fingerprint}-over-{target.model.fingerprint}"
                                          f"-t{target.n_threads}.json")
    record = read_record(path, CURVE_VERSION)
    if record is not None and isinstance(record.get("ratio"), (int, float)):
        return float(record["ratio"])

    def step_s(ctx: Context) -> float:
        ctx.prefill([0])
        _verify_pass(ctx, [0], 1)  # warm-up: graphs built, weights faulted in
        t = _median_s(ctx, [0], 1, steps)
        ctx.truncate(0)
        return t

    ratio = step_s(draft) / step_s(target)
    write_record(path, {"ratio": ratio}, CURVE_VERSION, "the draft model's step cost")
    return ratio
