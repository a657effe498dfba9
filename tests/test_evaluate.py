"""`specee eval` end to end on the tiny model with the bundled data-set samples."""
from __future__ import annotations

from pathlib import Path

import pytest

from specee.engine import Model
from specee.evaluation.run import evaluate, markdown_table
from specee.heads.head_file import constant_predictor, write_heads

DATA = Path(__file__).parent / "data" / "datasets"
PATHS = {"mtbench": DATA / "mtbench.jsonl", "csqa": DATA / "csqa.jsonl", "asdiv": DATA / "asdiv.jsonl",
         "xsum": DATA / "xsum.jsonl", "humaneval": DATA / "humaneval.jsonl"}


@pytest.fixture(scope="module")
def tiny_with_heads(tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory(n_layer=4, tied=False, seed=5)
    heads = tmp_path_factory.mktemp("eval") / "h.gguf"
    with Model(path) as m:
        write_heads(heads, m, {l: constant_predictor(40.0) for l in range(3)}, exit_layers=[2])
    return path, heads


def test_eval_limit_2_end_to_end(tiny_with_heads):
    path, heads = tiny_with_heads
    res = evaluate(path, list(PATHS), ["vanilla", "specee", "specee-lossy"], heads_path=heads, limit=2,
                   n_predict=8, threads=1, n_ctx=512, progress=False, dataset_paths=PATHS)
    assert set(res["datasets"]) == set(PATHS)
    for name, modes in res["datasets"].items():
        v, s, lossy = modes["vanilla"], modes["specee"], modes["specee-lossy"]
        assert v["n_items"] == s["n_items"] == lossy["n_items"] == 2
        assert v["decode_tok_s"] > 0 and s["speedup"] > 0
        assert 1 <= lossy["mean_exit_layer"] <= 4 and 0 <= lossy["exit_ratio"] <= 1
        assert 0 <= lossy["teacher_forced_agreement"] <= 1 and 0 <= lossy["rouge_l_vs_vanilla"] <= 1
        assert s["same_tokens_as_vanilla"] == 2 and s["rouge_l_vs_vanilla"] == 1.0  # exact: vanilla's output
        assert (v["task_score"] is None) == (name == "mtbench")
    # the exact mode's exit switch (shared by the items) measured exits first, with checked drafts
    first = res["datasets"][next(iter(PATHS))]["specee"]
    assert 1 <= first["mean_exit_layer"] <= 4 and 0 <= first["acceptance_rate"] <= 1
    table = markdown_table(res)
    assert table.count("\n") == 2 + 3 * len(PATHS) - 1 and "| csqa | specee |" in table


def test_eval_speculative_mode_takes_exit_steps_with_heads(tiny_with_heads):
    """With heads, the speculative mode's drafter adds exact exit steps in
    each item's context (its text drafter is shared by the items): vanilla's
    tokens, with exit drafts checked."""
    path, heads = tiny_with_heads
    name = next(iter(PATHS))
    res = evaluate(path, [name], ["vanilla", "speculative"], heads_path=heads, limit=2, n_predict=8, threads=1,
                   n_ctx=512, progress=False, dataset_paths=PATHS)
    assert res["heads"] == str(heads)
    s = res["datasets"][name]["speculative"]
    assert s["n_items"] == 2 and s["same_tokens_as_vanilla"] == 2
    assert s["exit_drafts_verified"] >= 1 and 0 <= s["exit_acceptance_rate"] <= 1


def test_eval_speculative_mode_without_heads_has_no_exit_steps(tiny_with_heads, monkeypatch, tmp_path):
    path, _ = tiny_with_heads
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path))  # no heads ship for the tiny model
    name = next(iter(PATHS))
    res = evaluate(path, [name], ["vanilla", "speculative"], limit=1, n_predict=8, threads=1, n_ctx=512,
                   progress=False, dataset_paths=PATHS)
    s = res["datasets"][name]["speculative"]
    assert res["heads"] is None and s["same_tokens_as_vanilla"] == 1 and "exit_drafts_verified" not in s


