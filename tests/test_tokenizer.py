"""Tokenizer tests: a tiny GGUF vocabulary, plus golden ids on the real SmolLM2 model.

The real-model tests (marked ``real_model``) use the SmolLM2 GGUF through
conftest's ``real_model_path`` (fetched on first use; skipped with
SPECEE_OFFLINE=1). Their golden ids were produced by llama.cpp
(llama-cpp-python 0.3.36, ``Llama(vocab_only=True).tokenize(..., special=True)``);
when ``llama_cpp`` is importable the test also compares against it directly.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tiny_vocab import TINY_BOS_ID, TINY_CHAT_TEMPLATE, TINY_EOS_ID, tiny_vocab, write_tiny_vocab_gguf

from specee.gguf_meta import GGUFMetaError, read_gguf_metadata
from specee.tokenizer.pretokenizers import PRE_TOKENIZERS
from specee.tokenizer import StreamDecoder, Tokenizer, TokenizerError

ROUND_TRIP_TEXTS = [
    "hello world",
    "Hello, World! Are you there?",
    "def f(self):\n    return x + 1\n\n\tpass\n",
    "12345 and 3.14159 and 1,000,000",
    "naïve café, 你好, Привет, 🤖👍🏽 🇺🇸",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "   leading and trailing   ",
    "I'm sure they'll say we've 'quoted' it",
    "tabs\tand\r\nwindows\r\nnewlines",
    "",
    " ",
    "\n\n\n",
]


# -- tiny vocabulary -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_tiny_vocab_gguf(str(tmp_path_factory.mktemp("vocab") / "tiny.gguf")))


@pytest.fixture(scope="module")
def tiny(tiny_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(tiny_path)


def _meta(**overrides: object) -> dict[str, object]:
    tokens, merges, types = tiny_vocab()
    meta: dict[str, object] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": TINY_BOS_ID,
        "tokenizer.ggml.eos_token_id": TINY_EOS_ID,
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def test_tiny_vocab_shape() -> None:
    tokens, merges, types = tiny_vocab()
    assert len(tokens) == len(types) <= 512
    assert len(set(tokens)) == len(tokens)
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert types[tokens.index(special)] == gguf.TokenType.CONTROL
    assert all(len(m.split(" ")) == 2 for m in merges)


def test_properties(tiny: Tokenizer) -> None:
    tokens, _, _ = tiny_vocab()
    assert tiny.n_vocab == len(tokens)
    assert tiny.bos_id == TINY_BOS_ID and tiny.eos_id == TINY_EOS_ID
    assert tiny.eot_ids == {TINY_EOS_ID, tokens.index("<|endoftext|>")}
    assert tiny.add_bos is False
    assert tiny.pre == "smollm"
    assert tiny.chat_template == TINY_CHAT_TEMPLATE
    assert tiny.token_text(TINY_BOS_ID) == "<|im_start|>"
    assert tiny.token_id("Ġworld") == tokens.index("Ġworld")
    assert tiny.is_special(TINY_EOS_ID) and not tiny.is_special(tiny.token_id("hello"))


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tiny: Tokenizer, text: str) -> None:
    assert tiny.decode(tiny.encode(text)) == text
    assert tiny.decode(tiny.encode(text, parse_special=False)) == text


def test_merges_apply(tiny: Tokenizer) -> None:
    ids = tiny.encode("hello world")
    assert [tiny.token_text(i) for i in ids] == ["hello", "Ġworld"]
    assert [tiny.token_text(i) for i in tiny.encode("the")] == ["t", "he"]  # no 'the' merge
    assert [tiny.token_text(i) for i in tiny.encode(" the")] == ["Ġthe"]


def test_digits_are_split_individually(tiny: Tokenizer) -> None:
    # pre 'smollm' isolates every digit before the GPT-2 split
    assert [tiny.token_text(i) for i in tiny.encode("x 12345")] == ["x", "Ġ", "1", "2", "3", "4", "5"]


def test_whitespace_run_leaves_last_space_to_next_word(tiny: Tokenizer) -> None:
    assert [tiny.token_text(i) for i in tiny.encode("a   the")] == ["a", "ĠĠ", "Ġthe"]
    assert [tiny.token_text(i) for i in tiny.encode("a   ")] == ["a", "ĠĠ", "Ġ"]


def test_special_tokens_parsed(tiny: Tokenizer) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n"
    ids = tiny.encode(text)
    assert ids[0] == TINY_BOS_ID and TINY_EOS_ID in ids
    plain = tiny.encode(text, parse_special=False)
    assert TINY_BOS_ID not in plain and TINY_EOS_ID not in plain
    assert tiny.decode(plain) == text


def test_user_defined_token_always_matched(tiny: Tokenizer) -> None:
    think = tiny.token_id("<think>")
    assert think is not None
    assert tiny.encode("<think>x")[0] == think
    assert tiny.encode("<think>x", parse_special=False)[0] == think  # as llama.cpp does


def test_add_bos(tiny: Tokenizer) -> None:
    assert tiny.encode("hi")[0] != TINY_BOS_ID
    assert tiny.encode("hi", add_bos=True) == [TINY_BOS_ID, *tiny.encode("hi")]
    forced = Tokenizer(_meta(**{"tokenizer.ggml.add_bos_token": True}))
    assert forced.encode("hi")[0] == TINY_BOS_ID
    assert forced.encode("hi", add_bos=False)[0] != TINY_BOS_ID


def test_decode_skip_special(tiny: Tokenizer) -> None:
    ids = tiny.encode("<|im_start|>user\nhi<|im_end|>")
    assert tiny.decode(ids, skip_special=True) == "user\nhi"
    assert tiny.token_bytes(tiny.token_id("Ġworld")) == b" world"


def test_stream_decoder_holds_back_partial_utf8(tiny: Tokenizer) -> None:
    text = "a🙂b é"
    ids = tiny.encode(text)
    dec = tiny.stream_decoder()
    outputs = [dec.feed(i) for i in ids]
    assert "".join(outputs) + dec.flush() == text
    # the emoji is four single-byte tokens: nothing printable until the last one
    emoji_start = outputs.index("a") + 1
    assert outputs[emoji_start : emoji_start + 3] == ["", "", ""]
    assert outputs[emoji_start + 3] == "🙂"


def test_stream_decoder_flush_incomplete(tiny: Tokenizer) -> None:
    first_byte_of_emoji = 3 + "🙂".encode()[0]
    dec = StreamDecoder(tiny)
    assert dec.feed([tiny.token_id("hello"), first_byte_of_emoji]) == "hello"
    assert dec.flush() == "\ufffd"
    assert dec.feed(tiny.token_id("hello")) == "hello"  # usable after flush


def test_stream_decoder_skip_special(tiny: Tokenizer) -> None:
    dec = tiny.stream_decoder(skip_special=True)
    assert dec.feed(tiny.encode("hi<|im_end|>")) == "hi"


def test_out_of_range_ids(tiny: Tokenizer) -> None:
    with pytest.raises(TokenizerError):
        tiny.decode([tiny.n_vocab])
    with pytest.raises(TokenizerError):
        tiny.token_text(-1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, r"tokenizer model 'bert' .*supported: 'gpt2' .*'llama'"),
        ({"tokenizer.ggml.model": "llama"}, "tokenizer.ggml.scores"),
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
        ({"tokenizer.ggml.pre": "jina-v2-code"}, r"pre-tokenizer 'jina-v2-code' .*supported: .*deepseek-coder"),
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
        ({"tokenizer.ggml.token_type": np.ones(3, dtype=np.int32)}, "token_type"),
    ],
)
def test_bad_metadata(override: dict[str, object], message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        Tokenizer(_meta(**override))


def test_all_pre_types_build() -> None:
    for pre in PRE_TOKENIZERS:
        tok = Tokenizer(_meta(**{"tokenizer.ggml.pre": pre}))
        text = "x = 12345; y's\n"
        assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_bos_default_follows_pre_tokenizer_type() -> None:
    # llama.cpp adds BOS for Llama 3 vocabularies unless the GGUF says otherwise
    llama3 = Tokenizer(_meta(**{"tokenizer.ggml.pre": "llama-bpe"}))
    assert llama3.add_bos and llama3.encode("hi")[0] == TINY_BOS_ID
    assert not Tokenizer(_meta(**{"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": False})).add_bos
    assert not Tokenizer(_meta(**{"tokenizer.ggml.pre": "qwen2"})).add_bos


def test_add_eos() -> None:
    tok = Tokenizer(_meta(**{"tokenizer.ggml.add_eos_token": True}))
    assert tok.add_eos and tok.encode("hi")[-1] == TINY_EOS_ID
    assert tok.encode("hi", add_eos=False)[-1] != TINY_EOS_ID
    with pytest.raises(TokenizerError, match="no EOS token"):
        Tokenizer(_meta(**{"tokenizer.ggml.eos_token_id": None})).encode("hi", add_eos=True)


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(TokenizerError):
        Tokenizer.from_gguf(bad)
    with pytest.raises(TokenizerError):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")


def test_metadata_reader_matches_gguf_reader(tiny_path: Path) -> None:
    ours = read_gguf_metadata(tiny_path)
    reader = gguf.GGUFReader(tiny_path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        mine = ours[key]
        assert (mine.tolist() if isinstance(mine, np.ndarray) else mine) == value, key
    subset = read_gguf_metadata(tiny_path, ["tokenizer.ggml.pre", "no.such.key"])
    assert subset == {"tokenizer.ggml.pre": "smollm"}


def test_metadata_reader_rejects_truncated(tiny_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_path.read_bytes()[:200])
    with pytest.raises(GGUFMetaError):
        read_gguf_metadata(cut)


# -- the real SmolLM2 vocabulary ---------------------------------------------------

# (text, token ids from llama.cpp with special=True, add_bos=False)
SMOLLM2_GOLDEN = [
    ("Hello world! How are you?", [19556, 905, 17, 1073, 359, 346, 47]),
    ("def add(a, b):\n    return a + b\n", [1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198]),
    ("12345 apples cost $3.99", [33, 34, 35, 36, 37, 13855, 1708, 1885, 35, 30, 41, 41]),
    ("naïve café 你好 🤖", [3546, 46494, 37366, 216, 18645, 250, 48392, 138, 15107, 114, 240]),
    ("<|im_start|>user\nhi<|im_end|>\n", [1, 4093, 198, 6004, 2, 198]),
    ("I'm sure they'll say   hi\n\n", [57, 5248, 2090, 502, 3060, 1643, 256, 15876, 1116]),
]


@pytest.fixture(scope="module")
def smollm2_path(real_model_path: str) -> Path:
    # conftest's real_model_path fetches SmolLM2 (or skips with SPECEE_OFFLINE=1)
    return Path(real_model_path)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_path)


@pytest.mark.real_model
def test_smollm2_properties(smollm2: Tokenizer) -> None:
    assert smollm2.n_vocab == 49152
    assert smollm2.pre == "smollm"
    assert smollm2.bos_id == 1 and smollm2.eos_id == 2
    assert smollm2.eot_ids == {0, 2}  # <|endoftext|>, <|im_end|>
    assert smollm2.add_bos is False
    assert smollm2.chat_template and "<|im_start|>" in smollm2.chat_template


@pytest.mark.real_model
@pytest.mark.parametrize(("text", "ids"), SMOLLM2_GOLDEN)
def test_smollm2_golden(smollm2: Tokenizer, text: str, ids: list[int]) -> None:
    assert smollm2.encode(text) == ids
    assert smollm2.decode(ids) == text


@pytest.mark.real_model
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_smollm2_round_trip(smollm2: Tokenizer, text: str) -> None:
    assert smollm2.decode(smollm2.encode(text)) == text


@pytest.mark.real_model
def test_smollm2_matches_llama_cpp(smollm2: Tokenizer, smollm2_path: Path, llama_cpp) -> None:
    """llama.cpp's ids (special tokens parsed or not) and the bytes it prints
    for them (conftest's `llama_cpp`: skipped where none is found)."""
    texts = ROUND_TRIP_TEXTS + [t for t, _ in SMOLLM2_GOLDEN]
    for special in (True, False):
        for text, (ids, pieces) in zip(texts, llama_cpp.tokenize(smollm2_path, texts, parse_special=special)):
            assert smollm2.encode(text, parse_special=special) == ids, (text, special)
            assert smollm2.decode_bytes(ids) == b"".join(pieces)
