"""The small pieces every decode loop shares: the result of a generation,
picking a token from the last logits, refusing requests no loop can serve,
one full-depth step, and the stop rules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..engine import Context, InvalidArgumentError
from .sampling import Sampler


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
