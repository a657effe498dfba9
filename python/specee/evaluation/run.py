"""`specee eval`: every mode on the same prompts of public data sets, with
speed and fidelity side by side (docs/design.md#measuring).

Per data set and mode: decode tok/s, speedup over vanilla (same run), and for
early exit: mean exit layer, exit ratio, teacher-forced agreement with full
depth, sequence agreement with vanilla's output (exact-match prefix, ROUGE-L);
plus the task score (CommonsenseQA / ASDiv accuracy, HumanEval pass@1, XSum
ROUGE-L; MT-Bench and ShareGPT have none).
"""
from __future__ import annotations

import logging
import os
import statistics
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm import tqdm

from ..tokenizer.chat_template import chat_prompt_ids, read_chat_template
from .datasets import known_datasets, load_dataset
from ..decoding.decoders import decode
from ..decoding.early_exit import PromptLookup
from ..decoding.modes import open_decoder
from ..decoding.sampling import Sampler
from ..engine import Heads, Model, system_info
from .item_log import ItemLog
from ..fetch import file_sha256
from .scoring import extract_choice, extract_number, humaneval_completion, numbers_equal, rouge_l, run_humaneval
from ..ranges import COUNT, THRESHOLD, ZERO_OR_MORE, Range
from ..heads.shipped import heads_or_shipped
from ..decoding.speculative import open_drafter
from ..decoding.speculative.choice import exit_heads_path
from ..decoding.speculative.exit_steps import WithExits
from ..tokenizer.gguf_tokenizer import Tokenizer

log = logging.getLogger(__name__)


# ---- prompts and scoring per data set -------------------------------------------------


@dataclass
class Task:
    prompt: str                                 # user message (chat) or raw text
    chat: bool
    score: Optional[Callable[[str], float]]     # output text -> score, or None


def make_tasks(name: str, records: Sequence[Any]) -> list[Task]:
    """Prompts and scorers; answer extraction is documented in scoring.py."""
    tasks = []
    for r in records:
        if name == "mtbench":
            tasks.append(Task(r.turns[0], True, None))
        elif name == "sharegpt":
            first = next((t["content"] for t in r.conversations if t["role"] == "user"), "")
            tasks.append(Task(first, True, None))
        elif name == "humaneval":
            tasks.append(Task(r.prompt, False,
                              lambda out, r=r: float(run_humaneval(r, humaneval_completion(out)))))
        elif name == "csqa":
            choices = "\n".join(f"{k}. {v}" for k, v in r.choices.items())
            prompt = f"{r.question}\n{choices}\nAnswer with the letter of the correct choice."
            tasks.append(Task(prompt, True, lambda out, r=r: float(extract_choice(out, r.choices) == r.answer)))
        elif name == "asdiv":
            prompt = f"{r.question}\nAnswer with a number."
            tasks.append(Task(prompt, True, lambda out, r=r: float(numbers_equal(extract_number(out), r.answer))))
        elif name == "xsum":
            prompt = f"Summarize the following article in one sentence.\n\n{r.document[:3000]}"
            tasks.append(Task(prompt, True, lambda out, r=r: rouge_l(out, r.summary)))
        else:
            raise ValueError(f"no evaluation recipe for data set {name!r}")
    return tasks


# ---- modes -------------------------------------------------------------------------------------


EAGLE_KINDS = ("eagle", "spadec")  # the heads' EAGLE draft head alone, without or with layer skipping
MODE_KINDS = ("vanilla", "specee", "specee-lossy", "speculative") + EAGLE_KINDS


