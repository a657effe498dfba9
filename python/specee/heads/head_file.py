"""Writing SpecEE head files (format: docs/heads.md).

The C library reads them (specee_heads_load); training (`specee pack`) and
tests write them here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import gguf
from gguf.quants import quantize
import numpy as np

from ..engine import EXIT_FEATURE_VERSION, Model
from .._ffi import lib

FORMAT_VERSION = 1
# storage types for the draft's matrices, as libspecee's heads.cpp accepts them
QUANTIZED_DRAFT_TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
DRAFT_DTYPES = ("f32", "f16", *QUANTIZED_DRAFT_TYPES)


def check_draft_dtype(dtype: str) -> None:
    if dtype not in DRAFT_DTYPES:
        raise ValueError(f"draft storage type must be one of {', '.join(DRAFT_DTYPES)}, not {dtype!r}")


@dataclass
class Predictor:
    """MLP 3k -> hidden (ReLU) -> 1 (sigmoid), numpy float32."""

    w1: np.ndarray  # [hidden, 3k]
    b1: np.ndarray  # [hidden]
    w2: np.ndarray  # [hidden]
    b2: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Exit probabilities for features [..., 3k] -> [...] (a 0-d array
        for one feature vector): the numpy reference of heads.cpp's MLP."""
        h = np.maximum(np.asarray(features, np.float32) @ self.w1.T + self.b1, 0.0)
        return 1.0 / (1.0 + np.exp(-(h @ self.w2 + self.b2)))


@dataclass
class DraftHead:
    """EAGLE-style draft head weights, numpy float32, matrices as [out, in]:
    fc [d, 2d] over [embed(token), feature]; one decoder layer (`layer`:
    attn_q/k/v/output, ffn_gate/up/down, ffn_norm, optional attn_norm and
    attn_q/k/v biases); optional reduced output rows [n, d] with the token id
    of each row in `vocab`."""

    fc: np.ndarray
    layer: dict
    fc_bias: np.ndarray | None = None
    output: np.ndarray | None = None
    vocab: np.ndarray | None = None

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"draft.fc.weight": self.fc}
        if self.fc_bias is not None:
            out["draft.fc.bias"] = self.fc_bias
        for name, value in self.layer.items():
            suffix = "weight" if not name.endswith("_bias") else "bias"
            out[f"draft.blk.{name.removesuffix('_bias')}.{suffix}"] = value
        if self.output is not None:
            out["draft.output.weight"] = self.output
            if self.vocab is not None:
                out["draft.vocab"] = np.asarray(self.vocab, dtype=np.int32)
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray]) -> "DraftHead":
        """The inverse of tensors()."""
        layer = {}
        for name, value in tensors.items():
            if name.startswith("draft.blk."):
                base, kind = name.removeprefix("draft.blk.").rsplit(".", 1)
                layer[base + ("_bias" if kind == "bias" else "")] = value
        return cls(fc=tensors["draft.fc.weight"], layer=layer, fc_bias=tensors.get("draft.fc.bias"),
                   output=tensors.get("draft.output.weight"), vocab=tensors.get("draft.vocab"))


def write_heads(path: str | os.PathLike, model: Model, predictors: Mapping[int, Predictor],
                exit_layers: Sequence[int] | None = None, threshold: float = 0.5, n_candidates: int = 4,
                draft: DraftHead | None = None, draft_dtype: str = "q8_0", verify_full: bool = True,
                use_online: bool = True) -> None:
    """Writes predictors (by layer index: checked after that layer) and an
    optional draft head for `model`; the draft's matrices are stored as
    `draft_dtype` (DRAFT_DTYPES; vectors stay f32): every decode step reads
    them, so their size is time. `verify_full` is the exit verification the
    predictors were trained for, `use_online` whether layers around recent
    exits are checked too by default (docs/heads.md)."""
    check_draft_dtype(draft_dtype)
    if not predictors:
        raise ValueError("at least one predictor is needed")
    hidden = {p.w1.shape[0] for p in predictors.values()}
    if len(hidden) != 1:
        raise ValueError("all predictors must have the same hidden size")
    w = gguf.GGUFWriter(os.fspath(path), "specee-heads")
    w.add_uint32("specee.format_version", FORMAT_VERSION)
    w.add_string("specee.base.architecture", model.arch)
    w.add_uint32("specee.base.n_layer", model.n_layer)
    w.add_uint32("specee.base.n_embd", model.n_embd)
    w.add_uint32("specee.base.n_vocab", model.n_vocab)
    w.add_string("specee.base.fingerprint", model.fingerprint)
    w.add_uint32("specee.draft.k", n_candidates)
    w.add_float32("specee.exit.threshold", threshold)
    w.add_bool("specee.exit.verify_full", verify_full)
    w.add_bool("specee.exit.use_online", use_online)
    w.add_uint32("specee.exit.feature_version", EXIT_FEATURE_VERSION)
    w.add_uint32("specee.exit.hidden", hidden.pop())
    if exit_layers is not None:
        w.add_array("specee.exit.layers", [int(x) for x in exit_layers])
    for layer, p in sorted(predictors.items()):
        n_features = lib.SPECEE_EXIT_FEATURES_PER_CANDIDATE * n_candidates
        if p.w1.shape[1] != n_features:
            raise ValueError(f"predictor {layer} takes {p.w1.shape[1]} features, expected {n_features}")
        w.add_tensor(f"exit.{layer}.fc1.weight", np.ascontiguousarray(p.w1, dtype=np.float32))
        w.add_tensor(f"exit.{layer}.fc1.bias", np.asarray(p.b1, dtype=np.float32))
        w.add_tensor(f"exit.{layer}.fc2.weight", np.asarray(p.w2, dtype=np.float32))
        w.add_tensor(f"exit.{layer}.fc2.bias", np.asarray([p.b2], dtype=np.float32))
    if draft is not None:
        for name, value in draft.tensors().items():
            value = np.asarray(value)
            if name == "draft.vocab":
                w.add_tensor(name, np.ascontiguousarray(value, dtype=np.int32))
            elif value.ndim == 2 and draft_dtype in QUANTIZED_DRAFT_TYPES:
                qtype = QUANTIZED_DRAFT_TYPES[draft_dtype]
                w.add_tensor(name, quantize(np.ascontiguousarray(value, dtype=np.float32), qtype), raw_dtype=qtype)
            elif value.ndim == 2 and draft_dtype == "f16":
                w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float16))
            else:
                w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def constant_predictor(prob_logit: float, n_features: int = 12, hidden: int = 8) -> Predictor:
    """A predictor whose output is sigmoid(prob_logit) for every input: for
    tests and for measuring the exit machinery's cost."""
    return Predictor(np.zeros((hidden, n_features), np.float32), np.zeros(hidden, np.float32),
                     np.zeros(hidden, np.float32), float(prob_logit))
