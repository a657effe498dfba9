"""The speculative decode loop: draft, verify in one pass, keep what the
target stands behind; or a plain step when drafting would not pay.

Output: greedy, exactly plain greedy decoding's tokens; sampling, tokens
distributed exactly as plain sampling's (verify.py). Stop rules and
`on_token` streaming are decoders.decode's, as for every mode: a stop token ends the output
even when more accepted tokens came after it in the same verification, and
drafts never run past max_tokens or the context (a verification that would
not fit is shortened, so a full context ends with the tokens accepted so
far and stop_reason "context").
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional, Sequence

from ...engine import Context
from ..decoders import decode
from ..steps import GenerationResult, decode_one_token, pick
from ..sampling import Sampler
from . import cost
from .cost import CostCurve
from .draft_tree import DraftTree, empty_draft
from .drafters import Drafter
from .layer_skip import DepthRouter
from .policy import DRAFT_MAX, DraftPolicy
from .verify import verify_greedy, verify_sampled

log = logging.getLogger(__name__)

DEFAULT_DRAFT_MAX = 8


def draft_sampler(sampler: Sampler) -> Optional[Sampler]:
    """The drafter's own sampler: the target's settings, a separate stream
    (so drafting never shifts the target's draws). None when greedy."""
    if sampler.greedy:
        return None
    drafts = Sampler(sampler.temperature, sampler.top_k, sampler.top_p, min_p=sampler.min_p)
    drafts.rng = sampler.rng.spawn(1)[0]  # a child stream: reproducible from the target's seed
    return drafts


def plan_draft(drafter: Drafter, policy: DraftPolicy, history: Sequence[int], cap: int,
               sampler: Optional[Sampler], free_kind: bool) -> tuple[DraftTree, int, float]:
    """One step's decision: the draft (possibly empty) and how many of its
    tokens to verify (0: a plain step), at most `cap`; and the seconds spent
    drafting. `free_kind`: whether the drafter has a kind that costs nothing
    (then it drafts even when nothing is worth verifying, to keep score, as
    long as the policy is not already following enough such drafts)."""
    draft, t_draft = empty_draft(), 0.0
    if cap > 0:
        limits = policy.limits(cap)
        if any(limits.values()) or (free_kind and not policy.scoring):
            t0 = time.perf_counter()
            draft = drafter.propose(history, cap, sampler, limits)
            t_draft = time.perf_counter() - t0
    return draft, policy.choose(draft, cap), t_draft


class SpeculativeDecoder:
    """One generation's speculative decoding, round by round: `first`
    prefills the prompt, each `step` drafts and verifies (or takes a plain
    step when drafting would not pay) and returns the new tokens. It keeps
    the text so far for the drafter, the policy's running acceptance and the
    counters; stop rules are the caller's (decoders.decode, the server)."""

    mode = "speculative"
    batchable = False

    def __init__(self, ctx: Context, drafter: Drafter, sampler: Sampler, policy: Optional[DraftPolicy] = None,
                 draft_max: int = DEFAULT_DRAFT_MAX, curve: Optional[Callable[[Sequence[int]], CostCurve]] = None,
                 router: Optional[DepthRouter] = None):
        """`policy`: decides the draft lengths; None: a DraftPolicy on the batch
        cost curve, which `prepare` gets from `curve(prompt)` (default: cached
        per model, thread count and kernels, measured on first use).
        `router`: lossy layer skipping inside each verification (SpaDec,
        layer_skip.py); None: every row runs every layer (exact)."""
        DRAFT_MAX.check("draft_max", draft_max)
        self.ctx, self.drafter, self.sampler, self.policy, self.draft_max = ctx, drafter, sampler, policy, draft_max
        self.router = router
        self.rows = self.row_layers = 0  # verification rows and the layers they ran (with a router)
        self.curve = curve or (lambda prompt: cost.for_context(ctx, prompt, draft_max + 1))
        self.d_sampler = draft_sampler(sampler)
        self.history: list[int] = []
        self.drafted = self.accepted = self.verify_steps = self.plain_steps = 0
        self.t_draft = self.t_calibrate = 0.0
        self._has_free_kind = any(k.cost_per_token == 0 for k in drafter.kinds.values())
        # exact early exit for the steps that verify no drafted text (exit_steps.py)
        self.exits = drafter.open_exits(sampler) if hasattr(drafter, "open_exits") else None
        self.exit_steps = 0

    def prepare(self, prompt: Sequence[int]) -> None:
        """The draft policy, before the prompt runs (decoders.decode keeps
        this out of the prompt's time): the cost curve may be measured now."""
        if self.policy is None:
            t0 = time.perf_counter()
            self.policy = DraftPolicy(self.curve(prompt), self.drafter.kinds)
            self.t_calibrate = time.perf_counter() - t0

    def first(self, prompt: Sequence[int]) -> int:
        """Prefills `prompt`; returns the first new token."""
        self.prepare(prompt)
        if self.exits is not None:
            token = self.exits.first(prompt)  # its draft head reads the prompt too
            self.history = self.exits.history  # one text for both: extended once per step
            return token
        self.ctx.prefill(prompt)
        token = pick(self.ctx, self.sampler)
        self.history = list(prompt) + [token]
        return token

    def step(self, token: int, room: int) -> list[int]:
        """Feeds `token` (the last one returned); returns the next 1 to
        draft_max + 1 tokens, at most `room` (>= 1) of them."""
        ctx, policy = self.ctx, self.policy
        # room for [token] + drafts in the cache, and for drafts + 1 in the output
        cap = min(self.draft_max, ctx.n_ctx - ctx.n_past - 1, room - 1)
        draft, k, t_draft = plan_draft(self.drafter, policy, self.history, cap, self.d_sampler, self._has_free_kind)
        self.t_draft += t_draft
        if k == 0 and self.exits is not None:
            new = self.exits.step(token, room)  # an exit step or a plain one, as its switch says; extends history
            policy.plain_step(draft, new[0])
            self.exit_steps += 1
            return new
        if k == 0:
            new = [decode_one_token(ctx, token, self.sampler)]
            policy.plain_step(draft, new[0])
            self.plain_steps += 1
        else:
            chosen = draft.cut(k)
            depths = self.router.row_depths(chosen) if self.router is not None else None
            if depths is not None:
                self.rows += len(depths)
                self.row_layers += sum(depths)
            new, path = (verify_greedy(ctx, token, chosen, depths) if self.sampler.greedy
                         else verify_sampled(ctx, token, chosen, self.sampler, depths))
            policy.verified(chosen, path, new)
            if self.exits is not None:
                self.exits.next_cands = None  # the exits' draft head syncs on the verified tokens first
            self.drafted += k
            self.accepted += len(path)
            self.verify_steps += 1
        self.history.extend(new)
        return new

    def stats(self) -> dict:
        """What generate_speculative's result reports (besides the timings)."""
        return {
            "draft_source": self.drafter.name,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else 0.0,
            "verify_steps": self.verify_steps,
            "plain_steps": self.plain_steps,
            "tokens_per_verify": (round((self.accepted + self.verify_steps) / self.verify_steps, 3)
                                  if self.verify_steps else 0.0),
            "draft_s": round(self.t_draft, 6),
            "calibrate_s": round(self.t_calibrate, 6),
            **(self._exit_stats() if self.exits is not None else {}),
            **(self._skip_stats() if self.router is not None else {}),
        }

    def _skip_stats(self) -> dict:
        """Lossy layer skipping: the output may differ from the model's."""
        n_layer = self.router.n_layer
        return {"exact": False, "layer_skip_rows": self.rows,
                "layer_skip_depth": round(self.row_layers / self.rows, 3) if self.rows else float(n_layer),
                "n_layer": n_layer}

    def _exit_stats(self) -> dict:
        x = self.exits
        return {"exit_steps": self.exit_steps, "exit_drafts_verified": x.n_verified,
                "exit_drafts_accepted": x.n_accepted, "exit_plain_steps": x.n_plain}


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
    decoder = SpeculativeDecoder(ctx, drafter, sampler or Sampler(), policy, draft_max,
                                 curve=(lambda prompt: curve) if curve is not None else None)
    result = decode(decoder, ctx, prompt, max_tokens, stop_ids, on_token)
    x = result.extra
    log.info("speculative (%s): %d verifications (%.2f tokens each), %d plain steps, acceptance %.3f",
             drafter.name, x["verify_steps"], x["tokens_per_verify"], x["plain_steps"], x["acceptance_rate"])
    return result
