"""When exact early exit does not pay, decode plainly.

Exact early exit writes plain decoding's tokens whichever steps it takes, so
whether a step tries to exit is only a question of speed. Where the exits are
rare or late (docs/exact-specee.md: the shipped heads exit on about a fifth of
Qwen2.5-Coder-1.5B's tokens, about one layer early on average) the
predictors and the draft head cost more than the layers they save. This
switch measures both kinds of step on the text at hand, in windows of tokens,
and keeps to the cheaper one, trying the other again now and then since
texts change (code, then prose).
"""
from __future__ import annotations

from typing import Optional


class ExitSwitch:
    """Window by window: try exits or not. The first window tries exits, the
    second plain steps; after that the kind with the lower measured time per
    token runs, except every `explore_every`-th window, which measures the
    other kind again. Per kind, the time per token is an exponential average
    over its windows (weight `alpha` for the newest)."""

    def __init__(self, window: int = 16, explore_every: int = 8, alpha: float = 0.5):
        if window < 1 or explore_every < 2 or not 0.0 < alpha <= 1.0:
            raise ValueError("window >= 1, explore_every >= 2 and alpha in (0, 1] are needed")
        self.window, self.explore_every, self.alpha = window, explore_every, alpha
        self.cost: dict[bool, Optional[float]] = {True: None, False: None}  # seconds per token
        self.windows = 0         # windows finished
        self.current = True      # the kind this window runs
        self._tokens = 0         # tokens of the current window so far
        self._seconds = 0.0
        self.tokens_by_kind = {True: 0, False: 0}

    def use_exits(self) -> bool:
        """Whether the next step tries to exit."""
        return self.current

    def record(self, used_exits: bool, seconds: float, n_tokens: int) -> None:
        """A step of kind `used_exits` took `seconds` and emitted `n_tokens`."""
        self._seconds += seconds
        self._tokens += n_tokens
        self.tokens_by_kind[used_exits] += n_tokens
        if self._tokens >= self.window:
            per_token = self._seconds / self._tokens
            old = self.cost[used_exits]
            self.cost[used_exits] = per_token if old is None else self.alpha * per_token + (1 - self.alpha) * old
            self.windows += 1
            self._tokens, self._seconds = 0, 0.0
            self.current = self._next_kind()

    def _next_kind(self) -> bool:
        if self.cost[False] is None:
            return False  # the second window measures plain steps
        best = self.cost[True] <= self.cost[False]
        return (not best) if self.windows % self.explore_every == 0 else best
