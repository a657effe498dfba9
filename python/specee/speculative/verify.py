"""Verification of a draft by the target in one pass.

The context holds every token but `last` (the newest, not yet fed). Both
functions feed [last] + draft with every row's logits kept: row i is the
target's distribution for the token after draft[:i]. They return the tokens
the target stands behind (the accepted drafts, then one of its own) and how
many drafts were accepted, and leave the cache holding `last` and the
accepted drafts only.

Greedy: accept while draft[i] is row i's argmax, then row n's argmax. The
result is plain greedy decoding's, token for token.

Sampling (speculative sampling): accept draft token x at row i with chance
min(1, p(x) / q(x)) (p: the target's distribution after temperature, top-k,
top-p; q: the one the draft drew x from, a point mass when it picked x
outright, which makes the chance p(x)); at the first rejection draw from
max(0, p - q) renormalised; when all are accepted draw the extra token from
the next row. Each emitted token is then distributed exactly as plain
sampling's.
"""
from __future__ import annotations

import numpy as np

from ..engine import Context
from ..sampling import Sampler, probabilities
from .drafters import Draft


def verify_greedy(ctx: Context, last: int, draft: Draft) -> tuple[list[int], int]:
    base = ctx.n_past
    ctx.prefill([last] + draft.tokens, logits_all=True)
    n = 0
    while n < len(draft) and ctx.argmax(n) == draft.tokens[n]:
        n += 1
    emitted = draft.tokens[:n] + [ctx.argmax(n)]
    ctx.truncate(base + 1 + n)
    return emitted, n


def verify_sampled(ctx: Context, last: int, draft: Draft, sampler: Sampler) -> tuple[list[int], int]:
    base = ctx.n_past
    ctx.prefill([last] + draft.tokens, logits_all=True)
    rows = ctx.all_logits()
    rng = sampler.rng
    for i, x in enumerate(draft.tokens):
        p = probabilities(rows[i], sampler.temperature, sampler.top_k, sampler.top_p)
        if draft.q is None:
            q = np.zeros_like(p)
            q[x] = 1.0
        else:
            q = draft.q[i]
        if q[x] > 0 and rng.random() * q[x] < p[x]:  # chance min(1, p(x) / q(x))
            continue
        residual = np.maximum(p - q, 0.0)
        if residual.sum() <= 0.0:  # p == q: a rejection cannot happen, only rounding gets here
            residual = p
        ctx.truncate(base + 1 + i)
        return draft.tokens[:i] + [_draw(residual, rng)], i
    ctx.truncate(base + 1 + len(draft))
    return draft.tokens + [sampler.sample(rows[len(draft)])], len(draft)


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    cum = np.cumsum(weights)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), cum.size - 1))
