"""Every decode mode in one shape, and the one loop that runs them.

A decoder owns one generation on one context: `first(prompt)` prefills and
returns the first new token, `step(token, room)` feeds the last token and
returns the next ones (one for plain and early-exit decoding, up to a
verification's worth for speculative decoding, never more than `room`),
`stats()` says what the mode did. The decoders: PlainDecoder here,
early_exit.EarlyExitDecoder, speculative.loop.SpeculativeDecoder. Stop
rules are not the decoder's:
`decode()` applies them for the CLI and the Python API, the server's Job
for its requests (ref: gpt-fast's prefill / decode_one_token split).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Protocol, Sequence

from ..engine import Context
from .sampling import Sampler
from .steps import GenerationResult, check_request, decode_one_token, pick, why_stop


class Decoder(Protocol):
    mode: str
    batchable: bool  # steps may run inside a batched call over several contexts (then pick_next)

    def first(self, prompt: Sequence[int]) -> int:
        """Prefills `prompt`; returns the first new token."""

    def step(self, token: int, room: int) -> list[int]:
        """Feeds `token`; returns the tokens after it (at least one, at most `room`)."""

    def stats(self) -> dict:
        """What the mode did (early-exit statistics, drafts and acceptance)."""

    # optional: prepare(prompt), one-time work before the prompt runs and is timed


class PlainDecoder:
    """Full depth, one token a step: the output every other mode reproduces."""

    mode = "vanilla"
    batchable = True

    def __init__(self, ctx: Context, sampler: Sampler):
        self.ctx, self.sampler = ctx, sampler

    def first(self, prompt: Sequence[int]) -> int:
        self.ctx.prefill(prompt)
        return pick(self.ctx, self.sampler)

    def step(self, token: int, room: int) -> list[int]:
        return [decode_one_token(self.ctx, token, self.sampler)]

    def pick_next(self) -> int:
        """The next token after a batched call fed this context's last one."""
        return pick(self.ctx, self.sampler)

    def stats(self) -> dict:
        return {}


def decode(decoder: Decoder, ctx: Context, prompt: Sequence[int], max_tokens: int, stop_ids: Iterable[int] = (),
           on_token: Optional[Callable[[int], None]] = None) -> GenerationResult:
    """Runs `decoder` on `prompt` until a token in `stop_ids` (kept in the
    output), `max_tokens` tokens, or a full context; `on_token` sees each new
    id as it appears. Decode time counts the steps after the first token;
    result.extra is the decoder's stats()."""
    check_request(ctx, prompt, max_tokens)
    stop = frozenset(stop_ids)
    prepare = getattr(decoder, "prepare", None)  # one-time work that is not the prompt's (a cost calibration)
    if prepare is not None:
        prepare(prompt)
    t0 = time.perf_counter()
    token = decoder.first(prompt)
    t1 = time.perf_counter()
    tokens = [token]
    if on_token:
        on_token(token)
    while (stop_reason := why_stop(ctx, token, tokens, stop, max_tokens)) is None:
        for token in decoder.step(token, max_tokens - len(tokens)):
            tokens.append(token)
            if on_token:
                on_token(token)
            if token in stop:
                break
    t2 = time.perf_counter()
    return GenerationResult(tokens=tokens, n_prompt=len(prompt), prefill_s=t1 - t0, decode_s=t2 - t1,
                            n_decode_steps=len(tokens) - 1, stop_reason=stop_reason, extra=decoder.stats())
