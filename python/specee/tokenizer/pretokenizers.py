"""Pre-tokenizer rules for byte-level BPE vocabularies, keyed by ``tokenizer.ggml.pre``.

Before BPE merges run, llama.cpp cuts text into words with a list of regex
passes chosen by the GGUF key ``tokenizer.ggml.pre`` (``src/llama-vocab.cpp``,
``llm_tokenizer_bpe``). Every pass splits each piece left by the previous pass
into its matches and the gaps between them, so a word never spans two pieces.
Some pre-tokenizer types also change two other rules:

* ``ignore_merges``: a whole word that is itself a vocabulary token is emitted
  as that token without running merges (Llama 3);
* ``add_bos``: the model's default for adding BOS when the GGUF has no
  ``tokenizer.ggml.add_bos_token`` key.

The regexes below are written for the ``tokenizers`` library's regex engine
(Oniguruma). Where llama.cpp replaces a regex by a hand-written matcher
(GPT-2, Llama 3, Qwen2, Qwen3.5 patterns), the regex here spells out what that
matcher does; the differences are noted next to each pattern.
``tests/test_tokenizer_vectors.py`` checks the result against llama.cpp's own
tokenizer test vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

__all__ = ["PreTokenizerSpec", "PRE_TOKENIZERS", "pre_tokenizer_spec", "build_pre_tokenizer"]

_L, _N = r"\p{L}", r"\p{N}"

# Contractions: GPT-2 is case-sensitive; Llama 3 and Qwen match either case.
_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"

# GPT-2: contractions, optional space + letters / digits / other symbols, then
# whitespace runs that leave their last space to the following word. llama.cpp's
# regex string ends at \s+(?!\S), but its matcher for the pattern also takes a
# whitespace run that ends the text, hence the final \s+.
_GPT2 = "|".join(
    [_CONTRACTIONS, f" ?{_L}+", f" ?{_N}+", rf" ?[^\s{_L}{_N}]+", r"\s+(?!\S)", r"\s+"]
)


def _llama3_like(digits: str, letters: str = _L, symbols: str = rf"[^\s{_L}{_N}]") -> str:
    """Llama 3 / Qwen2 family: one non-letter glued to a word, digit groups,
    punctuation runs that keep their trailing newlines, newline runs."""
    return "|".join(
        [
            _CONTRACTIONS_ANY_CASE,
            rf"[^\r\n{_L}{_N}]?{letters}+",
            digits,
            rf" ?{symbols}+[\r\n]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
    )


_LLAMA3 = _llama3_like(rf"{_N}{{1,3}}")
_QWEN2 = _llama3_like(_N)
# Qwen3.5 counts combining marks (\p{M}) as part of words.
_QWEN35 = _llama3_like(_N, letters=rf"[{_L}\p{{M}}]", symbols=rf"[^\s{_L}\p{{M}}{_N}]")

# Character classes llama.cpp spells out literally for the DeepSeek
# pre-tokenizers, written as escapes so no editor can normalize them.
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LATIN = (
    "[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
    "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d"
    "\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4"
    "\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec"
    "\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b"
    "\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787"
    "\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
# ASCII and full-width punctuation, curly quotes, CJK space and full stops
_DEEPSEEK_PUNCT = "[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How one llama.cpp pre-tokenizer type cuts text before BPE."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


_GPT2_SPEC = PreTokenizerSpec((_GPT2,))
# every digit is its own piece, then GPT-2
_DIGITS_THEN_GPT2 = PreTokenizerSpec((_N, _GPT2))
_LLAMA3_SPEC = PreTokenizerSpec((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_SPEC = PreTokenizerSpec((_QWEN2,))

#: ``tokenizer.ggml.pre`` value -> rules. Names that share an entry are the
#: aliases llama.cpp maps to the same pre-tokenizer type and flags.
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": PreTokenizerSpec(
        (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, rf"{_N}+", "[0-9][0-9][0-9]")
    ),
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "exaone4"), _GPT2_SPEC),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        _DIGITS_THEN_GPT2,
    ),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _LLAMA3_SPEC),
    # same regex as Llama 3, without its merge and BOS rules
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizerSpec((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2_SPEC),
    "qwen35": PreTokenizerSpec((_QWEN35,)),
    "falcon": PreTokenizerSpec(
        # llama.cpp's second pass is the GPT-2 pattern, run by its GPT-2 matcher
        (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")
    ),
    "deepseek-llm": PreTokenizerSpec(
        (
            r"[\r\n]",
            rf"\s?{_DEEPSEEK_LATIN}",
            rf"\s?{_DEEPSEEK_PUNCT}",
            r"\s+\z",  # llama.cpp's "$": end of the piece being split
            _CJK,
            rf"{_N}+",
        )
    ),
    "deepseek-coder": PreTokenizerSpec(
        (r"[\r\n]", rf"\s?{_L}+", r"\s?\p{P}+", _CJK, _N)
    ),
}


def pre_tokenizer_spec(name: str) -> PreTokenizerSpec | None:
    """The rules for ``tokenizer.ggml.pre`` = ``name``, or ``None`` if unsupported."""
    return PRE_TOKENIZERS.get(name)


def build_pre_tokenizer(spec: PreTokenizerSpec) -> pre_tokenizers.PreTokenizer:
    """A ``tokenizers`` pre-tokenizer: the regex passes, then GPT-2's byte-to-character mapping."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in spec.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
