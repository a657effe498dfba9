"""A numpy reference forward pass for Llama / Qwen2 GGUF models.

Written from the model definition, not from the engine: weights are
dequantized with the `gguf` package, math in float64, K/V rounded to float16
as the engine's cache stores them. Slow; for tiny test models only.
"""
from __future__ import annotations

import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Reference:
    def __init__(self, path: str | os.PathLike):
        r = GGUFReader(os.fspath(path))

        def meta(key, default=None):
            f = r.fields.get(key)
            return default if f is None else f.contents()

        self.arch = meta("general.architecture")
        a = self.arch
        self.n_layer = int(meta(f"{a}.block_count"))
        self.n_embd = int(meta(f"{a}.embedding_length"))
        self.n_head = int(meta(f"{a}.attention.head_count"))
        self.n_head_kv = int(meta(f"{a}.attention.head_count_kv", self.n_head))
        self.rope_base = float(meta(f"{a}.rope.freq_base", 10000.0))
        self.eps = float(meta(f"{a}.attention.layer_norm_rms_epsilon", 1e-5))
        self.hd = self.n_embd // self.n_head
        self.w = {}
        for t in r.tensors:
            # numpy shape is ggml's ne reversed: [out, in] for matrices
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
                tuple(int(x) for x in reversed(t.shape)))
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])
        self.n_vocab = self.out.shape[0]
        self.reset()

    def reset(self) -> None:
        # per layer: K and V rows of the positions that layer computed,
        # float16-rounded; early exit leaves deeper layers without some
        self.k = [[] for _ in range(self.n_layer)]
        self.v = [[] for _ in range(self.n_layer)]
        self.n_past = 0

    # ---- pieces ----

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        """x: [n_heads, hd] at position `pos`."""
        hd = self.hd
        theta = pos * self.rope_base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
        cos, sin = np.cos(theta), np.sin(theta)
        out = x.copy()
        if self.arch == "qwen2":  # NEOX: pairs (i, i + hd/2)
            a, b = x[:, : hd // 2], x[:, hd // 2:]
            out[:, : hd // 2] = a * cos - b * sin
            out[:, hd // 2:] = a * sin + b * cos
        else:  # normal: pairs (2i, 2i + 1)
            a, b = x[:, 0::2], x[:, 1::2]
            out[:, 0::2] = a * cos - b * sin
            out[:, 1::2] = a * sin + b * cos
        return out

    def _kv_rows(self, w: dict, p: str, h: np.ndarray, pos: int, ks: list, vs: list) -> None:
        """K/V of the layer with weights w[p + ...] for its normed input h,
        appended to ks/vs (the positions that layer saw)."""
        k = w[p + "attn_k.weight"] @ h + w.get(p + "attn_k.bias", 0.0)
        v = w[p + "attn_v.weight"] @ h + w.get(p + "attn_v.bias", 0.0)
        k = self._rope(k.reshape(self.n_head_kv, self.hd), pos)
        ks.append(k.astype(np.float16).astype(np.float64))
        vs.append(v.reshape(self.n_head_kv, self.hd).astype(np.float16).astype(np.float64))

    def _block(self, w: dict, p: str, x: np.ndarray, pos: int, ks: list, vs: list) -> np.ndarray:
        """One decoder layer (weights w[p + ...]; attn_norm optional) over its K/V rows."""
        h = self._norm(x, w[p + "attn_norm.weight"]) if p + "attn_norm.weight" in w else x
        q = w[p + "attn_q.weight"] @ h + w.get(p + "attn_q.bias", 0.0)
        q = self._rope(q.reshape(self.n_head, self.hd), pos)
        self._kv_rows(w, p, h, pos, ks, vs)
        K, V = np.stack(ks), np.stack(vs)  # [n_kv, n_head_kv, hd]
        group = self.n_head // self.n_head_kv
        out = np.empty((self.n_head, self.hd))
        for hh in range(self.n_head):
            s = K[:, hh // group, :] @ q[hh] / np.sqrt(self.hd)
            s = np.exp(s - s.max())
            out[hh] = (s / s.sum()) @ V[:, hh // group, :]
        x = x + w[p + "attn_output.weight"] @ out.reshape(-1)
        h = self._norm(x, w[p + "ffn_norm.weight"])
        g = w[p + "ffn_gate.weight"] @ h
        u = w[p + "ffn_up.weight"] @ h
        return x + w[p + "ffn_down.weight"] @ (g / (1.0 + np.exp(-g)) * u)

    def _store_kv(self, il: int, h: np.ndarray, pos: int) -> None:
        self._kv_rows(self.w, f"blk.{il}.", h, pos, self.k[il], self.v[il])

    def _layer(self, il: int, x: np.ndarray, pos: int) -> np.ndarray:
        return self._block(self.w, f"blk.{il}.", x, pos, self.k[il], self.v[il])

    # ---- public ----

    def step(self, token: int, keep_hidden: int | None = None, final_norm: bool = False,
             n_layers: int | None = None, fill_kv: bool = False):
        """Appends one token; returns (logits [n_vocab], hidden after
        `keep_hidden` layers or None). With `n_layers`, only that many layers
        run (an early exit): logits come from there, and deeper layers never
        see this position, unless `fill_kv` gives them K/V projected from
        the hidden state the exit stopped at."""
        pos = self.n_past
        n_layers = self.n_layer if n_layers is None else n_layers
        x = self.w["token_embd.weight"][token].copy()
        hidden = None
        for il in range(n_layers):
            if keep_hidden == il:
                hidden = x.copy()
            x = self._layer(il, x, pos)
        if fill_kv:
            for il in range(n_layers, self.n_layer):
                self._store_kv(il, self._norm(x, self.w[f"blk.{il}.attn_norm.weight"]), pos)
        self.n_past += 1
        if keep_hidden == n_layers:
            hidden = x.copy()
        if hidden is not None and final_norm:
            hidden = self._norm(hidden, self.w["output_norm.weight"])
        logits = self.out @ self._norm(x, self.w["output_norm.weight"])
        return logits, hidden

    def forward(self, tokens) -> np.ndarray:
        """Logits [n_tokens, n_vocab] for tokens appended one by one."""
        return np.stack([self.step(int(t))[0] for t in tokens])


class DraftReference:
    """The EAGLE-style draft head of a head file, in numpy: fc over
    [embed(token), feature], one decoder layer with its own K/V, logits over
    its output rows (the target's when it has none)."""

    def __init__(self, target: Reference, tensors: dict):
        self.t = target
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items() if k != "draft.vocab"}
        self.vocab = tensors.get("draft.vocab")
        self.out = self.w.get("draft.output.weight", target.out)
        self.k, self.v, self.n_past = [], [], 0

    def step(self, token: int, feature: np.ndarray) -> np.ndarray:
        t, w = self.t, self.w
        x = np.concatenate([t.w["token_embd.weight"][token], feature])
        x = w["draft.fc.weight"] @ x + w.get("draft.fc.bias", 0.0)
        x = t._block(w, "draft.blk.", x, self.n_past, self.k, self.v)
        self.n_past += 1
        return self.out @ x

    def top_k(self, logits: np.ndarray, k: int) -> list[int]:
        rows = [int(i) for i in np.argsort(-logits, kind="stable")[:k]]
        return rows if self.vocab is None else [int(self.vocab[i]) for i in rows]
