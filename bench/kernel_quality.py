"""The quality of specee's kernels as llama.cpp measures its own quantization:
perplexity over text, and KL divergence and same-top-1 rate against a
high-precision reference, for `--kernels ggml` and `--kernels specee`, beside
llama.cpp's `llama-perplexity` on the same text.

    python bench/kernel_quality.py --model qwen2.5-coder-1.5b --chunks 4 \
        --llama-perplexity ~/.cache/specee-ref/.../llama-perplexity --out bench/results/kernels/quality_qwen15b.json

The text is XSum articles (fetched as `specee eval` fetches them), written
to a file for llama-perplexity and tokenized by specee (the same ids:
docs/tokenizers.md). As llama-perplexity does, the tokens are cut into
chunks of --ctx tokens, each chunk's first token becomes BOS where the model
adds one, and the second half of each chunk is scored. specee runs each chunk
in passes of 16 tokens (`n_batch=16`), so the matrices go through the
kernels a decode step uses (specee's take passes of up to 16 columns, each
column as a one-token step computes it).

The reference runs the same quantized weights, dequantized to float32, with
float32 activations throughout (no 8-bit quantization of activations, K/V
not rounded to float16): the model the quantized file defines, computed
without the kernels' shortcuts. It is a batched numpy forward written for
this bench (tests/reference.py is the per-token float64 one for tiny models).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from machine import cpu_model
from specee.engine import Model
from specee.evaluation.datasets import load_xsum
from specee.fetch import fetch_model
from specee.tokenizer import Tokenizer


class Float32Reference:
    """A batched float32 forward pass of a llama / qwen2 GGUF model over one
    sequence: every position's logits."""

    def __init__(self, path: Path):
        r = GGUFReader(str(path))

        def meta(key, default=None):
            f = r.fields.get(key)
            return default if f is None else f.contents()

        a = meta("general.architecture")
        if a not in ("llama", "qwen2"):
            raise SystemExit(f"the float32 reference runs llama and qwen2 models, not {a}")
        self.n_layer = int(meta(f"{a}.block_count"))
        self.n_head = int(meta(f"{a}.attention.head_count"))
        self.n_head_kv = int(meta(f"{a}.attention.head_count_kv", self.n_head))
        n_embd = int(meta(f"{a}.embedding_length"))
        self.hd = n_embd // self.n_head
        self.rope_base = float(meta(f"{a}.rope.freq_base", 10000.0))
        self.eps = float(meta(f"{a}.attention.layer_norm_rms_epsilon", 1e-5))
        self.neox = a != "llama"  # llama rotates pairs (2i, 2i + 1), qwen2 (i, i + hd/2)
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
            tuple(int(x) for x in reversed(t.shape))) for t in r.tensors}
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """x: [n, heads, hd] at positions 0..n-1."""
        inv = self.rope_base ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        theta = np.arange(x.shape[0], dtype=np.float64)[:, None] * inv[None, :]  # [n, hd/2]
        cos, sin = np.cos(theta)[:, None, :].astype(np.float32), np.sin(theta)[:, None, :].astype(np.float32)
        out = np.empty_like(x)
        if self.neox:
            a, b = x[..., : self.hd // 2], x[..., self.hd // 2:]
            out[..., : self.hd // 2], out[..., self.hd // 2:] = a * cos - b * sin, a * sin + b * cos
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        w, n = self.w, len(tokens)
        x = self.w["token_embd.weight"][np.asarray(tokens)]
        causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        group = self.n_head // self.n_head_kv
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self._norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0.0)).reshape(n, self.n_head, self.hd)
            k = (h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0.0)).reshape(n, self.n_head_kv, self.hd)
            v = (h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0.0)).reshape(n, self.n_head_kv, self.hd)
            q, k = self._rope(q), self._rope(k)
            att = np.empty((n, self.n_head, self.hd), dtype=np.float32)
            for hh in range(self.n_head):
                s = q[:, hh, :] @ k[:, hh // group, :].T / np.float32(np.sqrt(self.hd)) + causal
                s = np.exp(s - s.max(axis=1, keepdims=True))
                att[:, hh, :] = (s / s.sum(axis=1, keepdims=True)) @ v[:, hh // group, :]
            x = x + att.reshape(n, -1) @ w[p + "attn_output.weight"].T
            h = self._norm(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            x = x + (g / (1.0 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        return self._norm(x, w["output_norm.weight"]) @ self.out.T


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def engine_logits(model: Model, chunk: list[int], threads: int) -> np.ndarray:
    with model.context(n_ctx=len(chunk), n_batch=16, n_threads=threads) as ctx:
        ctx.prefill(chunk, logits_all=True)
        return ctx.all_logits()


def llama_perplexity(binary: Path, model: Path, text: Path, ctx: int, chunks: int, threads: int,
                     ubatch: int) -> float:
    # --no-repack: ggml's repacked AMX layout faults on prompts on AMX Xeons (docs/results.md); the
    # figure is that of ggml's plain kernels then, which `--kernels ggml` runs too. `ubatch`: the
    # tokens of one pass (its matrix kernels depend on it)
    run = subprocess.run([str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
                          "-t", str(threads), "-b", str(ctx), "-ub", str(ubatch), "--no-repack"],
                         capture_output=True, text=True, check=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    if found is None:
        raise SystemExit("llama-perplexity printed no final estimate:\n" + run.stderr[-2000:])
    return float(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-perplexity", type=Path, help="llama.cpp's llama-perplexity, for its figure beside ours")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    path = fetch_model(args.model, progress=False)
    tok = Tokenizer.from_gguf(path)
    docs, tokens = [], []
    for item in load_xsum(progress=False):
        docs.append(item.document)
        tokens = tok.encode("\n\n".join(docs))
        if len(tokens) >= args.ctx * args.chunks:
            break
    chunks = [tokens[i * args.ctx:(i + 1) * args.ctx] for i in range(min(args.chunks, len(tokens) // args.ctx))]
    if tok.add_bos:
        chunks = [[tok.bos_id] + c[1:] for c in chunks]
    first = args.ctx // 2  # as llama-perplexity: the second half of each chunk is scored

    t0 = time.time()
    ref = Float32Reference(path)
    ref_lp = [log_softmax(ref.logits(c))[first:-1].astype(np.float32) for c in chunks]  # float32 to fit memory
    del ref
    t_ref = time.time() - t0
    targets = [np.asarray(c[first + 1:]) for c in chunks]

    def nll(lp: list[np.ndarray]) -> float:
        return float(np.mean(np.concatenate([-l[np.arange(len(t)), t] for l, t in zip(lp, targets)], dtype=np.float64)))

    out = {"model": str(path), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
           "ctx": args.ctx, "chunks": len(chunks), "scored_tokens": sum(len(t) for t in targets),
           "text": "XSum articles, joined by blank lines", "reference_s": round(t_ref, 1),
           "reference_ppl": round(float(np.exp(nll(ref_lp))), 4), "kernels": {}}
    per_token_kl = {}
    for kernels in ("ggml", "specee"):
        kl, top1, token_nll = [], [], []
        with Model(path, kernels=kernels) as m:
            for c, r, t in zip(chunks, ref_lp, targets):  # chunk by chunk: a 152k vocabulary's rows are large
                lp = log_softmax(engine_logits(m, c, args.threads))[first:-1]
                r = r.astype(np.float64)
                kl.append((np.exp(r) * (r - lp)).sum(axis=-1))
                top1.append(r.argmax(-1) == lp.argmax(-1))
                token_nll.append(-lp[np.arange(len(t)), t])
        kl, top1 = np.concatenate(kl), np.concatenate(top1)
        per_token_kl[kernels] = kl
        out["kernels"][kernels] = {"ppl": round(float(np.exp(np.mean(np.concatenate(token_nll)))), 4),
                                   "kl_vs_reference_mean": round(float(kl.mean()), 6),
                                   "kl_vs_reference_p99": round(float(np.quantile(kl, 0.99)), 6),
                                   "same_top1_as_reference": round(float(top1.mean()), 4)}
    # paired over the same tokens: is specee's KL against the reference larger than ggml's?
    diff = per_token_kl["specee"] - per_token_kl["ggml"]
    out["kl_specee_minus_ggml"] = {"mean": round(float(diff.mean()), 7),
                                   "standard_error": round(float(diff.std(ddof=1) / np.sqrt(diff.size)), 7)}
    if args.llama_perplexity:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tmp) / "text.txt"
            text.write_text("\n\n".join(docs))
            # passes of a whole chunk (its default) and of 16 tokens (as specee's runs here)
            out["llama_perplexity_ppl"] = llama_perplexity(args.llama_perplexity, path, text, args.ctx,
                                                           len(chunks), args.threads, args.ctx)
            out["llama_perplexity_ppl_ubatch16"] = llama_perplexity(args.llama_perplexity, path, text, args.ctx,
                                                                    len(chunks), args.threads, 16)
        for k in out["kernels"].values():
            k["ppl_vs_llama_cpp"] = round(k["ppl"] / out["llama_perplexity_ppl"] - 1.0, 5)
            k["ppl_vs_llama_cpp_ubatch16"] = round(k["ppl"] / out["llama_perplexity_ppl_ubatch16"] - 1.0, 5)
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
