"""A smaller model with the target's vocabulary as the drafter.

It runs its own Context and proposes a chain of up to k tokens (greedy, or
drawn with the target's sampling settings). Its cache follows the text: at
each proposal it keeps the longest prefix it shares with the text so far
(truncate) and feeds the rest, so rejected drafts are forgotten and
accepted tokens are fed in one batch.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from ...engine import Context, Model
from ...gguf_meta import read_gguf_metadata
from ..sampling import Sampler
from .cost import step_ratio
from .drafters import DraftTree, Kind, empty_draft

KIND = "model"
PRIOR = 0.6  # assumed per-token acceptance of a same-family draft model until some is observed


class VocabularyMismatchError(ValueError):
    """The draft model's tokens are not the target's."""


def check_same_vocabulary(target_path: str | os.PathLike, draft_path: str | os.PathLike) -> None:
    """Refuses a draft model whose token list differs from the target's
    (reads only the files' metadata)."""
    key = "tokenizer.ggml.tokens"
    target = read_gguf_metadata(target_path, [key]).get(key)
    draft = read_gguf_metadata(draft_path, [key]).get(key)
    for path, tokens in ((target_path, target), (draft_path, draft)):
        if tokens is None:
            raise VocabularyMismatchError(f"{os.fspath(path)} has no token list ({key}); cannot compare vocabularies")
    if len(draft) != len(target):
        raise VocabularyMismatchError(
            f"draft model {os.fspath(draft_path)} has {len(draft)} tokens, the target {os.fspath(target_path)} "
            f"{len(target)}: a draft model needs the target's vocabulary")
    for i, (a, b) in enumerate(zip(target, draft)):
        if a != b:
            raise VocabularyMismatchError(
                f"draft model {os.fspath(draft_path)}: token {i} is {b!r}, the target's is {a!r}; "
                "a draft model needs the target's vocabulary")


class ModelDrafter:
    name = "model"

    def __init__(self, draft_path: str | os.PathLike, target: Model, n_ctx: int, n_threads: int = 0,
                 p_min: float = 0.1, target_ctx: Optional[Context] = None):
        """`p_min`: stop the chain at a token the draft gives less chance than
        this. `target_ctx`: the context the target decodes in; the draft
        computes on its thread pool (a second pool would spin on the cores
        while the other works)."""
        check_same_vocabulary(target.path, draft_path)
        self.model = Model(draft_path)
        try:
            if self.model.n_vocab != target.n_vocab:
                raise VocabularyMismatchError(
                    f"draft model {os.fspath(draft_path)} has {self.model.n_vocab} output rows, the target "
                    f"{target.n_vocab}: a draft model needs the target's vocabulary")
            self.ctx = self.model.context(n_ctx=n_ctx, n_threads=n_threads)
            if target_ctx is not None:
                self.ctx.share_threads(target_ctx)
        except Exception:
            self.model.close()
            raise
        self.p_min = p_min
        self.path = os.fspath(draft_path)
        if target_ctx is not None and target_ctx.n_past == 0:
            cost_per_token = step_ratio(self.ctx, target_ctx)  # measured once, cached
        else:  # CPU decoding reads every weight once per token: roughly the size ratio
            cost_per_token = self.model.size_bytes / target.size_bytes
        self.kinds = {KIND: Kind(cost_per_token, PRIOR)}
        self._cached: list[int] = []  # what the draft context holds, in order

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        max_len = min(max_len, (limits or {}).get(KIND, max_len), self.ctx.n_ctx - len(tokens) + 1)
        if max_len < 1:
            return empty_draft()
        self._feed(tokens)
        out, conf, qs = [], [], []
        sampling = sampler is not None and not sampler.greedy
        while True:
            row = self.ctx.logits()
            if sampling:
                q = sampler.probabilities(row)
                x = sampler.sample(row)
                chance = float(q[x])
            else:
                x = self.ctx.argmax()
                chance = 1.0 / float(np.exp(row.astype(np.float64) - row[x]).sum())  # softmax at x
            if out and chance < self.p_min:
                break
            out.append(x)
            conf.append(max(chance, 1e-6))
            if sampling:
                qs.append(q)
            if len(out) == max_len:
                break
            self.ctx.decode(x)
            self._cached.append(x)
        return DraftTree(out, conf, KIND, qs if sampling else None)

    def _feed(self, tokens: Sequence[int]) -> None:
        """Brings the cache to exactly `tokens` with the logits after the last."""
        keep = 0
        limit = min(len(self._cached), len(tokens) - 1)  # the last token is always fed: its logits are needed
        while keep < limit and self._cached[keep] == tokens[keep]:
            keep += 1
        self.ctx.truncate(keep)
        self.ctx.prefill(list(tokens[keep:]))
        self._cached = list(tokens)

    def close(self) -> None:
        self.model.close()
