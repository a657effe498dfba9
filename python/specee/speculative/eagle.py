"""The project's EAGLE draft head as a drafter: it runs inside the target's
context (its head file attached), on the target's own features, and
proposes a token tree: the chain of its best guesses, with the runners-up
of every step as siblings (ref: EAGLE; EAGLE-2 expands the likeliest nodes,
which the best-first order and the cost policy do here by keeping the
prefix of nodes that pays).

Each node's confidence is the draft's probability of that token: a
calibrated guess at the chance the target agrees, which the decode loop
rescales by the acceptance it observes.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

from ..engine import Context, Heads, InvalidArgumentError
from ..sampling import Sampler
from .draft import Draft, empty_draft
from .drafters import Kind
from .tree import best_first

KIND = "eagle"
PRIOR = 0.5


class EagleDrafter:
    name = "eagle"

    def __init__(self, ctx: Context, heads: Heads, heads_path: str | os.PathLike, branches: int = 3):
        """Attaches `heads` (with a draft head) to `ctx`, whose cache must be
        empty: the draft head follows the target from the prompt on."""
        if not heads.has_draft:
            raise InvalidArgumentError(f"the head file {os.fspath(heads_path)} has no draft head")
        if ctx.n_past != 0:
            raise InvalidArgumentError("the EAGLE drafter needs an empty context (attach before the prompt)")
        ctx.set_heads(heads)
        self.ctx, self.heads, self.branches = ctx, heads, branches
        # one draft step reads the head's weights: their share of the model's
        cost = os.path.getsize(heads_path) / max(ctx.model.size_bytes, 1)
        self.kinds = {KIND: Kind(cost, PRIOR)}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> Draft:
        depth = min(max_len, (limits or {}).get(KIND, max_len))
        if depth < 1:
            return empty_draft()
        best, probs = self.ctx.draft_chain(tokens[-1], depth, self.branches)
        out, parents, conf = [], [], []
        spine = -1  # the chain of best guesses; runners-up hang off it as leaves
        for step in range(depth):
            for j in range(self.branches):
                out.append(int(best[step, j]))
                parents.append(spine)
                conf.append(max(float(probs[step, j]), 1e-6))
            spine = len(out) - self.branches
        return best_first(Draft(out, conf, KIND, None, parents)).cut(max_len)

    def close(self) -> None:
        self.ctx.set_heads(None)
        self.heads.close()
