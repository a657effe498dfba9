"""Replays fuzz inputs through the Python API, as a host program would.

    python tests/fuzz/replay.py model FILE...
    python tests/fuzz/replay.py heads MODEL.gguf FILE...

Each file is loaded (then run for a few tokens, as the fuzz targets do) and
gets one line: "FILE: ok" or "FILE: <error class>: <message>". The exit
status is 0 unless the library crashed the process, which is the bug; the
regression test runs this in a subprocess for that reason.
"""
from __future__ import annotations

import sys

from specee.engine import Heads, Model, SpeceeError


def run_model(path: str) -> None:
    with Model(path, check_tensors=True) as model, model.context(n_ctx=8, n_threads=1) as ctx:
        ctx.prefill([0, model.n_vocab - 1], logits_all=True)
        ctx.decode(ctx.argmax())


def run_heads(model: Model, path: str) -> None:
    with Heads(model, path) as heads, model.context(n_ctx=16, n_threads=1) as ctx:
        ctx.set_heads(heads)
        ctx.prefill([1, 2, 3])
        candidates = list(range(heads.n_candidates))
        if heads.has_draft:
            candidates = ctx.draft_sync(4)
        ctx.decode_with_candidates(4, candidates)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("model", "heads") or (argv[0] == "heads" and len(argv) < 3):
        print("usage: replay.py model FILE... | replay.py heads MODEL.gguf FILE...", file=sys.stderr)
        return 2
    model = Model(argv[1]) if argv[0] == "heads" else None
    for path in argv[2:] if model else argv[1:]:
        try:
            run_heads(model, path) if model else run_model(path)
            print(f"{path}: ok")
        except SpeceeError as e:
            print(f"{path}: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
