"""Python objects over the libspecee C API: Model, Context, and exceptions
mapped from its status codes."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._ffi import ffi, lib

# ---- errors -----------------------------------------------------------------


log = logging.getLogger(__name__)

class SpeceeError(Exception):
    """An error reported by libspecee; `status` is the C status name."""

    status = "SPECEE_STATUS_INTERNAL"


class InvalidArgumentError(SpeceeError, ValueError):
    status = "SPECEE_STATUS_INVALID_ARGUMENT"


class ModelIOError(SpeceeError, OSError):
    status = "SPECEE_STATUS_IO_ERROR"


class InvalidModelError(SpeceeError):
    status = "SPECEE_STATUS_INVALID_MODEL"


class UnsupportedModelError(SpeceeError):
    status = "SPECEE_STATUS_UNSUPPORTED"


class ContextFullError(SpeceeError):
    status = "SPECEE_STATUS_CONTEXT_FULL"


class OutOfMemoryError(SpeceeError, MemoryError):
    status = "SPECEE_STATUS_OUT_OF_MEMORY"


class ComputeError(SpeceeError):
    status = "SPECEE_STATUS_COMPUTE_FAILED"


_ERRORS = {
    lib.SPECEE_STATUS_INVALID_ARGUMENT: InvalidArgumentError,
    lib.SPECEE_STATUS_IO_ERROR: ModelIOError,
    lib.SPECEE_STATUS_INVALID_MODEL: InvalidModelError,
    lib.SPECEE_STATUS_UNSUPPORTED: UnsupportedModelError,
    lib.SPECEE_STATUS_CONTEXT_FULL: ContextFullError,
    lib.SPECEE_STATUS_OUT_OF_MEMORY: OutOfMemoryError,
    lib.SPECEE_STATUS_COMPUTE_FAILED: ComputeError,
}


def check(status: int, message: str) -> None:
    """Raises the exception that matches a C status code (no-op for OK)."""
    if status != lib.SPECEE_STATUS_OK:
        raise _ERRORS.get(status, SpeceeError)(message or ffi.string(lib.specee_status_name(status)).decode())


# Whose CPU kernels multiply the matrices (enum specee_kernels).
KERNELS = {"ggml": 0, "specee": 1}


def kernels_isa() -> str:
    """The instruction set specee's kernels use on this CPU, or "none"."""
    return ffi.string(lib.specee_kernels_isa()).decode()


def api_version() -> int:
    return int(lib.specee_api_version())


def system_info() -> str:
    return ffi.string(lib.specee_system_info()).decode()


def ggml_version() -> str:
    return ffi.string(lib.specee_ggml_version()).decode()


