"""SentencePiece vocabularies (``tokenizer.ggml.model == "llama"``), as llama.cpp runs them.

llama.cpp's ``llm_tokenizer_spm`` works on a whole text piece (no word split):

1. spaces become "▁" (U+2581), and with ``add_space_prefix`` (the default) a
   "▁" is put in front of every piece that starts the text or follows a
   special token;
2. starting from single characters, the adjacent pair whose concatenation is
   the vocabulary token with the highest score is merged, again and again
   (ties go to the leftmost pair);
3. a character that is not a token is written as its UTF-8 bytes, one
   ``<0xNN>`` byte token each.

Step 2 is BPE whose merge ranks come from the token scores, so the
``tokenizers`` library's BPE model (with ``byte_fallback`` for step 3) runs
it: every token that splits into two tokens yields a merge, ranked by the
score of the token it makes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

__all__ = ["SPACE", "build_spm", "escape_spaces", "spm_piece", "byte_token_value"]

SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def escape_spaces(text: str, add_space_prefix: bool) -> str:
    """Piece text as the SPM model sees it: spaces as "▁", optionally one in front."""
    return (SPACE if add_space_prefix else "") + text.replace(" ", SPACE)


def byte_token_value(text: str) -> int | None:
    """The byte a ``<0xNN>`` token stands for, else ``None``."""
    m = _BYTE_TOKEN.fullmatch(text)
    return int(m.group(1), 16) if m else None


def spm_piece(text: str) -> bytes:
    """Bytes a normal SPM token prints: its text with "▁" as a space."""
    return text.replace(SPACE, " ").encode("utf-8")


def _score_merges(tokens: Sequence[str], scores: np.ndarray, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) pair of tokens whose concatenation is a token, best score first."""
    ranked: list[tuple[float, int, str, str]] = []
    for tid, text in enumerate(tokens):
        if vocab.get(text) != tid:
            continue  # a duplicated text: only the id llama.cpp looks up can be made
        score = float(scores[tid])
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, tid, left, right))
    # a higher score merges first; equal scores keep token order (llama.cpp
    # breaks such ties by position instead, which only matters if two
    # different tokens compete with the same score)
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [(left, right) for _, _, left, right in ranked]


def build_spm(tokens: Sequence[str], scores: np.ndarray) -> HFTokenizer:
    """A ``tokenizers`` pipeline that encodes one escaped text piece (see :func:`escape_spaces`)."""
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab[tok] = i  # a duplicated text maps to its last id, as in llama.cpp
    merges = _score_merges(tokens, scores, vocab)
    return HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=True))
