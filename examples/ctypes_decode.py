"""Exact early-exit decoding through libspecee with nothing but ctypes.

    python examples/ctypes_decode.py LIBSPECEE.so MODEL.gguf HEADS.gguf [-n 16] [--prompt 1,2,3]

The C API (include/specee.h) needs no binding generator: this script declares
the few structs and functions it uses, loads a model and head file (with a
draft head), prefills a prompt of token ids, then runs greedy early-exit
steps: each feeds the draft's candidates to specee_decode_with_candidates and
prints the token and the layer it was chosen at. An exit's token is a draft
(specee_exit_params.exact): specee_verify_exit checks it against the full
model in one pass, beside the token after it, so the output is plain greedy
decoding's (as examples/c/early_exit_decode.c does it). The package's own
binding (python/specee/_ffi.py) is cffi; this shows the C API from any FFI.
"""
from __future__ import annotations

import argparse
import ctypes as C
import sys

MAX_CANDIDATES = 8  # SPECEE_MAX_CANDIDATES
STATUS_OK = 0


class ModelParams(C.Structure):
    _fields_ = [("check_tensors", C.c_bool), ("use_repack", C.c_bool), ("n_gpu_layers", C.c_int32),
                ("rpc_servers", C.c_char_p), ("amx_decode", C.c_bool), ("kernels", C.c_int32)]


class ContextParams(C.Structure):
    _fields_ = [("n_ctx", C.c_uint32), ("n_batch", C.c_uint32), ("n_threads", C.c_int32), ("flash_attn", C.c_bool),
                ("exact_verify", C.c_bool)]


class ExitParams(C.Structure):
    _fields_ = [("threshold", C.c_float), ("use_offline", C.c_bool), ("use_online", C.c_bool),
                ("full_depth", C.c_bool), ("fill_kv", C.c_bool), ("verify_full", C.c_bool), ("exact", C.c_bool),
                ("max_chain", C.c_int32)]


class Step(C.Structure):
    _fields_ = [("token", C.c_int32), ("exit_layer", C.c_int32), ("full_token", C.c_int32),
                ("n_next", C.c_int32), ("next", C.c_int32 * MAX_CANDIDATES)]


