"""Drafter names as the command line gives them, checked before anything
loads, and the drafters they open.

    lookup                 prompt lookup
    lookup:N               prompt lookup with up to N branches (a token tree)
    model:NAME_OR_PATH     a draft model (a known model name or a GGUF path)
    eagle, eagle:N         the EAGLE draft head of the heads that ship for the
                           model, as a dynamic tree (EAGLE-2): per level, the
                           N likeliest nodes each get their N best children (N = 3)
    eagle:chain[:N]        the same head as a chain of its best guesses, with
                           N - 1 runners-up per step (EAGLE)
    exit                   exact early exit (exact SpecEE) with the heads that
                           ship for the model: where no drafted text is
                           verified, a step may exit early and its token is
                           checked by the next pass (exit_steps.py)
    A+B                    several of the above, their drafts merged into one
                           token tree and verified in one pass (SpecInfer);
                           with +exit, exit steps where no draft is verified
    auto                   prompt lookup, plus a draft model when one is at
                           hand (a known model already in the cache, smaller
                           than the target, with the target's vocabulary),
                           plus exit steps where heads ship for the model
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ...engine import Context, Heads, Model
from ...heads.shipped import NoHeadsError, heads_or_shipped
from ...fetch import MODELS, fetch_model, is_cached, known_models, model_cache_path
from ..sampling import Sampler
from .draft_model import ModelDrafter, VocabularyMismatchError, check_same_vocabulary
from .drafters import DraftTree, Drafter, Kind, LookupDrafter, empty_draft
from .eagle import EagleDrafter
from .exit_steps import NoDrafts, WithExits
from .tree import merge_drafts

DRAFT_HELP = ("lookup, lookup:BRANCHES, model:NAME_OR_PATH (a smaller model with the same vocabulary), "
              "eagle[:BRANCHES] (the shipped draft head, a dynamic tree: EAGLE-2), eagle:chain[:BRANCHES] (the "
              "same head, a chain with runners-up: EAGLE), exit (exact early exits of the shipped heads, checked "
              "by the next pass), several joined by + (one merged token tree; +exit: exit steps where no draft "
              "is verified), or auto (lookup, a cached draft model, exits where heads ship)")
MAX_LOOKUP_BRANCHES = 8


def parse_draft(spec: str) -> tuple[str, Optional[str]]:
    """("lookup" | "auto" | "eagle", None), ("lookup", BRANCHES), ("eagle",
    BRANCHES | "chain" | "chain:BRANCHES"), ("model", NAME_OR_PATH) or
    ("merge", SPEC) (its parts checked the same way); ValueError naming what
    is allowed otherwise."""
    if "+" in spec:
        parts = spec.split("+")
        if len(parts) < 2 or any(parse_draft(p)[0] not in ("lookup", "model", "eagle", "exit") for p in parts):
            raise ValueError(f"unknown drafter {spec!r}: the parts of A+B must each be lookup[:N], eagle[:N], "
                             "eagle:chain[:N], model:X or exit")
        kinds = [parse_draft(p)[0] for p in parts]
        if kinds.count("model") > 1 or kinds.count("exit") > 1:
            raise ValueError(f"drafter {spec!r}: at most one draft model and one exit")
        if "exit" in kinds and "eagle" in kinds:
            raise ValueError(f"drafter {spec!r}: exit and eagle both drive the heads' draft head; choose one")
        return "merge", spec
    kind, sep, target = spec.partition(":")
    if kind in ("lookup", "auto", "eagle", "exit") and not sep:
        return kind, None
    if kind in ("lookup", "eagle") and _is_branches(target):
        return kind, target
    if kind == "eagle" and target.partition(":")[0] == "chain":
        rest = target.partition(":")[2]
        if target == "chain" or _is_branches(rest):
            return kind, target
    if kind == "model" and target:
        if target not in known_models() and not Path(target).is_file():
            raise ValueError(f"draft model {target!r} is neither a known model ({', '.join(known_models())}) "
                             "nor an existing file")
        return kind, target
    raise ValueError(f"unknown drafter {spec!r}; use {DRAFT_HELP}")


def _is_branches(text: str) -> bool:
    return text.isdigit() and 1 <= int(text) <= MAX_LOOKUP_BRANCHES


def eagle_shape(arg: Optional[str]) -> tuple[str, int]:
    """The (shape, branches) of a parsed eagle spec's argument."""
    if arg is not None and arg.startswith("chain"):
        return "chain", int(arg.partition(":")[2] or 3)
    return "tree", int(arg or 3)


def resolve_draft_model(spec: str, target_path: str | os.PathLike, progress: bool = False) -> Optional[Path]:
    """The draft model file a spec needs (fetched if named), its vocabulary
    checked against the target's; None for drafters without a model. For
    auto: a cached known model that fits, or None."""
    kind, name = parse_draft(spec)
    if kind == "merge":
        models = [p for p in spec.split("+") if p.startswith("model:")]
        return resolve_draft_model(models[0], target_path, progress) if models else None
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