def parse_mode(mode: str) -> tuple[str, Optional[float]]:
    """"vanilla", "specee" (exact early exit at the head file's threshold, or
    --threshold), "specee@T" (at predictor threshold T), "specee-lossy" and
    "specee-lossy@T" (the paper's lossy early exit), "speculative"
    (lossless speculative decoding, drafter auto: prompt lookup, a draft
    model if one is found, and exact exit steps where heads are given or ship
    for the model), "eagle" (lossless, the heads' EAGLE draft head alone) or
    "spadec" / "spadec@A" (EAGLE with lossy layer skipping inside
    verification, at the depth router's agreement or at A)."""
    kind, _, t = mode.partition("@")
    if kind not in MODE_KINDS or (t and not (kind.startswith("specee") or kind == "spadec")):
        raise ValueError(f"unknown mode {mode!r} (vanilla, specee, specee@THRESHOLD, specee-lossy, "
                         "specee-lossy@THRESHOLD, speculative, eagle, spadec, spadec@AGREEMENT)")
    if not t:
        return kind, None
    try:
        threshold = float(t)
    except ValueError:
        raise ValueError(f"mode {mode!r}: the threshold must be a number") from None
    if kind == "spadec" and not 0.0 < threshold <= 1.0:
        raise ValueError(f"mode {mode!r}: the agreement must lie in (0, 1]")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"mode {mode!r}: the threshold must lie in [0, 1]")
    return kind, threshold