def test_eval_needs_heads_for_specee(tiny_with_heads):
    path, _ = tiny_with_heads
    with pytest.raises(ValueError, match="head file"):
        evaluate(path, ["mtbench"], ["specee"], limit=1, dataset_paths=PATHS, progress=False)


def test_parse_mode_and_sweep():
    from specee.evaluation.run import parse_mode, sweep_modes

    assert parse_mode("vanilla") == ("vanilla", None)
    assert parse_mode("specee") == ("specee", None)
    assert parse_mode("specee@0.7") == ("specee", 0.7)
    for bad in ("fast", "vanilla@0.5", "specee@x", "specee@1.5"):
        with pytest.raises(ValueError):
            parse_mode(bad)
    assert sweep_modes("0.3:0.9:0.1") == [f"specee@{t}" for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    assert sweep_modes("0.5:0.5:0.1") == ["specee@0.5"]
    for bad in ("0.9:0.3:0.1", "0.3:0.9:0", "0.3:0.9", "a:b:c", "0.5:1.5:0.5"):
        with pytest.raises(ValueError):
            sweep_modes(bad)


def test_eval_threshold_modes_differ(tiny_with_heads, tmp_path):
    """Predictors with a constant score of sigmoid(0) = 0.5: threshold 0.4
    lets them fire, 0.6 never does, so only the first can exit early."""
    path, _ = tiny_with_heads
    heads = tmp_path / "half.gguf"
    with Model(path) as m:
        write_heads(heads, m, {l: constant_predictor(0.0) for l in range(3)}, exit_layers=[0, 1, 2])
    res = evaluate(path, ["mtbench"], ["vanilla", "specee-lossy@0.4", "specee-lossy@0.6", "specee@0.4"],
                   heads_path=heads, limit=2, n_predict=8, threads=1, n_ctx=512, progress=False,
                   dataset_paths=PATHS)
    low, high = res["datasets"]["mtbench"]["specee-lossy@0.4"], res["datasets"]["mtbench"]["specee-lossy@0.6"]
    assert high["exit_ratio"] == 0 and high["teacher_forced_agreement"] == 1.0
    assert high["exit_layer_histogram"][-1] == sum(high["exit_layer_histogram"]) > 0
    assert low["mean_exit_layer"] < high["mean_exit_layer"]
    assert sum(low["exit_layer_histogram"]) == sum(high["exit_layer_histogram"])


def test_eval_uses_shipped_heads_by_fingerprint(tiny_with_heads, tmp_path, monkeypatch):
    from specee.heads import shipped as shipped_heads

    path, heads = tiny_with_heads
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(shipped_heads, "HEADS_DIR", shipped)
    with pytest.raises(ValueError, match="no trained heads ship"):
        evaluate(path, ["mtbench"], ["specee"], limit=1, dataset_paths=PATHS, progress=False, n_predict=4)
    (shipped / "tiny.gguf").write_bytes(heads.read_bytes())
    (shipped / "junk.gguf").write_bytes(b"not a gguf")
    with Model(path) as m:
        assert shipped_heads.default_heads(m.fingerprint) == shipped / "tiny.gguf"
    assert shipped_heads.default_heads("0000000000000000") is None
    res = evaluate(path, ["mtbench"], ["specee"], limit=1, dataset_paths=PATHS, progress=False, n_predict=4,
                   threads=1, n_ctx=512)
    assert res["heads"] == str(shipped / "tiny.gguf")


def run_cli_eval(tiny_with_heads, monkeypatch, out, *extra) -> int:
    """`specee eval` on the tiny model with the bundled data-set samples."""
    from specee import cli
    from specee.evaluation import run as evaluate_module

    path, heads = tiny_with_heads
    real = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda *a, **k: real(*a, **{**k, "dataset_paths": PATHS, "n_ctx": 512}))
    return cli.main(["-q", "eval", "--model", str(path), "--heads", str(heads), "--dataset", "mtbench,csqa",
                     "--limit", "2", "-n", "6", "--threads", "1", "--out", str(out), *extra])


