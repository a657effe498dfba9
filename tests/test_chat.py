"""Chat template rendering tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from tiny_vocab import TINY_CHAT_TEMPLATE, write_tiny_vocab_gguf

from specee.chat import ChatTemplateError, read_chat_template, render_chat

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
