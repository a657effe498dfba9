"""The tokenizer family: text to token ids and back, as llama.cpp does it,
from a GGUF file's own vocabulary.

- :mod:`.gguf_tokenizer`: :class:`Tokenizer` and :class:`StreamDecoder`;
- :mod:`.bpe` and :mod:`.pretokenizers`: byte-level BPE and its pre-tokenizers;
- :mod:`.spm`: SentencePiece with byte fallback;
- :mod:`.special_tokens`: cutting special tokens out of the text;
- :mod:`.chat_template`: the model's own Jinja chat template.
"""
from .gguf_tokenizer import (SUPPORTED_MODELS, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED,
                             TOKEN_USER_DEFINED, StreamDecoder, Tokenizer, TokenizerError)

__all__ = ["TokenizerError", "Tokenizer", "StreamDecoder", "SUPPORTED_MODELS", "TOKEN_NORMAL", "TOKEN_UNKNOWN",
           "TOKEN_CONTROL", "TOKEN_USER_DEFINED", "TOKEN_UNUSED", "TOKEN_BYTE"]
