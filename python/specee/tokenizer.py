"""Byte-level BPE tokenizer built from a GGUF file's own vocabulary.

Encoding follows llama.cpp (``src/llama-vocab.cpp``) for ``tokenizer.ggml.model
== "gpt2"`` so that token ids match what the engine's reference produces:

1. special-token partition: control/unknown tokens (token_type 3/2) are cut
   out of the text as single tokens when ``parse_special`` is true;
   user-defined tokens (type 4) always are, as in llama.cpp;
2. pre-tokenization: a list of regex passes chosen by ``tokenizer.ggml.pre``
   (see :data:`PRE_TOKENIZER_REGEXES`); every pass splits each piece of the
   previous pass into its matches and the gaps between them;
3. byte-level mapping and BPE merges by rank.

Steps 1–3 run inside the ``tokenizers`` library (BPE model, ``Split``
pre-tokenizers, byte-level mapping). Decoding maps every token back to its
bytes here, so partial UTF-8 sequences can be streamed safely.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .gguf_meta import read_gguf_metadata

__all__ = [
    "TokenizerError",
    "Tokenizer",
    "StreamDecoder",
    "PRE_TOKENIZER_REGEXES",
    "TOKEN_NORMAL",
    "TOKEN_UNKNOWN",
    "TOKEN_CONTROL",
    "TOKEN_USER_DEFINED",
    "TOKEN_UNUSED",
    "TOKEN_BYTE",
]

logger = logging.getLogger(__name__)

# token_type values (gguf.TokenType / llama.cpp llama_token_type)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Texts of tokens that end a turn in common chat formats; any of them present
# in a vocabulary joins eot_ids (llama.cpp keeps a similar end-of-generation set).
_END_OF_TURN_TEXTS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
)

# ---------------------------------------------------------------------------
# pre-tokenizer regexes (behaviour of llama.cpp's llm_tokenizer_bpe per pre type)
# ---------------------------------------------------------------------------

_L, _N = r"\p{L}", r"\p{N}"
# GPT-2: contractions, optional space + letters / digits / other symbols, then
# whitespace runs that leave their last space to the following word. (llama.cpp's
# regex string lacks the final \s+ alternative, but its hand-written matcher for
# this pattern in unicode.cpp implements it.)
_GPT2 = "|".join(
    [
        "'s|'t|'re|'ve|'m|'ll|'d",
        f" ?{_L}+",
        f" ?{_N}+",
        rf" ?[^\s{_L}{_N}]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
# Qwen2: case-insensitive contractions, one leading non-letter glued to a word,
# single digits, punctuation runs keep trailing newlines, newline runs.
_QWEN2 = "|".join(
    [
        "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]",
        rf"[^\r\n{_L}{_N}]?{_L}+",
        _N,
        rf" ?[^\s{_L}{_N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

#: Regex passes per ``tokenizer.ggml.pre`` value, applied in order.
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt-2": (_GPT2,),  # llama.cpp's spelling
    "gpt2": (_GPT2,),  # accepted as an alias
    "smollm": (_N, _GPT2),  # every digit is its own piece, then GPT-2
    "qwen2": (_QWEN2,),
    "default": (
        r"[\p{P}\$\+<=>\^~\|]+",
        _GPT2,
        rf"{_N}+",
        "[0-9][0-9][0-9]",
    ),
}


class TokenizerError(ValueError):
    """The GGUF vocabulary is missing, unsupported, or a token id is invalid."""


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


def _byte_level_to_bytes(text: str) -> bytes:
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


class Tokenizer:
    """Encode/decode text with a GGUF model's byte-level BPE vocabulary.

    Attributes: ``bos_id``/``eos_id`` (``None`` if the model has none),
    ``eot_ids`` (ids that end generation), ``n_vocab``, ``add_bos`` (the
    model's default for :meth:`encode`), ``pre`` (pre-tokenizer type),
    ``chat_template`` (``None`` if absent), ``token_types`` (int array).
    """

    def __init__(self, metadata: Mapping[str, Any], source: str = "<metadata>") -> None:
        """Build from GGUF metadata (as returned by :func:`read_gguf_metadata`)."""
        self.source = source
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError(f"{source}: no tokenizer.ggml.model key (is this a model GGUF?)")
        if model != "gpt2":
            raise TokenizerError(
                f"{source}: tokenizer model {model!r} is not supported; "
                "specee supports byte-level BPE ('gpt2') vocabularies only"
            )
        pre = metadata.get("tokenizer.ggml.pre", "default") or "default"
        if pre not in PRE_TOKENIZER_REGEXES:
            raise TokenizerError(
                f"{source}: pre-tokenizer {pre!r} is not supported; "
                f"supported: {', '.join(sorted(PRE_TOKENIZER_REGEXES))}"
            )
        self.pre: str = pre
        tokens = metadata.get("tokenizer.ggml.tokens")
        merges = metadata.get("tokenizer.ggml.merges")
        if not tokens:
            raise TokenizerError(f"{source}: missing tokenizer.ggml.tokens")
        if merges is None:
            raise TokenizerError(f"{source}: missing tokenizer.ggml.merges (required for BPE)")
        self._tokens: list[str] = list(tokens)
        n = len(self._tokens)
        types = metadata.get("tokenizer.ggml.token_type")
        if types is None:
            logger.warning("%s: no tokenizer.ggml.token_type; treating all tokens as normal", source)
            self.token_types = np.full(n, TOKEN_NORMAL, dtype=np.int32)
        else:
            self.token_types = np.asarray(types, dtype=np.int32)
            if self.token_types.shape != (n,):
                raise TokenizerError(
                    f"{source}: token_type has {self.token_types.size} entries for {n} tokens"
                )

        self.bos_id: int | None = self._optional_id(metadata, "tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = self._optional_id(metadata, "tokenizer.ggml.eos_token_id")
        self.add_bos: bool = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
        template = metadata.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None

        self._hf = self._build_hf(self._tokens, merges, self.token_types, pre)
        self._lock = threading.Lock()  # guards the encode_special_tokens toggle
        self._special = (self.token_types == TOKEN_CONTROL) | (self.token_types == TOKEN_UNKNOWN)
        self._pieces = self._build_pieces()
        self.eot_ids: frozenset[int] = self._find_eot_ids(metadata)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the vocabulary of the GGUF file at ``path``."""
        keys = [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.chat_template",
        ]
        try:
            meta = read_gguf_metadata(path, keys)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read {path}: {e}") from e
        return cls(meta, source=str(path))

    def _optional_id(self, metadata: Mapping[str, Any], key: str) -> int | None:
        value = metadata.get(key)
        if value is None:
            return None
        value = int(value)
        if not 0 <= value < self.n_vocab:
            logger.warning("%s: %s=%d is out of range; ignored", self.source, key, value)
            return None
        return value

    @staticmethod
    def _build_hf(
        tokens: Sequence[str], merges: Sequence[str], types: np.ndarray, pre: str
    ) -> HFTokenizer:
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
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZER_REGEXES[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        hf.decoder = decoders.ByteLevel()
        special = [
            AddedToken(tokens[i], special=True, normalized=False)
            for i in np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_UNKNOWN))
            if tokens[i]
        ]
        user = [
            AddedToken(tokens[i], special=False, normalized=False)
            for i in np.flatnonzero(types == TOKEN_USER_DEFINED)
            if tokens[i]
        ]
        if special:
            hf.add_special_tokens(special)
        if user:
            hf.add_tokens(user)
        return hf

    def _build_pieces(self) -> list[bytes]:
        """The bytes each token stands for when decoded."""
        pieces: list[bytes] = []
        for tok, ttype in zip(self._tokens, self.token_types.tolist()):
            if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
                pieces.append(tok.encode("utf-8"))  # added tokens are stored as plain text
            elif ttype == TOKEN_NORMAL:
                pieces.append(_byte_level_to_bytes(tok))
            else:
                pieces.append(b"")  # unused/byte tokens print nothing, as in llama.cpp
        return pieces

    def _find_eot_ids(self, metadata: Mapping[str, Any]) -> frozenset[int]:
        ids: set[int] = set()
        if self.eos_id is not None:
            ids.add(self.eos_id)
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            value = self._optional_id(metadata, key)
            if value is not None:
                ids.add(value)
        for text in _END_OF_TURN_TEXTS:
            tid = self._hf.token_to_id(text)
            if tid is not None and self.token_types[tid] != TOKEN_NORMAL:
                ids.add(tid)
        return frozenset(ids)

    # -- queries --------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary (the logits row length)."""
        return len(self._tokens)

    def token_text(self, token_id: int) -> str:
        """The token as stored in the vocabulary (byte-level form, e.g. ``'Ġthe'``)."""
        self._check_id(token_id)
        return self._tokens[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes ``token_id`` decodes to (special tokens as their text)."""
        self._check_id(token_id)
        return self._pieces[token_id]

    def is_special(self, token_id: int) -> bool:
        """True for control/unknown tokens (dropped by ``decode(skip_special=True)``)."""
        self._check_id(token_id)
        return bool(self._special[token_id])

    def token_id(self, text: str) -> int | None:
        """Id of the token whose vocabulary text is ``text``, if any."""
        return self._hf.token_to_id(text)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} out of range [0, {len(self._tokens)})")

    # -- encode / decode ------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids for ``text``.

        ``add_bos=None`` follows the model (``tokenizer.ggml.add_bos_token``).
        With ``parse_special`` control tokens written in the text (e.g.
        ``<|im_start|>``) become single tokens; otherwise they are tokenized as
        plain text.
        """
        with self._lock:
            self._hf.encode_special_tokens = not parse_special
            try:
                ids = self._hf.encode(text, add_special_tokens=False).ids
            finally:
                self._hf.encode_special_tokens = False
        if add_bos if add_bos is not None else self.add_bos:
            if self.bos_id is None:
                raise TokenizerError(f"{self.source}: add_bos requested but the model has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """Concatenated bytes of ``ids`` (may end inside a UTF-8 sequence)."""
        out = []
        pieces, special, n = self._pieces, self._special, len(self._pieces)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise TokenizerError(f"token id {i} out of range [0, {n})")
            if skip_special and special[i]:
                continue
            out.append(pieces[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for ``ids``; invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        """A :class:`StreamDecoder` bound to this tokenizer."""
        return StreamDecoder(self, skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, pre={self.pre!r}, source={self.source!r})"


class StreamDecoder:
    """Incremental detokenizer for generation loops.

    ``feed(ids)`` returns only the newly printable text; bytes of a UTF-8
    character split across tokens are held back until it is complete (invalid
    bytes become U+FFFD). Call ``flush()`` at the end.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        """Add one id or several; return the text they complete."""
        if isinstance(ids, (int, np.integer)):
            ids = (int(ids),)
        return self._utf8.decode(self.tokenizer.decode_bytes(ids, self.skip_special))

    def flush(self) -> str:
        """Return whatever is still held back (as U+FFFD if incomplete) and reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    def reset(self) -> None:
        """Drop held-back bytes."""
        self._utf8.reset()
