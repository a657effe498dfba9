"""Render chat messages into a prompt with the model's own Jinja chat template.

The template is the GGUF key ``tokenizer.chat_template`` (copied from the
model's Hugging Face ``tokenizer_config.json``). Rendering happens in a
sandboxed Jinja environment set up the way such templates expect: blocks
trimmed, ``loopcontrols`` enabled, a ``raise_exception`` helper, a
``strftime_now`` helper and a ``tojson`` filter that keeps non-ASCII text.

:func:`chat_prompt_ids` turns messages into prompt token ids the way
llama.cpp does: the template gets the vocabulary's BOS/EOS texts, and when the
model adds BOS itself (``tokenizer.ggml.add_bos_token``) a BOS the template
already wrote is dropped, so the prompt starts with exactly one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..gguf_meta import read_gguf_metadata

if TYPE_CHECKING:
    from .gguf_tokenizer import Tokenizer

__all__ = [
    "ChatTemplateError",
    "render_chat",
    "read_chat_template",
    "special_texts",
    "chat_prompt_ids",
    "CHAT_TEMPLATE_KEY",
]

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


class ChatTemplateError(ValueError):
    """The model has no usable chat template, or the template rejected the input."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    # jinja2's built-in tojson HTML-escapes '<', '>', '&' — wrong for prompts
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], keep_trailing_newline=False
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"invalid chat template (line {e.lineno}): {e.message}") from e


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) to a prompt string.

    ``add_generation_prompt`` appends the header of an assistant turn.
    ``extra`` keyword arguments (e.g. ``tools=...``) are passed to the template.
    """
    if not template:
        raise ChatTemplateError("empty chat template")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ChatTemplateError(f"message {i} must be a mapping with a 'role' key, got {message!r}")
    try:
        return _compile(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e


def read_chat_template(path: str | os.PathLike[str]) -> str:
    """The chat template stored in the GGUF file at ``path``."""
    template = read_gguf_metadata(path, [CHAT_TEMPLATE_KEY]).get(CHAT_TEMPLATE_KEY)
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(
            f"{path} has no {CHAT_TEMPLATE_KEY}; pass a raw prompt instead of chat messages"
        )
    return template


def special_texts(tok: Tokenizer) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` template variables: the vocabulary's texts ("" if none)."""
    return {
        "bos_token": tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
        "eos_token": tok.token_text(tok.eos_id) if tok.eos_id is not None else "",
    }


def chat_prompt_ids(
    tok: Tokenizer,
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> list[int]:
    """Token ids of ``messages`` rendered with ``template``, as llama.cpp builds a chat prompt.

    Special tokens in the rendered text are parsed. The model's own BOS/EOS
    rules apply (:attr:`Tokenizer.add_bos`/``add_eos``); a BOS (EOS) text the
    template already put at the start (end) is removed first when the
    tokenizer adds that token, so it is never doubled.
    """
    specials = special_texts(tok)
    text = render_chat(template, messages, add_generation_prompt, **specials, **extra)
    bos, eos = specials["bos_token"], specials["eos_token"]
    if tok.add_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    if tok.add_eos and eos and text.endswith(eos):
        text = text[: -len(eos)]
    return tok.encode(text, parse_special=True)
