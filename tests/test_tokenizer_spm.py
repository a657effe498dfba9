"""SentencePiece (tokenizer.ggml.model == "llama") on a tiny hand-made vocabulary.

The real vocabularies (llama-spm, phi-3) are checked against llama.cpp's own
vectors in test_tokenizer_vectors.py; these tests pin the individual rules.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from spm_reference import reference_spm_encode

from specee.tokenizer.special_tokens import SpecialToken, partition
from specee.tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED, Tokenizer
from specee.tokenizer.spm import escape_spaces

_BYTES = [f"<0x{b:02X}>" for b in range(256)]
# (text, score, type); ids are positions in this list
_VOCAB = [
    ("<unk>", 0.0, TOKEN_UNKNOWN),
    ("<s>", 0.0, TOKEN_CONTROL),
    ("</s>", 0.0, TOKEN_CONTROL),
    ("<|user|>", 0.0, TOKEN_CONTROL),
    ("<|end|>", 0.0, TOKEN_CONTROL),
    *[(b, 0.0, TOKEN_BYTE) for b in _BYTES],
    ("▁", -1.0, TOKEN_NORMAL),
    ("a", -2.0, TOKEN_NORMAL),
    ("b", -2.1, TOKEN_NORMAL),
    ("c", -2.2, TOKEN_NORMAL),
    ("é", -2.3, TOKEN_NORMAL),
    ("ab", -5.0, TOKEN_NORMAL),
    ("bc", -4.0, TOKEN_NORMAL),  # scores higher than "ab": "abc" -> a, bc
    ("▁b", -3.0, TOKEN_NORMAL),
    ("▁▁", -9.0, TOKEN_NORMAL),
    ("▁▁▁", -9.5, TOKEN_NORMAL),
    ("<unused0>", 0.0, TOKEN_UNUSED),
]
TOKENS = [t for t, _, _ in _VOCAB]
ID = {t: i for i, t in enumerate(TOKENS)}


def _meta(**overrides: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.scores": np.array([s for _, s, _ in _VOCAB], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([t for _, _, t in _VOCAB], dtype=np.int32),
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return Tokenizer(_meta())


def _texts(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.token_text(i) for i in ids]


def test_llama_cpp_defaults(spm: Tokenizer) -> None:
    # no BOS/EOS keys: llama.cpp's SentencePiece defaults (BOS 1, EOS 2, add BOS, space prefix)
    assert (spm.model, spm.pre) == ("llama", "default")
    assert spm.bos_id == 1 and spm.eos_id == 2
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    assert spm.encode("ab") == [1, ID["▁"], ID["ab"]]
    assert spm.eot_ids == {ID["</s>"], ID["<|end|>"]}


def test_highest_score_merges_first(spm: Tokenizer) -> None:
    assert _texts(spm, spm.encode("abc", add_bos=False)) == ["▁", "a", "bc"]
    assert _texts(spm, spm.encode("ab", add_bos=False)) == ["▁", "ab"]


def test_spaces_become_the_meta_symbol(spm: Tokenizer) -> None:
    assert _texts(spm, spm.encode("a b", add_bos=False)) == ["▁", "a", "▁b"]
    assert _texts(spm, spm.encode("  b", add_bos=False)) == ["▁▁", "▁b"]
    assert spm.encode("", add_bos=False) == []


def test_byte_fallback(spm: Tokenizer) -> None:
    # "€" is not a token: its three UTF-8 bytes are
    assert _texts(spm, spm.encode("a€", add_bos=False)) == ["▁", "a", "<0xE2>", "<0x82>", "<0xAC>"]


def test_space_prefix_after_special_tokens(spm: Tokenizer) -> None:
    ids = spm.encode("<|user|>ab<|end|>b", add_bos=False)
    assert _texts(spm, ids) == ["<|user|>", "▁", "ab", "<|end|>", "▁b"]
    # not parsed: the control text is plain text, its characters byte tokens
    plain = spm.encode("<s>", add_bos=False, parse_special=False)
    assert _texts(spm, plain) == ["▁", "<0x3C>", "<0x73>", "<0x3E>"]


def test_add_space_prefix_off() -> None:
    tok = Tokenizer(_meta(**{"tokenizer.ggml.add_space_prefix": False}))
    assert _texts(tok, tok.encode("ab", add_bos=False)) == ["ab"]
    assert not tok.add_space_prefix and tok.decode(tok.encode("ab b", add_bos=False)) == "ab b"


def test_bos_eos_keys_override_defaults() -> None:
    tok = Tokenizer(_meta(**{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True}))
    assert tok.encode("ab") == [ID["▁"], ID["ab"], 2]


def test_decode_pieces(spm: Tokenizer) -> None:
    ids = spm.encode("a b€", add_bos=False)
    assert spm.decode(ids) == " a b€"  # the space prefix decodes as a space
    assert spm.token_bytes(ID["<0xE2>"]) == b"\xe2"
    assert spm.token_bytes(ID["▁b"]) == b" b"
    assert spm.token_bytes(ID["<unused0>"]) == b""
    assert spm.decode([1, ID["a"], 2]) == "<s>a</s>"
    assert spm.decode([1, ID["a"], 2], skip_special=True) == "a"


def test_stream_holds_back_partial_utf8_bytes(spm: Tokenizer) -> None:
    ids = spm.encode("a€", add_bos=False)
    dec = spm.stream_decoder()
    assert [dec.feed(i) for i in ids] == [" ", "a", "", "", "€"]
    dec.feed(ID["<0xE2>"])
    assert dec.flush() == "\ufffd"


def test_phi3_special_tokens_eat_following_whitespace() -> None:
    text = "<|user|>\nab<|end|>\n"
    plain = Tokenizer(_meta())
    assert _texts(plain, plain.encode(text, add_bos=False)) == [
        "<|user|>", "▁", "<0x0A>", "ab", "<|end|>", "▁", "<0x0A>",
    ]  # fmt: skip
    phi3 = Tokenizer(_meta(**{"general.name": "Phi3"}))
    assert _texts(phi3, phi3.encode(text, add_bos=False)) == ["<|user|>", "▁", "ab", "<|end|>"]


def test_missing_scores_refused() -> None:
    with pytest.raises(Exception, match="tokenizer.ggml.scores"):
        Tokenizer(_meta(**{"tokenizer.ggml.scores": None}))
    with pytest.raises(Exception, match="scores has 2 entries"):
        Tokenizer(_meta(**{"tokenizer.ggml.scores": np.zeros(2, dtype=np.float32)}))


def test_matches_reference_on_random_text(spm: Tokenizer) -> None:
    rng = random.Random(0)
    scores = [s for _, s, _ in _VOCAB]
    for _ in range(300):
        text = "".join(rng.choice("abcé  €x") for _ in range(rng.randint(0, 12)))
        want = reference_spm_encode(escape_spaces(text, True), TOKENS, scores) if text else []
        assert spm.encode(text, add_bos=False, parse_special=False) == want, text


def test_partition_longest_token_first() -> None:
    # llama.cpp tries longer special tokens first, whatever their position
    short = SpecialToken(10, "<a>", control=True)
    long = SpecialToken(11, "<a><b>", control=True)
    assert partition("x<a><b>y<a>", [long, short], parse_special=True) == ["x", 11, "y", 10]
    assert partition("x<a>", [long, short], parse_special=False) == ["x<a>"]
    user = SpecialToken(12, "<u>", control=False)
    assert partition("<u>x<a>", [long, short, user], parse_special=False) == [12, "x<a>"]
    assert partition("", [short], parse_special=True) == []
    # whitespace eaten before (lstrip) or after (rstrip) a token
    eats_left = SpecialToken(13, "<m>", control=False, lstrip=True)
    eats_right = SpecialToken(14, "<n>", control=False, rstrip=True)
    assert partition("a \t<m> b<n>\n c", [eats_left, eats_right], parse_special=False) == ["a", 13, " b", 14, "c"]
