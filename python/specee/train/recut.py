"""`specee train recut`: a trained draft head with another vocabulary size or
storage type, without training again.

The draft's output rows are the target's own, frozen (draft.py), so its
trained layer serves any reduced vocabulary: cutting to the N tokens the
target predicts most often (choose_draft_vocab) only changes which rows are
scored. A smaller vocabulary or a smaller storage type makes every decode
step read less, at the price of candidate hit rate; which wins is a question
of end-to-end speed, so this makes the variants to measure (docs/design.md#candidates):

    specee train recut --from RUN --out RUN-4k --draft-vocab 4096 --draft-dtype q4_0
    specee train predictors --out RUN-4k ...   # traces with this draft
    specee pack --out RUN-4k
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..heads.head_file import check_draft_dtype
from ..ranges import ZERO_OR_MORE
from .draft_head import evaluate, heldout_split, load_checkpoint, read_target, target_tokens, vocab_rows
from .draft_head_targets import load_features
from .pipeline import save_draft


def recut_draft(model_path: str | os.PathLike, src: Path, dst: Path, draft_vocab: int, dtype: str) -> dict:
    """DST/draft/draft_head.npz and DST/draft_only.gguf: SRC's trained draft
    over the `draft_vocab` most frequent tokens (0: all), stored as `dtype`;
    returns the held-out top-1/top-4 of that vocabulary on SRC's held-out split."""
    check_draft_dtype(dtype)
    ZERO_OR_MORE.check("draft_vocab", draft_vocab)
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("recut writes a new run directory: --out must differ from --from")
    ckpt = src / "draft" / "draft.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} is missing: train the draft head in {src} first")
    fs = load_features(src / "features")
    info, embd, out = read_target(model_path)
    net, cfg = load_checkpoint(ckpt, info, embd)
    vocab, out_rows = vocab_rows(fs, out, draft_vocab)
    held, _ = heldout_split(fs, cfg, np.random.default_rng(cfg.seed))
    metrics = evaluate(net, fs, held, torch.from_numpy(out_rows), target_tokens(fs, held, torch.from_numpy(out)),
                       torch.from_numpy(vocab.astype(np.int64)) if vocab is not None else None)
    save_draft(model_path, dst, net.export(out_rows, vocab), dtype)
    record = {"from": os.fspath(src), "draft_vocab": draft_vocab, "dtype": dtype, "draft_heldout": metrics}
    (dst / "draft" / "recut.json").write_text(json.dumps(record, indent=1))
    return record
