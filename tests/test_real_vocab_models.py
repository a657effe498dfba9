"""Tiny models that carry real vocabularies: each of llama.cpp's vocabulary
families (tests/test_tokenizer_vectors.py) on an architecture it ships with,
the rest on llama. Weights are random and n_embd tiny; the vocabulary, the
special tokens, the BOS/EOS rules and the chat template are the real ones.

For each model: it loads, a chat prompt goes through its own template and
back, its greedy tokens match the numpy reference (tests/reference.py) and,
where llama-cpp-python is found (conftest's `llama_cpp`), llama.cpp's ids,
pieces and greedy tokens; early exit and speculative decoding run end to end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from reference import Reference
from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template, render_chat, special_texts
from specee.decoding.early_exit import generate_specee
from specee.engine import Heads, Model
from specee.decoding.plain import generate
from specee.heads.head_file import constant_predictor, write_heads
from specee.decoding.speculative import ModelDrafter, generate_speculative
from specee.tokenizer import Tokenizer
from test_architectures import ALWAYS, engine_greedy, reference_greedy
from test_speculative import AlwaysDraft

OWN_TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
N_CTX = 256  # llama.cpp rounds its context up to a multiple of 256: the same cells on both sides
N_GREEDY = 12
# random weights, tiny widths; the rows follow the vocabulary
SHAPE = dict(n_layer=4, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, tied=False, seed=5)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, ça va? 🦙"},
    {"role": "assistant", "content": "Oui.  Fine:\n\tthanks"},
    {"role": "user", "content": "def f(x): return x**2"},
]


@dataclass(frozen=True)
class Family:
    fields: dict  # TinyConfig fields beyond SHAPE: the architecture and its variant
    template: str | None = None  # None: the vocabulary's own; "llama.cpp/NAME": llama.cpp's; else ours


FAMILIES = {
    "llama-spm": Family(dict(arch="llama"), "llama-2.jinja"),  # Llama 2, Mistral v0.1, TinyLlama
    "llama-bpe": Family(dict(arch="llama", rope_freqs=True, rope_base=500000.0),  # Llama 3.1
                        "llama.cpp/meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "deepseek-llm": Family(dict(arch="llama"), "deepseek.jinja"),
    "deepseek-coder": Family(dict(arch="llama"), "deepseek.jinja"),
    "qwen2": Family(dict(arch="qwen2")),
    "qwen35": Family(dict(arch="qwen3", head_dim=32, rope_base=1000000.0)),  # heads wider than n_embd / n_head
    "phi-3": Family(dict(arch="phi3")),
    # families whose own architectures libspecee does not run: their vocabularies on llama
    "command-r": Family(dict(arch="llama")),
    "falcon": Family(dict(arch="llama"), "plain.jinja"),
    "gpt-2": Family(dict(arch="llama"), "plain.jinja"),
    "mpt": Family(dict(arch="llama"), "plain.jinja"),
    "refact": Family(dict(arch="llama"), "plain.jinja"),
    "starcoder": Family(dict(arch="llama"), "plain.jinja"),
}


@dataclass(frozen=True)
class VocabModel:
    family: str
    fields: dict  # all TinyConfig fields of the model
    path: str
    tok: Tokenizer
    text: str  # the chat prompt as the template renders it
    prompt: list[int]  # its ids, as chat_prompt_ids (and llama.cpp) build them


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def vocab_model(request, llama_cpp_files, tiny_model_factory) -> VocabModel:
    family = FAMILIES[request.param]
    fields = SHAPE | family.fields | {"vocab": str(llama_cpp_files / f"ggml-vocab-{request.param}.gguf")}
    if family.template is not None:
        name = family.template
        fields["chat_template"] = str(llama_cpp_files / name.split("/", 1)[1] if name.startswith("llama.cpp/")
                                      else OWN_TEMPLATES / name)
    path = tiny_model_factory(**fields)
    tok = Tokenizer.from_gguf(path)
    template = read_chat_template(path)
    text = render_chat(template, MESSAGES, **special_texts(tok))
    return VocabModel(request.param, fields, path, tok, text, chat_prompt_ids(tok, template, MESSAGES))


def test_loads_with_its_vocabulary(vocab_model):
    tok = vocab_model.tok
    with Model(vocab_model.path) as m:
        assert m.arch == vocab_model.fields["arch"]
        assert m.n_vocab == tok.n_vocab == Reference(vocab_model.path).n_vocab > 30000
        assert m.bos == (tok.bos_id if tok.bos_id is not None else -1)
        assert m.eos == (tok.eos_id if tok.eos_id is not None else -1)


def test_chat_prompt_round_trips(vocab_model):
    """The rendered turns become the vocabulary's special tokens, one BOS
    where the model wants one, and decode back to the text (streamed alike)."""
    tok, ids, text = vocab_model.tok, vocab_model.prompt, vocab_model.text
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else None
    if tok.add_bos:
        assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
        if not text.startswith(bos):
            text = bos + text
    specials = [t for t in ids if tok.is_special(t)]
    assert specials, "the template's turn markers are special tokens of every family here"
    stream = tok.stream_decoder()
    streamed = "".join(stream.feed(t) for t in ids) + stream.flush()
    assert streamed == tok.decode(ids)
    assert decode_without_space_prefix(tok, ids) == text


def decode_without_space_prefix(tok: Tokenizer, ids: list[int]) -> str:
    """The text of `ids`, less the space SentencePiece puts in front of each
    run of plain tokens (at the start and after every special token)."""
    runs = itertools.groupby(ids, tok.is_special)
    out = []
    for special, run in runs:
        text = tok.decode(run)
        if not special and tok.model == "llama" and tok.add_space_prefix:
            assert text.startswith(" "), text
            text = text[1:]
        out.append(text)
    return "".join(out)


def test_greedy_tokens_match_reference(vocab_model):
    ref = Reference(vocab_model.path, n_ctx=N_CTX)
    want = reference_greedy(ref, vocab_model.prompt, N_GREEDY)
    with Model(vocab_model.path) as m, m.context(n_ctx=N_CTX, n_threads=1) as ctx:
        assert engine_greedy(ctx, vocab_model.prompt, N_GREEDY) == want
    assert len(set(want)) > 1


def test_same_as_llama_cpp(vocab_model, llama_cpp):
    """llama.cpp tokenizes the chat prompt (as llama-server does: BOS per the
    vocabulary, a BOS the template wrote dropped first, special tokens
    parsed) to the same ids, prints the same bytes for them, and decodes
    the same greedy tokens."""
    tok, text = vocab_model.tok, vocab_model.text
    if tok.add_bos and tok.bos_id is not None and text.startswith(tok.token_text(tok.bos_id)):
        text = text[len(tok.token_text(tok.bos_id)):]
    got = llama_cpp.run(vocab_model.path, vocab_model.prompt, N_GREEDY, N_CTX, text=text)
    assert got.text_tokens == vocab_model.prompt
    assert got.pieces == [tok.token_bytes(t) for t in vocab_model.prompt]
    with Model(vocab_model.path) as m, m.context(n_ctx=N_CTX, n_threads=1) as ctx:
        assert engine_greedy(ctx, vocab_model.prompt, N_GREEDY) == got.greedy


EXIT_AFTER = 2  # layers; the predictor after layer index 1 always fires


class ExitOracle:
    """Candidates for generate_specee that make every other step exit. It
    runs the numpy reference in step with the engine (full verification,
    K/V not filled): on even steps the reference's token after EXIT_AFTER
    layers is among the candidates, so the step must exit there; on odd
    steps it is not, so the step must run every layer. It records what each
    step must give."""

    def __init__(self, ref: Reference, prompt: list[int]):
        self.ref = ref
        self.first = int(ref.forward(prompt)[-1].argmax())
        self.expected: list[tuple[int, int]] = []  # (token, layers run) per step

    def candidates(self, tokens, k):
        want_exit = len(self.expected) % 2 == 0
        seen = []
        token, ran = self.ref.step_with_exit(tokens[-1], EXIT_AFTER, lambda e: seen.append(e) or want_exit)
        self.expected.append((token, ran))
        others = [t for t in range(k + 1) if t != seen[0]]
        return [seen[0]] + others[:k - 1] if want_exit else others[:k]


def test_early_exit_end_to_end(vocab_model, tmp_path):
    oracle = ExitOracle(Reference(vocab_model.path, n_ctx=N_CTX), vocab_model.prompt)
    with Model(vocab_model.path) as m:
        write_heads(tmp_path / "h.gguf", m, {EXIT_AFTER - 1: constant_predictor(ALWAYS)}, exit_layers=[EXIT_AFTER - 1])
        with Heads(m, tmp_path / "h.gguf") as heads, m.context(n_ctx=N_CTX, n_threads=1) as ctx:
            ctx.set_heads(heads)
            ctx.set_exit_params(verify_full=True, fill_kv=False)
            result = generate_specee(ctx, vocab_model.prompt, N_GREEDY, 4, source=oracle, exact=False)
    assert result.tokens == [oracle.first] + [t for t, _ in oracle.expected]
    assert result.extra["exit_layers"] == [ran for _, ran in oracle.expected]
    assert result.extra["exit_layers"][:2] == [EXIT_AFTER, SHAPE["n_layer"]]


def test_speculative_end_to_end(vocab_model, tiny_model_factory):
    """A draft model with the same vocabulary (the target's first two layers:
    same seed, same rows) drafts; the output is plain greedy decoding's."""
    draft_path = tiny_model_factory(**vocab_model.fields | {"n_layer": 2})
    with Model(vocab_model.path) as m:
        with m.context(n_ctx=N_CTX, n_threads=1) as ctx:
            want = generate(ctx, vocab_model.prompt, N_GREEDY)
        drafter = ModelDrafter(draft_path, m, n_ctx=N_CTX, n_threads=1)
        try:
            with m.context(n_ctx=N_CTX, n_threads=1) as ctx:
                got = generate_speculative(ctx, vocab_model.prompt, N_GREEDY, drafter, draft_max=4,
                                           policy=AlwaysDraft(drafter.kinds))
        finally:
            drafter.close()
    assert got.tokens == want.tokens
    assert got.extra["verify_steps"] > 0 and got.extra["drafted"] > 0


