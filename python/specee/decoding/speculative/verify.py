"""Verification of a draft (a chain or a token tree) by the target in one pass.

The context holds every token but `last` (the newest, not yet fed). Both
functions feed [last] + the draft as one token tree (specee_decode_tree:
each drafted token sees only its own ancestors) with every row's logits:
row 0 is the target's distribution after `last`, row 1 + i the one after
draft token i and its ancestors. They walk the tree from `last`, keep the
path the target stands behind (specee_tree_accept moves it into place in the
cache), and return the emitted tokens (the accepted drafts, then one of the
target's own) and the accepted draft indices.

Greedy: at each node follow the child that is the node's argmax; stop where
no child is. The result is plain greedy decoding's, token for token (up to
the rounding of a batched pass: docs/speculative.md).

Sampling (speculative sampling; for trees SpecInfer's multi-step scheme):
at a node with target distribution p, try its children in order; child x,
drawn from q (a point mass when the drafter picked it outright), is accepted
with chance min(1, p(x) / q(x)); on a rejection p becomes max(0, p - q)
renormalised and the next child is tried; when every child is rejected (or
there is none) the emitted token is drawn from what p has become. Each
emitted token is then distributed exactly as plain sampling's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...engine import Context
from ..sampling import Sampler
from .drafters import DraftTree
from .layer_skip import pass_order
from .tree import children_of


def verify_greedy(ctx: Context, last: int, draft: DraftTree,
                  depths: Optional[Sequence[int]] = None) -> tuple[list[int], list[int]]:
    """`depths`: layers per row of [last] + draft (layer skipping, lossy:
    layer_skip.py); None: every layer."""
    children, row = _decode(ctx, last, draft, depths)
    path: list[int] = []
    node = -1  # -1: `last` (row 0)
    while True:
        best = ctx.argmax(row[node + 1])
        nxt = next((c for c in children.get(node, []) if draft.tokens[c] == best), None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    ctx.tree_accept([row[0]] + [row[c + 1] for c in path])
    return [draft.tokens[c] for c in path] + [best], path


def verify_sampled(ctx: Context, last: int, draft: DraftTree, sampler: Sampler,
                   depths: Optional[Sequence[int]] = None) -> tuple[list[int], list[int]]:
    children, row = _decode(ctx, last, draft, depths)
    rows = ctx.all_logits()[row]
    rng = sampler.rng
    path: list[int] = []
    node = -1
    while True:
        p = sampler.probabilities(rows[node + 1])
        nxt: Optional[int] = None
        for c in children.get(node, []):
            x = draft.tokens[c]
            q = _draw_distribution(draft, c, p.size)
            if q[x] > 0 and rng.random() * q[x] < p[x]:  # chance min(1, p(x) / q(x))
                nxt = c
                break
            residual = np.maximum(p - q, 0.0)
            if residual.sum() > 0.0:  # p == q: a rejection cannot happen, only rounding gets here
                p = residual / residual.sum()
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    ctx.tree_accept([row[0]] + [row[c + 1] for c in path])
    return [draft.tokens[c] for c in path] + [_draw(p, rng)], path


def check_point_draft(sampler: Sampler, logits: np.ndarray, draft: int) -> tuple[bool, int]:
    """Speculative sampling for one draft token that was picked outright (q a
    point mass at `draft`, as an early exit picks it): accepted with chance
    p(draft); else the token is drawn from p without `draft`, renormalised.
    Returns (accepted, token), token == draft when accepted; it is then
    distributed exactly as sampler.sample(logits). Sampling only."""
    p = sampler.probabilities(logits)
    if sampler.rng.random() < p[draft]:
        return True, int(draft)
    p[draft] = 0.0
    return False, _draw(p, sampler.rng)


def _decode(ctx: Context, last: int, draft: DraftTree,
            depths: Optional[Sequence[int]] = None) -> tuple[dict[int, list[int]], list[int]]:
    """Feeds [last] + draft as one tree; returns draft node -> children
    (key -1: the children of `last`) and, for each of [last] + draft, its
    row in the pass (with `depths` the rows go deepest first)."""
    tokens = [last] + list(draft.tokens)
    parents = [-1] + [p + 1 for p in draft.parent_of]
    if depths is None:
        ctx.decode_tree(tokens, parents)
        return children_of(draft.parent_of), list(range(len(tokens)))
    order = pass_order(depths)
    row = [0] * len(order)
    for r, i in enumerate(order):
        row[i] = r
    ctx.decode_tree([tokens[i] for i in order], [row[parents[i]] if parents[i] >= 0 else -1 for i in order],
                    depths=[depths[i] for i in order])
    return children_of(draft.parent_of), row


def _draw_distribution(draft: DraftTree, i: int, n_vocab: int) -> np.ndarray:
    q = draft.q[i] if draft.q is not None else None
    if q is None:
        q = np.zeros(n_vocab)
        q[draft.tokens[i]] = 1.0
    return q


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    cum = np.cumsum(weights)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), cum.size - 1))