def test_cli_eval_sweep_writes_json_table_and_plots(tiny_with_heads, tmp_path, monkeypatch):
    """`specee eval --sweep-threshold` end to end: results for every
    threshold, the Markdown table, and three PNG files that decode."""
    import json

    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    out = tmp_path / "res.json"
    assert run_cli_eval(tiny_with_heads, monkeypatch, out, "--modes", "vanilla", "--sweep-threshold",
                        "0.2:0.8:0.3") == 0
    res = json.loads(out.read_text())
    assert list(res["datasets"]["csqa"]) == ["vanilla", "specee@0.2", "specee@0.5", "specee@0.8"]
    assert res["complete"] is True
    assert "| csqa | specee@0.8 |" in out.with_suffix(".md").read_text()
    for name in ("speedup", "exit_layers", "threshold"):
        png = tmp_path / f"res.{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(png, format="png").shape[:2] == (500, 800)


def test_cli_eval_without_matplotlib_writes_json_and_says_so(tiny_with_heads, tmp_path, monkeypatch, capsys,
                                                             hide_matplotlib):
    """No plotting library: the JSON and the table are still written, and one
    line on stderr says how to get the plots."""
    import json

    out = tmp_path / "res.json"
    assert run_cli_eval(tiny_with_heads, monkeypatch, out) == 0
    assert set(json.loads(out.read_text())["datasets"]) == {"mtbench", "csqa"}
    assert "| csqa | specee |" in out.with_suffix(".md").read_text()
    assert not list(tmp_path.glob("*.png"))
    hint = [line for line in capsys.readouterr().err.splitlines() if "matplotlib" in line]
    assert hint == ['specee: the PNG plots need matplotlib (pip install ".[eval]"); writing JSON and Markdown only']


def test_cli_eval_keeps_the_data_sets_done_when_a_later_one_fails(tiny_with_heads, tmp_path, monkeypatch, capsys):
    """Results are written after each data set: a failure in the second
    leaves the first on disk, marked incomplete."""
    import json

    from specee.evaluation import run as evaluate_module
    from specee.evaluation.datasets import DatasetError

    real_load = evaluate_module.load_dataset

    def load(name, **kwargs):
        if name == "csqa":
            raise DatasetError("csqa: simulated failure")
        return real_load(name, **kwargs)

    monkeypatch.setattr(evaluate_module, "load_dataset", load)
    out = tmp_path / "new_folder" / "res.json"
    assert run_cli_eval(tiny_with_heads, monkeypatch, out, "--no-plots") == 1
    assert "simulated failure" in capsys.readouterr().err
    res = json.loads(out.read_text())
    assert list(res["datasets"]) == ["mtbench"] and res["complete"] is False
    assert res["datasets"]["mtbench"]["specee"]["n_items"] == 2
    assert "| mtbench | specee |" in out.with_suffix(".md").read_text()


def test_eval_resumes_from_its_item_log(tiny_with_heads, tmp_path, monkeypatch):
    """A run stopped part way (its last line cut short) resumes at the first
    item not logged, and ends with the same figures as one unbroken run."""
    import json

    from specee.evaluation import run as evaluate_module

    path, heads = tiny_with_heads
    log = tmp_path / "res.items.jsonl"
    kwargs = dict(heads_path=heads, limit=2, n_predict=6, threads=1, n_ctx=512, progress=False,
                  dataset_paths=PATHS, item_log=log)
    full = evaluate(path, ["mtbench", "csqa"], ["vanilla", "specee"], **kwargs)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 4 and json.loads(lines[0])["settings"]["n_predict"] == 6
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # one item kept, the next cut short

    real_run_item = evaluate_module.run_item
    ran = []
    monkeypatch.setattr(evaluate_module, "run_item", lambda *a, **k: ran.append(1) or real_run_item(*a, **k))
    resumed = evaluate(path, ["mtbench", "csqa"], ["vanilla", "specee"], resume=True, **kwargs)
    assert len(ran) == 3 * 2  # three items, two modes each
    assert len(log.read_text().splitlines()) == 1 + 4
    for name in ("mtbench", "csqa"):
        for mode in ("vanilla", "specee"):
            a, b = full["datasets"][name][mode], resumed["datasets"][name][mode]
            for key in ("n_items", "task_score", "mean_exit_layer", "teacher_forced_agreement",
                        "exact_prefix_tokens"):
                assert a.get(key) == b.get(key), (name, mode, key)

    before = log.read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):  # never overwritten without resume
        evaluate(path, ["mtbench", "csqa"], ["vanilla", "specee"], resume=False, **kwargs)
    assert log.read_bytes() == before


