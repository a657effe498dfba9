"""How many drafted tokens to verify: the draft length that gives the most
expected tokens per unit of cost, or none when plain decoding does better.

With per-token acceptance chances a_1..a_k (each given the ones before were
accepted), verifying k drafted tokens yields on average
    E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k
tokens (the accepted prefix plus the target's own next token) for
    cost(k + 1) + k * draft cost per token
plain steps. A plain step yields 1 token for 1. Drafting happens only when
E(k) / cost beats 1 by a margin. A token tree is the same sum over its
nodes: each adds the chance of its whole path (the product of the chances
along it); drafters order tree nodes best first, so the loop verifies the
prefix of k nodes that pays most.

The chances come from the draft's confidences, rescaled per draft kind by
the acceptance observed so far (recent verifications weigh more), kept
apart for a draft's first token and for the tokens after an accepted one.
A kind that is never drafted is still scored: free drafts (lookup) by
following up to MAX_SHADOWS unverified drafts along the tokens that come
next (plain steps and verifications alike), token by token, as a
verification would have judged them (their first token alone would flatter
long drafts); costly ones (a draft model) by a short probe every
`probe_interval` plain steps.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

from ...ranges import COUNT, Range
from .cost import CostCurve
from .drafters import DraftTree, Kind
from .tree import children_of

DRAFT_MAX = Range(int, 1, 16)  # drafted tokens per verification
MAX_CHANCE = 0.98              # no draft is ever a sure thing
MAX_SHADOWS = 8                # free drafts followed at once to keep score


@dataclass
class Tally:
    """Decayed counts of verified draft tokens of one kind at one place."""

    reached: float = 0.0         # tokens whose predecessors were all accepted
    reached_conf: float = 0.0    # their summed confidences
    accepted: float = 0.0

    def add(self, confidence: Sequence[float], n_accepted: int, decay: float) -> None:
        self.reached = self.reached * decay + len(confidence)
        self.reached_conf = self.reached_conf * decay + sum(confidence)
        self.accepted = self.accepted * decay + n_accepted


@dataclass
class KindStats:
    """Running acceptance of one kind of draft, kept apart for a draft's
    first token and for the tokens after an accepted one: drafts tend to be
    right all along or wrong from the start (a copy that goes on, or a
    lookup match in the wrong place), which one per-token rate would turn
    into a short geometric run and undervalue long drafts."""

    prior: float
    weight: float = 2.0          # how many observations the prior is worth
    decay: float = 0.95          # per verification: older outcomes fade
    since_verify: int = 0        # plain steps since this kind was last verified

    def __post_init__(self) -> None:
        self.first, self.rest = Tally(), Tally()

    def record(self, confidence: Sequence[float], n_accepted: int) -> None:
        """`confidence` of the tokens verified; the first n_accepted matched."""
        reached = confidence[:n_accepted + 1]
        if reached:
            self.first.add(reached[:1], min(n_accepted, 1), self.decay)
            self.rest.add(reached[1:], max(n_accepted - 1, 0), self.decay)

    def observe(self, position: int, confidence: float, accepted: bool) -> None:
        """One token of a followed free draft, scored as soon as the text
        shows it: `position` in the draft (0: its first token, where older
        outcomes fade as at a verification)."""
        if position == 0:
            self.first.add([confidence], int(accepted), self.decay)
            self.rest.add([], 0, self.decay)
        else:
            self.rest.add([confidence], int(accepted), 1.0)

    def rate(self, first: bool = True) -> float:
        """Acceptance per token, the prior blended with what was seen."""
        t = self.first if first else self.rest
        return (t.accepted + self.weight * self.prior) / (t.reached + self.weight)

    def scale(self, first: bool = True) -> float:
        """Observed acceptance over what the confidences promised."""
        t = self.first if first else self.rest
        return (t.accepted + self.weight) / (t.reached_conf + self.weight)


class DraftPolicy:
    def __init__(self, curve: CostCurve, kinds: Mapping[str, Kind], margin: float = 0.05,
                 probe_interval: int = 48, probe_len: int = 2):
        self.curve = curve
        self.kinds = dict(kinds)
        self.margin = Range(float, lo=0.0).check("margin", margin)
        self.probe_interval = COUNT.check("probe_interval", probe_interval)
        self.probe_len = COUNT.check("probe_len", probe_len)
        self.stats = {name: KindStats(kind.prior) for name, kind in self.kinds.items()}
        # unverified free drafts followed along plain steps: kind, chain, confidences, tokens matched
        self._shadows: list[tuple[str, list[int], list[float], int]] = []

    @property
    def scoring(self) -> bool:
        """Whether enough free drafts are being followed (the loop need not
        draft just to keep score)."""
        return len(self._shadows) >= MAX_SHADOWS

    # ---- the decision ----

    def best_length(self, chances: Sequence[float], cost_per_token: float) -> int:
        """For a chain: the k in 0..len(chances) with the most expected tokens
        per cost (0 unless it beats plain decoding by the margin)."""
        return self.best_size(list(itertools.accumulate(chances, operator.mul)), cost_per_token)

    def best_size(self, path_chances: Sequence[float], cost_per_token: float) -> int:
        """For a chain or a tree (nodes best first): the number of leading
        nodes with the most expected tokens per cost, 0 unless it beats plain
        decoding by the margin."""
        best_k, best_value = 0, 1.0 + self.margin
        expected = 1.0
        for k, chance in enumerate(path_chances, start=1):
            expected += chance
            value = expected / (self.curve(k + 1) + cost_per_token * k)
            if value > best_value:
                best_k, best_value = k, value
        return best_k

    def limits(self, cap: int) -> dict[str, int]:
        """Per kind, the most tokens worth drafting now (at most `cap`),
        judged on its running acceptance before any draft exists."""
        out = {}
        for name, kind in self.kinds.items():
            stats = self.stats[name]
            chances = [min(stats.rate(first=True), MAX_CHANCE)] + [min(stats.rate(first=False), MAX_CHANCE)] * (cap - 1)
            k = self.best_length(chances, kind.cost_per_token)
            if k == 0 and kind.cost_per_token > 0 and stats.since_verify >= self.probe_interval \
                    and self.could_pay(kind, cap):
                k = min(self.probe_len, cap)  # look again: the text may have changed
            out[name] = k
        return out

    def could_pay(self, kind: Kind, cap: int) -> bool:
        """Whether drafts of this kind would pay even if (almost) always right:
        when not, probing it only costs (a draft model too slow beside the
        target never runs)."""
        return self.best_length([MAX_CHANCE] * cap, kind.cost_per_token) > 0

    def choose(self, draft: DraftTree, cap: int) -> int:
        """How many of the draft's tokens to verify (its cost is already paid)."""
        if len(draft) == 0 or draft.kind not in self.stats:
            return 0
        stats = self.stats[draft.kind]
        scales = {True: stats.scale(first=True), False: stats.scale(first=False)}
        chances = [min(c * scales[p < 0], MAX_CHANCE) for c, p in zip(draft.confidence[:cap], draft.parent_of)]
        k = self.best_size(draft.cut(len(chances)).path_chances(chances), 0.0)
        if k == 0 and self.kinds[draft.kind].cost_per_token > 0 and stats.since_verify >= self.probe_interval \
                and self.could_pay(self.kinds[draft.kind], cap):
            k = min(self.probe_len, len(chances))  # a probe was drafted: verify it
        return k

    # ---- what happened ----

    def verified(self, draft: DraftTree, path: Sequence[int], produced: Sequence[int]) -> None:
        """`draft` was verified and its nodes `path` accepted (in order); the
        verification produced `produced` (the accepted tokens and the
        target's own), along which the free drafts being followed move on."""
        stats = self.stats[draft.kind]
        # what was reached: the accepted path, then the likeliest child where it stopped
        reached = [draft.confidence[i] for i in path]
        tried = [draft.confidence[i] for i in children_of(draft.parent_of).get(path[-1] if path else -1, [])]
        stats.record(reached + ([max(tried)] if tried else []), len(path))
        stats.since_verify = 0
        self._follow(produced)

    def plain_step(self, draft: DraftTree, produced: int) -> None:
        """A plain step produced `produced`; `draft` (possibly empty) was not
        verified. A free draft is followed along the tokens that come next,
        as are those of the steps before it that are still right."""
        for stats in self.stats.values():
            stats.since_verify += 1
        if len(self._shadows) < MAX_SHADOWS and len(draft) and draft.kind in self.stats and \
                self.kinds[draft.kind].cost_per_token == 0:
            chain, conf, node = [], [], -1  # the best-first chain: each node's first child
            children = children_of(draft.parent_of)
            while node in children:
                node = children[node][0]
                chain.append(draft.tokens[node])
                conf.append(draft.confidence[node])
            self._shadows.append((draft.kind, chain, conf, 0))
        self._follow([produced])

    def _follow(self, produced: Sequence[int]) -> None:
        """Moves the followed drafts along `produced`, scoring each token as
        a verification would have (right while all before it were), until a
        draft is wrong or used up. All are followed to their end: scoring
        only those that end early would count the wrong ones and drop the
        right ones."""
        following = []
        for kind, chain, conf, matched in self._shadows:
            stats, done = self.stats[kind], False
            for token in produced:
                right = chain[matched] == token
                stats.observe(matched, conf[matched], right)
                matched += right
                if not right or matched == len(chain):
                    done = True
                    break
            if not done:
                following.append((kind, chain, conf, matched))
        self._shadows = following
