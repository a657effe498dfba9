"""The decode loop and the CLI on the tiny model."""
from __future__ import annotations

import contextlib
import json

import pytest

from specee import cli
from specee.engine import InvalidArgumentError, Model
from specee.decoding.plain import generate
from specee.decoding.sampling import Sampler

PROMPT = [5, 77, 200, 13, 300, 42]


def test_greedy_generate_matches_stepwise_decoding(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        result = generate(ctx, PROMPT, max_tokens=10)
        ctx.truncate(0)
        ctx.prefill(PROMPT)
        want = [ctx.argmax()]
        while len(want) < 10:
            want.append(ctx.decode(want[-1]))
    assert result.tokens == want
    assert result.stop_reason == "length"
    assert result.n_decode_steps == 9 and result.n_prompt == len(PROMPT)
    stats = result.stats()
    assert stats["n_generated"] == 10 and stats["decode_tok_s"] > 0


def test_generate_stops_at_a_stop_token_and_at_a_full_context(tiny_llama):
    with Model(tiny_llama) as m:
        with m.context(n_ctx=64) as ctx:
            free = generate(ctx, PROMPT, max_tokens=12).tokens
        with m.context(n_ctx=64) as ctx:
            stopped = generate(ctx, PROMPT, max_tokens=12, stop_ids={free[3]})
        assert stopped.tokens == free[: free.index(free[3]) + 1]
        assert stopped.stop_reason == "eos"
        with m.context(n_ctx=10) as ctx:
            full = generate(ctx, PROMPT, max_tokens=50)
        assert full.stop_reason == "context"
        assert len(full.tokens) == 10 - len(PROMPT) + 1  # the last token needs no cache cell


def test_seeded_sampling_is_reproducible(tiny_llama):
    # a hot temperature: the tiny random model is very sure of itself
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        runs = []
        for _ in range(2):
            ctx.truncate(0)
            runs.append(generate(ctx, PROMPT, 16, Sampler(temperature=50.0, top_k=100, seed=7)).tokens)
        ctx.truncate(0)
        other = generate(ctx, PROMPT, 16, Sampler(temperature=50.0, top_k=100, seed=8)).tokens
    assert runs[0] == runs[1]
    assert runs[0] != other


def test_generate_rejects_bad_requests(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=8) as ctx:
        with pytest.raises(InvalidArgumentError):
            generate(ctx, [], 4)
        with pytest.raises(InvalidArgumentError):
            generate(ctx, PROMPT, 0)
        with pytest.raises(InvalidArgumentError, match="no room"):
            generate(ctx, list(range(8)), 4)


def test_cli_json_fields(tiny_llama, capsys):
    rc = cli.main(["-q", "generate", "--model", tiny_llama, "--prompt", "hello world", "-n", "5", "--json",
                   "--threads", "1"])
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) >= {"text", "tokens", "n_prompt", "n_generated", "prefill_s", "decode_s", "decode_tok_s"}
    assert record["n_generated"] == len(record["tokens"]) and 1 <= record["n_generated"] <= 5
    assert record["threads"] == 1


