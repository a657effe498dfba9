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
from .decoders import decode
from .steps import GenerationResult, decode_one_token, pick
from .exit_switch import shared as shared_switch, store_path as switch_store
from .speculative.verify import check_point_draft
from .speculative.ngram_index import NgramIndex
from ..ranges import CHAIN, COUNT, THRESHOLD
from .sampling import Sampler

log = logging.getLogger(__name__)

# exits one verification may take in exact mode: above 1, steps for an exit's
# draft may exit too (never above the last exit layer), and one pass checks
# every draft of the chain (docs/exact-specee.md, "What is built"). 1 by
# measurement: with the shipped heads a draft's own step exits on only a
# fifth of the tries, and the rest pay a split pass for nothing (every step
# trying: 0.957x plain with chains of 4 against 0.969x, Qwen2.5-Coder-1.5B)
DEFAULT_CHAIN = 1


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
        # over the steps that tried to exit; none tried: none left early
        "mean_exit_layer": round(raw["sum_exit_layers"] / steps, 3) if raw["n_steps"] else float(n_layer),
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


class EarlyExitDecoder:
    """SpecEE's early exit (docs/design.md#exit-verification): the context
    has heads attached; candidates come from their draft head when they have
    one and no `source` is given, else from `source` (prompt lookup by
    default).

    exact (the default): a token the predictors exit on is a draft; the next
    pass runs its remaining layers beside the token after it and checks it
    against full depth (docs/exact-specee.md), so the output is plain
    decoding's: greedy token for token, sampled in distribution (a draft is
    accepted with chance p(draft), speculative sampling for a point mass).
    Up to `chain` exits in a row share that pass: the step for a draft may
    exit too, never above the last exit layer.
    With `adaptive` (exact mode only, the default) an ExitSwitch measures
    steps that try to exit against plain steps on the text at hand and keeps
    to the cheaper kind (exit_switch.py; shared by the contexts of the same
    heads and thread count): the output is the same either way.
    lossy (exact=False): the paper's early exit, whose token is emitted as
    it is; with sampling it is drawn from the exit layer's logits."""

    mode = "specee"
    batchable = False

    def __init__(self, ctx: Context, sampler: Sampler, k: int, source: Optional[CandidateSource] = None,
                 exact: bool = True, adaptive: bool = True, chain: int = DEFAULT_CHAIN):
        if ctx.heads is None:
            raise InvalidArgumentError("no heads are attached to the context (Context.set_heads)")
        COUNT.check("k (candidates per step)", k)
        CHAIN.check("chain (exits per verification)", chain)
        self.ctx, self.sampler, self.k, self.exact = ctx, sampler, k, exact
        ctx.set_exit_params(exact=exact, max_chain=chain if exact else 1)
        self.chain = chain if exact else 1
        self.use_draft = ctx.heads.has_draft and source is None
        self.source = source or PromptLookup()
        self.history: list[int] = []
        self.exit_layers: list[int] = []
        self.next_cands: Optional[list[int]] = None
        self.t_draft = 0.0  # candidates from `source` (the draft head's time is in the steps')
        self.n_verified = self.n_accepted = 0  # exact mode: exit drafts checked, and right
        self.n_passes = self.n_drafts = 0  # exact mode: verification passes, and the drafts they took
        # (a chain's share one pass; drafts after a wrong one are not checked)
        self.t_verify = 0.0  # exact mode: in the verification passes
        self.switch = None
        if exact and adaptive:
            self.switch = shared_switch(ctx.heads, ctx.n_threads, lambda: switch_store(
                ctx.model.fingerprint, ctx.heads.path, ctx.exit_params(), ctx.model.kernels, ctx.n_threads))
        self.n_plain = 0  # plain steps (the switch's, or at the end of the context)

    def first(self, prompt: Sequence[int]) -> int:
        self.ctx.reset_exit_stats()
        self.ctx.prefill(prompt)
        token = pick(self.ctx, self.sampler)
        self.history = list(prompt) + [token]
        if self.use_draft:
            # the draft head reads the prompt here, as prompt work (its cost is
            # in the prefill time, as a draft model's prompt is in llama.cpp's)
            self.next_cands = self.ctx.draft_sync(token)
        return token

    def step(self, token: int, room: int) -> list[int]:
        ctx = self.ctx
        if self.exact and ctx.n_past + 2 > ctx.n_ctx:
            # no cell left for an exit's draft beside it: a plain step
            return self._plain_step(token)
        if self.switch is None:
            return self._exit_step(token, room)
        use_exits = self.switch.use_exits()
        t0 = time.perf_counter()
        tokens = self._exit_step(token, room) if use_exits else self._plain_step(token)
        self.switch.record(use_exits, time.perf_counter() - t0, len(tokens))
        return tokens

    def _plain_step(self, token: int) -> list[int]:
        """Full depth, no predictors; a draft head catches up at the next exit step."""
        self.next_cands = None
        self.n_plain += 1
        return self._emit([decode_one_token(self.ctx, token, self.sampler)])

    def _exit_step(self, token: int, room: int) -> list[int]:
        ctx = self.ctx
        step = ctx.decode_with_candidates(token, self._candidates(token, self.history))
        self.next_cands = step.next
        self.exit_layers.append(step.exit_layer)
        if self.exact and step.exit_layer < ctx.model.n_layer:
            return self._emit(self._chain_and_verify(step, room))
        # with sampling, the draft head has already stepped on the exit layer's
        # argmax; its next guesses then condition on that token (a known
        # approximation: candidates are only guesses, the output stays exact)
        return self._emit([step.token if self.sampler.greedy else self.sampler.sample(ctx.logits())])

    def _candidates(self, token: int, text: Sequence[int]) -> list[int]:
        """The k guesses for the token after `token` (the last of `text`)."""
        if self.use_draft:
            # the draft head catches up after a verification or plain steps here
            return self.next_cands if self.next_cands is not None else self.ctx.draft_sync(token)
        t0 = time.perf_counter()
        cands = self.source.candidates(text, self.k)
        self.t_draft += time.perf_counter() - t0
        return cands

    def _chain_and_verify(self, step, room: int) -> list[int]:
        """After an exit: while the chain may grow (its length, the tokens
        wanted, the context's cells), a step for the draft may exit too, at
        or below the last exit layer; one pass then verifies every draft.
        Returns the verified tokens."""
        ctx, drafts = self.ctx, [step.token]
        while (len(drafts) < self.chain and len(drafts) + 1 < room and ctx.n_past + 2 <= ctx.n_ctx):
            step = ctx.decode_with_candidates(drafts[-1], self._candidates(drafts[-1], self.history + drafts))
            self.next_cands = step.next
            self.exit_layers.append(step.exit_layer)
            if step.token < 0:
                break  # no exit up to the chain's last exit layer: the chain ends with this token
            drafts.append(step.token)
        return self._verify(drafts, with_last=step.token >= 0, room=room)

    def _verify(self, drafts: list[int], with_last: bool, room: int) -> list[int]:
        """The exits' tokens are drafts: one pass completes the pending
        tokens, beside the last draft unless its own step stopped without an
        exit (`with_last` False: it is pending itself), and checks the drafts
        in order; returns the verified tokens: the drafts up to the first
        wrong one, then full depth's token there or the token after the last
        draft."""
        ctx, sampler = self.ctx, self.sampler
        t0 = time.perf_counter()
        ctx.verify_exit(drafts[-1] if with_last else -1)
        self.t_verify += time.perf_counter() - t0
        self.next_cands = None  # the draft head syncs on the verified tokens' full-depth features
        self.n_passes += 1
        self.n_drafts += len(drafts)
        base = ctx.n_past - len(drafts) - 1  # the first pending token's position; row i checks drafts[i]
        for i, draft in enumerate(drafts):
            self.n_verified += 1
            if sampler.greedy:
                first = ctx.argmax(i)
                accepted = first == draft
            else:
                accepted, first = check_point_draft(sampler, ctx.logits(i), draft)
            if not accepted:
                ctx.truncate(base + i + 1)  # the wrong draft's position and those after it go
                return drafts[:i] + [first]
            self.n_accepted += 1
        last = len(drafts)  # the last row follows the last draft
        after = ctx.argmax(last) if sampler.greedy else sampler.sample(ctx.logits(last))
        return (drafts + [after])[:room]  # a token past the ones wanted is not emitted

    def _emit(self, tokens: list[int]) -> list[int]:
        self.history.extend(tokens)
        return tokens

    def stats(self) -> dict:
        out = exit_stats_summary(self.ctx.exit_stats(), self.ctx.model.n_layer, self.exit_layers)
        out["draft"] = "draft head" if self.use_draft else type(self.source).__name__
        out["draft_s"] = round(self.t_draft, 6)  # outside the library; the draft head's time is in decode_s
        out["exact"] = self.exact
        if self.exact:
            out["exit_drafts_verified"] = self.n_verified
            out["exit_drafts_accepted"] = self.n_accepted
            out["verification_passes"] = self.n_passes
            out["exit_drafts"] = self.n_drafts
            out["max_chain"] = self.chain
            out["verify_s"] = round(self.t_verify, 6)
            out["plain_steps"] = self.n_plain
        return out


