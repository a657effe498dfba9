"""A numpy reference forward pass for Llama / Qwen2 / Qwen3 / Phi-3 GGUF models.

Written from the model definition, not from the engine: weights are
dequantized with the `gguf` package, math in float64, K/V rounded to float16
as the engine's cache stores them. Slow; for tiny test models only.
"""
from __future__ import annotations

import copy
import os
import struct

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


class _ArraysAtOnceReader(GGUFReader):
    """GGUFReader (gguf 0.19, pinned) parses metadata arrays element by
    element: seconds for a real vocabulary's 100k+ tokens and merges. The
    reference needs numbers and tensors only, so string arrays are stepped
    over (their contents read as []) and numeric arrays read as one view."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        itype = self._get(orig_offs, np.uint32)
        count = self._get(orig_offs + 4, np.uint64)
        offs = orig_offs + 12
        types = [GGUFValueType.ARRAY, GGUFValueType(int(itype[0]))]
        if types[1] == GGUFValueType.STRING:
            buf = memoryview(self.data)
            for _ in range(int(count[0])):
                offs += 8 + struct.unpack_from("<Q", buf, offs)[0]
            return offs - orig_offs, [itype, count], [], types
        nptype = self.gguf_scalar_to_np.get(types[1])
        if nptype is None:  # nested arrays: the element-wise parse
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(offs, nptype, int(count[0]))
        return offs + int(values.nbytes) - orig_offs, [itype, count, values], [2], types


class Reference:
    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None):
        """`n_ctx`: the context size the engine runs with; longrope models
        rotate with their long factors past rope.scaling.original_context_length."""
        r = _ArraysAtOnceReader(os.fspath(path))

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
        self.hd = int(meta(f"{a}.attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(meta(f"{a}.rope.dimension_count", self.hd))
        self.neox = self.arch != "llama"  # llama pairs (2i, 2i + 1), the others (i, i + n_rot/2)
        scaling = meta(f"{a}.rope.scaling.type", "linear")
        factor = float(meta(f"{a}.rope.scaling.factor", 0.0))
        self.freq_scale = 1.0 / factor if scaling != "none" and factor else 1.0
        self.attn_factor = float(meta(f"{a}.rope.scaling.attn_factor", 1.0))
        self.w = {}
        for t in r.tensors:
            # numpy shape is ggml's ne reversed: [out, in] for matrices
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
                tuple(int(x) for x in reversed(t.shape)))
        # frequency divisors: Llama 3.1's rope_freqs, or longrope's set for this context size
        n_ctx_orig = int(meta(f"{a}.rope.scaling.original_context_length", meta(f"{a}.context_length", 2048)))
        long = n_ctx is not None and n_ctx > n_ctx_orig
        self.rope_factors = self.w.get("rope_freqs.weight",
                                       self.w.get("rope_factors_long.weight" if long else "rope_factors_short.weight",
                                                  np.ones(self.n_rot // 2)))
        # phi3 fuses Q, K, V and gate, up: split them so every layer reads alike
        q_dim, kv_dim = self.n_head * self.hd, self.n_head_kv * self.hd
        for il in range(self.n_layer):
            p = f"blk.{il}."
            qkv = self.w.pop(p + "attn_qkv.weight", None)
            if qkv is not None:
                self.w[p + "attn_q.weight"] = qkv[:q_dim]
                self.w[p + "attn_k.weight"] = qkv[q_dim:q_dim + kv_dim]
                self.w[p + "attn_v.weight"] = qkv[q_dim + kv_dim:]
            if p + "ffn_gate.weight" not in self.w:
                gate_up = self.w[p + "ffn_up.weight"]
                half = gate_up.shape[0] // 2
                self.w[p + "ffn_gate.weight"], self.w[p + "ffn_up.weight"] = gate_up[:half], gate_up[half:]
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

    def _rope(self, x: np.ndarray, pos: int, plain: bool = False) -> np.ndarray:
        """x: [n_heads, hd] at position `pos`: the first n_rot values of each
        head rotate, pair i by pos * freq_scale * base^(-2i/n_rot) / factor_i,
        cos and sin scaled by attn_factor. `plain`: whole heads, no scaling
        (the draft head's RoPE)."""
        r = self.hd if plain else self.n_rot
        inv_freq = self.rope_base ** (-np.arange(0, r, 2) / r)  # [r/2]
        mscale = 1.0
        if not plain:
            inv_freq = inv_freq * self.freq_scale / self.rope_factors
            mscale = self.attn_factor
        theta = pos * inv_freq
        cos, sin = np.cos(theta) * mscale, np.sin(theta) * mscale
        out = x.copy()
        if self.neox:  # pairs (i, i + r/2)
            a, b = x[:, : r // 2], x[:, r // 2: r]
            out[:, : r // 2] = a * cos - b * sin
            out[:, r // 2: r] = a * sin + b * cos
        else:  # pairs (2i, 2i + 1)
            a, b = x[:, 0:r:2], x[:, 1:r:2]
            out[:, 0:r:2] = a * cos - b * sin
            out[:, 1:r:2] = a * sin + b * cos
        return out

    def _head_norm(self, w: dict, name: str, x: np.ndarray) -> np.ndarray:
        """qwen3's RMSNorm of every head ([n_heads, hd]) when the layer has it."""
        return self._norm(x, w[name]) if name in w else x

    def _kv_rows(self, w: dict, p: str, h: np.ndarray, pos: int, ks: list, vs: list, plain: bool = False) -> None:
        """K/V of the layer with weights w[p + ...] for its normed input h,
        appended to ks/vs (the positions that layer saw)."""
        k = w[p + "attn_k.weight"] @ h + w.get(p + "attn_k.bias", 0.0)
        v = w[p + "attn_v.weight"] @ h + w.get(p + "attn_v.bias", 0.0)
        k = self._head_norm(w, p + "attn_k_norm.weight", k.reshape(self.n_head_kv, self.hd))
        k = self._rope(k, pos, plain)
        ks.append(k.astype(np.float16).astype(np.float64))
        vs.append(v.reshape(self.n_head_kv, self.hd).astype(np.float16).astype(np.float64))

    def _block(self, w: dict, p: str, x: np.ndarray, pos: int, ks: list, vs: list,
               plain: bool = False) -> np.ndarray:
        """One decoder layer (weights w[p + ...]; attn_norm optional) over its
        K/V rows; `plain`: the draft head's RoPE."""
        h = self._norm(x, w[p + "attn_norm.weight"]) if p + "attn_norm.weight" in w else x
        q = w[p + "attn_q.weight"] @ h + w.get(p + "attn_q.bias", 0.0)
        q = self._head_norm(w, p + "attn_q_norm.weight", q.reshape(self.n_head, self.hd))
        q = self._rope(q, pos, plain)
        self._kv_rows(w, p, h, pos, ks, vs, plain)
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

    def step_with_exit(self, token: int, n_layers: int, exits) -> tuple[int, int]:
        """One early-exit step under full verification, K/V not filled:
        `n_layers` layers, then the argmax e of the logits there; when
        `exits(e)` the step ends with e (deeper layers never see this
        position), else the other layers run and the token is the full
        model's argmax. Returns (token, layers run)."""
        pos = self.n_past
        x = self.w["token_embd.weight"][token].copy()
        for il in range(n_layers):
            x = self._layer(il, x, pos)
        ran = n_layers
        token = int(np.argmax(self.out @ self._norm(x, self.w["output_norm.weight"])))
        if not exits(token):
            for il in range(n_layers, self.n_layer):
                x = self._layer(il, x, pos)
            ran = self.n_layer
            token = int(np.argmax(self.out @ self._norm(x, self.w["output_norm.weight"])))
        self.n_past += 1
        return token, ran

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
        x = t._block(w, "draft.blk.", x, self.n_past, self.k, self.v, plain=True)
        self.n_past += 1
        self.predicted_feature = x  # what a further (EAGLE) step is fed
        return self.out @ x

    def fork(self) -> "DraftReference":
        """A copy that steps on from here without changing this one (the
        weights shared, the K/V rows so far copied)."""
        other = copy.copy(self)
        other.k, other.v = list(self.k), list(self.v)
        return other

    def top_k(self, logits: np.ndarray, k: int) -> list[int]:
        rows = [int(i) for i in np.argsort(-logits, kind="stable")[:k]]
        return rows if self.vocab is None else [int(self.vocab[i]) for i in rows]