def test_cli_chat_and_prompt_file(tiny_llama, tmp_path, capsys):
    prompt = tmp_path / "p.txt"
    prompt.write_text("what is up")
    assert cli.main(["-q", "generate", "--model", tiny_llama, "--prompt-file", str(prompt), "--chat", "-n", "4",
                     "--temp", "0.8", "--seed", "1", "--top-p", "0.9"]) == 0
    err = capsys.readouterr().err
    assert "prefill:" in err and "decode:" in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "   "], "prompt is empty"),
    (["generate"], "give a prompt"),
    (["generate", "--prompt", "a", "--prompt-file", "-"], "not both"),
])
def test_cli_refuses_bad_prompts(tiny_llama, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(argv[:1] + ["--model", tiny_llama] + argv[1:])


def test_cli_reports_library_errors(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    assert cli.main(["-q", "generate", "--model", str(bad), "--prompt", "x"]) == 1
    assert "specee: error:" in capsys.readouterr().err


# ---- early exit through the loop and the CLI ----------------------------------------


@pytest.fixture(scope="module")
def tiny6_heads(tiny_model_factory, tmp_path_factory):
    from specee.heads.head_file import constant_predictor, write_heads

    path = tiny_model_factory(n_layer=6, tied=False, seed=3)
    out = {}
    with Model(path) as m:
        for name, logit in (("never", -40.0), ("always", 40.0)):
            out[name] = tmp_path_factory.mktemp("heads") / f"{name}.gguf"
            write_heads(out[name], m, {l: constant_predictor(logit) for l in range(5)}, exit_layers=[4])
    return path, out


def test_specee_loop_with_never_firing_heads_equals_vanilla(tiny6_heads):
    from specee.decoding.early_exit import generate_specee
    from specee.engine import Heads

    path, heads = tiny6_heads
    with Model(path) as m, Heads(m, heads["never"]) as h, m.context(n_ctx=64) as ctx:
        vanilla = generate(ctx, PROMPT, 20).tokens
        ctx.truncate(0)
        ctx.set_heads(h)
        result = generate_specee(ctx, PROMPT, 20, h.n_candidates, adaptive=False)
    assert result.tokens == vanilla
    x = result.stats()
    assert x["exit_ratio"] == 0 and x["mean_exit_layer"] == 6 and x["exit_layers"] == [6] * 19
    assert x["predictor_checks"] == 19 and x["false_exit_checks"] == 0


def test_prompt_lookup_candidates():
    from specee.decoding.early_exit import PromptLookup

    src = PromptLookup()
    # after "1 2 3" came 4 twice and 9 once; after "3" also 7
    seq = [1, 2, 3, 4, 1, 2, 3, 4, 5, 3, 7, 1, 2, 3, 9, 1, 2, 3]
    cands = src.candidates(seq, 4)
    assert cands[:2] == [4, 9] and len(set(cands)) == 4
    assert src.candidates([5], 4) == [5, 0, 1, 2]


def test_cli_specee_mode_json(tiny6_heads, capsys):
    path, heads = tiny6_heads
    rc = cli.main(["-q", "generate", "--model", path, "--prompt", "hello world", "-n", "8", "--json",
                   "--mode", "specee", "--lossy", "--heads", str(heads["always"])])
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    for key in ("mean_exit_layer", "exit_ratio", "exit_layers", "false_exit_checks", "draft_top1", "draft_topk"):
        assert key in record
    assert record["mode"] == "specee" and len(record["exit_layers"]) == record["n_generated"] - 1
    assert all(layer in (5, 6) for layer in record["exit_layers"])  # exit after layer 4, or full depth
    with pytest.raises(SystemExit, match="no trained heads ship for"):
        cli.main(["generate", "--model", path, "--prompt", "x", "--mode", "specee"])


def test_cli_specee_candidate_verification(tiny6_heads, capsys):
    path, heads = tiny6_heads
    args = ["-q", "generate", "--model", path, "--prompt", "hello world", "-n", "8", "--json", "--mode", "specee",
            "--lossy", "--heads", str(heads["always"]), "--temp", "0"]
    assert cli.main(args + ["--verify", "candidates"]) == 0
    record = json.loads(capsys.readouterr().out)
    # always-firing predictors now exit on every step (offline layer 4, then online ones around it)
    assert len(record["exit_layers"]) == record["n_generated"] - 1 == 7
    assert all(layer < 6 for layer in record["exit_layers"]) and record["false_exit_checks"] == 0
    assert cli.main(args + ["--verify", "candidates", "--temp", "0.7"]) == 1
    assert "use --verify full or --temp 0" in capsys.readouterr().err


def test_cli_specee_mode_is_exact_by_default(tiny6_heads, capsys):
    """Always-firing predictors with candidates that are mostly wrong: the
    default specee mode still writes vanilla's tokens (its exits are drafts
    the remaining layers check); --lossy writes others and says so."""
    path, heads = tiny6_heads
    base = ["-q", "generate", "--model", path, "--prompt", "hello world", "-n", "24", "--json", "--temp", "0"]
    runs = {}
    for name, extra in (("vanilla", ["--mode", "vanilla"]),
                        ("exact", ["--mode", "specee", "--heads", str(heads["always"]), "--verify", "candidates"]),
                        ("lossy", ["--mode", "specee", "--lossy", "--heads", str(heads["always"]),
                                   "--verify", "candidates"])):
        assert cli.main(base + extra) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["exact"]["tokens"] == runs["vanilla"]["tokens"]
    assert runs["exact"]["exact"] is True and runs["exact"]["exit_drafts_verified"] > 0
    assert runs["exact"]["exit_drafts_accepted"] < runs["exact"]["exit_drafts_verified"]  # misses happened
    assert runs["lossy"]["exact"] is False and runs["lossy"]["tokens"] != runs["vanilla"]["tokens"]


def test_cli_exit_chain_sets_how_many_exits_a_verification_takes(tiny6_heads, capsys):
    path, heads = tiny6_heads
    base = ["-q", "generate", "--model", path, "--prompt", "hello world", "-n", "24", "--json", "--temp", "0"]
    assert cli.main(base + ["--mode", "vanilla"]) == 0
    want = json.loads(capsys.readouterr().out)["tokens"]
    exact = base + ["--mode", "specee", "--heads", str(heads["always"]), "--verify", "candidates"]
    for n in (1, 3):
        assert cli.main(exact + ["--exit-chain", str(n)]) == 0
        run = json.loads(capsys.readouterr().out)
        assert run["tokens"] == want and run["max_chain"] == n
        assert (run["verification_passes"] < run["exit_drafts"]) == (n > 1)
    for bad in (["--exit-chain", "0"], ["--exit-chain", "2", "--lossy"]):
        with pytest.raises(SystemExit) if bad[1] == "0" else contextlib.nullcontext():
            assert cli.main(exact + bad) == 1
    assert "goes with --mode specee without --lossy" in capsys.readouterr().err


def test_cli_stats_line_says_when_the_output_may_differ(tiny6_heads, capsys):
    path, heads = tiny6_heads
    base = ["-q", "generate", "--model", path, "--prompt", "hello world", "-n", "4", "--temp", "0",
            "--mode", "specee", "--heads", str(heads["always"])]
    assert cli.main(base + ["--lossy"]) == 0
    assert "lossy: the output may differ from the model's" in capsys.readouterr().err
    assert cli.main(base) == 0
    assert "lossy" not in capsys.readouterr().err
