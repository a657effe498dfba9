"""Seed inputs for the fuzz targets: small valid model and head files.

Written afresh by the fuzz test (never committed): tiny models of both
architectures and several weight types, and head files (predictors only; with
a schedule and a draft head) made for SEED_MODEL, the model the heads target
loads. Everything is generated from fixed seeds, so the files are the same on
every run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: tiny_model

from tiny_model import TinyConfig, write_tiny_model  # noqa: E402

# small enough that a load takes well under a millisecond; n_embd 32 keeps
# the rows a whole number of Q8_0 / Q4_0 blocks
SMALL = dict(n_embd=32, n_ff=64, n_head=2, n_head_kv=1, n_layer=3, n_ctx_train=64)
SEED_MODEL = "llama_f32.gguf"
MODELS = {
    SEED_MODEL: TinyConfig(**SMALL),
    "qwen2_q8_0_untied.gguf": TinyConfig(**SMALL, arch="qwen2", qtype="Q8_0", tied=False, seed=1),
    "llama_q4_0.gguf": TinyConfig(**SMALL, qtype="Q4_0", seed=2),
}


def write_models(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: write_tiny_model(out_dir / name, cfg) for name, cfg in MODELS.items()}


def _draft(cfg: TinyConfig, rng: np.random.Generator, n_rows: int):
    from specee.heads.head_file import DraftHead

    d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    q, kv, ff = cfg.n_head * hd, cfg.n_head_kv * hd, 64

    def mat(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    layer = {"attn_q": mat(q, d), "attn_k": mat(kv, d), "attn_v": mat(kv, d), "attn_output": mat(d, q),
             "attn_norm": norm(), "ffn_norm": norm(),
             "ffn_gate": mat(ff, d), "ffn_up": mat(ff, d), "ffn_down": mat(d, ff)}
    vocab = np.sort(rng.choice(cfg.n_vocab, n_rows, replace=False)).astype(np.int32)
    return DraftHead(fc=mat(d, 2 * d), layer=layer, fc_bias=(0.1 * rng.standard_normal(d)).astype(np.float32),
                     output=mat(n_rows, d), vocab=vocab)


def write_heads_seeds(model_path: Path, out_dir: Path) -> list[Path]:
    """Head files for the model at `model_path` (needs libspecee); each one
    loads, so that fuzzing starts past the loader's checks."""
    from specee.engine import Heads, Model
    from specee.heads.head_file import constant_predictor, write_heads

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = MODELS[model_path.name]
    rng = np.random.default_rng(0)
    paths = [out_dir / "predictors.gguf", out_dir / "schedule_draft_q8_0.gguf", out_dir / "draft_f32_k2.gguf"]
    with Model(model_path) as model:
        write_heads(paths[0], model, {0: constant_predictor(40.0), 1: constant_predictor(-40.0)})
        write_heads(paths[1], model, {0: constant_predictor(0.0), 1: constant_predictor(40.0)}, exit_layers=[1],
                    threshold=0.7, draft=_draft(cfg, rng, 32), draft_dtype="q8_0", verify_full=False)
        write_heads(paths[2], model, {1: constant_predictor(0.0, n_features=6)}, n_candidates=2,
                    draft=_draft(cfg, rng, 16), draft_dtype="f32", use_online=False)
        for path in paths:
            Heads(model, path).close()
    return paths


def main(argv: list[str]) -> int:
    """python tests/fuzz/seeds.py OUT: writes OUT/model/ and OUT/heads/ (the
    heads are for OUT/model/SEED_MODEL, the model fuzz_heads_load wants)."""
    if len(argv) != 1:
        print("usage: seeds.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    models = write_models(out / "model")
    write_heads_seeds(models[SEED_MODEL], out / "heads")
    print(f"seeds in {out}/model and {out}/heads; SPECEE_FUZZ_MODEL={models[SEED_MODEL]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
