"""EAGLE-1 draft head training on CPU with torch.

The draft sees (feature f_i, token x_{i+1}) and predicts f_{i+1}, the target's
final-normed hidden state at the next position; its candidates are the top-k
of f_{i+1}'s logits over the draft vocabulary (the target's output rows,
frozen). Loss: SmoothL1(feature) + 0.1 x cross-entropy against the target's
own next-token distribution (ref: EAGLE, Li et al. 2024; docs/design.md#training).
The numerics mirror libspecee's draft graph (graph.cpp build_draft), so the
weights load there unchanged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader
from gguf.quants import dequantize
from tqdm import tqdm

from ..heads.head_file import DraftHead, check_draft_dtype
from ..ranges import (COUNT, HELD_OUT_SHARE, LEARNING_RATE, SEED, SEQUENCE_LENGTH, WEIGHT, ZERO_OR_MORE,
                      check_fields)
from .draft_head_targets import FeatureSet

log = logging.getLogger(__name__)


# ---- the target's frozen pieces ------------------------------------------------------


@dataclass
class TargetInfo:
    arch: str
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int           # attention.key_length; wider than n_embd / n_head in many qwen3
    rope_base: float
    rms_eps: float
    neox: bool              # qwen2/qwen3/phi3 rotate (i, i + d/2) pairs, llama (2i, 2i + 1)
    has_qkv_bias: bool


def read_target(model_path: str | os.PathLike) -> tuple[TargetInfo, np.ndarray, np.ndarray]:
    """Hyper-parameters, token embeddings [V, d] and output matrix [V, d]
    (float32, dequantized) of the target GGUF."""
    r = GGUFReader(os.fspath(model_path))

    def meta(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = meta("general.architecture")
    n_embd, n_head = int(meta(f"{arch}.embedding_length")), int(meta(f"{arch}.attention.head_count"))
    # The draft layer's heads have the target's size (libspecee's draft graph
    # reads them with it), so Q and the attention output are n_head x head_dim
    # wide, which is more than n_embd in many qwen3 models.
    head_dim = int(meta(f"{arch}.attention.key_length", n_embd // n_head))
    info = TargetInfo(arch, n_embd, n_head, int(meta(f"{arch}.attention.head_count_kv", n_head)), head_dim,
                      float(meta(f"{arch}.rope.freq_base", 10000.0)),
                      float(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
                      arch in ("qwen2", "qwen3", "phi3"), arch == "qwen2")
    tensors = {t.name: t for t in r.tensors if t.name in ("token_embd.weight", "output.weight")}

    def load(t) -> np.ndarray:
        return dequantize(t.data, t.tensor_type).astype(np.float32).reshape(int(t.shape[1]), int(t.shape[0]))

    embd = load(tensors["token_embd.weight"])
    out = load(tensors["output.weight"]) if "output.weight" in tensors else embd
    return info, embd, out


# ---- the model ------------------------------------------------------------------------


class RMSNorm(torch.nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DraftNet(torch.nn.Module):
    """fc over [embed(token), feature], one Llama/Qwen2 decoder layer whose
    heads are the target's (Q and O are n_head x head_dim wide)."""

    def __init__(self, t: TargetInfo, n_ff: int, embd: np.ndarray):
        super().__init__()
        d, hd = t.n_embd, t.head_dim
        self.t, self.hd = t, hd
        self.register_buffer("embd", torch.from_numpy(embd), persistent=False)
        self.fc = torch.nn.Linear(2 * d, d, bias=True)
        self.attn_norm = RMSNorm(d, t.rms_eps)
        self.q = torch.nn.Linear(d, hd * t.n_head, bias=t.has_qkv_bias)
        self.k = torch.nn.Linear(d, hd * t.n_head_kv, bias=t.has_qkv_bias)
        self.v = torch.nn.Linear(d, hd * t.n_head_kv, bias=t.has_qkv_bias)
        self.o = torch.nn.Linear(hd * t.n_head, d, bias=False)
        self.ffn_norm = RMSNorm(d, t.rms_eps)
        self.gate = torch.nn.Linear(d, n_ff, bias=False)
        self.up = torch.nn.Linear(d, n_ff, bias=False)
        self.down = torch.nn.Linear(n_ff, d, bias=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, hd], positions 0..T-1, ggml's NORMAL or NEOX pairing."""
        T, hd = x.shape[2], self.hd
        theta = torch.arange(T, dtype=torch.float32)[:, None] * self.t.rope_base ** (
            -torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        cos, sin = torch.cos(theta), torch.sin(theta)
        if self.t.neox:
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], feats [B, T, d] -> predicted next features [B, T, d]."""
        B, T, d = feats.shape
        t, hd = self.t, self.hd
        x = self.fc(torch.cat([self.embd[tokens], feats], dim=-1))
        h = self.attn_norm(x)
        q = self.rope(self.q(h).view(B, T, t.n_head, hd).transpose(1, 2))
        k = self.rope(self.k(h).view(B, T, t.n_head_kv, hd).transpose(1, 2))
        v = self.v(h).view(B, T, t.n_head_kv, hd).transpose(1, 2)
        rep = t.n_head // t.n_head_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, t.n_head * hd))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def export(self, out_rows: np.ndarray, vocab: np.ndarray | None) -> DraftHead:
        """The weights for write_heads; the output rows go in only for a
        reduced vocabulary (the full one is the target's own matrix)."""
        def w(lin):
            return lin.weight.detach().numpy().copy()

        layer = {"attn_norm": self.attn_norm.weight.detach().numpy().copy(), "attn_q": w(self.q),
                 "attn_k": w(self.k), "attn_v": w(self.v), "attn_output": w(self.o),
                 "ffn_norm": self.ffn_norm.weight.detach().numpy().copy(), "ffn_gate": w(self.gate),
                 "ffn_up": w(self.up), "ffn_down": w(self.down)}
        if self.t.has_qkv_bias:
            layer.update({"attn_q_bias": self.q.bias.detach().numpy().copy(),
                          "attn_k_bias": self.k.bias.detach().numpy().copy(),
                          "attn_v_bias": self.v.bias.detach().numpy().copy()})
        return DraftHead(fc=w(self.fc), fc_bias=self.fc.bias.detach().numpy().copy(), layer=layer,
                         output=out_rows if vocab is not None else None, vocab=vocab)


# ---- training ---------------------------------------------------------------------------


PRECISIONS = ("fp32", "bf16")
EVAL_BATCH = 8  # held-out chunks per evaluation batch


def autocast(precision: str):
    """The context the draft's products run in: bfloat16 ones for "bf16"
    (2.4x faster per training step on an AMX CPU, measured at Qwen2.5-Coder-1.5B size)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class DraftConfig:
    n_ff: int = 0                 # 0: the target's width... taken as 2 x n_embd here, a small draft
    draft_vocab: int = 0          # 0: the full vocabulary; else the most frequent target tokens
    steps: int = 2000
    seq_len: int = 256
    batch: int = 4
    lr: float = 3e-4
    ce_weight: float = 0.1        # ref: EAGLE-1
    heldout: float = 0.05
    seed: int = 0
    checkpoint_every: int = 200
    threads: int = 0
    dtype: str = "q8_0"           # storage of the draft's matrices in the head file (heads_file.DRAFT_DTYPES)
    precision: str = "fp32"       # "bf16": matrix products in bfloat16 (torch autocast), weights and optimizer in fp32

    def __post_init__(self) -> None:
        check_fields(self, {"n_ff": ZERO_OR_MORE, "draft_vocab": ZERO_OR_MORE, "steps": COUNT,
                            "seq_len": SEQUENCE_LENGTH, "batch": COUNT, "lr": LEARNING_RATE, "ce_weight": WEIGHT,
                            "heldout": HELD_OUT_SHARE, "seed": SEED, "checkpoint_every": COUNT,
                            "threads": ZERO_OR_MORE})
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def choose_draft_vocab(fs: FeatureSet, out: np.ndarray, size: int, sample: int = 20000) -> np.ndarray:
    """The `size` token ids the target predicts most often on this data."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(fs.tokens), min(sample, len(fs.tokens)), replace=False)
    preds = (np.asarray(fs.features[np.sort(idx)], dtype=np.float32) @ out.T).argmax(-1)
    counts = np.bincount(preds, minlength=out.shape[0]) + np.bincount(fs.tokens, minlength=out.shape[0]) * 1e-3
    return np.sort(np.argsort(-counts, kind="stable")[:size]).astype(np.int32)


def _chunks(fs: FeatureSet, seq_ids: list[int], seq_len: int) -> list[tuple[int, int]]:
    out = []
    for i in seq_ids:
        a, b = fs.offsets[i], fs.offsets[i + 1]
        for s in range(a, b - 1, seq_len):
            if min(b, s + seq_len + 1) - s >= 3:
                out.append((s, min(b, s + seq_len + 1)))
    return out


def _batch(fs: FeatureSet, chunks: list[tuple[int, int]]):
    """Pairs (token x_{i+1}, feature f_i) -> target f_{i+1}, right-padded."""
    T = max(b - a for a, b in chunks) - 1
    B, d = len(chunks), fs.features.shape[1]
    tokens = torch.zeros(B, T, dtype=torch.long)
    feats = torch.zeros(B, T, d)
    target = torch.zeros(B, T, d)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for j, (a, b) in enumerate(chunks):
        n = b - a - 1
        f = torch.from_numpy(np.asarray(fs.features[a:b], dtype=np.float32))
        tokens[j, :n] = torch.from_numpy(fs.tokens[a + 1:b].astype(np.int64))
        feats[j, :n], target[j, :n], mask[j, :n] = f[:-1], f[1:], True
    return tokens, feats, target, mask


def _losses(net: DraftNet, out_t: torch.Tensor, batch, ce_weight: float):
    tokens, feats, target, mask = batch
    pred = net(tokens, feats)[mask]
    tgt = target[mask]
    reg = F.smooth_l1_loss(pred.float(), tgt)
    lp, lt = (pred @ out_t.T).float(), (tgt @ out_t.T).float()
    ce = -(F.softmax(lt, -1) * F.log_softmax(lp, -1)).sum(-1).mean()
    return reg + ce_weight * ce, reg, ce, lp, lt


@torch.no_grad()
def target_tokens(fs: FeatureSet, chunks, out_full: torch.Tensor) -> list[torch.Tensor]:
    """The target's own next token at every position of `chunks`, batch by
    batch as evaluate walks them (argmax over the full vocabulary, in fp32).
    They never change during training: compute them once."""
    out = []
    for i in range(0, len(chunks), EVAL_BATCH):
        batch = _batch(fs, chunks[i:i + EVAL_BATCH])
        out.append((batch[2][batch[3]] @ out_full.T).argmax(-1))
    return out


@torch.no_grad()
def evaluate(net: DraftNet, fs: FeatureSet, chunks, out_t: torch.Tensor, truth: list[torch.Tensor],
             vocab: torch.Tensor | None, k: int = 4, precision: str = "fp32") -> dict:
    """Top-1/top-k hit rate of the draft's candidates against the target's
    own next token (`truth`, from target_tokens on the same chunks)."""
    hit1 = hitk = n = 0
    for i, want in zip(range(0, len(chunks), EVAL_BATCH), truth):
        batch = _batch(fs, chunks[i:i + EVAL_BATCH])
        with autocast(precision):
            _, _, _, lp, _ = _losses(net, out_t, batch, 0.0)
        top = lp.topk(k, dim=-1).indices
        if vocab is not None:
            top = vocab[top]
        hit1 += int((top[:, 0] == want).sum())
        hitk += int((top == want[:, None]).any(-1).sum())
        n += len(want)
    return {"top1": hit1 / max(n, 1), f"top{k}": hitk / max(n, 1), "n": n}


def vocab_rows(fs: FeatureSet, out: np.ndarray, size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The draft vocabulary of `size` tokens (None: the whole vocabulary) and
    the target's output rows it scores."""
    if not 0 < size < out.shape[0]:
        return None, out
    vocab = choose_draft_vocab(fs, out, size)
    return vocab, out[vocab]


def heldout_split(fs: FeatureSet, cfg: DraftConfig, rng: np.random.Generator) -> tuple[list, list]:
    """(held-out, training) chunks: whole sequences, cfg.heldout of them held out."""
    order = rng.permutation(len(fs))
    n_held = max(1, int(len(fs) * cfg.heldout))
    return _chunks(fs, sorted(order[:n_held]), cfg.seq_len), _chunks(fs, sorted(order[n_held:]), cfg.seq_len)


def load_checkpoint(path: str | os.PathLike, info: TargetInfo, embd: np.ndarray) -> tuple[DraftNet, DraftConfig]:
    """The trained draft and its training settings from OUT/draft/draft.pt."""
    state = torch.load(path)
    cfg = DraftConfig(**state["config"])
    net = DraftNet(info, cfg.n_ff or 2 * info.n_embd, embd)
    net.load_state_dict(state["net"], strict=False)
    return net, cfg


def train_draft(model_path: str | os.PathLike, fs: FeatureSet, out_dir: str | os.PathLike,
                cfg: DraftConfig = DraftConfig(), progress: bool = True) -> tuple[DraftHead, dict]:
    """Trains (resuming from OUT/draft.pt if present) and returns the draft
    head, ready for write_heads, with its held-out metrics."""
    check_draft_dtype(cfg.dtype)  # before training, not after
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info, embd, out = read_target(model_path)
    vocab, out_rows = vocab_rows(fs, out, cfg.draft_vocab)
    net = DraftNet(info, cfg.n_ff or 2 * info.n_embd, embd)
    out_t, out_full = torch.from_numpy(out_rows), torch.from_numpy(out)
    vocab_t = torch.from_numpy(vocab.astype(np.int64)) if vocab is not None else None

    rng = np.random.default_rng(cfg.seed)
    held, train = heldout_split(fs, cfg, rng)
    if not train:
        raise ValueError("no training data: extract features from more text")
    truth = target_tokens(fs, held, out_full)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    ckpt = out_dir / "draft.pt"
    if ckpt.exists():
        state = torch.load(ckpt)
        net.load_state_dict(state["net"], strict=False)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("resuming draft training at step %d", step)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)), last_epoch=step - 1)
    log_path = out_dir / "draft_log.jsonl"
    t0 = time.time()
    with tqdm(total=cfg.steps, desc="draft", unit="step", disable=not progress, initial=step) as bar:
        while step < cfg.steps:
            pick = rng.choice(len(train), min(cfg.batch, len(train)), replace=False)
            with autocast(cfg.precision):
                loss, reg, ce, _, _ = _losses(net, out_t, _batch(fs, [train[i] for i in pick]), cfg.ce_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                metrics = evaluate(net, fs, held, out_t, truth, vocab_t, precision=cfg.precision)
                record = {"step": step, "loss": loss.item(), "reg": reg.item(), "ce": ce.item(),
                          "seconds": round(time.time() - t0, 1), **{f"heldout_{k}": v for k, v in metrics.items()}}
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                log.info("draft step %d: %s", step, record)
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                            "config": asdict(cfg)}, ckpt)
    metrics = evaluate(net, fs, held, out_t, truth, vocab_t, precision=cfg.precision)
    return net.export(out_rows, vocab), metrics
