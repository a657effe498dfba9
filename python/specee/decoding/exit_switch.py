"""When exact early exit does not pay, decode plainly.

Exact early exit writes plain decoding's tokens whichever steps it takes, so
whether a step tries to exit is only a question of speed. Where the exits are
rare or late (docs/exact-specee.md: the shipped heads exit on about a fifth of
Qwen2.5-Coder-1.5B's tokens, about one layer early on average) the
predictors and the draft head cost more than the layers they save. This
switch measures both kinds of step on the text at hand, in windows of tokens,
and keeps to the cheaper one, trying the other again now and then since
texts change (code, then prose). What it learned outlives a generation:
contexts of the same heads and thread count share one switch (`shared`), so
a session or a server measures once, not on every answer; and it outlives
the process, in the cache ($SPECEE_CACHE/exit_switch/, per model, head
file, exit settings, kernels and thread count), so that a command-line
answer does not start with a window of exit steps that, on a model where
they do not pay, costs a few percent of a short answer (SmolLM2-135M: 16
tokens at 0.79x plain, 3% of 128).
"""
from __future__ import annotations

import hashlib
import weakref
from collections import deque
from pathlib import Path
from typing import Callable, Optional

from ..measurements import read_record, write_record

STORE_VERSION = 3  # 2: costs without each window's first step; 3: no exploration gap


class ExitSwitch:
    """Window by window: try exits or not. The first window tries exits, the
    second plain steps; after that the kind with the lower measured time per
    token runs, and now and then a window measures the other kind again:
    after `explore_every` windows, a gap that doubles each time the other
    kind loses again (up to `max_explore_every`) and starts over when the
    better kind changes; a kind measured at least twice that costs more than
    `clear_margin` more per token than the other is looked at again only
    every `max_explore_every` windows (SmolLM2-135M's exit steps cost 1.2
    plain ones: each exploration of them is a window at that cost). Per
    kind, the time per token is the mean of the two cheapest of its last
    `recent` windows: a shared host only ever slows a window down, and one
    slow window of plain steps (Qwen2.5-Coder-0.5B: 22 ms a token against
    18.4) would otherwise hand the steps to exits that cost 3% more. Each
    window's first step is left out: it pays for what the other kind left
    behind (a graph built on first use, a draft head catching up)."""

    def __init__(self, window: int = 16, explore_every: int = 8, recent: int = 4, max_explore_every: int = 64,
                 store: Optional[Path] = None, clear_margin: float = 0.10):
        """`store`: a file that keeps the measured costs between processes
        (read now, written whenever the running kind changes)."""
        if window < 1 or not 2 <= explore_every <= max_explore_every or recent < 1:
            raise ValueError("window >= 1, 2 <= explore_every <= max_explore_every and recent >= 1 are needed")
        self.window, self.clear_margin = window, clear_margin
        self.windows: dict[bool, deque[float]] = {True: deque(maxlen=recent), False: deque(maxlen=recent)}
        self.base_gap, self.max_gap = explore_every, max_explore_every
        self.gap = explore_every       # windows between explorations now
        self.since_explore = 0         # windows of the better kind since the last exploration
        self.best: Optional[bool] = None
        self.cost: dict[bool, Optional[float]] = {True: None, False: None}  # seconds per token
        self.current = True      # the kind this window runs
        self._tokens = 0         # tokens of the current window so far (after its first step)
        self._seconds = 0.0
        self._first = True       # the window's first step is still to come
        self.store = store
        if store is not None:
            self._load(store)

    def _load(self, path: Path) -> None:
        """Starts from an earlier process's costs: with the kind that was
        cheaper, and the usual gap before the other is measured again (after
        128 tokens by default), so that a reading an earlier process got
        wrong does not outlive its next check."""
        record = read_record(path, STORE_VERSION)
        try:
            cost = {True: float(record["cost_exits"]), False: float(record["cost_plain"])}
        except (TypeError, KeyError, ValueError):
            return
        if min(cost.values()) <= 0.0:
            return
        self.cost = cost  # until this process measures a kind, which then replaces its cost
        self.best = self.current = cost[True] <= cost[False]

    def _save(self) -> None:
        write_record(self.store, {"cost_exits": self.cost[True], "cost_plain": self.cost[False]},
                     STORE_VERSION, "the exit switch's step costs")

    def use_exits(self) -> bool:
        """Whether the next step tries to exit."""
        return self.current

    def record(self, used_exits: bool, seconds: float, n_tokens: int) -> None:
        """A step of kind `used_exits` took `seconds` and emitted `n_tokens`."""
        if self._first:
            self._first = False  # a warm-up: not the kind's own cost
            return
        self._seconds += seconds
        self._tokens += n_tokens
        if self._tokens >= self.window:
            old = self.cost[used_exits]
            self.windows[used_exits].append(self._seconds / self._tokens)
            cheapest = sorted(self.windows[used_exits])[:2]
            self.cost[used_exits] = sum(cheapest) / len(cheapest)
            self._tokens, self._seconds, self._first = 0, 0.0, True
            previous, self.current = self.current, self._next_kind()
            # kept when both kinds are first known, and after each exploration
            if self.store is not None and None not in self.cost.values() and (old is None or self.current != previous):
                self._save()

    def _next_kind(self) -> bool:
        if self.cost[False] is None:
            return False  # the second window measures plain steps
        best = self.cost[True] <= self.cost[False]
        behind = self.windows[not best]  # measured twice in this process (or as often as it keeps)
        clear = (len(behind) >= min(2, behind.maxlen) and
                 self.cost[not best] > (1.0 + self.clear_margin) * self.cost[best])
        if best != self.best:
            self.best, self.gap, self.since_explore = best, self.base_gap, 0  # start over
        elif self.current != best:
            self.gap = min(2 * self.gap, self.max_gap)  # an exploration that lost again: look less often
        if clear:
            self.gap = self.max_gap  # far behind: hardly worth a look
        if self.current == best:
            self.since_explore += 1
        if self.since_explore >= self.gap:
            self.since_explore = 0
            return not best
        return best


_shared: "weakref.WeakKeyDictionary[object, dict[int, ExitSwitch]]" = weakref.WeakKeyDictionary()


def shared(heads: object, n_threads: int, store: Optional[Callable[[], Path]] = None) -> ExitSwitch:
    """The switch of every context with these heads and thread count (it
    goes with the heads object); `store()`: where it keeps its costs
    (store_path, which reads the whole head file: asked only when the
    switch is made, not for every generation)."""
    by_threads = _shared.setdefault(heads, {})
    if n_threads not in by_threads:
        by_threads[n_threads] = ExitSwitch(store=store() if store is not None else None)
    return by_threads[n_threads]


def store_dir() -> Path:
    """Where switches keep their costs (the tests point it elsewhere)."""
    from ..fetch import cache_dir

    return cache_dir() / "exit_switch"


def store_path(model_fingerprint: str, heads_path: str, exit_params: dict, kernels: str, n_threads: int) -> Path:
    """The cache file of a switch: what an exit step and a plain step cost
    depends on the model, the head file's contents, the exit settings, the
    kernels and the thread count."""
    from ..fetch import file_sha256

    settings = ",".join(f"{k}={exit_params[k]}" for k in sorted(exit_params))
    key = hashlib.sha256(f"{model_fingerprint}|{file_sha256(Path(heads_path))}|{settings}|{kernels}".encode())
    return store_dir() / f"switch-{key.hexdigest()[:24]}-t{n_threads}.json"
