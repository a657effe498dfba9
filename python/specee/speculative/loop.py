"""The speculative decode loop: draft, verify in one pass, keep what the
target stands behind; or a plain step when drafting would not pay.

Output: greedy, exactly plain greedy decoding's tokens; sampling, tokens
distributed exactly as plain sampling's (verify.py). Stop rules and
`on_token` streaming are generate.generate's: a stop token ends the output
even when more accepted tokens came after it in the same verification, and
drafts never run past max_tokens or the context (a verification that would
not fit is shortened, so a full context ends with the tokens accepted so
far and stop_reason "context").
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional, Sequence

from ..engine import Context
from ..generate import GenerationResult, check_request, decode_one_token, pick, why_stop
from ..sampling import Sampler
from . import cost
from .cost import CostCurve
from .drafters import Drafter, empty_draft
from .policy import DRAFT_MAX, DraftPolicy
from .verify import verify_greedy, verify_sampled

log = logging.getLogger(__name__)

DEFAULT_DRAFT_MAX = 8


def draft_sampler(sampler: Sampler) -> Optional[Sampler]:
    """The drafter's own sampler: the target's settings, a separate stream
    (so drafting never shifts the target's draws). None when greedy."""
    if sampler.greedy:
        return None
    drafts = Sampler(sampler.temperature, sampler.top_k, sampler.top_p)
    drafts.rng = sampler.rng.spawn(1)[0]  # a child stream: reproducible from the target's seed
    return drafts


def generate_speculative(
    ctx: Context,
    prompt: Sequence[int],
    max_tokens: int,
    drafter: Drafter,
    sampler: Optional[Sampler] = None,
    stop_ids: Iterable[int] = (),
    on_token: Optional[Callable[[int], None]] = None,
    draft_max: int = DEFAULT_DRAFT_MAX,
    curve: Optional[CostCurve] = None,
    policy: Optional[DraftPolicy] = None,
) -> GenerationResult:
    """Like generate.generate, with drafts from `drafter` verified by the
    target. `curve`: the batch cost curve (default: cached per model and
    thread count, measured on first use); `policy`: decides the draft
    lengths (default: a DraftPolicy on that curve)."""
    DRAFT_MAX.check("draft_max", draft_max)
    check_request(ctx, prompt, max_tokens)
    sampler = sampler or Sampler()
    stop = frozenset(stop_ids)
    t0 = time.perf_counter()
    if policy is None:
        policy = DraftPolicy(curve or cost.for_context(ctx, prompt, draft_max + 1), drafter.kinds)
    d_sampler = draft_sampler(sampler)
    t_calibrate = time.perf_counter() - t0

    t0 = time.perf_counter()
    ctx.prefill(prompt)
    token = pick(ctx, sampler)
    t1 = time.perf_counter()
    history = list(prompt) + [token]
    tokens = [token]
    if on_token:
        on_token(token)

    drafted = accepted = verify_steps = plain_steps = 0
    t_draft = 0.0
    n_ctx = ctx.n_ctx
    has_free_kind = any(k.cost_per_token == 0 for k in drafter.kinds.values())
    while (stop_reason := why_stop(ctx, token, tokens, stop, max_tokens)) is None:
        # room for [token] + drafts in the cache, and for drafts + 1 in the output
        cap = min(draft_max, n_ctx - ctx.n_past - 1, max_tokens - len(tokens) - 1)
        draft = empty_draft()
        if cap > 0:
            limits = policy.limits(cap)
            worth = any(limits.values())
            # nothing worth verifying: draft only for a free drafter's score, when none is being followed
            if worth or (has_free_kind and not policy.scoring):
                td = time.perf_counter()
                draft = drafter.propose(history, cap, d_sampler, limits)
                t_draft += time.perf_counter() - td
        k = policy.choose(draft, cap)
        if k == 0:
            new = [decode_one_token(ctx, token, sampler)]
            policy.plain_step(draft, new[0])
            plain_steps += 1
        else:
            chosen = draft.cut(k)
            new, path = (verify_greedy(ctx, token, chosen) if sampler.greedy
                         else verify_sampled(ctx, token, chosen, sampler))
            policy.verified(chosen, path)
            drafted += k
            accepted += len(path)
            verify_steps += 1
        for token in new:
            tokens.append(token)
            history.append(token)
            if on_token:
                on_token(token)
            if token in stop:
                break
    t2 = time.perf_counter()

    result = GenerationResult(tokens=tokens, n_prompt=len(prompt), prefill_s=t1 - t0, decode_s=t2 - t1,
                              n_decode_steps=len(tokens) - 1, stop_reason=stop_reason)
    result.extra = {
        "draft_source": drafter.name,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "verify_steps": verify_steps,
        "plain_steps": plain_steps,
        "tokens_per_verify": round((accepted + verify_steps) / verify_steps, 3) if verify_steps else 0.0,
        "draft_s": round(t_draft, 6),
        "calibrate_s": round(t_calibrate, 6),
    }
    log.info("speculative (%s): %d verifications (%.2f tokens each), %d plain steps, acceptance %.3f",
             drafter.name, verify_steps, result.extra["tokens_per_verify"], plain_steps,
             result.extra["acceptance_rate"])
    return result
