"""The SpecEE decode loop: candidates in, early-exit steps out, stats back.

Each step feeds the last token with k candidates for the next one; the
library runs the layers in segments, asks the exit predictors at the checked
layers, and stops early when one fires and that layer's argmax is a
candidate (docs/design.md#exit-verification). Candidates come from the heads' EAGLE-style
draft head when they have one (it runs inside the library, after each step),
else from a `CandidateSource` such as prompt lookup, which proposes what
followed the same tokens earlier in the text.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Iterable, Optional, Protocol, Sequence

from ..engine import Context, InvalidArgumentError
from .plain import GenerationResult, check_request, pick, why_stop
from .speculative.ngram_index import NgramIndex
from ..ranges import COUNT, THRESHOLD
from .sampling import Sampler

log = logging.getLogger(__name__)


class CandidateSource(Protocol):
    def candidates(self, tokens: Sequence[int], k: int) -> list[int]:
        """k distinct guesses for the token after `tokens`."""


class PromptLookup:
    """Candidates from the text so far: the tokens that followed the longest
    recent match of the last n tokens (n = 3, 2, 1), then the most frequent
    tokens of the text. Costs microseconds; no model."""

    def __init__(self, max_ngram: int = 3, window: int = 1024):
        self.max_ngram = COUNT.check("max_ngram", max_ngram)
        self.window = COUNT.check("window", window)
        self._index = NgramIndex(self.max_ngram)

    def candidates(self, tokens: Sequence[int], k: int) -> list[int]:
        self._index.sync(tokens)
        text = self._index.tokens
        since = max(0, len(text) - self.window)
        seq = text[since:]
        out: list[int] = []
        for n in range(min(self.max_ngram, len(seq) - 1), 0, -1):
            followers = Counter(text[i + n] for i in self._index.earlier_matches(n, since))
            for tok, _ in followers.most_common():
                if tok not in out:
                    out.append(tok)
            if len(out) >= k:
                return out[:k]
        for tok, _ in Counter(seq).most_common():
            if len(out) >= k:
                break
            if tok not in out:
                out.append(tok)
        filler = 0
        while len(out) < k:  # a very short text: any distinct ids will do
            if filler not in out:
                out.append(filler)
            filler += 1
        return out


def exit_stats_summary(raw: dict, n_layer: int, exit_layers: Sequence[int]) -> dict:
    """The JSON-facing statistics of an early-exit run (docs/design.md#fidelity)."""
    steps = max(raw["n_steps"], 1)
    return {
        "mean_exit_layer": round(raw["sum_exit_layers"] / steps, 3),
        "exit_ratio": round(raw["n_exits"] / steps, 4),
        "exit_layers": list(exit_layers),
        "false_exit_checks": raw["n_false_fires"],
        "predictor_checks": raw["n_checks"],
        "predictor_fires": raw["n_fires"],
        "draft_top1": round(raw["n_draft_top1"] / steps, 4),
        "draft_topk": round(raw["n_draft_topk"] / steps, 4),
        "n_layer": n_layer,
    }


def attach_heads(ctx: Context, heads, threshold: Optional[float] = None, verify_full: Optional[bool] = None) -> None:
    """Attaches `heads` to `ctx` (their file's exit defaults come along) and
    overrides the threshold and the verification where given."""
    THRESHOLD.check_optional("threshold", threshold)
    ctx.set_heads(heads)
    changes = {k: v for k, v in (("threshold", threshold), ("verify_full", verify_full)) if v is not None}
    if changes:
        ctx.set_exit_params(**changes)


def generate_specee(
    ctx: Context,
    prompt: Sequence[int],
    max_tokens: int,
    k: int,
    source: Optional[CandidateSource] = None,
    sampler: Optional[Sampler] = None,
    stop_ids: Iterable[int] = (),
    on_token: Optional[Callable[[int], None]] = None,
) -> GenerationResult:
    """Like generate.generate, with early exit: the context must have heads
    attached (Context.set_heads). Sampling with temperature draws from the
    logits of the layer the step exited at."""
    heads = ctx.heads
    if heads is None:
        raise InvalidArgumentError("no heads are attached to the context (Context.set_heads)")
    use_draft = heads.has_draft and source is None
    COUNT.check("k (candidates per step)", k)
    check_request(ctx, prompt, max_tokens)
    sampler = sampler or Sampler()
    if not sampler.greedy and not ctx.exit_params()["verify_full"]:
        raise InvalidArgumentError("sampling needs each step's full-vocabulary logits: set verify_full=True")
    source = source or PromptLookup()
    stop = frozenset(stop_ids)
    ctx.reset_exit_stats()

    t0 = time.perf_counter()
    ctx.prefill(prompt)
    token = pick(ctx, sampler)
    t1 = time.perf_counter()
    history = list(prompt) + [token]
    tokens, exit_layers = [token], []
    t_draft = 0.0
    next_cands: list[int] = []
    if use_draft and token not in stop and max_tokens > 1:
        td = time.perf_counter()
        next_cands = ctx.draft_sync(token)
        t_draft += time.perf_counter() - td
    if on_token:
        on_token(token)
    steps = 0
    while (stop_reason := why_stop(ctx, token, tokens, stop, max_tokens)) is None:
        if use_draft:
            cands = next_cands
        else:
            td = time.perf_counter()
            cands = source.candidates(history, k)
            t_draft += time.perf_counter() - td
        step = ctx.decode_with_candidates(token, cands)
        next_cands = step.next
        # with sampling, the draft head has already stepped on the exit layer's
        # argmax; its next guesses then condition on that token (a known
        # approximation: candidates are only guesses, the output stays exact)
        token = step.token if sampler.greedy else sampler.sample(ctx.logits())
        steps += 1
        exit_layers.append(step.exit_layer)
        tokens.append(token)
        history.append(token)
        if on_token:
            on_token(token)
    t2 = time.perf_counter()

    result = GenerationResult(tokens=tokens, n_prompt=len(prompt), prefill_s=t1 - t0, decode_s=t2 - t1,
                              n_decode_steps=steps, stop_reason=stop_reason)
    result.extra = exit_stats_summary(ctx.exit_stats(), ctx.model.n_layer, exit_layers)
    result.extra["draft"] = "draft head" if use_draft else type(source).__name__
    result.extra["draft_s"] = round(t_draft, 6)  # outside the library; the draft head's time is in decode_s
    log.info("specee: %d steps, %.1f tok/s, mean exit layer %.2f of %d, exit ratio %.3f", steps,
             result.decode_tok_s, result.extra["mean_exit_layer"], ctx.model.n_layer, result.extra["exit_ratio"])
    return result
