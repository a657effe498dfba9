"""`specee train draft | predictors`, `specee pack` and `specee train all`:
features -> draft head -> traces -> predictors -> head file.

Every stage writes into one output directory and is skipped when its output
is already there, so an interrupted run picks up where it stopped; each CLI
stage runs the ones before it that have not run yet:

    OUT/features/        target features (draft_head_targets.py)
    OUT/draft/           draft checkpoints and log (draft.py), draft_head.npz
    OUT/draft_only.gguf  the draft head with a placeholder predictor (for traces)
    OUT/traces.parts/    one file per trace prompt while traces are collected (an interrupted run resumes)
    OUT/traces.npz       per-token, per-layer predictor data (predictors.py)
    OUT/predictors.json  per-layer precision/recall, offline schedule
    OUT/predictors.npz   the trained predictors
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

import gguf
import numpy as np
from gguf.quants import dequantize

from ..engine import Model
from ..heads.head_file import QUANTIZED_DRAFT_TYPES, DraftHead, Predictor, constant_predictor, write_heads
from ..ranges import THRESHOLD
from . import atomic
from .draft_head import DraftConfig, train_draft
from .draft_head_targets import FeatureSet, extract_features
from .predictors import PredictorConfig, Traces, collect_traces, train_predictors, write_report

log = logging.getLogger(__name__)


def train_draft_stage(model_path: str | os.PathLike, out: Path, sequences: Sequence[Sequence[int]], cfg: DraftConfig,
                      n_threads: int = 0, progress: bool = True) -> tuple[FeatureSet, DraftHead, dict]:
    """Features, then the draft head (OUT/draft), then OUT/draft_only.gguf
    (the draft with a never-firing placeholder predictor, for traces)."""
    out.mkdir(parents=True, exist_ok=True)
    fs = extract_features(model_path, sequences, out / "features", n_threads=n_threads, progress=progress,
                          total=len(sequences))
    draft, metrics = train_draft(model_path, fs, out / "draft", cfg, progress=progress)
    save_draft(model_path, out, draft, cfg.dtype)
    return fs, draft, metrics


def save_draft(model_path: str | os.PathLike, out: Path, draft: DraftHead, dtype: str) -> None:
    """OUT/draft/draft_head.npz (weights and their storage type in head
    files) and OUT/draft_only.gguf (with a never-firing predictor, for traces)."""
    (out / "draft").mkdir(parents=True, exist_ok=True)
    atomic.savez(out / "draft" / "draft_head.npz", **draft.tensors(), storage_dtype=np.str_(dtype))
    with Model(model_path) as m:
        write_heads(out / "draft_only.gguf", m, {0: constant_predictor(-40.0)}, draft=draft, draft_dtype=dtype)


def import_draft(model_path: str | os.PathLike, heads_path: str | os.PathLike, out: Path) -> str:
    """OUT/draft/draft_head.npz and OUT/draft_only.gguf from the draft head
    inside an existing head file (shipped or packed), so its predictors can
    be trained again (for instance after a change of the exit features)
    without training the draft. Quantized matrices are dequantized and stored
    again in the same type (Q8_0/Q4_0 blocks round-trip exactly). Returns the
    storage type."""
    reader = gguf.GGUFReader(os.fspath(heads_path))
    tensors, dtype = {}, "f32"
    # the storage type write_heads used, read back from the matrices' ggml type
    names = {qtype: name for name, qtype in QUANTIZED_DRAFT_TYPES.items()}
    names[gguf.GGMLQuantizationType.F16] = "f16"
    for t in reader.tensors:
        if not t.name.startswith("draft."):
            continue
        shape = tuple(int(x) for x in reversed(t.shape))
        if t.name == "draft.vocab":
            tensors[t.name] = np.asarray(t.data, dtype=np.int32).reshape(shape)
            continue
        if t.tensor_type in names and len(shape) == 2:
            dtype = names[t.tensor_type]
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        tensors[t.name] = values.reshape(shape)
    if "draft.fc.weight" not in tensors:
        raise ValueError(f"{heads_path} holds no draft head")
    save_draft(model_path, Path(out), DraftHead.from_tensors(tensors), dtype)
    return dtype


def load_draft(out: Path) -> tuple[DraftHead, str]:
    """What save_draft wrote (runs from before storage_dtype: q8_0)."""
    path = out / "draft" / "draft_head.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train the draft head first")
    with np.load(path) as z:
        dtype = str(z["storage_dtype"]) if "storage_dtype" in z.files else "q8_0"
        return DraftHead.from_tensors({k: z[k] for k in z.files if k != "storage_dtype"}), dtype


def train_predictors_stage(model_path: str | os.PathLike, out: Path, prompts: Sequence[Sequence[int]],
                           cfg: PredictorConfig, n_new: int = 128, n_threads: int = 0,
                           progress: bool = True, keep_hidden: bool = False) -> tuple[Traces, dict, list[int], dict]:
    """Traces with the draft of OUT/draft_only.gguf, then one predictor per
    layer and the offline schedule (OUT/predictors.npz, OUT/predictors.json).
    `keep_hidden`: the traces also hold hidden states (collect_traces)."""
    if not (out / "draft_only.gguf").exists():
        raise FileNotFoundError(f"{out / 'draft_only.gguf'} is missing: train the draft head first")
    traces_path = out / "traces.npz"
    if traces_path.exists():
        traces = Traces.load(traces_path)
    else:
        traces = collect_traces(model_path, out / "draft_only.gguf", prompts, n_new=n_new, n_threads=n_threads,
                                progress=progress, parts=out / "traces.parts", keep_hidden=keep_hidden)
        traces.save(traces_path)
    preds, offline, report = train_predictors(traces, cfg, progress=progress)
    write_report(out / "predictors.json", report, offline, traces, cfg.verify_full)
    save_predictors(out / "predictors.npz", preds, offline, cfg)
    return traces, preds, offline, report


def save_predictors(path: Path, preds: dict[int, Predictor], offline: list[int], cfg: PredictorConfig) -> None:
    arrays = {"offline": np.asarray(offline, np.int32), "threshold": np.float32(cfg.threshold),
              "verify_full": np.bool_(cfg.verify_full)}
    for layer, p in preds.items():
        arrays.update({f"{layer}.{k}": v for k, v in (("w1", p.w1), ("b1", p.b1), ("w2", p.w2),
                                                      ("b2", np.float32(p.b2)))})
    atomic.savez(path, **arrays)


def set_schedule(path: Path, offline: list[int], threshold: float) -> None:
    """Rewrites the schedule and threshold of a saved predictors file (train/schedule.py)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(offline=np.asarray(sorted(offline), np.int32), threshold=np.float32(threshold))
    atomic.savez(path, **arrays)


