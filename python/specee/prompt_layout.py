"""Which weight layout runs prompts faster on this CPU: ggml's repacked one
(what llama.cpp uses by default) or the plain one.

Passes of more than 16 tokens (prompts) go through ggml's kernels whatever
`--kernels` says, and ggml offers two layouts for some weight types (Q4_0,
Q4_K, IQ4_NL, Q8_0 on x86): the plain one and a repacked one (`use_repack`).
Which is faster depends on the CPU. On a 2-core Sapphire Rapids class Xeon
(AVX-512 VNNI, AMX) the plain layout ran Qwen2.5-Coder-1.5B Q4_K_M's pp512
at 1.01x llama-bench (--repack 0) and the repacked one at 0.72x; on a Zen 4
EPYC the repacked layout was the faster (docs/results.md). So the choice is
measured: once per model file, CPU and thread count, a 64-token prompt in
each layout, alternated, the faster kept and cached (specee cache dir,
layouts/). Decoding is not affected: with specee's kernels steps read their
own packed copy of the matrices.

Kept as llama.cpp does it, repacked, without measuring: `--kernels ggml`
(its numerics token for token), models under 64 MiB (nothing to gain worth
a measurement; the generated test models), and models where ggml repacks
nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

from .fetch import cache_dir
from .measurements import read_record, write_record

log = logging.getLogger(__name__)

VERSION = 1
MIN_BYTES = 64 << 20
PROMPT_TOKENS = 64
ROUNDS = 3


def cpu_name() -> str:
    """The CPU's model name (machines of one kind differ: it keys measurements)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cache_path(path: str | os.PathLike, n_threads: int) -> Path:
    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{cpu_name()}|{n_threads}"
    return cache_dir() / "layouts" / f"repack-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def use_repack(path: str | os.PathLike, kernels: str, n_threads: Optional[int] = None) -> bool:
    """Whether a model loaded from `path` with `kernels` should put its
    matrices in ggml's repacked layout (see the module docstring)."""
    from .engine import SpeceeError, default_threads

    try:
        if kernels == "ggml" or os.path.getsize(path) < MIN_BYTES:
            return True
    except OSError:
        return True  # the load reports what is wrong with the file

    n_threads = n_threads or default_threads()
    where = cache_path(path, n_threads)
    record = read_record(where, VERSION)
    if record is not None and isinstance(record.get("use_repack"), bool):
        return record["use_repack"]
    try:
        record = measure(path, n_threads)
    except SpeceeError:
        return True  # a file that does not load: the load itself reports why
    write_record(where, record, VERSION, "the prompt layout choice")
    return record["use_repack"]


def measure(path: str | os.PathLike, n_threads: int) -> dict:
    """Seconds of a PROMPT_TOKENS prompt in each layout (medians of ROUNDS,
    alternated) and the choice; ggml's kernels, which run prompts."""
    from .engine import Model

    log.info("timing a %d-token prompt in both weight layouts of %s on this CPU (once; cached)", PROMPT_TOKENS,
             Path(path).name)
    models = {r: Model(path, kernels="ggml", use_repack=r) for r in (False, True)}
    try:
        if models[True].n_repacked == 0:
            return {"use_repack": True, "why": "ggml repacks none of this model's matrices"}
        prompt = [(1000 + i) % models[False].n_vocab for i in range(PROMPT_TOKENS)]
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for r in range(ROUNDS + 1):  # the first round warms both up and is not kept
            for repack in ((False, True) if r % 2 == 0 else (True, False)):
                with models[repack].context(n_ctx=PROMPT_TOKENS + 8, n_threads=n_threads) as ctx:
                    t0 = time.perf_counter()
                    ctx.prefill(prompt)
                    if r > 0:
                        seconds[repack].append(time.perf_counter() - t0)
    finally:
        for m in models.values():
            m.close()
    plain, repacked = statistics.median(seconds[False]), statistics.median(seconds[True])
    log.info("prompt layout: plain %.3f s, repacked %.3f s for %d tokens: %s", plain, repacked, PROMPT_TOKENS,
             "repacked" if repacked < plain else "plain")
    return {"use_repack": repacked < plain, "cpu": cpu_name(), "threads": n_threads, "tokens": PROMPT_TOKENS,
            "plain_s": seconds[False], "repacked_s": seconds[True]}
