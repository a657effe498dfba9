"""The vanilla (full-depth) decode loop: `generate` runs a PlainDecoder
(decoders.py) through the one loop every mode shares. Timing follows
docs/design.md#speed: decode speed counts the tokens produced by decode
steps over the wall time of those steps; prompt processing is timed
separately.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Sequence

from ..engine import Context
from .decoders import PlainDecoder, decode
from .sampling import Sampler
from .steps import GenerationResult

log = logging.getLogger(__name__)


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
    result = decode(PlainDecoder(ctx, sampler or Sampler()), ctx, prompt, max_tokens, stop_ids, on_token)
    log.info("prefill %d tokens: %.1f tok/s; decode %d tokens: %.1f tok/s (%s)", result.n_prompt,
             result.prefill_tok_s, result.n_decode_steps, result.decode_tok_s, result.stop_reason)
    return result
