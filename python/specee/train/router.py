"""Training the depth router of lossy layer skipping (decoding/speculative/layer_skip.py).

Data: the same traces as the exit predictors' (predictors.collect_traces):
greedy continuations of training prompts, where each token records, for
every layer, whether the argmax after that layer already is full depth's
token, and the draft head's probabilities of its candidates for that
token. A verification row's router sees exactly that confidence: the
draft's probability of the token the row is asked about.

The router is a table: confidence buckets (quantiles of the traces'
confidences, so each holds as many tokens), and per bucket and layer the
share of tokens already right there. No parameters are fitted, so it
cannot overfit beyond the sampling error of those shares (a bucket holds
n_tokens / buckets tokens; with 8,000 tokens and 8 buckets, a share near
0.95 is known to about +-0.007).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..decoding.speculative.layer_skip import DepthRouter
from .predictors import Traces, collect_traces


def train_router(traces: Traces, buckets: int = 8, min_agreement: float = 0.95, min_depth: int = 1,
                 record: dict | None = None) -> DepthRouter:
    """The table from `traces` (which must hold the draft's probabilities)."""
    if traces.draft_probs is None:
        raise ValueError("these traces have no draft probabilities: collect them again")
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    conf = traces.draft_probs.max(axis=1).astype(np.float64)  # the draft's best candidate, per token
    right = traces.label.astype(np.float64)                    # [n_tokens, n_layer]
    if conf.size < buckets:
        raise ValueError(f"{conf.size} trace tokens cannot fill {buckets} buckets")
    edges = sorted(set(float(e) for e in np.quantile(conf, np.arange(1, buckets) / buckets)))
    which = np.searchsorted(edges, conf, side="right")
    agreement = np.stack([right[which == b].mean(axis=0) if np.any(which == b) else np.zeros(right.shape[1])
                          for b in range(len(edges) + 1)])
    agreement[:, -1] = 1.0  # full depth is full depth's token by definition
    counts = np.bincount(which, minlength=len(edges) + 1)
    rec = {"n_tokens": int(conf.size), "bucket_tokens": counts.tolist(), **(record or {})}
    return DepthRouter(edges, agreement, min_agreement, min_depth, rec)


def train_router_stage(model_path: str | os.PathLike, heads_path: str | os.PathLike, out: Path,
                       prompts: Sequence[Sequence[int]], n_new: int, n_threads: int, buckets: int,
                       min_agreement: float, progress: bool = True, record: dict | None = None) -> Path:
    """Traces with the head file's draft head (OUT/router_traces.parts, one
    file per prompt, so an interrupted run resumes), then OUT/router.json."""
    out.mkdir(parents=True, exist_ok=True)
    traces = collect_traces(model_path, heads_path, prompts, n_new=n_new, n_threads=n_threads, progress=progress,
                            parts=out / "router_traces.parts")
    router = train_router(traces, buckets, min_agreement, record=record)
    path = out / "router.json"
    router.save(path)
    return path
