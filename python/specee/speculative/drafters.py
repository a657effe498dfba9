"""Drafters: whatever proposes the next few tokens for the target to verify.

A drafter answers `propose(tokens, max_len, sampler)` with a `Draft`: up to
`max_len` tokens meant to follow `tokens` (the prompt and the text so far),
a prior per-token confidence (the chance that each token is accepted once
the ones before it were) and, when it sampled them, the distributions it
drew from. A draft is a chain, or a token tree (`parents`: each token's
parent in the draft, -1 for a token that follows the text directly; every
parent comes before its children) whose branches the target verifies in one
pass (ref: SpecInfer; tree.py). Any source fits behind this: prompt lookup (here), a draft model
(draft_model.py), the EAGLE draft head inside the target (eagle.py), or
several merged into one tree (choice.MergedDrafter).

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

from ..ngram_index import NgramIndex
from ..ranges import COUNT
from ..sampling import Sampler
from .draft import Draft, empty_draft
from .tree import merge_drafts


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
    summaries that reuse phrases) is where it is right. With branches > 1,
    the continuations of up to that many earlier occurrences, merged into
    one token tree (each branch's confidence scaled by its share of them)."""

    name = "lookup"

    def __init__(self, max_ngram: int = 3, branches: int = 1):
        self.max_ngram = COUNT.check("max_ngram", max_ngram)
        self.branches = COUNT.check("branches", branches)
        self._index = NgramIndex(self.max_ngram)
        # a guess that longer matches copy better; the decode loop replaces it
        # with the acceptance it observes per match length
        self.kinds = {f"lookup/{n}": Kind(0.0, min(0.2 + 0.15 * n, 0.8)) for n in range(1, self.max_ngram + 1)}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> Draft:
        self._index.sync(tokens)
        for n in range(self.max_ngram, 0, -1):
            found = self._index.recent_continuations(n, max_len, self.branches)
            if found:
                kind = f"lookup/{n}"
                prior = self.kinds[kind].prior
                if len(found) == 1:
                    return Draft(found[0], [prior] * len(found[0]), kind)
                tree = merge_drafts([Draft(f, [prior] * len(f), kind) for f in found], kind, by_support=True)
                return tree.cut(max_len)
        return empty_draft()

    def close(self) -> None:
        pass