def generate_specee(
    ctx: Context,
    prompt: Sequence[int],
    max_tokens: int,
    k: int,
    source: Optional[CandidateSource] = None,
    sampler: Optional[Sampler] = None,
    stop_ids: Iterable[int] = (),
    on_token: Optional[Callable[[int], None]] = None,
    exact: bool = True,
    adaptive: bool = True,
    chain: int = DEFAULT_CHAIN,
) -> GenerationResult:
    """Like plain.generate, with early exit: the context must have heads
    attached (Context.set_heads). exact (default): plain decoding's output;
    exact=False is the paper's lossy exit, whose sampling needs each step's
    full-vocabulary logits (verify_full). chain: exits one exact
    verification may take (EarlyExitDecoder)."""
    sampler = sampler or Sampler()
    if not exact and not sampler.greedy and not ctx.exit_params()["verify_full"]:
        raise InvalidArgumentError("lossy early exit samples from each step's full-vocabulary logits: "
                                   "set verify_full=True")
    decoder = EarlyExitDecoder(ctx, sampler, k, source, exact=exact, adaptive=adaptive, chain=chain)
    result = decode(decoder, ctx, prompt, max_tokens, stop_ids, on_token)
    log.info("specee: %d steps, %.1f tok/s, mean exit layer %.2f of %d, exit ratio %.3f", result.n_decode_steps,
             result.decode_tok_s, result.extra["mean_exit_layer"], ctx.model.n_layer, result.extra["exit_ratio"])
    return result
