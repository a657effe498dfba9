"""Tokenizer built from a GGUF file's own vocabulary, matching llama.cpp token for token.

Two vocabulary kinds (``tokenizer.ggml.model``) are supported:

* ``"gpt2"``: byte-level BPE with the pre-tokenizer named by
  ``tokenizer.ggml.pre`` (:mod:`specee.tokenizer.bpe`, :mod:`specee.tokenizer.pretokenizers`);
* ``"llama"``: SentencePiece with scores and ``<0xNN>`` byte fallback
  (:mod:`specee.tokenizer.spm`).

Encoding follows llama.cpp (``src/llama-vocab.cpp``): special tokens are cut
out of the text first (:mod:`specee.tokenizer.special_tokens`; control/unknown tokens
only when ``parse_special`` is true, user-defined tokens always), then every
plain-text fragment goes through the vocabulary's model. Decoding maps each
token to the bytes llama.cpp prints for it (``token_to_piece``), so partial
UTF-8 sequences can be streamed safely with :class:`StreamDecoder`.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from ..gguf_meta import read_gguf_metadata
from .pretokenizers import PRE_TOKENIZERS, pre_tokenizer_spec
from .special_tokens import SpecialToken, partition, strip_flags
from .bpe import build_bpe, byte_level_to_bytes
from .spm import build_spm, byte_token_value, escape_spaces, spm_piece

__all__ = [
    "TokenizerError",
    "Tokenizer",
    "StreamDecoder",
    "SUPPORTED_MODELS",
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

#: ``tokenizer.ggml.model`` values this module can encode.
SUPPORTED_MODELS = {"gpt2": "byte-level BPE", "llama": "SentencePiece"}

# Texts of tokens that end generation, as llama.cpp lists them; any of them
# present in a vocabulary (as a non-normal token) joins eot_ids.
_END_OF_GENERATION_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<｜end▁of▁sentence｜>",
)

_KEYS = (
    "general.name",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)


class TokenizerError(ValueError):
    """The GGUF vocabulary is missing, unsupported, or a token id is invalid."""


class Tokenizer:
    """Encode/decode text with a GGUF model's vocabulary.

    Attributes: ``model`` (``tokenizer.ggml.model``), ``pre`` (pre-tokenizer
    type), ``bos_id``/``eos_id`` (``None`` if the model has none), ``eot_ids``
    (ids that end generation), ``n_vocab``, ``add_bos``/``add_eos`` (the
    model's defaults for :meth:`encode`), ``add_space_prefix`` (SentencePiece:
    a "▁" goes in front of the text, so decoding it back starts with a
    space), ``chat_template`` (``None`` if absent), ``token_types`` (int array).
    """

    def __init__(self, metadata: Mapping[str, Any], source: str = "<metadata>") -> None:
        """Build from GGUF metadata (as returned by :func:`read_gguf_metadata`)."""
        self.source = source
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError(f"{source}: no tokenizer.ggml.model key (is this a model GGUF?)")
        if model not in SUPPORTED_MODELS:
            supported = ", ".join(f"{k!r} ({v})" for k, v in SUPPORTED_MODELS.items())
            raise TokenizerError(
                f"{source}: tokenizer model {model!r} (tokenizer.ggml.model) is not supported; "
                f"supported: {supported}"
            )
        self.model: str = model
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError(f"{source}: missing tokenizer.ggml.tokens")
        self._tokens: list[str] = list(tokens)
        self.token_types = self._read_types(metadata)

        self.pre: str = metadata.get("tokenizer.ggml.pre") or "default"
        if model == "gpt2" and not metadata.get("tokenizer.ggml.pre"):
            logger.warning("%s: no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer", source)
        spm = model == "llama"
        self._hf: HFTokenizer = self._build_spm(metadata) if spm else self._build_bpe(metadata)
        add_bos_default = True if spm else PRE_TOKENIZERS[self.pre].add_bos
        self.add_space_prefix: bool = spm and bool(metadata.get("tokenizer.ggml.add_space_prefix", True))

        # llama.cpp's SentencePiece defaults when the ids are not in the file
        self.bos_id: int | None = self._optional_id(metadata, "tokenizer.ggml.bos_token_id", 1 if spm else None)
        self.eos_id: int | None = self._optional_id(metadata, "tokenizer.ggml.eos_token_id", 2 if spm else None)
        self.add_bos: bool = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default))
        self.add_eos: bool = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
        template = metadata.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None

        self._token_ids = {text: i for i, text in enumerate(self._tokens)}  # last id wins, as in llama.cpp
        self._special = (self.token_types == TOKEN_CONTROL) | (self.token_types == TOKEN_UNKNOWN)
        self._specials = self._special_tokens(str(metadata.get("general.name", "")))
        self._pieces = self._build_pieces()
        self.eot_ids: frozenset[int] = self._find_eot_ids(metadata)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the vocabulary of the GGUF file at ``path``."""
        try:
            meta = read_gguf_metadata(path, _KEYS)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read {path}: {e}") from e
        return cls(meta, source=str(path))

    def _read_types(self, metadata: Mapping[str, Any]) -> np.ndarray:
        n = len(self._tokens)
        types = metadata.get("tokenizer.ggml.token_type")
        if types is None:
            logger.warning("%s: no tokenizer.ggml.token_type; treating all tokens as normal", self.source)
            return np.full(n, TOKEN_NORMAL, dtype=np.int32)
        out = np.asarray(types, dtype=np.int32)
        if out.shape != (n,):
            raise TokenizerError(f"{self.source}: token_type has {out.size} entries for {n} tokens")
        return out

    def _build_bpe(self, metadata: Mapping[str, Any]) -> HFTokenizer:
        spec = pre_tokenizer_spec(self.pre)
        if spec is None:
            raise TokenizerError(
                f"{self.source}: pre-tokenizer {self.pre!r} (tokenizer.ggml.pre) is not supported; "
                f"supported: {', '.join(sorted(PRE_TOKENIZERS))}"
            )
        merges = metadata.get("tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError(f"{self.source}: missing tokenizer.ggml.merges (required for BPE)")
        return build_bpe(self._tokens, merges, spec)

    def _build_spm(self, metadata: Mapping[str, Any]) -> HFTokenizer:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None:
            raise TokenizerError(f"{self.source}: missing tokenizer.ggml.scores (required for SentencePiece)")
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != (len(self._tokens),):
            raise TokenizerError(f"{self.source}: scores has {scores.size} entries for {len(self._tokens)} tokens")
        return build_spm(self._tokens, scores)

    def _optional_id(self, metadata: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
        value = metadata.get(key, default)
        if value is None:
            return None
        value = int(value)
        if not 0 <= value < self.n_vocab:
            logger.warning("%s: %s=%d is out of range; ignored", self.source, key, value)
            return None
        return value

    def _special_tokens(self, model_name: str) -> list[SpecialToken]:
        """Tokens cut out of the text before encoding, longest first (as llama.cpp sorts them)."""
        matched = np.flatnonzero(self._special | (self.token_types == TOKEN_USER_DEFINED))
        out = []
        for i in matched.tolist():
            text = self._tokens[i]
            if not text:
                continue
            lstrip, rstrip = strip_flags(model_name, text)
            out.append(SpecialToken(i, text, control=bool(self._special[i]), lstrip=lstrip, rstrip=rstrip))
        out.sort(key=lambda t: -len(t.text.encode("utf-8")))
        return out

    def _build_pieces(self) -> list[bytes]:
        """The bytes each token prints when decoded (llama.cpp's token_to_piece)."""
        normal = spm_piece if self.model == "llama" else byte_level_to_bytes
        pieces: list[bytes] = []
        for tok, ttype in zip(self._tokens, self.token_types.tolist()):
            if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
                pieces.append(tok.encode("utf-8"))  # added tokens are stored as plain text
            elif ttype == TOKEN_NORMAL:
                pieces.append(normal(tok))
            elif ttype == TOKEN_BYTE:
                value = byte_token_value(tok) if self.model == "llama" else None
                pieces.append(bytes([value]) if value is not None else byte_level_to_bytes(tok))
            else:
                pieces.append(b"")  # unused/undefined tokens print nothing, as in llama.cpp
        return pieces

    def _find_eot_ids(self, metadata: Mapping[str, Any]) -> frozenset[int]:
        ids: set[int] = set()
        if self.eos_id is not None:
            ids.add(self.eos_id)
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            value = self._optional_id(metadata, key)
            if value is not None:
                ids.add(value)
        for text in _END_OF_GENERATION_TEXTS:
            tid = self._token_ids.get(text)
            if tid is not None and self.token_types[tid] != TOKEN_NORMAL:
                ids.add(tid)
        # gpt-oss style vocabularies end a message with <|end|> but keep generating
        if all(t in self._token_ids for t in ("<|return|>", "<|call|>", "<|end|>")):
            ids.discard(self._token_ids["<|end|>"])
        return frozenset(ids)

    # -- queries --------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary (the logits row length)."""
        return len(self._tokens)

    def token_text(self, token_id: int) -> str:
        """The token as stored in the vocabulary (e.g. ``'Ġthe'``, ``'▁the'``, ``'<0x0A>'``)."""
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
        return self._token_ids.get(text)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} out of range [0, {len(self._tokens)})")

    # -- encode / decode ------------------------------------------------------

    def encode(
        self,
        text: str,
        add_bos: bool | None = None,
        parse_special: bool = True,
        add_eos: bool | None = None,
    ) -> list[int]:
        """Token ids for ``text``.

        ``add_bos=None`` / ``add_eos=None`` follow the model
        (``tokenizer.ggml.add_bos_token`` / ``add_eos_token``, else llama.cpp's
        default for the vocabulary kind). With ``parse_special`` control tokens
        written in the text (e.g. ``<|im_start|>``) become single tokens;
        otherwise they are tokenized as plain text.
        """
        ids: list[int] = []
        if add_bos if add_bos is not None else self.add_bos:
            ids.append(self._required_id(self.bos_id, "BOS"))
        for fragment in partition(text, self._specials, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                ids.extend(self._encode_plain(fragment))
        if add_eos if add_eos is not None else self.add_eos:
            ids.append(self._required_id(self.eos_id, "EOS"))
        return ids

    def _encode_plain(self, fragment: str) -> list[int]:
        if self.model == "llama":
            # every plain fragment starts the text or follows a special token,
            # which is where llama.cpp puts the space prefix
            fragment = escape_spaces(fragment, self.add_space_prefix)
        return self._hf.encode(fragment, add_special_tokens=False).ids

    def _required_id(self, token_id: int | None, what: str) -> int:
        if token_id is None:
            raise TokenizerError(f"{self.source}: add_{what.lower()} requested but the model has no {what} token")
        return token_id

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
        """Text for ``ids``; invalid UTF-8 becomes U+FFFD.

        This is the concatenation of the tokens' pieces, exactly what a
        :class:`StreamDecoder` prints, so a SentencePiece text encoded with
        its space prefix decodes with a leading space.
        """
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        """A :class:`StreamDecoder` bound to this tokenizer."""
        return StreamDecoder(self, skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, n_vocab={self.n_vocab}, pre={self.pre!r}, source={self.source!r})"


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
