"""An incremental index of the n-grams of a growing token sequence.

Prompt lookup (early-exit candidates, speculative drafts) asks at every step
where the last n tokens occurred before. Scanning the whole text each step
costs O(length) Python work; this index costs O(max_n) per new token and
answers from a dict. It follows one growing sequence: `sync` extends it when
the new sequence starts with the indexed one and rebuilds it otherwise.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

from ...ranges import COUNT


class NgramIndex:
    def __init__(self, max_n: int = 3):
        self.max_n = COUNT.check("max_n", max_n)
        self.tokens: list[int] = []
        self._starts: dict[tuple, list[int]] = defaultdict(list)  # n-gram -> start positions, ascending

    def sync(self, tokens: Sequence[int]) -> bool:
        """Makes the index cover exactly `tokens`; False when they do not
        extend the tokens it covered (it was rebuilt)."""
        n_old = len(self.tokens)
        extended = len(tokens) >= n_old and list(tokens[:n_old]) == self.tokens
        if not extended:
            self.tokens, self._starts = [], defaultdict(list)
            n_old = 0
        for tok in tokens[n_old:]:
            self.tokens.append(int(tok))
            end = len(self.tokens)
            for n in range(1, min(self.max_n, end) + 1):
                self._starts[tuple(self.tokens[end - n:])].append(end - n)
        return extended

    def earlier_matches(self, n: int, since: int = 0, recent: Optional[int] = None) -> list[int]:
        """Start positions >= `since` of the earlier occurrences of the last
        `n` tokens that have at least one token after them, ascending; with
        `recent`, only the most recent that many (looked up in O(recent),
        however often the n-gram occurred)."""
        if not 1 <= n <= min(self.max_n, len(self.tokens)):
            return []
        starts = self._starts.get(tuple(self.tokens[-n:]), [])
        last = len(self.tokens) - n  # the suffix itself (the newest entry)
        if recent is not None:
            starts = starts[-(recent + 1):]
        found = [i for i in starts if since <= i < last]
        return found if recent is None else found[-recent:]

    def match_length(self, start: int, n: int, cap: int) -> int:
        """How many tokens before the end of the text equal those before
        position start + n (the earlier occurrence of the last n tokens that
        starts at `start`), counting those n; at most `cap`."""
        t, end, length = self.tokens, start + n, n
        while length < cap and end - length - 1 >= 0 and t[end - length - 1] == t[len(t) - length - 1]:
            length += 1
        return length
