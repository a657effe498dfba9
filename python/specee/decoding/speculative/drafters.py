"""Drafters: whatever proposes the next few tokens for the target to verify.

A drafter answers `propose(tokens, max_len, sampler)` with a `DraftTree`: up to
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

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

from .ngram_index import NgramIndex
from ...ranges import COUNT
from ..sampling import Sampler
from .draft_tree import DraftTree, empty_draft
from .tree import merge_drafts


@dataclass(frozen=True)
class Kind:
    cost_per_token: float   # drafting one token, relative to one plain decode step of the target
    prior: float            # acceptance per token assumed before any is observed


class Drafter(Protocol):
    name: str
    kinds: dict[str, Kind]

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        """Up to `max_len` tokens to follow `tokens` (and up to limits[kind]
        for a kind that costs something). `sampler`: draw the tokens with
        these settings (temperature > 0) and report the distributions."""

    def close(self) -> None:
        """Frees what the drafter holds."""


def lookup_prior(match_length: int) -> float:
    """Prior acceptance per token of a lookup draft whose context matched
    this far back: cautious, since scoring unverified drafts is free."""
    return 0.2 if match_length < 2 else 0.35 if match_length < 3 else 0.5 if match_length < 6 else \
        0.65 if match_length < 12 else 0.75


class LookupDrafter:
    """Prompt lookup: the tokens that followed an earlier occurrence of the
    last n tokens (n = max_ngram, ..., 1) in the prompt and the text so far.
    No model; copy-heavy text (code edits, quotes, summaries that reuse
    phrases) is where it is right. Of the recent occurrences it takes the
    one whose context matches furthest back; among equals the one nearest
    the place the last draft was copied from (moved on by the tokens written
    since), then the most recent: text copied with edits finds its own
    place again after an edited word. The draft's kind is that match
    length, bucketed (lookup/1, lookup/2, then lookup/M for M = max_ngram,
    2 max_ngram, 4 max_ngram and longer), or lookup/aligned for a shorter
    match at the copy's place, so the decode loop learns per kind how often
    such drafts are right: a long match is usually a copy in progress. With
    branches > 1, the continuations of up to that many occurrences, merged
    into one token tree (each branch's confidence scaled by its share of
    them)."""

    name = "lookup"
    RECENT = 64        # occurrences looked at per n-gram (the most recent ones)
    ALIGN_WINDOW = 16  # tokens an edit may shift the copy by

    def __init__(self, max_ngram: int = 3, branches: int = 1):
        self.max_ngram = COUNT.check("max_ngram", max_ngram)
        self.branches = COUNT.check("branches", branches)
        self._index = NgramIndex(self.max_ngram)
        self._buckets = sorted(set(range(1, self.max_ngram)) | {self.max_ngram * m for m in (1, 2, 4)})
        # a cautious guess that longer matches copy better; the decode loop
        # replaces it with the acceptance it observes per bucket (it scores
        # unverified lookup drafts too, so learning costs nothing)
        self.kinds = {f"lookup/{b}": Kind(0.0, lookup_prior(b)) for b in self._buckets}
        self.kinds["lookup/aligned"] = Kind(0.0, lookup_prior(2))
        # where the last draft was copied from, and the text's length then: an
        # edit breaks the context match, but the copy goes on near there
        self._copy_from, self._copy_at = -1, 0

    def _distance(self, source: int, length: int) -> float:
        """How far copying from `source` now is from carrying on the last
        draft's copy (an edit inserts or removes a few tokens); inf when
        there is no copy in progress."""
        if self._copy_from < 0 or length <= self._copy_at:
            return math.inf
        return abs(source - (self._copy_from + length - self._copy_at))

    def _kind(self, match_length: int) -> str:
        return f"lookup/{max(b for b in self._buckets if b <= match_length)}"

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        index = self._index
        if not index.sync(tokens):
            self._copy_from = -1  # another text: no copy in progress
        longest = self._buckets[-1]
        for n in range(self.max_ngram, 0, -1):
            starts = index.earlier_matches(n, recent=self.RECENT)[::-1]  # most recent first
            if not starts:
                continue
            lengths = {i: index.match_length(i, n, longest) for i in starts}
            away = {i: self._distance(i + n, len(index.tokens)) for i in starts}
            # longest context first; among equals the one nearest the copy in progress, then the most recent
            ranked = sorted(starts, key=lambda i: (-lengths[i], away[i]))
            found: list[list[int]] = []
            for i in ranked:
                follow = index.tokens[i + n:i + n + max_len]
                if follow not in found:
                    found.append(follow)
                if len(found) == self.branches:
                    break
            best = ranked[0]
            kind = self._kind(lengths[best])
            if lengths[best] < self.max_ngram and away[best] <= self.ALIGN_WINDOW:
                kind = "lookup/aligned"
            if lengths[best] >= 2 or kind == "lookup/aligned" or len(starts) == 1:
                # a copy's place: not a guess among many one-token matches
                self._copy_from, self._copy_at = best + n, len(index.tokens)
            prior = self.kinds[kind].prior
            if len(found) == 1:
                return DraftTree(found[0], [prior] * len(found[0]), kind)
            tree = merge_drafts([DraftTree(f, [prior] * len(f), kind) for f in found], kind, by_support=True)
            return tree.cut(max_len)
        return empty_draft()

    def close(self) -> None:
        pass