def sweep_modes(spec: str) -> list[str]:
    """"0.3:0.9:0.1" -> ["specee@0.3", ..., "specee@0.9"] (both ends included)."""
    try:
        lo, hi, step = (float(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"--sweep-threshold wants START:STOP:STEP, got {spec!r}") from None
    if step <= 0 or lo > hi:
        raise ValueError(f"--sweep-threshold {spec!r}: need START <= STOP and STEP > 0")
    n = int(round((hi - lo) / step)) + 1
    modes = [f"specee@{round(lo + i * step, 4):g}" for i in range(n) if lo + i * step <= hi + 1e-9]
    for m in modes:
        parse_mode(m)
    return modes


# ---- running ---------------------------------------------------------------------------------


@dataclass
class ModeResult:
    tokens: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    decode_s: float = 0.0
    n_decode: int = 0
    scores: list = field(default_factory=list)
    exit_layers: list = field(default_factory=list)
    tf_agree: int = 0
    tf_steps: int = 0
    drafted: int = 0      # speculative: drafted tokens verified
    accepted: int = 0     # and accepted
    exit_drafted: int = 0   # speculative: exit drafts verified (exact exit steps)
    exit_accepted: int = 0  # and accepted

    def add(self, item: dict) -> None:
        """Adds one item's record (see run_item)."""
        self.tokens.append(item["tokens"])
        self.texts.append(item["text"])
        self.decode_s += item["decode_s"]
        self.n_decode += item["n_decode"]
        if item["score"] is not None:
            self.scores.append(item["score"])
        self.exit_layers += item["exit_layers"]
        self.tf_agree += item["tf_agree"]
        self.tf_steps += item["tf_steps"]
        self.drafted += item["drafted"]
        self.accepted += item["accepted"]
        self.exit_drafted += item.get("exit_drafted", 0)  # absent from item logs of older versions
        self.exit_accepted += item.get("exit_accepted", 0)


def teacher_forced(ctx, prompt: list[int], n: int, k: int) -> tuple[int, int]:
    """Agreement of early exit with full depth for the same prefix, at every
    step of full-depth greedy decoding."""
    ctx.truncate(0)
    ctx.set_exit_params(full_depth=True, exact=False)  # each step's exit token beside full depth's
    try:
        ctx.prefill(prompt)
        token = ctx.argmax()
        history = list(prompt) + [token]
        lookup = PromptLookup()
        cands = ctx.draft_sync(token) if ctx.heads.has_draft else lookup.candidates(history, k)
        agree = steps = 0
        for _ in range(n - 1):
            if ctx.n_past >= ctx.n_ctx:
                break
            s = ctx.decode_with_candidates(token, cands)
            agree += s.token == s.full_token
            steps += 1
            token = s.full_token
            history.append(token)
            cands = s.next if ctx.heads.has_draft else lookup.candidates(history, k)
        return agree, steps
    finally:
        ctx.set_exit_params(full_depth=False)


def check_evaluation(datasets: Sequence[str], modes: Sequence[str], limit: Optional[int] = None,
                     n_predict: int = 128, threads: int = 0, n_ctx: int = 2048,
                     threshold: Optional[float] = None) -> dict[str, tuple[str, Optional[float]]]:
    """Refuses bad arguments of `evaluate` before anything loads; returns the
    parsed modes."""
    unknown = [d for d in datasets if d not in known_datasets()]
    if unknown or not datasets:
        raise ValueError(f"unknown data set(s) {unknown or datasets!r}; known: {', '.join(known_datasets())}")
    if not modes:
        raise ValueError("no modes given (vanilla, specee, specee@THRESHOLD, speculative)")
    COUNT.check_optional("limit", limit)
    COUNT.check("n_ctx", n_ctx)
    # the context holds the generated tokens and at least one prompt token
    Range(int, 1, n_ctx - 2).check(f"n_predict (n_ctx = {n_ctx})", n_predict)
    ZERO_OR_MORE.check("threads", threads)
    THRESHOLD.check_optional("threshold", threshold)
    return {m: parse_mode(m) for m in modes}


def evaluate(model_path: str | os.PathLike, datasets: Sequence[str], modes: Sequence[str],
             heads_path: Optional[str | os.PathLike] = None, limit: Optional[int] = None, n_predict: int = 128,
             threads: int = 0, n_ctx: int = 2048, threshold: Optional[float] = None, verify_full: Optional[bool] = None,
             progress: bool = True, dataset_paths: Optional[dict] = None,
             on_dataset: Optional[Callable[[dict], None]] = None,
             item_log: Optional[str | os.PathLike] = None, resume: bool = False) -> dict:
    """Runs `modes` (see parse_mode) on each data set; returns a results dict
    whose "complete" is True. `on_dataset` is called with the results so far
    (complete False until the last) each time a data set is done, so a
    caller can keep them should a later one fail. `item_log` names a file
    that records every finished item (item_log.py); with `resume`, the
    items an earlier run with the same settings logged there are not run
    again (their speeds were measured then)."""
    parsed = check_evaluation(datasets, modes, limit, n_predict, threads, n_ctx, threshold)
    needs_heads = any(kind.startswith("specee") or kind in EAGLE_KINDS for kind, _ in parsed.values())
    tok = Tokenizer.from_gguf(model_path)
    template = read_chat_template(model_path)
    out: dict = {"model": os.fspath(model_path), "heads": os.fspath(heads_path) if heads_path else None,
                 "n_predict": n_predict, "limit": limit, "threads": threads, "verify_full": verify_full,
                 "system": system_info(), "complete": False, "datasets": {}}
    with Model(model_path) as model:
        if needs_heads and heads_path is None:
            heads_path = heads_or_shipped(None, model.fingerprint, Path(model_path).name, "mode specee")
            out["heads"] = os.fspath(heads_path)
        heads = Heads(model, heads_path) if needs_heads else None
        needs_drafter = any(kind == "speculative" for kind, _ in parsed.values())
        # the text drafter (and a draft model) once per model; exit steps per item, in its context
        drafter = open_drafter("auto", model, n_ctx, threads) if needs_drafter else None
        if needs_drafter and heads is None:
            # the exit steps' predictors: --heads, else the shipped ones, else no exit steps
            exit_path = exit_heads_path(model, heads_path, required=False)
            heads = Heads(model, exit_path) if exit_path is not None else None
            out["heads"] = os.fspath(exit_path) if exit_path is not None else None
        # what the numbers depend on, file contents included (a head file
        # replaced under the same name, say with another threshold, is another run)
        settings = {k: out[k] for k in ("model", "heads", "n_predict", "limit", "threads")}
        settings.update(modes=list(modes), n_ctx=n_ctx, threshold=threshold, verify_full=verify_full,
                        model_fingerprint=model.fingerprint,
                        heads_sha256=file_sha256(Path(heads_path)) if heads_path is not None else None)
        log = ItemLog(item_log, settings, resume) if item_log is not None else None
        try:
            for i, name in enumerate(datasets):
                records = load_dataset(name, limit=limit, path=(dataset_paths or {}).get(name), progress=progress)
                tasks = make_tasks(name, records)
                prompts = []
                for t in tasks:
                    ids = (chat_prompt_ids(tok, template, [{"role": "user", "content": t.prompt}]) if t.chat
                           else tok.encode(t.prompt, parse_special=False))
                    prompts.append(ids[-(n_ctx - n_predict - 1):])
                results = {m: ModeResult() for m in modes}
                done = log.done(name) if log is not None else {}
                with tqdm(total=len(tasks), desc=name, unit="item", disable=not progress,
                          initial=sum(k < len(tasks) for k in done)) as bar:
                    for index, (task, ids) in enumerate(zip(tasks, prompts)):
                        item = done.get(index)
                        if item is None:
                            item = {mode: run_item(model, ids, task, parsed[mode], n_ctx, threads, n_predict, tok,
                                                   heads, threshold, verify_full, drafter, out)
                                    for mode in modes}
                            if log is not None:
                                log.add(name, index, item)
                            bar.update(1)
                        for mode in modes:
                            results[mode].add(item[mode])
                out["datasets"][name] = summarize(results, model.n_layer)
                out["complete"] = i == len(datasets) - 1
                if on_dataset is not None:
                    on_dataset(out)
        finally:
            if log is not None:
                log.close()
            if heads is not None:
                heads.close()
            if drafter is not None:
                drafter.close()
    return out


def run_item(model: Model, ids: list[int], task: Task, mode: tuple[str, Optional[float]], n_ctx: int, threads: int,
             n_predict: int, tok: Tokenizer, heads: Optional[Heads], threshold: Optional[float],
             verify_full: Optional[bool], drafter, out: dict) -> dict:
    """One item in one mode, in a fresh context: a JSON-ready record for
    ModeResult.add and the item log."""
    kind, mode_threshold = mode
    rec = {"exit_layers": [], "tf_agree": 0, "tf_steps": 0, "drafted": 0, "accepted": 0,
           "exit_drafted": 0, "exit_accepted": 0}
    with model.context(n_ctx=n_ctx, n_threads=threads) as ctx, \
            _item_drafter(kind, drafter, ctx, heads) as item_drafter:
        if kind in EAGLE_KINDS:  # the head file's draft head, in this item's context
            decoder = open_decoder(ctx, "speculative", Sampler(), drafter=item_drafter, lossy=kind == "spadec",
                                   skip_agreement=mode_threshold)
        else:
            decoder = open_decoder(ctx, "specee" if kind.startswith("specee") else kind, Sampler(), heads=heads,
                                   threshold=mode_threshold if mode_threshold is not None else threshold,
                                   verify=None if verify_full is None else "full" if verify_full else "candidates",
                                   drafter=item_drafter, lossy=kind == "specee-lossy")
        g = decode(decoder, ctx, ids, n_predict, stop_ids=tok.eot_ids)
        if kind.startswith("specee"):
            out["verify_full"] = ctx.exit_params()["verify_full"]
            rec["exit_layers"] = [int(e) for e in g.extra["exit_layers"]]
            if kind == "specee-lossy":  # how often the exit token is the full model's
                rec["tf_agree"], rec["tf_steps"] = teacher_forced(ctx, ids, n_predict, heads.n_candidates)
            else:  # exact: the full model checks every exit's draft
                rec["drafted"], rec["accepted"] = g.extra["exit_drafts_verified"], g.extra["exit_drafts_accepted"]
        elif kind == "speculative" or kind in EAGLE_KINDS:
            rec["drafted"], rec["accepted"] = g.extra["drafted"], g.extra["accepted"]
            rec["exit_drafted"] = g.extra.get("exit_drafts_verified", 0)
            rec["exit_accepted"] = g.extra.get("exit_drafts_accepted", 0)
    body = [t for t in g.tokens if t not in tok.eot_ids]
    text = tok.decode(body, skip_special=True)
    rec.update(tokens=[int(t) for t in body], text=text, decode_s=g.decode_s, n_decode=g.n_decode_steps,
               score=task.score(text) if task.score is not None else None)
    return rec


@contextmanager
def _item_drafter(kind: str, drafter, ctx, heads: Optional[Heads]):
    """The speculative mode's drafter for one item: the shared text drafter
    plus exit steps in this item's context (both left open for the next
    item), or the text drafter alone without heads; for eagle and spadec,
    the run's heads' draft head in this context (the heads stay open)."""
    if kind in EAGLE_KINDS:
        eagle = open_drafter("eagle", ctx.model, ctx.n_ctx, ctx.n_threads, ctx=ctx, heads=heads)
        try:
            yield eagle
        finally:
            eagle.close()
        return
    if kind != "speculative" or heads is None:
        yield drafter
        return
    item = WithExits(drafter, ctx, heads, owns_heads=False, owns_text=False)
    try:
        yield item
    finally:
        item.close()


def _prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def summarize(results: dict[str, ModeResult], n_layer: int) -> dict:
    base = results.get("vanilla")
    summary = {}
    for mode, r in results.items():
        tok_s = r.n_decode / r.decode_s if r.decode_s > 0 else 0.0
        s = {"n_items": len(r.texts), "decode_tok_s": round(tok_s, 2),
             "task_score": round(statistics.mean(r.scores), 4) if r.scores else None}
        if base is not None and base.decode_s > 0 and mode != "vanilla":
            s["speedup"] = round(tok_s / (base.n_decode / base.decode_s), 4)
        if r.exit_layers:
            s["mean_exit_layer"] = round(statistics.mean(r.exit_layers), 3)
            s["exit_ratio"] = round(sum(e < n_layer for e in r.exit_layers) / len(r.exit_layers), 4)
            # steps per exit layer 1..n_layer (layer n_layer: ran to the end)
            s["exit_layer_histogram"] = [r.exit_layers.count(l) for l in range(1, n_layer + 1)]
        if r.drafted:
            s["acceptance_rate"] = round(r.accepted / r.drafted, 4)
        if r.exit_drafted:  # the speculative mode's exit steps
            s["exit_drafts_verified"] = r.exit_drafted
            s["exit_acceptance_rate"] = round(r.exit_accepted / r.exit_drafted, 4)
        if r.tf_steps:
            s["teacher_forced_agreement"] = round(r.tf_agree / r.tf_steps, 4)
        if base is not None and mode != "vanilla":
            s["same_tokens_as_vanilla"] = sum(a == b for a, b in zip(r.tokens, base.tokens))
            s["exact_prefix_tokens"] = round(statistics.mean(_prefix(a, b) for a, b in zip(r.tokens, base.tokens)), 2)
            s["rouge_l_vs_vanilla"] = round(statistics.mean(rouge_l(a, b) for a, b in zip(r.texts, base.texts)), 4)
        summary[mode] = s
    return summary


def markdown_table(results: dict) -> str:
    cols = ["decode_tok_s", "speedup", "mean_exit_layer", "exit_ratio", "acceptance_rate", "teacher_forced_agreement",
            "same_tokens_as_vanilla", "exact_prefix_tokens", "rouge_l_vs_vanilla", "task_score"]
    lines = ["| data set | mode | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, modes in results["datasets"].items():
        for mode, s in modes.items():
            lines.append(f"| {name} | {mode} | " + " | ".join("" if s.get(c) is None else str(s[c]) for c in cols) + " |")
    return "\n".join(lines)