def default_threads() -> int:
    """Threads to use when none are given: the cores this process may run on.
    ggml's threads spin while they wait, so more threads than cores hurts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ---- model --------------------------------------------------------------------


class _Handle:
    """A C object freed by close(), by a with-block, or at garbage collection."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Model(_Handle):
    """A GGUF model loaded by libspecee. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike, check_tensors: bool = False, use_repack: Optional[bool] = None,
                 n_gpu_layers: int = 0, rpc_servers: Sequence[str] | str | None = None, amx_decode: bool = False,
                 kernels: Optional[str] = None):
        """`n_gpu_layers`: llama.cpp's -ngl, the last N layers (N > n_layer:
        and the output layer) on the offload devices: `rpc_servers`
        ("host:port" each, `specee rpc-server`), then GPUs of a CUDA build.
        `amx_decode`: on AMX CPUs, decode steps read a second copy of the
        matrices in ggml's AMX layout (faster, other rounding; specee.h).
        `kernels`: "specee" (the default: specee's own kernels where the CPU
        and weight type have one, ggml's elsewhere; docs/kernels.md) or
        "ggml" (llama.cpp's numerics, token for token; the default with
        amx_decode, whose copies serve ggml's kernels).
        `use_repack`: ggml's repacked layout for the matrices of the passes
        ggml computes (prompts); None: whichever runs prompts faster on this
        CPU, measured once per model file and cached (prompt_layout.py;
        always repacked with kernels="ggml", as llama.cpp)."""
        if kernels is None:
            kernels = "ggml" if amx_decode else "specee"
        self.path = os.fspath(path)
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < 0:
            raise InvalidArgumentError(f"n_gpu_layers must be an integer >= 0, not {n_gpu_layers!r}")
        if use_repack is None:
            # the library keeps ggml's plain layout wherever layers are offloaded: nothing to measure then
            from .prompt_layout import use_repack as measured_choice

            use_repack = True if kernels not in KERNELS or n_gpu_layers > 0 else measured_choice(path, kernels)
        servers = rpc_servers if isinstance(rpc_servers, str) or rpc_servers is None else ",".join(rpc_servers)
        params = ffi.new("struct specee_model_params *", lib.specee_model_default_params())
        params.check_tensors = check_tensors
        params.use_repack = use_repack
        params.n_gpu_layers = n_gpu_layers
        params.amx_decode = amx_decode
        if kernels not in KERNELS:
            raise InvalidArgumentError(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
        params.kernels = KERNELS[kernels]
        self.kernels = kernels
        servers_c = ffi.new("char[]", servers.encode()) if servers else ffi.NULL
        params.rpc_servers = servers_c
        out = ffi.new("struct specee_model **")
        err = ffi.new("char[]", 1024)
        status = lib.specee_model_load(self.path.encode(), params, out, err, len(err))
        check(status, ffi.string(err).decode(errors="replace"))
        self._ptr = out[0]
        self._contexts: list = []
        if kernels == "specee":
            log.info("kernels: specee's on %s for %d matrices and for attention where heads are a multiple of 16 "
                     "wide, ggml's for the rest (docs/kernels.md)", kernels_isa(), self.n_packed)

    @property
    def n_packed(self) -> int:
        """Matrices with a copy in specee's kernel layout (kernels="specee")."""
        return int(lib.specee_model_n_packed(self.ptr))

    @property
    def n_decode_copies(self) -> int:
        """Matrices with a second copy in ggml's AMX layout for decode steps (amx_decode)."""
        return int(lib.specee_model_n_decode_copies(self.ptr))

    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidArgumentError("the model is closed")
        return self._ptr

    def close(self) -> None:
        """Frees the model and every context still open on it."""
        for ctx in list(self._contexts):
            ctx.close()
        if self._ptr is not None:
            lib.specee_model_free(self._ptr)
            self._ptr = None

    n_layer = property(lambda self: int(lib.specee_model_n_layer(self.ptr)))
    n_embd = property(lambda self: int(lib.specee_model_n_embd(self.ptr)))
    n_vocab = property(lambda self: int(lib.specee_model_n_vocab(self.ptr)))
    n_head = property(lambda self: int(lib.specee_model_n_head(self.ptr)))
    n_head_kv = property(lambda self: int(lib.specee_model_n_head_kv(self.ptr)))
    n_ctx_train = property(lambda self: int(lib.specee_model_n_ctx_train(self.ptr)))
    bos = property(lambda self: int(lib.specee_model_bos(self.ptr)))
    eos = property(lambda self: int(lib.specee_model_eos(self.ptr)))
    arch = property(lambda self: ffi.string(lib.specee_model_arch(self.ptr)).decode())
    n_params = property(lambda self: int(lib.specee_model_n_params(self.ptr)))
    size_bytes = property(lambda self: int(lib.specee_model_size_bytes(self.ptr)))
    n_repacked = property(lambda self: int(lib.specee_model_n_repacked(self.ptr)))
    fingerprint = property(lambda self: ffi.string(lib.specee_model_fingerprint(self.ptr)).decode())

    def context(self, **kwargs) -> "Context":
        return Context(self, **kwargs)


# ---- heads --------------------------------------------------------------------


class Heads(_Handle):
    """SpecEE exit predictors for one model, loaded from a head file (docs/heads.md)."""

    def __init__(self, model: Model, path: str | os.PathLike):
        self.path = os.fspath(path)
        out = ffi.new("struct specee_heads **")
        err = ffi.new("char[]", 1024)
        check(lib.specee_heads_load(model.ptr, self.path.encode(), out, err, len(err)),
              ffi.string(err).decode(errors="replace"))
        self._ptr = out[0]
        self.n_candidates = int(lib.specee_heads_n_candidates(self._ptr))
        self.has_draft = bool(lib.specee_heads_has_draft(self._ptr))

    def predict(self, layer: int, features: np.ndarray) -> np.ndarray:
        """Exit probabilities of layer `layer`'s predictor for features [n, 3k]
        (heads_file.Predictor is numpy's copy of this MLP, tested against it)."""
        x = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, 3 * self.n_candidates)
        out = np.empty(x.shape[0], dtype=np.float32)
        check(lib.specee_heads_predict(self.ptr, layer, ffi.from_buffer("float[]", x), x.shape[0],
                                       ffi.from_buffer("float[]", out)),
              f"no exit predictor for layer {layer} in {self.path}")
        return out

    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidArgumentError("the heads are closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            lib.specee_heads_free(self._ptr)
            self._ptr = None


@dataclass
class Step:
    token: int          # the token chosen
    exit_layer: int     # layers computed when it was chosen (n_layer: no early exit)
    full_token: int     # the full model's token when computed (no exit, or full_depth), else -1
    next: list          # the draft head's candidates for the next step ([] without a draft)


@dataclass
class DraftTree:
    """A dynamic draft tree (Context.draft_tree), its nodes best first."""
    tokens: list[int]
    parents: list[int]      # index of each node's parent in this tree, -1: follows next_token
    probs: np.ndarray       # each node's draft probability given its parent
    path_probs: np.ndarray  # the product of those along its path (never above its parent's)


# ---- context ------------------------------------------------------------------


class Context(_Handle):
    """One sequence with its KV cache. Not for use by two threads at once."""

    def __init__(self, model: Model, n_ctx: int = 0, n_batch: int = 512, n_threads: int = 0,
                 flash_attn: bool = False, exact_verify: bool = True):
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_threads", n_threads)):
            if not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be an integer >= 0 (0: the default), got {value!r}")
        self.model = model
        params = ffi.new("struct specee_context_params *", lib.specee_context_default_params())
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_threads = n_threads if n_threads > 0 else default_threads()
        params.flash_attn = flash_attn
        params.exact_verify = exact_verify
        self.exact_verify = exact_verify
        out = ffi.new("struct specee_context **")
        err = ffi.new("char[]", 1024)
        status = lib.specee_context_init(model.ptr, params, out, err, len(err))
        check(status, ffi.string(err).decode(errors="replace"))
        self._ptr = out[0]
        self._n_vocab = model.n_vocab
        self._n_embd = model.n_embd
        model._contexts.append(self)

    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidArgumentError("the context is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            lib.specee_context_free(self._ptr)
            self._ptr = None
            if self in self.model._contexts:
                self.model._contexts.remove(self)

    def _check(self, status: int) -> None:
        if status != lib.SPECEE_STATUS_OK:
            check(status, ffi.string(lib.specee_context_error(self._ptr)).decode(errors="replace"))

    n_ctx = property(lambda self: int(lib.specee_n_ctx(self.ptr)))
    n_past = property(lambda self: int(lib.specee_n_past(self.ptr)))
    n_threads = property(lambda self: int(lib.specee_n_threads(self.ptr)))

    def prefill(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        """Runs the tokens through the full model and appends them to the cache."""
        arr = _token_array(tokens)
        self._check(lib.specee_prefill(self.ptr, ffi.from_buffer("int32_t[]", arr), len(arr), logits_all))

    def decode(self, token: int) -> int:
        """One full-depth step for `token`; returns the greedy next token."""
        if not 0 <= token < self._n_vocab:
            raise InvalidArgumentError(f"token {token} is outside the vocabulary [0, {self._n_vocab})")
        out = ffi.new("specee_token *")
        self._check(lib.specee_decode(self.ptr, token, out))
        return int(out[0])

    @property
    def n_outputs(self) -> int:
        return int(lib.specee_n_outputs(self.ptr))

    def logits(self, i: int = -1) -> np.ndarray:
        """A copy of the logits of output row i (negative counts from the end)."""
        n = self.n_outputs
        if i < 0:
            i += n
        ptr = lib.specee_get_logits(self.ptr, i)
        if ptr == ffi.NULL:
            raise InvalidArgumentError(f"no logits row {i} (the last call kept {n})")
        return np.frombuffer(ffi.buffer(ptr, self._n_vocab * 4), dtype=np.float32).copy()

    def all_logits(self) -> np.ndarray:
        """[n_outputs, n_vocab] copy of every logits row kept by the last call."""
        n = self.n_outputs
        if n == 0:
            return np.zeros((0, self._n_vocab), dtype=np.float32)
        ptr = lib.specee_get_logits(self.ptr, 0)
        return np.frombuffer(ffi.buffer(ptr, n * self._n_vocab * 4), dtype=np.float32).reshape(n, -1).copy()

    def argmax(self, i: int = -1) -> int:
        n = self.n_outputs
        token = int(lib.specee_argmax(self.ptr, i + n if i < 0 else i))
        if token < 0:
            raise InvalidArgumentError(f"no logits row {i}")
        return token

    def set_hidden_output(self, layer: Optional[int], final_norm: bool = False) -> None:
        """Keep the hidden state after `layer` layers (0 = embeddings) in the
        next calls; None turns it off."""
        self._check(lib.specee_set_hidden_output(self.ptr, -1 if layer is None else layer, final_norm))

    def hidden(self) -> np.ndarray:
        """[n_tokens, n_embd] copy of the hidden states kept by the last call."""
        n = ffi.new("int32_t *")
        ptr = lib.specee_get_hidden(self.ptr, n)
        if ptr == ffi.NULL:
            raise InvalidArgumentError("no hidden states were kept; call set_hidden_output first")
        return np.frombuffer(ffi.buffer(ptr, n[0] * self._n_embd * 4), dtype=np.float32).reshape(n[0], -1).copy()

    def truncate(self, n_past: int) -> None:
        """Forgets every cached token at position >= n_past."""
        if n_past < 0:
            raise InvalidArgumentError("n_past must not be negative")
        self._check(lib.specee_kv_truncate(self.ptr, n_past))

    def share_threads(self, other: "Context") -> None:
        """Compute on `other`'s thread pool from now on (one pool for several
        contexts that one thread drives in turn; they must never compute at
        the same time)."""
        self._check(lib.specee_context_share_threads(self.ptr, other.ptr))

    # ---- token trees ----

    def decode_tree(self, tokens: Sequence[int], parents: Optional[Sequence[int]] = None,
                    depths: Optional[Sequence[int]] = None) -> None:
        """One pass over a tree of drafted tokens after the cache: parents[i]
        is the index of token i's parent (< i) or -1 for a token that follows
        the cache; None means a chain. Row i of all_logits() is then the
        distribution after token i. The tree stays pending until
        tree_accept() keeps one path of it. `depths` (lossy layer skipping,
        docs/layer-skipping.md): how many layers each row runs, never rising
        along the rows; None: every layer."""
        arr = _token_array(tokens)
        par = ffi.NULL
        if parents is not None:
            p = _token_array(parents)
            if len(p) != len(arr):
                raise InvalidArgumentError(f"{len(p)} parents for {len(arr)} tree tokens")
            par = ffi.from_buffer("int32_t[]", p)
        if depths is None:
            self._check(lib.specee_decode_tree(self.ptr, ffi.from_buffer("int32_t[]", arr), par, len(arr)))
            return
        d = _token_array(depths)
        if len(d) != len(arr):
            raise InvalidArgumentError(f"{len(d)} depths for {len(arr)} tree tokens")
        self._check(lib.specee_decode_tree_depths(self.ptr, ffi.from_buffer("int32_t[]", arr), par,
                                                  ffi.from_buffer("int32_t[]", d), len(arr)))

    def tree_accept(self, rows: Sequence[int]) -> None:
        """Keeps the path `rows` (a root, then each row's child) of the pending
        tree as the next cached tokens; [] forgets the whole tree."""
        arr = _token_array(rows)
        self._check(lib.specee_tree_accept(self.ptr, ffi.from_buffer("int32_t[]", arr) if len(arr) else ffi.NULL,
                                           len(arr)))

    # ---- speculative early exit ----

    @property
    def heads(self) -> Optional[Heads]:
        return getattr(self, "_heads", None)

    def set_heads(self, heads: Optional[Heads]) -> None:
        """Attach exit predictors and draft head (None detaches). Keep `heads`
        open while attached; with a draft head, attach before the prompt."""
        self._heads = heads
        self._check(lib.specee_set_heads(self.ptr, heads.ptr if heads is not None else ffi.NULL))

    def exit_params(self) -> dict:
        out = ffi.new("struct specee_exit_params *")
        self._check(lib.specee_get_exit_params(self.ptr, out))
        return {"threshold": float(out.threshold), "use_offline": bool(out.use_offline),
                "use_online": bool(out.use_online), "full_depth": bool(out.full_depth),
                "fill_kv": bool(out.fill_kv), "verify_full": bool(out.verify_full), "exact": bool(out.exact),
                "max_chain": int(out.max_chain)}

    def set_exit_params(self, **changes) -> None:
        """Change any of threshold, use_offline, use_online, full_depth,
        fill_kv, verify_full, exact, max_chain (see struct specee_exit_params)."""
        params = self.exit_params()
        unknown = set(changes) - set(params)
        if unknown:
            raise InvalidArgumentError(f"unknown exit parameters: {sorted(unknown)}")
        params.update(changes)
        c = ffi.new("struct specee_exit_params *", params)
        self._check(lib.specee_set_exit_params(self.ptr, c))

    def decode_with_candidates(self, token: int, candidates: Sequence[int]) -> Step:
        """One early-exit step for `token` given the draft's candidates."""
        cands = _token_array(candidates)
        out = ffi.new("struct specee_step *")
        self._check(lib.specee_decode_with_candidates(self.ptr, int(token), ffi.from_buffer("int32_t[]", cands),
                                                      len(cands), out))
        return Step(int(out.token), int(out.exit_layer), int(out.full_token), [int(out.next[i]) for i in range(out.n_next)])

    def verify_exit(self, draft: int) -> None:
        """Exact early exit: after a step that exited (exit params `exact`),
        or a chain of them (`max_chain`), completes every pending token's
        layers beside `draft` (the last step's token, -1 if it stopped
        without an exit) at the next position; logits(i) then checks the
        i-th draft, the last row follows the last token (specee_verify_exit).
        On a miss at row i, truncate to drop the positions after row i's."""
        self._check(lib.specee_verify_exit(self.ptr, int(draft)))

    def trace_step(self, token: int, candidates: Sequence[int]) -> tuple[Step, np.ndarray, np.ndarray]:
        """A full-depth step that also returns, after every layer, the
        candidates' logits [n_layer, k] and the full-vocabulary argmax [n_layer]."""
        cands = _token_array(candidates)
        n_layer = self.model.n_layer
        cand_logits = np.zeros((n_layer, len(cands)), dtype=np.float32)
        layer_argmax = np.zeros(n_layer, dtype=np.int32)
        out = ffi.new("struct specee_step *")
        self._check(lib.specee_trace_step(self.ptr, int(token), ffi.from_buffer("int32_t[]", cands), len(cands),
                                          ffi.from_buffer("float[]", cand_logits),
                                          ffi.from_buffer("int32_t[]", layer_argmax), out))
        step = Step(int(out.token), int(out.exit_layer), int(out.full_token), [int(out.next[i]) for i in range(out.n_next)])
        return step, cand_logits, layer_argmax

    def trace_change(self) -> np.ndarray:
        """[n_layer] for the last trace_step: how much each layer still moved
        the residual stream, |x_l - x_(l-1)| / |x_l| (empty before any)."""
        out = np.zeros(self.model.n_layer, dtype=np.float32)
        n = int(lib.specee_get_trace_change(self.ptr, ffi.from_buffer("float[]", out), len(out)))
        return out[:n]

    def trace_hidden(self) -> np.ndarray:
        """[n_layer, n_embd] for the last trace_step: the final-normed hidden
        state after each layer (empty before any)."""
        out = np.zeros((self.model.n_layer, self._n_embd), dtype=np.float32)
        n = int(lib.specee_get_trace_hidden(self.ptr, ffi.from_buffer("float[]", out), out.size))
        return out[:n // self._n_embd]

    def draft_probs(self) -> np.ndarray:
        """The draft head's probabilities of its k best tokens after its last
        pass, best first: after draft_sync or a step, those of the candidates
        it proposed (`next`). Empty before any pass."""
        out = np.zeros(lib.SPECEE_MAX_CANDIDATES, dtype=np.float32)
        n = int(lib.specee_get_draft_probs(self.ptr, ffi.from_buffer("float[]", out), len(out)))
        return out[:n]

    def last_checks(self) -> tuple[list[int], np.ndarray]:
        """What the last early-exit step's checks saw: the checked layers in
        order and their exit features [n_checks, 3k] (exit_features)."""
        n = int(lib.specee_get_last_checks(self.ptr, ffi.NULL, ffi.NULL, 0))
        k = self.heads.n_candidates if self.heads is not None else 0
        layers = np.zeros(n, dtype=np.int32)
        features = np.zeros((n, lib.SPECEE_EXIT_FEATURES_PER_CANDIDATE * k), dtype=np.float32)
        if n:
            lib.specee_get_last_checks(self.ptr, ffi.from_buffer("int32_t[]", layers),
                                       ffi.from_buffer("float[]", features), n)
        return [int(x) for x in layers], features

    def draft_sync(self, next_token: int) -> list[int]:
        """Runs the draft head over the prompt (or whatever it has not seen),
        ending with `next_token`; returns its candidates for the token after."""
        out = ffi.new("specee_token[]", lib.SPECEE_MAX_CANDIDATES)
        n = ffi.new("int32_t *")
        self._check(lib.specee_draft_sync(self.ptr, int(next_token), out, lib.SPECEE_MAX_CANDIDATES, n))
        return [int(out[i]) for i in range(n[0])]

    def draft_chain(self, next_token: int, n_steps: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """EAGLE drafting: draft_sync(next_token), then the draft head runs
        n_steps - 1 steps ahead on its own predictions. Returns the k best
        tokens of each step ([n_steps, k], best first) and their draft
        probabilities ([n_steps, k]); the draft's cache keeps only the synced
        positions."""
        if n_steps < 1 or k < 1:
            raise InvalidArgumentError(f"n_steps and k must be at least 1, got {n_steps} and {k}")
        tokens = np.zeros((n_steps, k), dtype=np.int32)
        probs = np.zeros((n_steps, k), dtype=np.float32)
        self._check(lib.specee_draft_chain(self.ptr, int(next_token), n_steps, k, ffi.from_buffer("int32_t[]", tokens),
                                           ffi.from_buffer("float[]", probs)))
        return tokens, probs

    def draft_tree(self, next_token: int, depth: int, width: int, k: int, capacity: int) -> DraftTree:
        """EAGLE-2 drafting: draft_sync(next_token) gives the first level (k
        tokens); then, level by level up to `depth`, the `width` likeliest
        nodes of the last level (by path probability) each get their k best
        children, in one draft pass per level. Returns the `capacity`
        likeliest nodes, best first (every prefix is a tree); the draft's
        cache keeps only the synced positions (specee_draft_tree)."""
        n_out = max(int(capacity), 1)  # the library refuses capacity < 1 with the other bad arguments
        tokens = np.zeros(n_out, dtype=np.int32)
        parents = np.zeros(n_out, dtype=np.int32)
        probs = np.zeros(n_out, dtype=np.float32)
        path = np.zeros(n_out, dtype=np.float32)
        n = ffi.new("int32_t *")
        self._check(lib.specee_draft_tree(self.ptr, int(next_token), int(depth), int(width), int(k), int(capacity),
                                          ffi.from_buffer("int32_t[]", tokens), ffi.from_buffer("int32_t[]", parents),
                                          ffi.from_buffer("float[]", probs), ffi.from_buffer("float[]", path), n))
        m = int(n[0])
        return DraftTree([int(t) for t in tokens[:m]], [int(p) for p in parents[:m]], probs[:m], path[:m])

    @property
    def exit_layer(self) -> int:
        return int(lib.specee_get_exit_layer(self.ptr))

    def checked_layers(self) -> list[int]:
        n = int(lib.specee_get_checked_layers(self.ptr, ffi.NULL, 0))
        buf = ffi.new("int32_t[]", max(n, 1))
        lib.specee_get_checked_layers(self.ptr, buf, n)
        return [int(buf[i]) for i in range(n)]

    def exit_stats(self) -> dict:
        out = ffi.new("struct specee_exit_stats *")
        self._check(lib.specee_get_exit_stats(self.ptr, out))
        return {k: int(getattr(out, k)) for k in ("n_steps", "n_exits", "sum_exit_layers", "n_checks", "n_fires",
                                                  "n_false_fires", "n_draft_top1", "n_draft_topk")}

    def reset_exit_stats(self) -> None:
        lib.specee_reset_exit_stats(self.ptr)

    def perf(self) -> dict:
        """Timing counters: graph runs/builds, ms in ggml compute and in host
        code, and early-exit steps split by stage (struct specee_perf)."""
        out = ffi.new("struct specee_perf *")
        self._check(lib.specee_get_perf(self.ptr, out))
        ms = ("t_compute_ms", "t_host_ms", "t_draft_ms", "t_predictor_ms", "t_verify_ms", "t_exit_step_ms")
        return {"n_graph_runs": int(out.n_graph_runs), "n_graph_builds": int(out.n_graph_builds),
                **{k: float(getattr(out, k)) for k in ms}}

    def reset_perf(self) -> None:
        lib.specee_reset_perf(self.ptr)

    def cell_valid(self, layer: int, pos: int) -> bool:
        r = int(lib.specee_kv_cell_valid(self.ptr, layer, pos))
        if r < 0:
            raise InvalidArgumentError(f"no cache cell (layer {layer}, position {pos})")
        return bool(r)


EXIT_FEATURE_VERSION = int(lib.SPECEE_EXIT_FEATURE_VERSION)


def exit_features(cand_logits: np.ndarray) -> np.ndarray:
    """[..., n_layer, k] candidate logits after every layer (trace_step's) ->
    [..., n_layer, 3k] the exit predictors' inputs, computed by the library's
    own code (specee_exit_features), exactly as a check during decoding does."""
    logits = np.ascontiguousarray(cand_logits, dtype=np.float32)
    if logits.ndim < 2 or logits.shape[-1] < 1 or logits.shape[-2] < 1:
        raise InvalidArgumentError(f"candidate logits must be [..., n_layer, k], not {logits.shape}")
    n_layer, k = logits.shape[-2:]
    out = np.zeros((*logits.shape[:-1], lib.SPECEE_EXIT_FEATURES_PER_CANDIDATE * k), dtype=np.float32)
    n_steps = logits.size // (n_layer * k)
    status = lib.specee_exit_features(ffi.from_buffer("float[]", logits), n_steps, n_layer, k,
                                      ffi.from_buffer("float[]", out))
    if status != lib.SPECEE_STATUS_OK:
        raise InvalidArgumentError(f"exit features: {k} candidates (1 to {lib.SPECEE_MAX_CANDIDATES} allowed)")
    return out


def decode_batch(contexts: Sequence["Context"], tokens: Sequence[int]) -> list[int]:
    """One full-depth step for each context (of one model) in a single pass:
    contexts[i] gets tokens[i]; returns each one's greedy next token. The pass
    runs on contexts[0]'s threads."""
    if len(contexts) != len(tokens) or not contexts:
        raise InvalidArgumentError(f"{len(contexts)} contexts for {len(tokens)} tokens (one each, at least one)")
    arr = _token_array(tokens)
    ptrs = ffi.new("struct specee_context *[]", [c.ptr for c in contexts])
    out = ffi.new("specee_token[]", len(contexts))
    contexts[0]._check(lib.specee_decode_batch(ptrs, ffi.from_buffer("int32_t[]", arr), len(arr), out))
    return [int(t) for t in out]


def has_gpu() -> bool:
    """Whether libspecee was built with a GPU backend (CUDA)."""
    return bool(lib.specee_has_gpu())


def has_rpc() -> bool:
    """Whether libspecee was built with ggml's RPC backend."""
    return bool(lib.specee_has_rpc())


def rpc_serve(host: str, port: int, n_threads: int) -> None:
    """Serves this machine's CPU backend to RPC clients on host:port until
    the process ends (the protocol has no authentication: bind 127.0.0.1
    unless the network is trusted). Raises if the server cannot start."""
    if not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"port {port} is outside [1, 65535]")
    err = ffi.new("char[]", 1024)
    status = lib.specee_rpc_serve(f"{host}:{int(port)}".encode(), int(n_threads), err, len(err))
    check(status, ffi.string(err).decode(errors="replace"))


def _token_array(tokens: Sequence[int]) -> np.ndarray:
    arr = np.ascontiguousarray(tokens, dtype=np.int64)
    if arr.ndim != 1:
        raise InvalidArgumentError("tokens must be a flat sequence of ids")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise InvalidArgumentError("token id does not fit in int32")
    return arr.astype(np.int32)
