"""Cutting special tokens out of text before the tokenizer model sees it.

This follows llama.cpp's ``tokenizer_st_partition``: the special tokens are
tried longest text first, and each one splits every text fragment still left
at each of its occurrences. A token may also eat the whitespace next to it
(``rstrip``: after it, ``lstrip``: before it); llama.cpp sets these flags for
a few model families only (see :func:`strip_flags`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SpecialToken", "partition", "strip_flags"]

# C isspace(), which llama.cpp uses when a token strips its neighbours
_C_WHITESPACE = " \t\n\v\f\r"


@dataclass(frozen=True)
class SpecialToken:
    """A token matched as a whole in the text."""

    id: int
    text: str
    control: bool  # control/unknown: only matched when special tokens are parsed
    lstrip: bool = False
    rstrip: bool = False


def partition(text: str, specials: Sequence[SpecialToken], parse_special: bool) -> list[str | int]:
    """``text`` as a list of plain-text fragments (``str``) and special token ids (``int``).

    ``specials`` must be ordered longest text first. With ``parse_special``
    false only non-control tokens (user-defined ones) are matched.
    """
    fragments: list[str | int] = [text] if text else []
    for tok in specials:
        if tok.control and not parse_special:
            continue
        if not any(isinstance(f, str) and tok.text in f for f in fragments):
            continue
        out: list[str | int] = []
        for frag in fragments:
            if isinstance(frag, int) or tok.text not in frag:
                out.append(frag)
                continue
            parts = frag.split(tok.text)
            last = len(parts) - 1
            for k, part in enumerate(parts):
                if k > 0:
                    out.append(tok.id)
                    if tok.rstrip:
                        part = part.lstrip(_C_WHITESPACE)
                if k < last and tok.lstrip:
                    part = part.rstrip(_C_WHITESPACE)
                if part:
                    out.append(part)
        fragments = out
    return fragments


def strip_flags(model_name: str, text: str) -> tuple[bool, bool]:
    """(lstrip, rstrip) for a special token, by llama.cpp's per-model rules.

    Phi-3 models (``general.name`` containing "phi-3" or "phi3") strip the
    whitespace after every special token except ``<unk>``, ``<s>`` and
    ``<|endoftext|>``.
    """
    name = model_name.lower()
    if ("phi-3" in name or "phi3" in name) and text not in ("<unk>", "<s>", "<|endoftext|>"):
        return False, True
    return False, False