def test_eval_refuses_to_resume_a_log_of_other_settings(tiny_with_heads, tmp_path):
    path, heads = tiny_with_heads
    log = tmp_path / "res.items.jsonl"
    kwargs = dict(heads_path=heads, limit=1, threads=1, n_ctx=512, progress=False, dataset_paths=PATHS,
                  item_log=log)
    evaluate(path, ["mtbench"], ["vanilla"], n_predict=4, **kwargs)
    before = log.read_text()
    with pytest.raises(ValueError, match="other settings.*n_predict"):
        evaluate(path, ["mtbench"], ["vanilla"], n_predict=5, resume=True, **kwargs)
    assert log.read_text() == before
    # a head file replaced under the same name (another threshold, say) is another evaluation
    heads2 = tmp_path / "h.gguf"
    heads2.write_bytes(heads.read_bytes())
    log2 = tmp_path / "heads.items.jsonl"
    kw = {**kwargs, "item_log": log2, "heads_path": heads2}
    evaluate(path, ["mtbench"], ["specee"], n_predict=4, **kw)
    with Model(path) as m:
        write_heads(heads2, m, {l: constant_predictor(40.0) for l in range(3)}, exit_layers=[2], threshold=0.7)
    with pytest.raises(ValueError, match="other settings.*heads_sha256"):
        evaluate(path, ["mtbench"], ["specee"], n_predict=4, resume=True, **kw)
    log.write_text("not json\n")
    with pytest.raises(ValueError, match="not an evaluation item log"):
        evaluate(path, ["mtbench"], ["vanilla"], n_predict=4, resume=True, **kwargs)


def test_cli_eval_resume_needs_out(tiny_with_heads, capsys):
    from specee import cli

    path, heads = tiny_with_heads
    assert cli.main(["-q", "eval", "--model", str(path), "--heads", str(heads), "--dataset", "mtbench",
                     "--resume"]) != 0
    assert "--resume needs --out" in capsys.readouterr().err


def test_cli_eval_logs_items_beside_out(tiny_with_heads, tmp_path, monkeypatch, capsys):
    import json

    from specee.evaluation import run as evaluate_module

    out = tmp_path / "res.json"
    assert run_cli_eval(tiny_with_heads, monkeypatch, out, "--no-plots") == 0
    log = out.with_suffix(".items.jsonl")
    logged, first = log.read_bytes(), json.loads(out.read_text())
    assert len(logged.splitlines()) == 1 + 2 * 2
    monkeypatch.setattr(evaluate_module, "run_item", lambda *a, **k: pytest.fail("an item ran again"))
    assert run_cli_eval(tiny_with_heads, monkeypatch, out, "--no-plots", "--resume") == 0  # all from the log
    assert log.read_bytes() == logged
    again = json.loads(out.read_text())
    assert again["datasets"]["csqa"]["specee"]["task_score"] == first["datasets"]["csqa"]["specee"]["task_score"]
    capsys.readouterr()
    assert run_cli_eval(tiny_with_heads, monkeypatch, out, "--no-plots") == 1  # not overwritten without --resume
    assert "--resume" in capsys.readouterr().err and log.read_bytes() == logged
