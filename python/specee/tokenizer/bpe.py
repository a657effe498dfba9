"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``): the merge model and token bytes.

Text pieces between special tokens are cut into words by the pre-tokenizer of
``tokenizer.ggml.pre`` (:mod:`specee.tokenizer.pretokenizers`), each word's UTF-8 bytes
are mapped to GPT-2's printable byte characters, and merges are applied by
rank, as in llama.cpp's ``llm_tokenizer_bpe``. The ``tokenizers`` library
runs all three steps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from .pretokenizers import PreTokenizerSpec, build_pre_tokenizer

__all__ = ["build_bpe", "byte_level_to_bytes"]

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _byte_decoder_table() -> dict[int, int]:
    """str.translate table from GPT-2 byte-level characters to code points 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[256 + extra] = b
            extra += 1
    return table


def byte_level_to_bytes(text: str) -> bytes:
    """Bytes behind a byte-level BPE token string (unmapped chars kept as UTF-8)."""
    mapped = text.translate(_byte_decoder_table())
    try:
        return mapped.encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(
            c.encode("latin-1") if ord(c) < 256 else c.encode("utf-8") for c in mapped
        )


def _split_merge(merge: str) -> tuple[str, str] | None:
    # like llama.cpp: the separator is the first space after position 0
    pos = merge.find(" ", 1)
    if pos < 0:
        return None
    return merge[:pos], merge[pos + 1 :]


def build_bpe(tokens: Sequence[str], merges: Sequence[str], spec: PreTokenizerSpec) -> HFTokenizer:
    """A ``tokenizers`` pipeline that encodes plain text (no special tokens) to ids."""
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab[tok] = i  # a duplicated text maps to its last id, as in llama.cpp
    pairs: list[tuple[str, str]] = []
    dropped = 0
    for merge in merges:
        pair = _split_merge(merge)
        # tokenizers rejects merges whose parts or result are not tokens;
        # llama.cpp can never produce such a token either
        if pair is None or pair[0] not in vocab or pair[1] not in vocab or pair[0] + pair[1] not in vocab:
            dropped += 1
            continue
        pairs.append(pair)
    if dropped:
        logger.debug("dropped %d merges that do not produce vocabulary tokens", dropped)
    hf = HFTokenizer(
        models.BPE(
            vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=spec.ignore_merges
        )
    )
    hf.pre_tokenizer = build_pre_tokenizer(spec)
    return hf
