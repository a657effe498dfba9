"""The server's settings, from `specee serve` flags or set by hand in tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..decoding.speculative import DRAFT_MAX, parse_draft

MODES = ("vanilla", "specee", "speculative")


@dataclass
class ServerConfig:
    model_path: Path
    model_id: str                      # the name /v1/models reports and responses echo
    parallel: int = 4                  # slots: requests decoded at the same time
    queue: int = 32                    # requests that may wait for a slot; more get 503
    ctx_size: int = 2048               # tokens per slot (prompt + answer)
    threads: int = 0                   # compute threads (0: the cores this process may use)
    api_key: Optional[str] = None      # when set, every endpoint but /health and / needs it
    mode: str = "vanilla"              # default decoding: "vanilla", "specee" or "speculative"
    heads: Optional[Path] = None       # head file (default: the heads that ship for the model)
    threshold: Optional[float] = None  # predictor threshold (default: the head file's)
    verify: Optional[str] = None       # "full" or "candidates" (default: the head file's)
    lossy: bool = False                # with mode specee: the paper's lossy early exit (default exact)
    draft: str = "lookup"              # the speculative mode's drafter (speculative.choice.parse_draft)
    draft_max: int = 8                 # most drafted tokens per verification
    max_tokens_limit: int = 1024       # the most tokens one request may ask for
    max_body_bytes: int = 1 << 20      # larger request bodies get 413
    batching: bool = True              # full-depth slots decode in one batched pass per step
    amx_decode: bool = False           # decode steps read AMX-layout copies of the matrices (AMX CPUs)
    kernels: Optional[str] = None      # whose CPU kernels multiply the matrices (engine.KERNELS; None: Model's default)
    n_gpu_layers: int = 0              # the last N layers on the offload devices (as generate's -ngl)
    rpc_servers: Optional[str] = None  # "host:port[,host:port...]": ggml RPC servers for the offloaded layers

    def check(self) -> None:
        """Refuses settings no server can run with, naming the flag."""
        if self.parallel < 1:
            raise ValueError(f"--parallel must be at least 1, got {self.parallel}")
        if self.queue < 0:
            raise ValueError(f"--queue must not be negative, got {self.queue}")
        if self.ctx_size < 8:
            raise ValueError(f"--ctx-size must be at least 8, got {self.ctx_size}")
        if self.threads < 0:
            raise ValueError(f"--threads must not be negative, got {self.threads}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        try:
            parse_draft(self.draft)
        except ValueError as e:
            raise ValueError(f"--drafter: {e}") from None
        DRAFT_MAX.check("--draft-max", self.draft_max)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.verify not in (None, "full", "candidates"):
            raise ValueError(f"--verify must be full or candidates, got {self.verify!r}")
        if self.max_tokens_limit < 1:
            raise ValueError(f"--max-tokens-limit must be at least 1, got {self.max_tokens_limit}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key must not be empty")
        if self.max_body_bytes < 1024:
            raise ValueError(f"the body size limit must be at least 1024 bytes, got {self.max_body_bytes}")