def load_predictors(path: Path) -> tuple[dict[int, Predictor], list[int], float, bool]:
    z = np.load(path)
    layers = sorted({int(k.split(".")[0]) for k in z.files if k.endswith(".w1")})
    preds = {i: Predictor(z[f"{i}.w1"], z[f"{i}.b1"], z[f"{i}.w2"], float(z[f"{i}.b2"])) for i in layers}
    return preds, [int(x) for x in z["offline"]], float(z["threshold"]), bool(z["verify_full"])


def pack(model_path: str | os.PathLike, out: Path, threshold: float | None = None, use_online: bool = True) -> Path:
    """OUT/heads.gguf from the trained draft (OUT/draft) and predictors
    (OUT/predictors.npz); `threshold` overrides the trained default;
    `use_online` is the head file's default online schedule."""
    THRESHOLD.check_optional("threshold", threshold)
    if not (out / "predictors.npz").exists():
        raise FileNotFoundError(f"{out / 'predictors.npz'} is missing: train the predictors first")
    draft, dtype = load_draft(out)
    preds, offline, trained_threshold, verify_full = load_predictors(out / "predictors.npz")
    with Model(model_path) as m:
        write_heads(out / "heads.gguf", m, preds, exit_layers=offline,
                    threshold=trained_threshold if threshold is None else threshold, draft=draft,
                    draft_dtype=dtype, verify_full=verify_full, use_online=use_online)
    return out / "heads.gguf"


def train_all(model_path: str | os.PathLike, out: str | os.PathLike, sequences: Sequence[Sequence[int]],
              prompts: Sequence[Sequence[int]], draft_cfg: DraftConfig = DraftConfig(),
              pred_cfg: PredictorConfig = PredictorConfig(), n_new: int = 128, n_threads: int = 0,
              progress: bool = True, data_note: str = "") -> Path:
    """Trains heads for `model_path` from `sequences` (draft-head text) and
    `prompts` (continued greedily for predictor traces); returns OUT/heads.gguf."""
    out = Path(out)
    t0 = time.time()
    fs, _, draft_metrics = train_draft_stage(model_path, out, sequences, draft_cfg, n_threads, progress)
    traces, _, offline, report = train_predictors_stage(model_path, out, prompts, pred_cfg, n_new, n_threads,
                                                        progress)
    heads = pack(model_path, out)
    (out / "record.json").write_text(json.dumps({
        "command": " ".join(sys.argv),
        "model": os.fspath(model_path),
        "data": data_note,
        "n_sequences": len(sequences), "n_feature_tokens": int(fs.offsets[-1]),
        "n_trace_prompts": len(prompts), "n_trace_tokens": int(traces.label.shape[0]),
        "n_layer": int(traces.label.shape[1]),
        "draft_config": asdict(draft_cfg), "predictor_config": asdict(pred_cfg),
        "draft_heldout": draft_metrics, "offline_layers": offline,
        "predictors": {str(k): v for k, v in report.items()},
        "seconds": round(time.time() - t0, 1),
    }, indent=1))
    return heads