# ---- every supported architecture with every vocabulary ----------------------------------

ARCHITECTURES = {
    "llama": dict(arch="llama"),
    "qwen2": dict(arch="qwen2"),
    "qwen3": dict(arch="qwen3", head_dim=32),  # heads wider than n_embd / n_head
    "phi3": dict(arch="phi3"),
}
# the pairings the module fixture already runs in full
PAIRED = {(family, f.fields["arch"]) for family, f in FAMILIES.items()}
CROSS = [(family, arch) for family in sorted(FAMILIES) for arch in ARCHITECTURES if (family, arch) not in PAIRED]
PLAIN_TEXT = "Hello world! def f(x): return x ** 2  # ça va? 🦙"


def cross_model(family: str, arch: str, llama_cpp_files, tiny_model_factory) -> tuple[str, list[int]]:
    """A tiny `arch` model with `family`'s vocabulary, and a prompt for it."""
    fields = SHAPE | ARCHITECTURES[arch] | {"vocab": str(llama_cpp_files / f"ggml-vocab-{family}.gguf")}
    path = tiny_model_factory(**fields)
    tok = Tokenizer.from_gguf(path)
    return path, ([tok.bos_id] if tok.add_bos and tok.bos_id is not None else []) + tok.encode(PLAIN_TEXT)


@pytest.mark.parametrize("family, arch", CROSS)
def test_every_architecture_runs_every_vocabulary(family, arch, llama_cpp_files, tiny_model_factory):
    """The remaining architecture x vocabulary pairs: greedy tokens as the
    numpy reference computes them."""
    path, prompt = cross_model(family, arch, llama_cpp_files, tiny_model_factory)
    want = reference_greedy(Reference(path, n_ctx=N_CTX), prompt, N_GREEDY)
    with Model(path) as m, m.context(n_ctx=N_CTX, n_threads=1) as ctx:
        assert m.arch == arch
        assert engine_greedy(ctx, prompt, N_GREEDY) == want
    assert len(set(want)) > 1


@pytest.mark.parametrize("family, arch", CROSS)
def test_every_architecture_and_vocabulary_as_llama_cpp(family, arch, llama_cpp_files, tiny_model_factory, llama_cpp):
    path, prompt = cross_model(family, arch, llama_cpp_files, tiny_model_factory)
    with Model(path) as m, m.context(n_ctx=N_CTX, n_threads=1) as ctx:
        assert engine_greedy(ctx, prompt, N_GREEDY) == llama_cpp.run(path, prompt, N_GREEDY, N_CTX).greedy
