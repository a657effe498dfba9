"""Training text: conversations rendered with the model's own chat template
and tokenized with its own vocabulary, so the draft head learns on the
format it will see."""
from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping, Sequence

from ..tokenizer.chat_template import chat_prompt_ids, read_chat_template
from ..tokenizer.gguf_tokenizer import Tokenizer

log = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]  # [{"role": "user"|"assistant", "content": str}, ...]


def conversation_sequences(model_path: str | os.PathLike, conversations: Iterable[Conversation],
                           max_len: int = 1024) -> list[list[int]]:
    """Whole conversations as token ids (cut at max_len), for draft training."""
    tok, template = Tokenizer.from_gguf(model_path), read_chat_template(model_path)
    out = []
    for conv in conversations:
        ids = chat_prompt_ids(tok, template, list(conv), add_generation_prompt=False)[:max_len]
        if len(ids) >= 8:
            out.append(ids)
    log.info("%d training sequences, %d tokens", len(out), sum(map(len, out)))
    return out


def conversation_prompts(model_path: str | os.PathLike, conversations: Iterable[Conversation],
                         max_len: int = 512) -> list[list[int]]:
    """The first user turn of each conversation as a chat prompt (for the
    greedy continuations the predictors learn from)."""
    tok, template = Tokenizer.from_gguf(model_path), read_chat_template(model_path)
    out = []
    for conv in conversations:
        first = next((t for t in conv if t["role"] == "user" and t["content"].strip()), None)
        if first is None:
            continue
        ids = chat_prompt_ids(tok, template, [first])
        if len(ids) <= max_len:
            out.append(ids)
    return out
