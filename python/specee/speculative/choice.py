"""Drafter names as the command line gives them, checked before anything
loads, and the drafters they open.

    lookup                 prompt lookup
    model:NAME_OR_PATH     a draft model (a known model name or a GGUF path)
    auto                   prompt lookup, plus a draft model when one is at
                           hand: a known model already in the cache, smaller
                           than the target, with the target's vocabulary
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..engine import Model
from ..fetch import MODELS, fetch_model, is_cached, known_models, model_cache_path
from ..sampling import Sampler
from .draft_model import ModelDrafter, VocabularyMismatchError, check_same_vocabulary
from .drafters import Draft, Drafter, LookupDrafter

DRAFT_HELP = "lookup, model:NAME_OR_PATH (a smaller model with the same vocabulary) or auto"


def parse_draft(spec: str) -> tuple[str, Optional[str]]:
    """("lookup" | "auto", None) or ("model", NAME_OR_PATH); ValueError
    naming what is allowed otherwise."""
    kind, sep, target = spec.partition(":")
    if kind in ("lookup", "auto") and not sep:
        return kind, None
    if kind == "model" and target:
        if target not in known_models() and not Path(target).is_file():
            raise ValueError(f"draft model {target!r} is neither a known model ({', '.join(known_models())}) "
                             "nor an existing file")
        return kind, target
    raise ValueError(f"unknown drafter {spec!r}; use {DRAFT_HELP}")


def resolve_draft_model(spec: str, target_path: str | os.PathLike, progress: bool = False) -> Optional[Path]:
    """The draft model file a spec needs (fetched if named), its vocabulary
    checked against the target's; None for drafters without a model. For
    auto: a cached known model that fits, or None."""
    kind, name = parse_draft(spec)
    if kind == "model":
        path = fetch_model(name, progress=progress)
        check_same_vocabulary(target_path, path)
        return path
    if kind == "auto":
        return _cached_draft_model(target_path)
    return None


def _cached_draft_model(target_path: str | os.PathLike) -> Optional[Path]:
    """The largest cached known model smaller than the target that shares
    its vocabulary (bigger drafts are right more often)."""
    target_size = Path(target_path).stat().st_size
    fits = []
    for name in known_models():
        path = model_cache_path(name)
        size = MODELS[name].size or 0
        if not is_cached(name) or not 0 < size < target_size or path.resolve() == Path(target_path).resolve():
            continue
        try:
            check_same_vocabulary(target_path, path)
        except (VocabularyMismatchError, OSError, ValueError):
            continue
        fits.append((size, path))
    return max(fits)[1] if fits else None


class AutoDrafter:
    """Prompt lookup when it has a match whose kind is worth drafting (it is
    free), else the draft model if there is one, else lookup's best guess
    (verified only if the decode loop finds it worth it)."""

    def __init__(self, lookup: LookupDrafter, model: Optional[ModelDrafter]):
        self.lookup, self.model = lookup, model
        self.name = "auto: lookup" + (f" + model:{Path(model.path).name}" if model else "")
        self.kinds = {**lookup.kinds, **(model.kinds if model else {})}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> Draft:
        draft = self.lookup.propose(tokens, max_len, sampler, limits)
        if self.model is None or (len(draft) and (limits is None or limits.get(draft.kind, 0) > 0)):
            return draft
        if limits is not None and limits.get("model", 0) == 0:
            return draft
        from_model = self.model.propose(tokens, max_len, sampler, limits)
        return from_model if len(from_model) else draft

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


def open_drafter(spec: str, target: Model, n_ctx: int, n_threads: int = 0,
                 draft_path: Optional[str | os.PathLike] = None) -> Drafter:
    """The drafter `spec` names, for contexts of `target`. `draft_path`: the
    draft model resolve_draft_model found (looked up here if not given)."""
    kind, _ = parse_draft(spec)
    if kind == "lookup":
        return LookupDrafter()
    path = draft_path if draft_path is not None else resolve_draft_model(spec, target.path)
    model = ModelDrafter(path, target, n_ctx, n_threads) if path is not None else None
    return model if kind == "model" else AutoDrafter(LookupDrafter(), model)