class MergedDrafter:
    """Several drafters at once; their drafts merged into one token tree
    (ref: SpecInfer's merge of several speculators' trees), verified in one
    pass. The tree's own acceptance is kept under one kind, "merged"."""

    KIND = "merged"

    def __init__(self, drafters: Sequence[Drafter]):
        self.drafters = list(drafters)
        self.name = "+".join(d.name for d in self.drafters)
        parts = [k for d in self.drafters for k in d.kinds.values()]
        self.kinds = {self.KIND: Kind(sum(k.cost_per_token for k in parts), max(k.prior for k in parts))}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        if limits is not None and limits.get(self.KIND, 0) == 0:
            return empty_draft()
        drafts = [d.propose(tokens, max_len, sampler, None) for d in self.drafters]
        return merge_drafts(drafts, self.KIND).cut(max_len)

    def close(self) -> None:
        for d in self.drafters:
            d.close()


class AutoDrafter:
    """Prompt lookup when it has a match whose kind is worth drafting (it is
    free), else the draft model if there is one, else lookup's best guess
    (verified only if the decode loop finds it worth it)."""

    def __init__(self, lookup: LookupDrafter, model: Optional[ModelDrafter]):
        self.lookup, self.model = lookup, model
        self.name = "auto: lookup" + (f" + model:{Path(model.path).name}" if model else "")
        self.kinds = {**lookup.kinds, **(model.kinds if model else {})}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
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


LOAD = object()  # open_drafter's default for model_drafter: load the draft model the spec names


def open_drafter(spec: str, target: Model, n_ctx: int, n_threads: int = 0,
                 draft_path: Optional[str | os.PathLike] = None, ctx: Optional[Context] = None,
                 heads_path: Optional[str | os.PathLike] = None, heads: Optional[Heads] = None,
                 model_drafter=LOAD) -> Drafter:
    """The drafter `spec` names, for contexts of `target`. `draft_path`: the
    draft model resolve_draft_model found (looked up here if not given).
    `ctx`: the (empty) context the decode runs in, which the EAGLE drafter
    attaches its heads to; `heads_path`: their file (default: the heads that
    ship for the model), or `heads`: heads already open (a server shares
    one set). `model_drafter`: a draft model already loaded, for the model
    and auto parts (None: there is none), instead of loading one (a server
    keeps one per slot)."""
    kind, arg = parse_draft(spec)
    if kind == "exit" or (kind == "merge" and "exit" in spec.split("+")):
        text_spec = "+".join(p for p in spec.split("+") if p != "exit")
        text = open_drafter(text_spec, target, n_ctx, n_threads, draft_path, ctx, heads_path, heads,
                            model_drafter) if text_spec else NoDrafts()
        return _with_exits(text, target, ctx, heads_path, heads, required=True)
    if kind == "lookup":
        return LookupDrafter(branches=int(arg or 1))
    if kind == "eagle":
        if ctx is None:
            raise ValueError("the eagle drafter runs inside the target's context: pass ctx")
        opened = heads is None
        if opened:
            heads_path = heads_or_shipped(heads_path, target.fingerprint, Path(target.path).name,
                                          "the eagle drafter (a draft head)")
            heads = Heads(target, heads_path)
        try:
            shape, branches = eagle_shape(arg)
            return EagleDrafter(ctx, heads, heads.path, branches=branches, shape=shape, owns_heads=opened)
        except Exception:
            if opened:
                heads.close()
            raise
    if kind == "merge":
        drafters: list[Drafter] = []
        try:
            for part in spec.split("+"):
                drafters.append(open_drafter(part, target, n_ctx, n_threads,
                                             draft_path if part.startswith("model:") else None, ctx, heads_path,
                                             heads, model_drafter))
        except Exception:
            for d in drafters:
                d.close()
            raise
        return MergedDrafter(drafters)
    model = model_drafter
    if model is LOAD:
        path = draft_path if draft_path is not None else resolve_draft_model(spec, target.path)
        model = ModelDrafter(path, target, n_ctx, n_threads, target_ctx=ctx) if path is not None else None
    if kind == "model":
        return model
    auto = AutoDrafter(LookupDrafter(), model)
    return _with_exits(auto, target, ctx, heads_path, heads, required=False) if ctx is not None else auto


def exit_heads_path(target: Model, heads_path, required: bool) -> Optional[Path]:
    """The exit predictors' file for `target`: `heads_path`, else the heads
    that ship for it; without either an error if `required`, else None."""
    try:
        return Path(heads_or_shipped(heads_path, target.fingerprint, Path(target.path).name,
                                     "the exit drafter (exit predictors)"))
    except NoHeadsError:
        if required:
            raise
        return None


def _with_exits(text: Drafter, target: Model, ctx: Optional[Context], heads_path, heads: Optional[Heads],
                required: bool) -> Drafter:
    """`text` plus exit steps with `heads` (default: those that ship for the
    model). Without heads: an error if `required`, else `text` as it is.
    On an error `text` (and heads opened here) are closed."""
    opened: Optional[Heads] = None
    try:
        if ctx is None:
            raise ValueError("the exit drafter runs inside the target's context: pass ctx")
        if heads is None:
            heads_path = exit_heads_path(target, heads_path, required)
            if heads_path is None:
                return text
            heads = opened = Heads(target, heads_path)
        return WithExits(text, ctx, heads, owns_heads=opened is not None)
    except Exception:
        if opened is not None:
            opened.close()
        text.close()
        raise
