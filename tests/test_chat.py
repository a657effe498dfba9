"""Chat template rendering tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from tiny_vocab import TINY_CHAT_TEMPLATE, write_tiny_vocab_gguf

from specee.tokenizer.chat_template import ChatTemplateError, chat_prompt_ids, read_chat_template, render_chat
from specee.gguf_meta import read_gguf_metadata
from specee.tokenizer import Tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
]


def test_render_chatml() -> None:
    out = render_chat(TINY_CHAT_TEMPLATE, MESSAGES[:2])
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_no_generation_prompt() -> None:
    out = render_chat(TINY_CHAT_TEMPLATE, MESSAGES, add_generation_prompt=False)
    assert out.endswith("<|im_start|>user\nbye<|im_end|>\n")
    assert out.count("<|im_start|>") == 4


def test_bos_eos_and_extra_variables() -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}{{ who }}"
    assert render_chat(template, MESSAGES[1:2], bos_token="<s>", eos_token="</s>", who="!") == "<s>hi</s>!"


def test_trim_blocks() -> None:
    template = "{% for m in messages %}\n{{ m.role }}\n{% endfor %}\n"
    assert render_chat(template, MESSAGES[:2]) == "system\nuser\n"


def test_raise_exception_helper() -> None:
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert render_chat(template, MESSAGES[1:]) == "ok"
    with pytest.raises(ChatTemplateError, match="first must be user"):
        render_chat(template, MESSAGES)


def test_tojson_keeps_text_and_strftime_now() -> None:
    template = "{{ tools | tojson }}|{{ strftime_now('%Y') | length }}"
    out = render_chat(template, [], tools=[{"name": "café<b>"}])
    assert out == '[{"name": "café<b>"}]|4'


def test_loop_controls() -> None:
    template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"
    assert render_chat(template, MESSAGES) == "system"


def test_sandbox_blocks_unsafe_access() -> None:
    template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat(template, MESSAGES)


def test_bad_inputs() -> None:
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        render_chat("{% for %}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="role"):
        render_chat(TINY_CHAT_TEMPLATE, [{"content": "no role"}])
    with pytest.raises(ChatTemplateError, match="empty"):
        render_chat("", MESSAGES)


def test_read_template_from_gguf(tmp_path: Path) -> None:
    path = write_tiny_vocab_gguf(str(tmp_path / "tiny.gguf"))
    assert read_chat_template(path) == TINY_CHAT_TEMPLATE


def test_model_without_template(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ChatTemplateError, match="no tokenizer.chat_template"):
        read_chat_template(path)


@pytest.mark.real_model
def test_smollm2_template(real_model_path: str) -> None:
    path = real_model_path
    out = render_chat(read_chat_template(path), [{"role": "user", "content": "hi"}])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# -- prompt ids: BOS handling and end-of-turn tokens ---------------------------------

USER_HI = [{"role": "user", "content": "hi"}]

# Llama-2 chat layout (own spelling of the format): every user turn opens with
# BOS + [INST], every answer closes with EOS.
LLAMA2_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def tiny_meta(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return read_gguf_metadata(write_tiny_vocab_gguf(str(tmp_path_factory.mktemp("chat") / "tiny.gguf")))


def _tiny_tok(meta: dict, add_bos: bool, add_eos: bool) -> Tokenizer:
    return Tokenizer({**meta, "tokenizer.ggml.add_bos_token": add_bos, "tokenizer.ggml.add_eos_token": add_eos})


def test_bos_written_by_template_is_not_doubled(tiny_meta: dict) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
    tok = _tiny_tok(tiny_meta, add_bos=True, add_eos=True)
    bos, eos = tok.bos_id, tok.eos_id
    ids = chat_prompt_ids(tok, template, USER_HI, add_generation_prompt=False)
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    assert ids[-1] == eos and ids.count(eos) == 1
    # a model that does not add BOS keeps the template's own
    tok = _tiny_tok(tiny_meta, add_bos=False, add_eos=False)
    assert chat_prompt_ids(tok, template, USER_HI)[0] == bos
    # and one whose template writes none gets BOS from the tokenizer
    tok = _tiny_tok(tiny_meta, add_bos=True, add_eos=False)
    assert chat_prompt_ids(tok, "{% for m in messages %}{{ m['content'] }}{% endfor %}", USER_HI)[0] == bos


@pytest.fixture(scope="module")
def templates(llama_cpp_files: Path) -> Path:
    return llama_cpp_files


@pytest.fixture(scope="module")
def _loaded() -> dict:
    return {}  # tokenizers loaded by this module, dropped at its end


@pytest.fixture
def vocab(templates: Path, _loaded: dict):
    """vocab(family) -> the Tokenizer of llama.cpp's ggml-vocab-<family>.gguf."""

    def load(family: str) -> Tokenizer:
        if family not in _loaded:
            _loaded[family] = Tokenizer.from_gguf(templates / f"ggml-vocab-{family}.gguf")
        return _loaded[family]

    return load


