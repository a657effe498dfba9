"""Lossless speculative decoding in the server: the drafter the server was
started with (`--draft`), opened per slot and request, and the stepper that
runs speculative.SpeculativeDecoder one round at a time.

Drafters that keep no model of their own (prompt lookup, the EAGLE draft
head of the served heads) are made fresh for each request; a draft model
(`model:NAME_OR_PATH`, or the one `auto` finds) is loaded once per slot at
start and follows each request's text in its own cache.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..engine import Context, Heads, Model
from ..decoding.sampling import Sampler
from ..decoding.speculative import DraftPolicy, Drafter, ModelDrafter, open_drafter
from ..decoding.speculative import cost
from ..decoding.speculative.choice import parse_draft, resolve_draft_model
from ..decoding.speculative.loop import SpeculativeDecoder


class ServedDrafting:
    """The server's drafter spec, its draft models (one per slot) and the
    batch cost curve (measured on the first speculative request, cached)."""

    def __init__(self, spec: str, draft_max: int, model: Model, contexts: Sequence[Context]):
        self.spec, self.draft_max, self.model = spec, draft_max, model
        parts = spec.split("+") if parse_draft(spec)[0] == "merge" else [spec]  # spec checked by ServerConfig
        kinds = {part: parse_draft(part)[0] for part in parts}
        model_part = next((part for part, kind in kinds.items() if kind in ("model", "auto")), None)
        self.draft_path = resolve_draft_model(model_part, model.path) if model_part else None
        if self.draft_path is None and kinds.get(model_part) == "model":
            raise ValueError(f"--draft {spec}: draft model not found")
        self.needs_heads = "eagle" in kinds.values()
        self.model_drafters: list[Optional[ModelDrafter]] = []
        try:
            for ctx in contexts:
                loaded = (ModelDrafter(self.draft_path, model, ctx.n_ctx, ctx.n_threads, target_ctx=ctx)
                          if self.draft_path is not None else None)
                self.model_drafters.append(loaded)
        except Exception:
            self.close()
            raise
        self._curve: Optional[cost.CostCurve] = None

    def curve(self, ctx: Context, prompt: Sequence[int]) -> cost.CostCurve:
        if self._curve is None:
            self._curve = cost.for_context(ctx, prompt, self.draft_max + 1)
        return self._curve

    def drafter(self, slot: int, ctx: Context, heads: Optional[Heads]) -> Drafter:
        """A drafter for one request on slot `slot`, whose (empty) context is
        `ctx`; `heads`: the served heads (the EAGLE drafter's). Closing it is
        not the request's job: its draft model and heads are the server's."""
        return open_drafter(self.spec, self.model, ctx.n_ctx, ctx.n_threads, ctx=ctx, heads=heads,
                            model_drafter=self.model_drafters[slot])

    def close(self) -> None:
        for d in self.model_drafters:
            if d is not None:
                d.close()
        self.model_drafters = []


class SpeculativeStepper:
    """Lossless speculative decoding for one request, in the decoders' shape
    (decoding/decoders.py): a speculative.loop.SpeculativeDecoder made at
    `first`, when the prompt is known, since the server's batch cost curve is
    measured on the first request's prompt."""

    mode = "speculative"
    batchable = False

    def __init__(self, ctx: Context, sampler: Sampler, drafting: ServedDrafting, drafter: Drafter):
        self.ctx, self.sampler, self.drafting, self.drafter = ctx, sampler, drafting, drafter
        self.decoder: Optional[SpeculativeDecoder] = None

    def first(self, prompt: Sequence[int]) -> int:
        policy = DraftPolicy(self.drafting.curve(self.ctx, prompt), self.drafter.kinds)
        self.decoder = SpeculativeDecoder(self.ctx, self.drafter, self.sampler, policy, self.drafting.draft_max)
        return self.decoder.first(prompt)

    def step(self, token: int, room: int) -> list[int]:
        return self.decoder.step(token, room)

    def stats(self) -> dict:
        return self.decoder.stats() if self.decoder is not None else {}
