"""One request's decoding, a step at a time, on whichever slot's context
the scheduler lends it.

The decoders are the ones the CLI and the Python API run
(decoding/decoders.py: `first`, then `step` after `step`); a server must
interleave requests, so the Job applies the stop rules itself, step by step,
instead of decoders.decode's loop. Everything runs on the scheduler's
compute thread; results leave through `Job.emit`, which the web side makes
thread-safe.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..decoding.decoders import Decoder
from ..decoding.early_exit import EarlyExitDecoder
from ..decoding.modes import open_decoder
from ..engine import Context, Heads
from ..decoding.sampling import Sampler
from ..decoding.steps import why_stop
from ..tokenizer.gguf_tokenizer import Tokenizer
from .schemas import DecodeOptions
from .speculative import ServedDrafting
from .stop_text import StopText

_FINISH = {"eos": "stop", "length": "length", "context": "length"}  # generate.why_stop -> OpenAI finish_reason
_ids = itertools.count(1)


@dataclass
class ServedHeads:
    """Heads the server decodes with, and the exit parameters their file
    sets, so that one request's overrides never leak into the next."""
    heads: Heads
    defaults: dict

    @classmethod
    def attach_once(cls, heads: Heads, ctx: Context) -> "ServedHeads":
        """Reads the file's exit parameters by attaching `heads` to the empty `ctx`."""
        ctx.truncate(0)
        ctx.set_heads(heads)
        defaults = ctx.exit_params()
        ctx.set_heads(None)
        return cls(heads, {"threshold": defaults["threshold"], "verify_full": defaults["verify_full"]})


def prepare(ctx: Context, served: Optional[ServedHeads], options: DecodeOptions,
            drafting: Optional[ServedDrafting] = None, slot: int = 0) -> Decoder:
    """Empties the slot's context and sets it up for `options`' mode; returns
    the decoder that decodes with it."""
    sampler = Sampler(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                      min_p=options.min_p, seed=options.seed)
    ctx.truncate(0)
    heads = served.heads if served is not None else None
    if options.mode != "specee" and ctx.heads is not None:
        ctx.set_heads(None)  # the eagle drafter attaches them again
    if options.mode == "specee":
        if served is None:
            raise ValueError("early exit was asked for but the server has no heads")  # schemas/app refuse it first
        if ctx.heads is served.heads:
            ctx.set_exit_params(**served.defaults)  # a previous request's overrides go
    drafter = None
    if options.mode == "speculative":
        if drafting is None:
            raise ValueError("speculative decoding was asked for but the server has no drafter")
        drafter = drafting.drafter(slot, ctx, heads)
    return open_decoder(ctx, options.mode, sampler, heads=heads, threshold=options.threshold, verify=options.verify,
                        drafter=drafter, draft_max=drafting.draft_max if drafting is not None else None,
                        curve=(lambda prompt: drafting.curve(ctx, prompt)) if drafting is not None else None,
                        lossy=options.lossy)


def response_stats(decoder: Decoder) -> dict:
    """A decoder's stats as a response reports them: early exit without the
    per-token exit layers (too long) and with the library's raw counters."""
    out = decoder.stats()
    if isinstance(decoder, EarlyExitDecoder):
        raw = decoder.ctx.exit_stats()
        del out["exit_layers"]
        out.update({k: raw[k] for k in ("n_steps", "n_exits", "sum_exit_layers")})
        for k in ("draft", "draft_s"):  # what the server's responses never carried
            out.pop(k, None)
    return out


class Job:
    """A request: its prompt and options, the tokens so far, and where its
    text goes. `emit` receives ("text", str), then ("done", summary) or
    ("error", message)."""

    def __init__(self, prompt: Sequence[int], options: DecodeOptions, tokenizer: Tokenizer,
                 emit: Callable[[tuple], None]):
        self.id = next(_ids)
        self.prompt = list(prompt)
        self.options = options
        self.tokenizer = tokenizer
        self.emit = emit
        self.cancelled = threading.Event()
        self.tokens: list[int] = []
        self.n_steps = 0
        self.finish_reason: Optional[str] = None
        self.summary: dict = {}
        self._decoder: Optional[Decoder] = None
        self._text = tokenizer.stream_decoder(skip_special=True)
        self._stop = StopText(options.stop)
        self._t_start = self._t_first = 0.0

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def begin(self, ctx: Context, heads: Optional[ServedHeads], drafting: Optional[ServedDrafting] = None,
              slot: int = 0) -> None:
        """Sets up slot `slot` (its context `ctx`), runs the prompt and takes the first token."""
        self._t_start = time.perf_counter()
        self._decoder = prepare(ctx, heads, self.options, drafting, slot)
        token = self._decoder.first(self.prompt)
        self._t_first = time.perf_counter()
        self._accept(ctx, token)

    def step(self, ctx: Context) -> None:
        """One decode step (only while not done): one token, or with
        speculative decoding every token its verification accepted."""
        new = self._decoder.step(self.tokens[-1], self.options.max_tokens - len(self.tokens))
        for token in new:
            self.n_steps += 1
            self._accept(ctx, token)
            if self.done:
                break

    @property
    def batchable(self) -> bool:
        """Whether the next step may run inside a batched call."""
        return self._decoder is not None and self._decoder.batchable

    def step_batched(self, ctx: Context) -> None:
        """Finishes a step whose decoding a batched call already did (it fed
        `tokens[-1]`): picks the next token from the slot's logits."""
        token = self._decoder.pick_next()
        self.n_steps += 1
        self._accept(ctx, token)

    def _accept(self, ctx: Context, token: int) -> None:
        self.tokens.append(token)
        if token not in self.tokenizer.eot_ids:
            text = self._stop.feed(self._text.feed(token))
            if text:
                self.emit(("text", text))
        reason = "stop" if self._stop.stopped else None
        if reason is None:
            why = why_stop(ctx, token, self.tokens, self.tokenizer.eot_ids, self.options.max_tokens)
            reason = _FINISH[why] if why else None
        if reason is not None:
            self._finish(ctx, reason)

    def _finish(self, ctx: Context, reason: str) -> None:
        rest = self._stop.feed(self._text.flush()) + self._stop.flush()
        if rest:
            self.emit(("text", rest))
        t_end = time.perf_counter()
        prefill_s, decode_s = self._t_first - self._t_start, t_end - self._t_first
        self.finish_reason = reason
        self.summary = {
            "finish_reason": reason,
            "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.tokens),
                      "total_tokens": len(self.prompt) + len(self.tokens)},
            # llama.cpp's names; decode speed counts decode steps over their wall time,
            # which includes the other slots' steps run in between
            "timings": {"prompt_n": len(self.prompt), "prompt_ms": round(prefill_s * 1e3, 3),
                        "prompt_per_second": round(len(self.prompt) / prefill_s, 2) if prefill_s > 0 else 0.0,
                        "predicted_n": len(self.tokens), "predicted_ms": round(decode_s * 1e3, 3),
                        "predicted_per_second": round(self.n_steps / decode_s, 2) if decode_s > 0 else 0.0},
            "specee": {"mode": self.options.mode, **response_stats(self._decoder)},
        }
        self.emit(("done", self.summary))

    def fail(self, message: str) -> None:
        """Ends the job with an error the client sees (no traceback)."""
        self.finish_reason = "error"
        self.emit(("error", message))
