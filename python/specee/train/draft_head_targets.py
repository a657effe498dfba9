"""Target features for draft-head training, extracted with libspecee.

For each token sequence: one batched prefill that keeps the final-normed
hidden state after the last layer of every token (the feature the draft head
learns to predict, docs/design.md#training). Stored on disk as memory-mapped numpy
arrays, appended sequence by sequence, resumable:

    OUT/tokens.i32     all tokens, concatenated
    OUT/features.f16   [n_tokens, n_embd] float16
    OUT/index.json     sequence offsets, n_embd, the model's fingerprint
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..engine import Model
from ..ranges import SEQUENCE_LENGTH, ZERO_OR_MORE

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """Read side of an extracted feature directory."""

    tokens: np.ndarray      # [n_tokens] int32
    features: np.ndarray    # [n_tokens, n_embd] float16 (memory-mapped)
    offsets: list[int]      # sequence i is [offsets[i], offsets[i + 1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.features[a:b]


def _index_path(out: Path) -> Path:
    return out / "index.json"


def load_features(out: str | os.PathLike) -> FeatureSet:
    out = Path(out)
    index = json.loads(_index_path(out).read_text())
    n = index["offsets"][-1]
    tokens = np.fromfile(out / "tokens.i32", dtype=np.int32, count=n)
    features = np.memmap(out / "features.f16", dtype=np.float16, mode="r", shape=(n, index["n_embd"]))
    return FeatureSet(tokens, features, index["offsets"])


def extract_features(model_path: str | os.PathLike, sequences: Iterable[Sequence[int]], out: str | os.PathLike,
                     n_threads: int = 0, max_len: int = 1024, progress: bool = True,
                     total: int | None = None) -> FeatureSet:
    """Appends the features of `sequences` (skipping the ones an earlier,
    interrupted run already stored) and returns the whole set."""
    SEQUENCE_LENGTH.check("max_len", max_len)
    ZERO_OR_MORE.check("n_threads", n_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with Model(model_path) as model:
        index = {"offsets": [0], "n_embd": model.n_embd, "fingerprint": model.fingerprint}
        if _index_path(out).exists():
            index = json.loads(_index_path(out).read_text())
            if index["fingerprint"] != model.fingerprint:
                raise ValueError(f"{out} holds features of another model")
        done = len(index["offsets"]) - 1
        if done:
            log.info("resuming: %d sequences already extracted", done)
        with model.context(n_ctx=max_len, n_threads=n_threads) as ctx, \
                open(out / "tokens.i32", "ab") as ftok, open(out / "features.f16", "ab") as ffeat, \
                tqdm(total=total, desc="features", unit="seq", disable=not progress, initial=done) as bar:
            # Keep the files consistent with the index: cut any tail a crash left.
            ftok.truncate(index["offsets"][-1] * 4)
            ffeat.truncate(index["offsets"][-1] * model.n_embd * 2)
            ctx.set_hidden_output(model.n_layer, final_norm=True)
            for i, seq in enumerate(sequences):
                if i < done:
                    continue
                ids = np.asarray(seq[:max_len], dtype=np.int32)
                if len(ids) < 2:
                    continue
                ctx.truncate(0)
                ctx.prefill(ids)
                ftok.write(ids.tobytes())
                ffeat.write(ctx.hidden().astype(np.float16).tobytes())
                ftok.flush()
                ffeat.flush()
                index["offsets"].append(index["offsets"][-1] + len(ids))
                _index_path(out).write_text(json.dumps(index))
                bar.update(1)
    return load_features(out)