def bind(path: str) -> C.CDLL:
    """Loads the library and declares the signatures used here."""
    lib = C.CDLL(path)
    ptr, p_ptr, err = C.c_void_p, C.POINTER(C.c_void_p), [C.c_char_p, C.c_size_t]
    tokens = C.POINTER(C.c_int32)
    signatures = {
        "specee_status_name": (C.c_char_p, [C.c_int]),
        "specee_model_default_params": (ModelParams, []),
        "specee_model_load": (C.c_int, [C.c_char_p, C.POINTER(ModelParams), p_ptr, *err]),
        "specee_model_free": (None, [ptr]),
        "specee_model_n_layer": (C.c_int32, [ptr]),
        "specee_context_default_params": (ContextParams, []),
        "specee_context_init": (C.c_int, [ptr, C.POINTER(ContextParams), p_ptr, *err]),
        "specee_context_free": (None, [ptr]),
        "specee_context_error": (C.c_char_p, [ptr]),
        "specee_heads_load": (C.c_int, [ptr, C.c_char_p, p_ptr, *err]),
        "specee_heads_free": (None, [ptr]),
        "specee_heads_n_candidates": (C.c_int32, [ptr]),
        "specee_heads_has_draft": (C.c_bool, [ptr]),
        "specee_set_heads": (C.c_int, [ptr, ptr]),
        "specee_prefill": (C.c_int, [ptr, tokens, C.c_int32, C.c_bool]),
        "specee_argmax": (C.c_int32, [ptr, C.c_int32]),
        "specee_draft_sync": (C.c_int, [ptr, C.c_int32, tokens, C.c_int32, C.POINTER(C.c_int32)]),
        "specee_decode_with_candidates": (C.c_int, [ptr, C.c_int32, tokens, C.c_int32, C.POINTER(Step)]),
        "specee_get_exit_layer": (C.c_int32, [ptr]),
        "specee_get_exit_params": (C.c_int, [ptr, C.POINTER(ExitParams)]),
        "specee_set_exit_params": (C.c_int, [ptr, C.POINTER(ExitParams)]),
        "specee_verify_exit": (C.c_int, [ptr, C.c_int32]),
        "specee_kv_truncate": (C.c_int, [ptr, C.c_uint32]),
        "specee_n_past": (C.c_uint32, [ptr]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class SpeceeError(RuntimeError):
    pass


def check(lib: C.CDLL, status: int, message: bytes | str) -> None:
    if status != STATUS_OK:
        text = message.decode(errors="replace") if isinstance(message, bytes) else message
        raise SpeceeError(f"{lib.specee_status_name(status).decode()}: {text}")


def run(lib: C.CDLL, model_path: str, heads_path: str, prompt: list[int], n_tokens: int) -> tuple[list[int], list[int]]:
    """Greedy exact early-exit decoding; returns the tokens and each step's exit layer."""
    err = C.create_string_buffer(256)
    model, ctx, heads = C.c_void_p(), C.c_void_p(), C.c_void_p()
    try:
        mp = lib.specee_model_default_params()
        check(lib, lib.specee_model_load(model_path.encode(), C.byref(mp), C.byref(model), err, len(err)), err.value)
        cp = lib.specee_context_default_params()
        cp.n_ctx, cp.n_threads = len(prompt) + n_tokens + 2, 1
        check(lib, lib.specee_context_init(model, C.byref(cp), C.byref(ctx), err, len(err)), err.value)
        check(lib, lib.specee_heads_load(model, heads_path.encode(), C.byref(heads), err, len(err)), err.value)
        if not lib.specee_heads_has_draft(heads):
            raise SpeceeError(f"{heads_path} has no draft head; this example takes its candidates from one")
        k = lib.specee_heads_n_candidates(heads)
        check(lib, lib.specee_set_heads(ctx, heads), lib.specee_context_error(ctx))
        ep = ExitParams()
        check(lib, lib.specee_get_exit_params(ctx, C.byref(ep)), lib.specee_context_error(ctx))
        ep.exact = True         # an exit's token is a draft: specee_verify_exit checks it
        ep.verify_full = False  # exits pick from the candidates; the full model checks them anyway
        check(lib, lib.specee_set_exit_params(ctx, C.byref(ep)), lib.specee_context_error(ctx))

        check(lib, lib.specee_prefill(ctx, (C.c_int32 * len(prompt))(*prompt), len(prompt), False),
              lib.specee_context_error(ctx))
        token = lib.specee_argmax(ctx, 0)
        cands, n_cands = (C.c_int32 * MAX_CANDIDATES)(), C.c_int32()

        def sync(after: int) -> None:
            """The draft head reads the tokens it has not seen; its candidates for the next step."""
            check(lib, lib.specee_draft_sync(ctx, after, cands, MAX_CANDIDATES, C.byref(n_cands)),
                  lib.specee_context_error(ctx))

        sync(token)
        tokens, exit_layers, step = [token], [], Step()
        n_layer = lib.specee_model_n_layer(model)
        while len(tokens) < n_tokens:
            check(lib, lib.specee_decode_with_candidates(ctx, token, cands, k, C.byref(step)),
                  lib.specee_context_error(ctx))
            assert lib.specee_get_exit_layer(ctx) == step.exit_layer
            exit_layers.append(step.exit_layer)
            print(f"token {step.token:6d}  chosen after layer {step.exit_layer} of {n_layer}")
            if step.exit_layer == n_layer:  # no exit: the full model's token
                token = step.token
                tokens.append(token)
                C.memmove(cands, step.next, C.sizeof(cands))  # the draft's candidates for the next step
                continue
            draft = step.token  # an exit: one pass completes the exited token beside the draft
            check(lib, lib.specee_verify_exit(ctx, draft), lib.specee_context_error(ctx))
            full = lib.specee_argmax(ctx, 0)  # the full model's token after the exited one
            if full != draft:
                check(lib, lib.specee_kv_truncate(ctx, lib.specee_n_past(ctx) - 1), lib.specee_context_error(ctx))
                token = full  # the draft's position went with the truncation
            elif len(tokens) + 2 > n_tokens:
                token = draft  # the last token wanted
            else:
                tokens.append(draft)
                token = lib.specee_argmax(ctx, 1)  # what follows the draft, at full depth
            tokens.append(token)
            if len(tokens) < n_tokens:
                sync(token)
        return tokens, exit_layers
    finally:  # each free takes NULL
        lib.specee_context_free(ctx)
        lib.specee_heads_free(heads)
        lib.specee_model_free(model)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("library", help="path of libspecee.so")
    ap.add_argument("model", help="GGUF model")
    ap.add_argument("heads", help="head file with a draft head, made for the model")
    ap.add_argument("-n", type=int, default=16, help="tokens to generate (default 16)")
    ap.add_argument("--prompt", default="1,2,3", help="comma-separated prompt token ids (default 1,2,3)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("-n must be at least 1")
    try:
        prompt = [int(t) for t in args.prompt.split(",")]
    except ValueError:
        ap.error(f"--prompt must be comma-separated token ids, not {args.prompt!r}")
    try:
        tokens, exit_layers = run(bind(args.library), args.model, args.heads, prompt, args.n)
    except (OSError, SpeceeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("tokens:", " ".join(map(str, tokens)))
    print("exit layers:", " ".join(map(str, exit_layers)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
