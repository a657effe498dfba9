"""Lossless speculative decoding in the server: the drafter the server was
started with (`--drafter`), opened per slot and request (the decoder is
modes.open_decoder's, as everywhere).

Drafters that keep no model of their own (prompt lookup, the EAGLE draft
head of the served heads) are made fresh for each request; a draft model
(`model:NAME_OR_PATH`, or the one `auto` finds) is loaded once per slot at
start and follows each request's text in its own cache.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..engine import Context, Heads, Model
from ..decoding.speculative import Drafter, ModelDrafter, open_drafter
from ..decoding.speculative import cost
from ..decoding.speculative.choice import parse_draft, resolve_draft_model


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
            raise ValueError(f"--drafter {spec}: draft model not found")
        self.needs_heads = "eagle" in kinds.values()  # with a draft head
        self.needs_exits = "exit" in kinds.values()   # any heads
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
