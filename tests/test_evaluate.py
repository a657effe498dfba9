"""`specee eval` end to end on the tiny model with the bundled data-set samples."""
from __future__ import annotations

from pathlib import Path

import pytest

from specee.engine import Model
from specee.evaluate import evaluate, markdown_table
from specee.heads_file import constant_predictor, write_heads

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
    res = evaluate(path, list(PATHS), ["vanilla", "specee"], heads_path=heads, limit=2, n_predict=8,
                   threads=1, n_ctx=512, progress=False, dataset_paths=PATHS)
    assert set(res["datasets"]) == set(PATHS)
    for name, modes in res["datasets"].items():
        v, s = modes["vanilla"], modes["specee"]
        assert v["n_items"] == s["n_items"] == 2
        assert v["decode_tok_s"] > 0 and s["speedup"] > 0
        assert 1 <= s["mean_exit_layer"] <= 4 and 0 <= s["exit_ratio"] <= 1
        assert 0 <= s["teacher_forced_agreement"] <= 1 and 0 <= s["rouge_l_vs_vanilla"] <= 1
        assert (v["task_score"] is None) == (name == "mtbench")
    table = markdown_table(res)
    assert table.count("\n") == 2 + 2 * len(PATHS) - 1 and "| csqa | specee |" in table


def test_eval_needs_heads_for_specee(tiny_with_heads):
    path, _ = tiny_with_heads
    with pytest.raises(ValueError, match="head file"):
        evaluate(path, ["mtbench"], ["specee"], limit=1, dataset_paths=PATHS, progress=False)
