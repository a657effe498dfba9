"""The project's EAGLE draft head as a drafter: it runs inside the target's
context (its head file attached), on the target's own features, and
proposes a token tree of one of two shapes:

- "tree" (the default; ref: EAGLE-2): a dynamic tree. Level by level, the
  `branches` likeliest nodes of the last level (by the product of draft
  probabilities along their path) each get their `branches` best tokens as
  children, one draft pass per level; the likeliest nodes of the whole
  expansion make the draft (specee_draft_tree).
- "chain" (ref: EAGLE): the chain of the draft's best guesses, one draft
  step per token, with each step's runners-up as sibling leaves
  (specee_draft_chain).

Either way the nodes go best first, and the decode loop's cost policy keeps
the prefix of them that pays. Each node's confidence is the draft's
probability of that token given its parent: a calibrated guess at the
chance the target agrees, which the decode loop rescales by the acceptance
it observes.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

from ...engine import Context, Heads, InvalidArgumentError
from ..sampling import Sampler
from .draft_tree import DraftTree, empty_draft
from .drafters import Kind
from .tree import best_first

KIND = "eagle"
PRIOR = 0.5
SHAPES = ("tree", "chain")
MIN_CONFIDENCE = 1e-6  # a draft confidence is in (0, 1]; the draft's softmax can underflow to 0


class EagleDrafter:
    name = "eagle"

    def __init__(self, ctx: Context, heads: Heads, heads_path: str | os.PathLike, branches: int = 3,
                 shape: str = "tree", owns_heads: bool = True):
        """Attaches `heads` (with a draft head) to `ctx`, whose cache must be
        empty: the draft head follows the target from the prompt on.
        `branches`: children per expanded node (tree), or tokens per step
        (chain: the best guess and branches - 1 runners-up). `owns_heads`:
        close the heads with the drafter (not when others share them)."""
        if shape not in SHAPES:
            raise InvalidArgumentError(f"EAGLE draft shape must be one of {', '.join(SHAPES)}, not {shape!r}")
        if not heads.has_draft:
            raise InvalidArgumentError(f"the head file {os.fspath(heads_path)} has no draft head")
        if ctx.n_past != 0:
            raise InvalidArgumentError("the EAGLE drafter needs an empty context (attach before the prompt)")
        ctx.set_heads(heads)
        self.ctx, self.heads, self.branches, self.shape = ctx, heads, branches, shape
        self.owns_heads = owns_heads
        if shape == "chain":
            self.name = "eagle:chain"
        # one draft step reads the head's weights: their share of the model's
        cost = os.path.getsize(heads_path) / max(ctx.model.size_bytes, 1)
        self.kinds = {KIND: Kind(cost, PRIOR)}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        n = min(max_len, (limits or {}).get(KIND, max_len))
        if n < 1:
            return empty_draft()
        draft = self._tree(tokens[-1], n) if self.shape == "tree" else self._chain(tokens[-1], n)
        return best_first(draft).cut(max_len)

    def _tree(self, next_token: int, n: int) -> DraftTree:
        """The n likeliest nodes of a dynamic tree up to n levels deep, as
        deep as the draft cache has room for (a cell per expanded node)."""
        room = self.ctx.n_ctx - self.ctx.n_past
        depth = min(n, room // self.branches + 1)
        tree = self.ctx.draft_tree(next_token, depth, self.branches, self.branches, n)
        conf = [max(float(p), MIN_CONFIDENCE) for p in tree.probs]
        return DraftTree(tree.tokens, conf, KIND, None, tree.parents)

    def _chain(self, next_token: int, depth: int) -> DraftTree:
        best, probs = self.ctx.draft_chain(next_token, depth, self.branches)
        out, parents, conf = [], [], []
        spine = -1  # the chain of best guesses; runners-up hang off it as leaves
        for step in range(depth):
            for j in range(self.branches):
                out.append(int(best[step, j]))
                parents.append(spine)
                conf.append(max(float(probs[step, j]), MIN_CONFIDENCE))
            spine = len(out) - self.branches
        return DraftTree(out, conf, KIND, None, parents)

    def close(self) -> None:
        self.ctx.set_heads(None)
        if self.owns_heads:
            self.heads.close()
