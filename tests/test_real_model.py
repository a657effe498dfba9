"""The real default model (SmolLM2-135M-Instruct Q4_1, fetched from PyPI):
greedy output against llama.cpp's golden tokens, and the CLI end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from specee import cli, engine

pytestmark = pytest.mark.real_model
GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_smollm2_llama_cpp.json").read_text())


def test_built_with_llama_cpps_ggml():
    """libspecee runs the ggml inside llama-cpp-python 0.3.36 with llamafile's
    sgemm, as llama.cpp builds it: every kernel rounds the same way, so
    greedy output must match llama.cpp's token for token (below)."""
    assert engine.ggml_version() == "0.25.3"
    assert "LLAMAFILE = 1" in engine.system_info()


@pytest.fixture(scope="module")
def smollm2(real_model_path):
    with engine.Model(real_model_path, kernels="ggml") as m:  # llama.cpp's numerics, token for token
        yield m


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["name"])
def test_teacher_forced_agreement_with_llama_cpp(smollm2, case):
    """Fed llama.cpp's own greedy tokens one at a time, our argmax picks the
    same next token every time."""
    golden = case["tokens"]
    with smollm2.context(n_ctx=256, n_threads=2) as ctx:
        ctx.prefill(case["prompt"])
        picks = [ctx.argmax()]
        for token in golden[:-1]:
            picks.append(ctx.decode(token))
    assert picks == golden


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["name"])
def test_free_running_greedy_matches_llama_cpp(smollm2, case):
    golden = case["tokens"]
    with smollm2.context(n_ctx=256, n_threads=2) as ctx:
        ctx.prefill(case["prompt"])
        out = [ctx.argmax()]
        while len(out) < len(golden):
            out.append(ctx.decode(out[-1]))
    assert out == golden


def test_cli_generate_json(real_model_path, capsys):
    rc = cli.main(["--quiet", "generate", "--model", real_model_path, "--prompt", "The capital of France is",
                   "-n", "12", "--threads", "2", "--json", "--temp", "0"])  # greedy: the default samples
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    for key in ("text", "tokens", "n_prompt", "n_generated", "prefill_s", "decode_s", "decode_tok_s"):
        assert key in record
    assert record["n_generated"] == len(record["tokens"]) <= 12
    assert record["n_prompt"] > 0 and record["decode_tok_s"] > 0
    assert "Paris" in record["text"]


def test_cli_generate_chat_streams_text(real_model_path, capsys):
    rc = cli.main(["--quiet", "generate", "--model", real_model_path, "--chat", "--prompt", "Say hello.", "-n", "8"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "decode:" in captured.err and "tok/s" in captured.err


def test_never_firing_exit_heads_give_vanilla_tokens(smollm2, tmp_path):
    """Early exit with predictors that never fire runs every layer in
    segments (checks after each of layers 0-28): the tokens must be the
    vanilla ones."""
    from specee.engine import Heads
    from specee.heads.head_file import constant_predictor, write_heads

    write_heads(tmp_path / "never.gguf", smollm2, {l: constant_predictor(-40.0) for l in range(smollm2.n_layer - 1)})
    case = GOLDEN["cases"][0]
    with Heads(smollm2, tmp_path / "never.gguf") as heads:
        with smollm2.context(n_ctx=256, n_threads=2) as ctx:
            ctx.prefill(case["prompt"])
            vanilla = [ctx.argmax()]
            while len(vanilla) < 64:
                vanilla.append(ctx.decode(vanilla[-1]))
        with smollm2.context(n_ctx=256, n_threads=2) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(case["prompt"])
            out = [ctx.argmax()]
            while len(out) < 64:
                step = ctx.decode_with_candidates(out[-1], [out[-1], 1, 2, 3])
                assert step.exit_layer == smollm2.n_layer
                out.append(step.token)
            assert ctx.exit_stats()["n_checks"] == 63 * 29
    assert out == vanilla


def test_shipped_heads_load_and_exit_with_high_agreement(smollm2):
    """The heads that ship for the default model are found by its fingerprint,
    carry a draft head, and early exit with them agrees with full depth on
    nearly every teacher-forced step of a chat answer."""
    from specee.heads.shipped import HEADS_DIR, default_heads

    path = default_heads(smollm2.fingerprint)
    assert path == HEADS_DIR / "smollm2-135m.gguf" and path.stat().st_size < 20 * 2**20
    record = json.loads(path.with_name("smollm2-135m.record.json").read_text())
    assert record["reproduce"].startswith("specee train draft --model smollm2-135m")
    case = GOLDEN["cases"][0]
    with engine.Heads(smollm2, path) as heads, smollm2.context(n_ctx=512, n_threads=2) as ctx:
        assert heads.has_draft and heads.n_candidates == 4
        ctx.set_heads(heads)
        assert ctx.exit_params()["verify_full"] == record["predictor_config"]["verify_full"]
        ctx.set_exit_params(full_depth=True)
        ctx.prefill(case["prompt"])
        token = ctx.argmax()
        cands = ctx.draft_sync(token)
        agree = 0
        for _ in range(64):
            s = ctx.decode_with_candidates(token, cands)
            agree += s.token == s.full_token
            token, cands = s.full_token, s.next
        stats = ctx.exit_stats()
    assert stats["n_checks"] > 0 and stats["n_steps"] == 64
    assert agree >= 56  # measured 0.99 teacher-forced agreement on MT-Bench (record); 64 steps leave room
