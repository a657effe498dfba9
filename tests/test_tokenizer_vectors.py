"""llama.cpp's own tokenizer test vectors, token for token.

llama.cpp tests each vocabulary family with ``models/ggml-vocab-<family>.gguf``
plus ``.gguf.inp`` (test strings) and ``.gguf.out`` (expected ids). They come
from the pinned llama-cpp-python sdist through conftest's ``llama_cpp_files``
(downloaded on first use; skipped with SPECEE_OFFLINE=1). The files are read the way
``tests/test-tokenizer-0.cpp`` reads them and encoded as it does: no BOS/EOS
added, special tokens not parsed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from spm_reference import reference_spm_encode

from specee.gguf_meta import read_gguf_metadata
from specee.tokenizer import Tokenizer, TokenizerError
from specee.tokenizer.spm import escape_spaces

# family -> (tokenizer.ggml.model, tokenizer.ggml.pre) of its vocabulary file
FAMILIES = {
    "command-r": ("gpt2", "command-r"),
    "deepseek-coder": ("gpt2", "deepseek-coder"),
    "deepseek-llm": ("gpt2", "deepseek-llm"),
    "falcon": ("gpt2", "falcon"),
    "gpt-2": ("gpt2", "gpt-2"),
    "llama-bpe": ("gpt2", "llama-bpe"),
    "llama-spm": ("llama", "default"),
    "mpt": ("gpt2", "mpt"),
    "phi-3": ("llama", "default"),
    "qwen2": ("gpt2", "qwen2"),
    "qwen35": ("gpt2", "qwen35"),
    "refact": ("gpt2", "refact"),
    "starcoder": ("gpt2", "starcoder"),
}
# strings per family in the pinned files (qwen35 has four more)
EXPECTED_STRINGS = {family: 46 for family in FAMILIES} | {"qwen35": 50}

_SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vocab_tests(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs, split as test-tokenizer-0.cpp splits them."""
    raw = Path(f"{gguf_path}.inp").read_bytes().decode("utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):  # a separator at the very end opens no further test
        end = raw.find(_SEPARATOR, pos)
        if end < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(_SEPARATOR)
    lines = Path(f"{gguf_path}.out").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(texts), f"{gguf_path.name}: {len(texts)} strings but {len(lines)} id lines"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def vocab_dir(llama_cpp_files: Path) -> Path:
    return llama_cpp_files


@pytest.fixture(scope="module")
def tally(summary_lines: list):
    """Collects (passed, total) per family; the sum goes into pytest's final summary."""
    results: dict[str, tuple[int, int]] = {}
    yield results
    if results:
        passed = sum(p for p, _ in results.values())
        total = sum(t for _, t in results.values())
        summary_lines.append(f"llama.cpp tokenizer vectors: {passed}/{total} strings match in {len(results)} families")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_vectors(family: str, vocab_dir: Path, tally: dict[str, tuple[int, int]]) -> None:
    """Every string encodes to llama.cpp's ids; those ids decode back to the
    string, in one go and streamed token by token (SentencePiece text gains
    its "▁" prefix as a leading space)."""
    path = vocab_dir / f"ggml-vocab-{family}.gguf"
    tok = Tokenizer.from_gguf(path)
    assert (tok.model, tok.pre) == FAMILIES[family]
    cases = read_vocab_tests(path)
    assert len(cases) == EXPECTED_STRINGS[family]

    failures = []
    for text, expected in cases:
        got = tok.encode(text, add_bos=False, add_eos=False, parse_special=False)
        if got != expected:
            failures.append(f"{text!r}: expected {expected}, got {got}")
    tally[family] = (len(cases) - len(failures), len(cases))
    assert not failures, f"{len(failures)}/{len(cases)} strings differ:\n" + "\n".join(failures)

    for text, ids in cases:
        want = " " + text if tok.add_space_prefix and text else text
        assert tok.decode(ids) == want, text
        stream = tok.stream_decoder()
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == want, text


_CHUNKS = ["Hello", "world", " ", "  ", "\n", "\t", "é", "ü", "🦙", "什么", "123", "'s", "(", "ab", "ing"]


@pytest.mark.parametrize("family", ["llama-spm", "phi-3"])
def test_spm_matches_reference_on_random_text(family: str, vocab_dir: Path) -> None:
    """Beyond the fixed vectors: random mixes of words, long space runs (whose
    tokens all share one score), byte-fallback characters and newlines."""
    path = vocab_dir / f"ggml-vocab-{family}.gguf"
    tok = Tokenizer.from_gguf(path)
    meta = read_gguf_metadata(path, ["tokenizer.ggml.tokens", "tokenizer.ggml.scores"])
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"].tolist()
    rng = random.Random(family)
    for _ in range(150):
        parts = [rng.choice(_CHUNKS) if rng.random() < 0.8 else " " * rng.randint(3, 40) for _ in range(rng.randint(1, 8))]
        text = "".join(parts)
        want = reference_spm_encode(escape_spaces(text, tok.add_space_prefix), tokens, scores)
        assert tok.encode(text, add_bos=False, parse_special=False) == want, repr(text)


@pytest.mark.parametrize(("family", "model"), [("bert-bge", "bert"), ("nomic-bert-moe", "t5"), ("gemma-4", "gemma4")])
def test_unsupported_vocabularies_refused(family: str, model: str, vocab_dir: Path) -> None:
    with pytest.raises(TokenizerError, match=rf"tokenizer model '{model}' .*supported: 'gpt2' .*'llama'"):
        Tokenizer.from_gguf(vocab_dir / f"ggml-vocab-{family}.gguf")
