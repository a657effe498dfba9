"""`specee train all`: features -> draft head -> traces -> predictors -> head file.

Every stage writes into one output directory and is skipped when its output
is already there, so an interrupted run picks up where it stopped:

    OUT/features/        target features (features.py)
    OUT/draft/           draft checkpoints and log (draft.py)
    OUT/draft_only.gguf  the draft head with a placeholder predictor (for traces)
    OUT/traces.npz       per-token, per-layer predictor data (predictors.py)
    OUT/predictors.json  per-layer precision/recall, offline schedule
    OUT/heads.gguf       the result
    OUT/record.json      what was run: inputs, settings, seeds, metrics
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from ..engine import Model
from ..heads_file import constant_predictor, write_heads
from .draft import DraftConfig, train_draft
from .features import extract_features
from .predictors import PredictorConfig, Traces, collect_traces, train_predictors, write_report

log = logging.getLogger(__name__)


def train_all(model_path: str | os.PathLike, out: str | os.PathLike, sequences: Sequence[Sequence[int]],
              prompts: Sequence[Sequence[int]], draft_cfg: DraftConfig = DraftConfig(),
              pred_cfg: PredictorConfig = PredictorConfig(), n_new: int = 128, n_threads: int = 0,
              progress: bool = True, data_note: str = "") -> Path:
    """Trains heads for `model_path` from `sequences` (draft-head text) and
    `prompts` (continued greedily for predictor traces); returns OUT/heads.gguf."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fs = extract_features(model_path, sequences, out / "features", n_threads=n_threads, progress=progress,
                          total=len(sequences))
    draft, draft_metrics = train_draft(model_path, fs, out / "draft", draft_cfg, progress=progress)

    with Model(model_path) as m:
        n_layer = m.n_layer
        # placeholder predictor that never fires: the traces only need the draft
        write_heads(out / "draft_only.gguf", m, {0: constant_predictor(-40.0)}, draft=draft)
    traces_path = out / "traces.npz"
    if traces_path.exists():
        traces = Traces.load(traces_path)
    else:
        traces = collect_traces(model_path, out / "draft_only.gguf", prompts, n_new=n_new, n_threads=n_threads,
                                progress=progress)
        traces.save(traces_path)
    preds, offline, report = train_predictors(traces, pred_cfg, progress=progress)
    write_report(out / "predictors.json", report, offline, traces, pred_cfg.verify_full)

    with Model(model_path) as m:
        write_heads(out / "heads.gguf", m, preds, exit_layers=offline, threshold=pred_cfg.threshold, draft=draft,
                    verify_full=pred_cfg.verify_full)
    (out / "record.json").write_text(json.dumps({
        "command": " ".join(sys.argv),
        "model": os.fspath(model_path),
        "data": data_note,
        "n_sequences": len(sequences), "n_feature_tokens": int(fs.offsets[-1]),
        "n_trace_prompts": len(prompts), "n_trace_tokens": int(traces.label.shape[0]), "n_layer": n_layer,
        "draft_config": asdict(draft_cfg), "predictor_config": asdict(pred_cfg),
        "draft_heldout": draft_metrics, "offline_layers": offline,
        "predictors": {str(k): v for k, v in report.items()},
        "seconds": round(time.time() - t0, 1),
    }, indent=1))
    return out / "heads.gguf"