def test_llama3_template(templates: Path, vocab) -> None:
    tok = vocab("llama-bpe")
    template = (templates / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    ids = chat_prompt_ids(tok, template, [{"role": "system", "content": "Be brief."}, *USER_HI])
    bos, eot = tok.token_id("<|begin_of_text|>"), tok.token_id("<|eot_id|>")
    assert tok.add_bos and ids[0] == bos and ids.count(bos) == 1  # the template writes BOS too
    assert ids.count(tok.token_id("<|start_header_id|>")) == 3  # system, user, assistant header
    assert ids.count(eot) == 2 and eot in tok.eot_ids
    assert tok.decode(ids[-4:]) == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_llama2_style_template(templates: Path, vocab) -> None:
    tok = vocab("llama-spm")
    turns = [*USER_HI, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    ids = chat_prompt_ids(tok, LLAMA2_STYLE, turns)
    bos, eos = tok.bos_id, tok.eos_id
    assert ids[0] == bos and ids[1] != bos
    assert ids.count(bos) == 2 and ids.count(eos) == 1  # one BOS per user turn, EOS after the answer
    assert tok.decode(ids) == "<s> [INST] hi [/INST] hello </s><s> [INST] bye [/INST]"
    assert eos in tok.eot_ids and tok.token_text(eos) == "</s>"


def test_mistral_template(templates: Path, vocab) -> None:
    tok = vocab("llama-spm")
    template = (templates / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    ids = chat_prompt_ids(tok, template, USER_HI)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids[1:]) == " [INST]hi[/INST]"


@pytest.mark.parametrize("source", ["gguf", "microsoft-Phi-3.5-mini-instruct.jinja"])
def test_phi3_templates(templates: Path, vocab, source: str) -> None:
    tok = vocab("phi-3")
    template = tok.chat_template if source == "gguf" else (templates / source).read_text()
    ids = chat_prompt_ids(tok, template, USER_HI)
    # one BOS whether or not the template writes it; llama.cpp's phi-3 rule
    # drops the newline after each special token
    names = ["<s>", "<|user|>", "▁hi", "<|end|>", "<|assistant|>"]
    assert [tok.token_text(i) for i in ids] == names
    assert tok.token_id("<|end|>") in tok.eot_ids


def test_chatml_templates(templates: Path, vocab) -> None:
    for family in ("qwen2", "qwen35"):
        tok = vocab(family)
        ids = chat_prompt_ids(tok, tok.chat_template, USER_HI)
        assert not tok.add_bos and tok.bos_id not in ids
        im_end = tok.token_id("<|im_end|>")
        assert ids.count(im_end) == 2 and im_end in tok.eot_ids  # default system turn + user turn
        assert tok.decode(ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_command_r_template(templates: Path, vocab) -> None:
    tok = vocab("command-r")
    ids = chat_prompt_ids(tok, tok.chat_template, USER_HI)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids) == (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>hi<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )
    assert tok.token_id("<|END_OF_TURN_TOKEN|>") in tok.eot_ids
