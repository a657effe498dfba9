"""The vanilla (full-depth) decode loop in small functions that return stats.

`prefill` runs the prompt, `decode_one_token` runs one step, `generate`
strings them together. Timing follows docs/design.md#speed: decode speed counts
the tokens produced by decode steps over the wall time of those steps; prompt
processing is timed separately.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from ..engine import Context, InvalidArgumentError
from .sampling import Sampler

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    tokens: list[int]                 # generated ids (stop token included if one was produced)
    n_prompt: int
    prefill_s: float
    decode_s: float
    n_decode_steps: int               # decode calls (each produced one of `tokens`)
    stop_reason: str                  # "eos", "length" or "context"
    text: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_generated(self) -> int:
        return len(self.tokens)

    @property
    def prefill_tok_s(self) -> float:
        return self.n_prompt / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.n_decode_steps / self.decode_s if self.decode_s > 0 else 0.0

    def stats(self) -> dict:
        return {
            "n_prompt": self.n_prompt,
            "n_generated": self.n_generated,
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "prefill_tok_s": round(self.prefill_tok_s, 2),
            "decode_tok_s": round(self.decode_tok_s, 2),
            "stop_reason": self.stop_reason,
            **self.extra,
        }


def pick(ctx: Context, sampler: Sampler) -> int:
    """The next token from the context's last logits."""
    return ctx.argmax() if sampler.greedy else sampler.sample(ctx.logits())


def check_request(ctx: Context, prompt: Sequence[int], max_tokens: int) -> None:
    """Refuses what no decode loop can serve: no tokens wanted, an empty
    prompt, or a prompt that leaves no room in the context."""
    if max_tokens < 1:
        raise InvalidArgumentError("max_tokens must be at least 1")
    if len(prompt) == 0:
        raise InvalidArgumentError("the prompt is empty")
    if ctx.n_past + len(prompt) >= ctx.n_ctx:
        raise InvalidArgumentError(
            f"the prompt ({len(prompt)} tokens) leaves no room in the context (n_ctx = {ctx.n_ctx})")


def decode_one_token(ctx: Context, token: int, sampler: Sampler) -> int:
    """Feeds `token` (full depth); returns the next one."""
    greedy_next = ctx.decode(token)
    return greedy_next if sampler.greedy else sampler.sample(ctx.logits())


def why_stop(ctx: Context, token: int, tokens: list, stop: frozenset, max_tokens: int) -> Optional[str]:
    """Why generation ends after `token` ("eos", "length", "context"), or None."""
    if token in stop:
        return "eos"
    if len(tokens) >= max_tokens:
        return "length"
    if ctx.n_past >= ctx.n_ctx:
        return "context"
    return None


def generate(
    ctx: Context,
    prompt: Sequence[int],
    max_tokens: int,
    sampler: Optional[Sampler] = None,
    stop_ids: Iterable[int] = (),
    on_token: Optional[Callable[[int], None]] = None,
) -> GenerationResult:
    """Generates up to `max_tokens` tokens after `prompt` (greedy by default).

    Stops early at a token in `stop_ids` (kept in the output) or when the
    context is full. `on_token` is called with each new id as it appears.
    """
    check_request(ctx, prompt, max_tokens)
    sampler = sampler or Sampler()
    stop = frozenset(stop_ids)

    t0 = time.perf_counter()
    ctx.prefill(prompt)
    token = pick(ctx, sampler)
    t1 = time.perf_counter()
    tokens = [token]
    if on_token:
        on_token(token)

    steps = 0
    while (stop_reason := why_stop(ctx, token, tokens, stop, max_tokens)) is None:
        token = decode_one_token(ctx, token, sampler)
        steps += 1
        tokens.append(token)
        if on_token:
            on_token(token)
    t2 = time.perf_counter()

    result = GenerationResult(tokens=tokens, n_prompt=len(prompt), prefill_s=t1 - t0, decode_s=t2 - t1,
                              n_decode_steps=steps, stop_reason=stop_reason)
    log.info("prefill %d tokens: %.1f tok/s; decode %d tokens: %.1f tok/s (%s)", result.n_prompt,
             result.prefill_tok_s, steps, result.decode_tok_s, stop_reason)
    return result
