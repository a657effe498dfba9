"""Drafters: whatever proposes the next few tokens for the target to verify.

A drafter answers `propose(tokens, max_len, sampler)` with a `Draft`: up to
`max_len` tokens meant to follow `tokens` (the prompt and the text so far),
a prior per-token confidence (the chance that each token is accepted once
the ones before it were) and, when it sampled them, the distributions it
drew from. Any source fits behind this: prompt lookup (here), a draft model
(draft_model.py), or a draft head that runs inside the target (EAGLE-style,
not written yet: it would propose from the target's hidden state the same way).

`kinds` names the kinds of draft a drafter makes, each with its cost per
drafted token (relative to one plain decode step of the target) and its
prior acceptance; the decode loop keeps running acceptance per kind and
passes `limits` (the most tokens worth drafting, per kind) to `propose`. A
kind that costs nothing may ignore its limit: the loop then verifies none
of it but keeps score of whether it would have been right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

import numpy as np

from ..ngram_index import NgramIndex
from ..ranges import COUNT
from ..sampling import Sampler


@dataclass
class Draft:
    tokens: list[int]
    confidence: list[float]                 # per token, in (0, 1]
    kind: str                               # running acceptance is kept per kind
    q: Optional[list[np.ndarray]] = None    # draw distributions (sampling); None: the tokens were picked outright

    def __post_init__(self) -> None:
        if len(self.confidence) != len(self.tokens) or (self.q is not None and len(self.q) != len(self.tokens)):
            raise ValueError("a draft needs one confidence (and one distribution, if any) per token")

    def __len__(self) -> int:
        return len(self.tokens)

    def cut(self, k: int) -> "Draft":
        """The first k tokens."""
        return Draft(self.tokens[:k], self.confidence[:k], self.kind, None if self.q is None else self.q[:k])


EMPTY_KIND = "none"


def empty_draft() -> Draft:
    return Draft([], [], EMPTY_KIND)


@dataclass(frozen=True)
class Kind:
    cost_per_token: float   # drafting one token, relative to one plain decode step of the target
    prior: float            # acceptance per token assumed before any is observed


class Drafter(Protocol):
    name: str
    kinds: dict[str, Kind]

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> Draft:
        """Up to `max_len` tokens to follow `tokens` (and up to limits[kind]
        for a kind that costs something). `sampler`: draw the tokens with
        these settings (temperature > 0) and report the distributions."""

    def close(self) -> None:
        """Frees what the drafter holds."""


class LookupDrafter:
    """Prompt lookup: the tokens that followed the most recent earlier
    occurrence of the last n tokens (n = max_ngram, ..., 1) in the prompt and
    the text so far. No model; copy-heavy text (code edits, quotes,
    summaries that reuse phrases) is where it is right."""

    name = "lookup"

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = COUNT.check("max_ngram", max_ngram)
        self._index = NgramIndex(self.max_ngram)
        # a guess that longer matches copy better; the decode loop replaces it
        # with the acceptance it observes per match length
        self.kinds = {f"lookup/{n}": Kind(0.0, min(0.2 + 0.15 * n, 0.8)) for n in range(1, self.max_ngram + 1)}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> Draft:
        self._index.sync(tokens)
        for n in range(self.max_ngram, 0, -1):
            follow = self._index.most_recent_continuation(n, max_len)
            if follow:
                kind = f"lookup/{n}"
                return Draft(follow, [self.kinds[kind].prior] * len(follow), kind)
        return empty_draft()

    def close(self) -> None:
        pass
