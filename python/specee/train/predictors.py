"""Exit-predictor training (ref: SpecEE sec. 4.3; docs/design.md#training).

1. Traces: full-depth greedy decoding driven by the trained draft head
   (specee_trace_step): per token and layer, the candidates' logits there and
   whether that layer's full-vocabulary argmax already equals the final token.
2. One MLP per layer (3k -> hidden -> 1, BCE, Adam) on the 3k features the
   library computes at inference (candidate logits, their softmax, its change
   since the layer before: docs/heads.md), computed by the library itself.
3. The offline schedule: the layers where the distribution of "first layer
   whose argmax is the final token" puts its mass.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..engine import Heads, Model, exit_features
from ..heads.head_file import Predictor
from . import atomic
from ..ranges import COUNT, HELD_OUT_SHARE, LEARNING_RATE, SEED, THRESHOLD, ZERO_OR_MORE, check_fields

log = logging.getLogger(__name__)


# ---- traces -----------------------------------------------------------------------


@dataclass
class Traces:
    cand_logits: np.ndarray   # [n_tokens, n_layer, k] float32
    label: np.ndarray         # [n_tokens, n_layer] bool: layer argmax == final token
    in_cands: np.ndarray      # [n_tokens, n_layer] bool: layer argmax is a candidate
    best_cand_ok: Optional[np.ndarray] = None  # [n_tokens, n_layer] bool: best candidate there == final token
    # for studying new features (bench/exit_feature_ablation.py); absent in older traces
    layer_change: Optional[np.ndarray] = None  # [n_tokens, n_layer] float32: how much each layer moved the state
    draft_probs: Optional[np.ndarray] = None   # [n_tokens, k] float32: the draft's probabilities of the candidates
    hidden: Optional[np.ndarray] = None        # [n_tokens, n_layer, n_embd] float16: final-normed state after each layer
    prompt: Optional[np.ndarray] = None        # [n_tokens] int32: which trace prompt each token continues

    OPTIONAL = ("best_cand_ok", "layer_change", "draft_probs", "hidden", "prompt")

    def save(self, path: Path) -> None:
        arrays = {"cand_logits": self.cand_logits, "label": self.label, "in_cands": self.in_cands}
        arrays.update({f: getattr(self, f) for f in self.OPTIONAL if getattr(self, f) is not None})
        atomic.savez(path, compressed=True, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Traces":
        z = np.load(path)
        return cls(z["cand_logits"], z["label"], z["in_cands"], **{f: z[f] for f in cls.OPTIONAL if f in z})

    @classmethod
    def concatenate(cls, parts: Sequence["Traces"]) -> "Traces":
        """One Traces of all `parts`; an optional array only where every part has it."""
        def joined(f: str) -> Optional[np.ndarray]:
            arrays = [getattr(t, f) for t in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)
        return cls(*(joined(f) for f in ("cand_logits", "label", "in_cands")),
                   **{f: joined(f) for f in cls.OPTIONAL})

    def exit_ok(self, verify_full: bool) -> np.ndarray:
        """[n_tokens, n_layer] bool: an exit there gives the final token, with
        full verification (layer argmax is the final token and a candidate)
        or with the best candidate alone."""
        if verify_full:
            return self.label & self.in_cands
        if self.best_cand_ok is None:
            raise ValueError("these traces predate best-candidate labels: collect them again")
        return self.best_cand_ok.copy()


def collect_traces(model_path: str | os.PathLike, heads_path: str | os.PathLike, prompts: Sequence[Sequence[int]],
                   n_new: int = 128, n_ctx: int = 2048, n_threads: int = 0, progress: bool = True,
                   parts: Optional[Path] = None, keep_hidden: bool = False) -> Traces:
    """Greedy continuations of `prompts` (not the evaluation sets!) with the
    draft head of `heads_path` proposing the candidates. `parts`: a folder
    that keeps each prompt's traces as it is done, so an interrupted run
    resumes where it stopped (a large model's traces take hours).
    `keep_hidden`: also the hidden state each check would see (Traces.hidden:
    n_layer x n_embd values a token)."""
    COUNT.check("n_new", n_new)
    ZERO_OR_MORE.check("n_threads", n_threads)
    if not (isinstance(n_ctx, int) and n_ctx > n_new + 1):
        raise ValueError(f"n_ctx must exceed n_new + 1 = {n_new + 1} (room for a prompt), got {n_ctx!r}")
    if not prompts:
        raise ValueError("no prompts to collect traces from")
    done: list[Traces] = []
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    with Model(model_path) as m, Heads(m, heads_path) as heads, \
            tqdm(total=len(prompts), desc="traces", unit="prompt", disable=not progress) as bar:
        if not heads.has_draft:
            raise ValueError(f"{heads_path} has no draft head to propose candidates")
        for i, prompt in enumerate(prompts):
            part = parts / f"{i:05d}.npz" if parts is not None else None
            if part is not None and part.exists():
                done.append(Traces.load(part))
                if keep_hidden and done[-1].hidden is None:
                    raise ValueError(f"{part} was traced without hidden states: collect them in a new folder")
                if done[-1].prompt is None:  # parts from before prompt indices
                    done[-1].prompt = np.full(len(done[-1].label), i, np.int32)
                bar.update(1)
                continue
            cl, lab, inc, best, change, dprobs, hidden = [], [], [], [], [], [], []
            prompt = list(prompt)[: n_ctx - n_new - 1]
            with m.context(n_ctx=n_ctx, n_threads=n_threads) as ctx:
                ctx.set_heads(heads)
                ctx.prefill(prompt)
                token = ctx.argmax()
                cands = ctx.draft_sync(token)
                for _ in range(n_new):
                    dprobs.append(ctx.draft_probs())  # of `cands`, before the step moves the draft on
                    step, logits, argmax = ctx.trace_step(token, cands)
                    cl.append(logits)
                    lab.append(argmax == step.token)
                    inc.append(np.isin(argmax, cands))
                    best.append(np.asarray(cands)[logits.argmax(-1)] == step.token)
                    change.append(ctx.trace_change())
                    if keep_hidden:
                        hidden.append(ctx.trace_hidden().astype(np.float16))
                    token, cands = step.token, step.next
            done.append(Traces(np.stack(cl).astype(np.float32), np.stack(lab), np.stack(inc), np.stack(best),
                               np.stack(change), np.stack(dprobs), np.stack(hidden) if keep_hidden else None,
                               np.full(n_new, i, np.int32)))
            if part is not None:
                done[-1].save(part)
            bar.update(1)
    return Traces.concatenate(done)


# ---- features -----------------------------------------------------------------------


def layer_features(cand_logits: np.ndarray) -> np.ndarray:
    """[n, n_layer, k] candidate logits -> [n, n_layer, 3k] predictor inputs,
    computed by libspecee's own feature code (engine.exit_features): what a
    check after each layer sees during decoding, whatever the schedule."""
    return exit_features(cand_logits)


# ---- MLPs ----------------------------------------------------------------------------------


@dataclass
class PredictorConfig:
    hidden: int = 512          # ref: SpecEE 12 -> 512 -> 1
    epochs: int = 100
    batch: int = 1024
    lr: float = 1e-3
    heldout: float = 0.2       # ref: 80/20 split
    threshold: float = 0.5
    n_offline: int = 8         # layers in the offline schedule (ref: 8 of 32 for Llama-2-7B)
    seed: int = 0
    verify_full: bool = True   # label: full verification (ref) or best candidate alone (verify_full off)

    def __post_init__(self) -> None:
        check_fields(self, {"hidden": COUNT, "epochs": COUNT, "batch": COUNT, "lr": LEARNING_RATE,
                            "heldout": HELD_OUT_SHARE, "threshold": THRESHOLD, "n_offline": COUNT, "seed": SEED})


def heldout_split(n: int, cfg: PredictorConfig,
                  prompt: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) token indices, the same for every layer, each in
    a seeded random order. With `prompt` (Traces.prompt) whole prompts'
    continuations are held out, cfg.heldout of the prompts: a token's
    neighbours in one continuation are nearly the same sample, so holding out
    single tokens overstates how well predictors do on text they have not
    seen. Without it (traces from before prompt indices, or one prompt),
    single tokens at random: see heldout_by."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    if heldout_by(prompt) == "token":
        n_held = max(1, int(n * cfg.heldout))
        return perm[:n_held], perm[n_held:]
    if len(prompt) != n:
        raise ValueError(f"{len(prompt)} prompt indices for {n} tokens")
    ids = np.unique(prompt)
    held_ids = np.random.default_rng(cfg.seed).permutation(ids)[:max(1, round(len(ids) * cfg.heldout))]
    is_held = torch.from_numpy(np.isin(prompt, held_ids))[perm]
    return perm[is_held], perm[~is_held]


def heldout_by(prompt: Optional[np.ndarray]) -> str:
    """"prompt" where whole prompts can be held out, else "token"."""
    return "token" if prompt is None or len(np.unique(prompt)) < 2 else "prompt"


def train_one(x: np.ndarray, y: np.ndarray, cfg: PredictorConfig,
              prompt: Optional[np.ndarray] = None) -> tuple[Predictor, dict]:
    """One layer's MLP; metrics on the held-out part (heldout_split) at cfg.threshold."""
    held, train = heldout_split(len(x), cfg, prompt)
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    torch.manual_seed(cfg.seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    pos = float(Y[train].mean()) if len(train) else 0.5
    for _ in range(cfg.epochs):
        for i in range(0, len(train), cfg.batch):
            b = train[i:i + cfg.batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X[b]).squeeze(-1), Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        prob = torch.sigmoid(net(X[held]).squeeze(-1))
    fire, truth = (prob > cfg.threshold), Y[held] > 0.5
    tp = int((fire & truth).sum())
    metrics = {"n_train": len(train), "n_heldout": len(held), "positive_rate": round(pos, 4),
               "precision": round(tp / max(int(fire.sum()), 1), 4), "recall": round(tp / max(int(truth.sum()), 1), 4),
               "fire_rate": round(float(fire.float().mean()), 4)}
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy()[0], float(net[2].bias.detach().numpy()[0])
    return Predictor(w1.copy(), b1.copy(), w2.copy(), b2), metrics


def first_exit_layers(t: Traces, verify_full: bool = True) -> np.ndarray:
    """Per token: the first layer where an exit would give the final token
    (Traces.exit_ok), or n_layer - 1."""
    ok = t.exit_ok(verify_full)
    ok[:, -1] = True
    return ok.argmax(-1)


def choose_offline_layers(t: Traces, n: int, report: dict | None = None, min_precision: float = 0.5,
                          verify_full: bool = True) -> list[int]:
    """The n layers (never the last) where the most tokens could first exit,
    among those whose predictor fires on held-out data with at least
    `min_precision` (a check whose predictor never fires only costs time)."""
    n_layer = t.label.shape[1]
    counts = np.bincount(first_exit_layers(t, verify_full), minlength=n_layer)[: n_layer - 1].astype(float)
    if report is not None:
        for l, r in report.items():
            if r["fire_rate"] == 0 or r["precision"] < min_precision:
                counts[int(l)] = 0
    best = np.argsort(-counts, kind="stable")[:n]
    return sorted(int(l) for l in best if counts[l] > 0) or [n_layer - 2]


def train_predictors(t: Traces, cfg: PredictorConfig = PredictorConfig(),
                     progress: bool = True) -> tuple[dict[int, Predictor], list[int], dict]:
    """Predictors for every layer but the last, the offline schedule, and
    per-layer metrics."""
    x = layer_features(t.cand_logits)
    # full verification: fire where the layer's argmax is the final token (ref);
    # the lm_head check then rejects non-candidates. Candidates alone: fire
    # only where the best candidate is the final token
    labels = t.label if cfg.verify_full else t.exit_ok(False)
    n_layer = x.shape[1]
    preds, report = {}, {}
    with tqdm(total=n_layer - 1, desc="predictors", unit="layer", disable=not progress) as bar:
        for l in range(n_layer - 1):
            preds[l], report[l] = train_one(x[:, l], labels[:, l], cfg, t.prompt)
            bar.update(1)
    offline = choose_offline_layers(t, cfg.n_offline, report, verify_full=cfg.verify_full)
    log.info("offline layers %s", offline)
    return preds, offline, report


def write_report(path: Path, report: dict, offline: list[int], t: Traces, verify_full: bool = True) -> None:
    fel = first_exit_layers(t, verify_full)
    path.write_text(json.dumps({
        "offline_layers": offline,
        "heldout_by": heldout_by(t.prompt),
        "first_exit_layer_histogram": np.bincount(fel, minlength=t.label.shape[1]).tolist(),
        "per_layer": {str(k): v for k, v in report.items()},
    }, indent=1))
