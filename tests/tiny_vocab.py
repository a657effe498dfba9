"""A tiny byte-level BPE vocabulary for tests, written into GGUF files.

Layout (ids are stable; tests and the tiny test model depend on them):

    0        <|endoftext|>   control
    1        <|im_start|>    control (BOS, as in SmolLM2)
    2        <|im_end|>      control (EOS)
    3..258   the 256 byte-level characters, in byte order (id = 3 + byte)
    259..    one token per merge below, in merge order
    last     <think>         user-defined (always matched as one token)

``add_tiny_vocab(writer)`` also sets the BOS/EOS ids, ``add_bos_token=False``,
pre-tokenizer ``smollm`` and a ChatML chat template, so a GGUF written with it
behaves like a miniature SmolLM2 vocabulary.
"""

from __future__ import annotations

import gguf

__all__ = [
    "TINY_BOS_ID",
    "TINY_EOS_ID",
    "TINY_PRE",
    "TINY_CHAT_TEMPLATE",
    "byte_level_char",
    "tiny_vocab",
    "add_tiny_vocab",
    "write_tiny_vocab_gguf",
]

TINY_BOS_ID = 1
TINY_EOS_ID = 2
TINY_PRE = "smollm"

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_USER_DEFINED = ["<think>"]

# Merges in rank order, in byte-level spelling ('Ġ' = space, 'Ċ' = newline).
# Chosen so that common English and Python snippets merge into a few tokens.
_MERGES = [
    "Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "Ġ s", "Ġ w",
    "a t", "o u", "e n", "Ġ o", "Ġ c", "i s", "l l", "Ġ i", "o r", "Ġ b",
    "Ġ f", "e s", "i t", "Ġ h", "Ġ m", "Ġ d", "Ġ p", "in g", "a n", "Ġ l",
    "Ġ n", "e d", "a r", "Ġ Ġ", "ĠĠ ĠĠ", "Ċ Ċ", "Ċ ĠĠĠĠ", "h i", "Ġ y", "Ġy ou",
    "he ll", "hell o", "Ġ hello", "Ġw or", "l d", "Ġwor ld", "Ġa re", "Ġ re", "u r", "Ġre t",
    "Ġret ur", "Ġretur n", "d e", "de f", "Ġ =", "Ġ +", "( )", ") :", "Ġ (", "Ġi s",
    "Ġi n", "Ġo f", "Ġa n", "Ġan d", "Ġt o", "u s", "us e", "Ġ use", "Ġ x", "e l",
    "el f", "Ġs elf",
]  # fmt: skip


def byte_level_char(b: int) -> str:
    """The GPT-2 byte-level character standing for byte ``b``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """``(tokens, merges, token_types)`` of the tiny vocabulary (< 512 tokens)."""
    tokens = list(_SPECIAL) + [byte_level_char(b) for b in range(256)]
    known = set(tokens)
    merges: list[str] = []
    for merge in _MERGES:
        left, right = merge.split(" ")
        # every merge must build on tokens that already exist
        if left not in known or right not in known:
            raise AssertionError(f"tiny vocab merge {merge!r} uses an unknown token")
        merged = left + right
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
        merges.append(merge)
    tokens += _USER_DEFINED
    types = (
        [gguf.TokenType.CONTROL] * len(_SPECIAL)
        + [gguf.TokenType.NORMAL] * (len(tokens) - len(_SPECIAL) - len(_USER_DEFINED))
        + [gguf.TokenType.USER_DEFINED] * len(_USER_DEFINED)
    )
    assert len(tokens) <= 512
    return tokens, merges, [int(t) for t in types]


def add_tiny_vocab(writer: gguf.GGUFWriter) -> None:
    """Write the tiny vocabulary and tokenizer settings into ``writer``'s KV data."""
    tokens, merges, types = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(TINY_PRE)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(TINY_BOS_ID)
    writer.add_eos_token_id(TINY_EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)


def write_tiny_vocab_gguf(path: str, arch: str = "llama") -> str:
    """Write a vocabulary-only GGUF (no tensors) to ``path`` and return it."""
    writer = gguf.GGUFWriter(path, arch=arch)
    add_tiny_vocab(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
