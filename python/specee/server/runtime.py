"""What a running server holds: the model, its tokenizer and chat template,
the heads, one context per slot, and the scheduler over them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Union

from ..tokenizer.chat_template import ChatTemplateError, chat_prompt_ids, read_chat_template
from ..engine import Heads, Model
from ..heads.shipped import NoHeadsError, heads_or_shipped
from ..tokenizer.gguf_tokenizer import Tokenizer
from .config import ServerConfig
from .decoding import ServedHeads
from .prometheus import ServerMetrics
from .scheduler import Scheduler
from .speculative import ServedDrafting
from .schemas import bad_request

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    model: Model
    tokenizer: Tokenizer
    chat_template: Optional[str]
    heads: Optional[ServedHeads]
    scheduler: Scheduler
    n_ctx: int

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if self.chat_template is None:
            raise bad_request("messages", "the model has no chat template; use /v1/completions with a prompt")
        try:
            return chat_prompt_ids(self.tokenizer, self.chat_template, messages)
        except ChatTemplateError as e:
            raise bad_request("messages", str(e)) from None

    def prompt_ids(self, prompt: Union[str, list[int]]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, parse_special=False)
        n_vocab = self.model.n_vocab
        bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise bad_request("prompt", f"token id {bad} is outside the vocabulary [0, {n_vocab})")
        return list(prompt)

    def check_fits(self, ids: list[int], param: str) -> None:
        """A prompt must leave room for at least one generated token."""
        if not ids:
            raise bad_request(param, "the prompt is empty after tokenization")
        if len(ids) >= self.n_ctx:
            raise bad_request(param, f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx} "
                                     "(--ctx-size) and needs room for the answer", code="context_length_exceeded")

    def close(self) -> None:
        self.scheduler.stop()
        if self.scheduler.drafting is not None:
            self.scheduler.drafting.close()
        if self.heads is not None:
            for slot in self.scheduler.slots:
                slot.ctx.set_heads(None)
            self.heads.heads.close()
        self.model.close()  # frees the contexts too


def load_runtime(config: ServerConfig, metrics: ServerMetrics) -> Runtime:
    """Loads everything and starts the compute thread (takes seconds on a real model)."""
    model = Model(config.model_path, amx_decode=config.amx_decode, kernels=config.kernels,
                  n_gpu_layers=config.n_gpu_layers, rpc_servers=config.rpc_servers)
    try:
        tokenizer = Tokenizer.from_gguf(config.model_path)
        try:
            template = read_chat_template(config.model_path)
        except ChatTemplateError:
            template = None
            log.warning("%s has no chat template: /v1/chat/completions will refuse requests", config.model_path)
        contexts = [model.context(n_ctx=config.ctx_size, n_threads=config.threads) for _ in range(config.parallel)]
        for ctx in contexts[1:]:
            ctx.share_threads(contexts[0])  # one compute thread drives them all: one pool, none spinning idle
        heads = _load_heads(config, model)
        served = ServedHeads.attach_once(heads, contexts[0]) if heads is not None else None
        drafting = ServedDrafting(config.draft, config.draft_max, model, contexts)
        if drafting.needs_heads and (heads is None or not heads.has_draft):
            drafting.close()
            raise ValueError(f"--drafter {config.draft} needs heads with a draft head: none ship for this model; "
                             "give --heads")
        if drafting.needs_exits and heads is None:
            drafting.close()
            raise ValueError(f"--drafter {config.draft} needs exit predictors: no heads ship for this model; "
                             "give --heads")
    except BaseException:
        model.close()
        raise
    scheduler = Scheduler(contexts, served, config.queue, metrics, batching=config.batching)
    scheduler.drafting = drafting
    scheduler.start()
    log.info("serving %s: %d slots of %d tokens, %d threads, heads %s", config.model_path.name, config.parallel,
             contexts[0].n_ctx, contexts[0].n_threads, heads.path if heads else "none")
    return Runtime(model, tokenizer, template, served, scheduler, contexts[0].n_ctx)


def _load_heads(config: ServerConfig, model: Model) -> Optional[Heads]:
    """--heads, else the shipped heads for the model (so that requests may ask
    for early exit even when --mode is vanilla), else none."""
    try:
        path = heads_or_shipped(config.heads, model.fingerprint, config.model_path.name, "--mode specee")
    except NoHeadsError:
        if config.mode == "specee":
            raise
        return None
    return Heads(model, path)
