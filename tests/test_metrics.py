"""Metrics: ROUGE-L values, answer extraction rules, the HumanEval runner."""

from __future__ import annotations

import os
import random
import time
from functools import lru_cache
from pathlib import Path

import pytest

from specee.evaluation.datasets import HumanEvalProblem
from specee.evaluation.scoring import (
    extract_choice,
    extract_number,
    normalize_number,
    numbers_equal,
    pass_at_1,
    rouge_l,
    humaneval_completion,
    run_humaneval,
    tokenize_words,
)

# ---------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("the cat sat on the mat", "the cat on the mat", 10 / 11),  # P = 5/6, R = 1
        ("police kill the gunman", "police killed the gunman", 0.75),  # LCS 3 of 4 and 4
        ("the gunman kill police", "police killed the gunman", 0.5),  # LCS "the gunman"
        ("a b c d", "d c b a", 0.25),
        ("The CAT, sat!", "the cat sat", 1.0),  # lowercased, punctuation dropped
        ("x y z", "a b", 0.0),
        ("", "", 1.0),
        ("", "something", 0.0),
        ("something", "...", 0.0),
        ("a a a b", "a b", 2 * (2 / 4) * 1 / (2 / 4 + 1)),  # P = 2/4, R = 2/2
    ],
)
def test_rouge_l_known_values(candidate: str, reference: str, expected: float) -> None:
    assert rouge_l(candidate, reference) == pytest.approx(expected)


def test_tokenize_words() -> None:
    assert tokenize_words("Don't stop, 2 Go_on! Café") == ["don", "t", "stop", "2", "go", "on", "café"]


def test_rouge_l_matches_brute_force_lcs() -> None:
    def lcs(a: tuple[str, ...], b: tuple[str, ...]) -> int:
        @lru_cache(maxsize=None)
        def go(i: int, j: int) -> int:
            if i == len(a) or j == len(b):
                return 0
            return go(i + 1, j + 1) + 1 if a[i] == b[j] else max(go(i + 1, j), go(i, j + 1))

        return go(0, 0)

    rng = random.Random(0)
    for _ in range(200):
        a = tuple(rng.choice("abcd") for _ in range(rng.randint(1, 12)))
        b = tuple(rng.choice("abcd") for _ in range(rng.randint(1, 12)))
        n = lcs(a, b)
        expected = 0.0 if n == 0 else 2 * n / (len(a) + len(b))  # F1 = 2L / (|a| + |b|)
        assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(expected)
        assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(rouge_l(" ".join(b), " ".join(a)))


# ---------------------------------------------------------------------------
# CommonsenseQA answer letter
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B)", "B"),
        ("The answer is (b).", "B"),
        ("B.", "B"),
        ("B", "B"),
        ("b) library", "B"),
        ("[d] because it is cold", "D"),
        ("Answer: C", "C"),
        ("answer: e.", "E"),
        ("C: department store", "C"),
        ("A. bank", "A"),
        ("A bank is the most secure place, so the answer is C", "C"),  # the article "A" is skipped
        ("I pick D because A is wrong", "D"),
        ("E.g. a bank would do. So: B", "B"),  # "E.g." is not a label
        ("A", "A"),
        ("The correct option is A, since banks have revolving doors.", "A"),
        ("(A) bank (B) library", "A"),  # the first one wins
        ("I don't know", None),
        ("a bank", None),  # a lower-case letter counts only when marked
        ("F. none of these", None),  # not a label
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, "ABCDE") == expected


def test_extract_choice_labels() -> None:
    assert extract_choice("The answer is C", ["A", "B"]) is None
    assert extract_choice("(b)", {"A": "x", "B": "y"}) == "B"
    assert extract_choice("(b)", ["a", "b"]) == "b"  # returned as given in labels
    with pytest.raises(ValueError):
        extract_choice("A", ["AB"])


# ---------------------------------------------------------------------------
# ASDiv numbers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 9 apples.", "9"),
        ("7 + 2 = 9", "9"),
        ("There were 1,720 apples in all", "1720"),
        ("It costs $1,234.50.", "1234.5"),
        ("5.0", "5"),
        ("The temperature is -3.50 degrees", "-3.5"),
        ("5-3 = 2", "2"),
        ("from 5-3", "3"),  # a hyphen after a digit is not a sign
        ("3/4", "4"),
        ("about .5 of it", "0.5"),
        ("Step 1: 12 * 3 = 36. Step 2: 36 + 4 = 40. Answer: 40", "40"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_normalize_and_compare_numbers() -> None:
    assert normalize_number("5.0") == normalize_number("5") == normalize_number(5) == "5"
    assert normalize_number("100") == "100"  # not "1E+2"
    assert normalize_number("-0.0") == "0"
    assert normalize_number("0.3950") == "0.395"
    assert normalize_number("abc") is None and normalize_number("nan") is None and normalize_number("") is None
    assert numbers_equal("5.0", "5") and numbers_equal("1,720", 1720) and numbers_equal(2.5, "2.50")
    assert not numbers_equal("5", "6") and not numbers_equal(None, "5") and not numbers_equal("x", "x")


# ---------------------------------------------------------------------------
# HumanEval execution
# ---------------------------------------------------------------------------

PROBLEM = HumanEvalProblem(
    task_id="Sample/add",
    prompt='def add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
    canonical_solution="    return a + b\n",
)


def test_humaneval_correct_and_wrong() -> None:
    assert run_humaneval(PROBLEM, "    return a + b\n")
    assert not run_humaneval(PROBLEM, "    return a - b\n")
    # a mapping works too, and a completion may restate the whole function
    as_dict = {"prompt": PROBLEM.prompt, "test": PROBLEM.test, "entry_point": "add"}
    assert run_humaneval(as_dict, "    return b + a\n\n\ndef add(a, b):\n    return a + b\n")


def test_humaneval_completion_ends_where_the_body_ends() -> None:
    body = "    if a:\n        return a + b  # sum\n    return b\n"
    for tail in ("\n\ndef sub(a, b):\n", "\nclass A:\n", "\n# tests\n", "\nif __name__ == '__main__':\n",
                 "\nprint(add(1, 2))\n"):
        assert humaneval_completion(body + tail + "    more") == body + "\n" * tail.startswith("\n\n")
    assert humaneval_completion(body) == body  # indented if, def or comment lines are the body's own
    # the reason for the cut: a right body followed by extra code that the token limit broke off
    cut_short = "    return a + b\n\ndef check_more(x):\n    \"\"\"Unfinished"
    assert not run_humaneval(PROBLEM, cut_short)
    assert run_humaneval(PROBLEM, humaneval_completion(cut_short))


@pytest.mark.parametrize(
    "completion",
    [
        "    raise RuntimeError('boom')\n",
        "    return a +\n",  # syntax error
        "    import os\n    os.abort()\n",  # killed by a signal
        "    import sys\n    sys.exit(0)\n",  # exit status 0 before check() finishes
        "    return a + b\nimport os\nos._exit(0)\n",  # exits before check() runs
        "    x = bytearray(8 << 30)\n    return a + b\n",  # over the memory limit
    ],
)
def test_humaneval_crashes_fail(completion: str) -> None:
    assert not run_humaneval(PROBLEM, completion, timeout=5.0)


def test_humaneval_infinite_loop_times_out() -> None:
    t0 = time.monotonic()
    assert not run_humaneval(PROBLEM, "    while True:\n        pass\n", timeout=2.0)
    assert time.monotonic() - t0 < 6.0


def test_humaneval_sleep_times_out() -> None:
    """Wall clock, not only CPU time: a sleeping solution is stopped too."""
    t0 = time.monotonic()
    assert not run_humaneval(PROBLEM, "    import time\n    time.sleep(60)\n", timeout=2.0)
    assert time.monotonic() - t0 < 6.0


def test_humaneval_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECEE_TEST_SECRET", "x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    completion = (
        "    import os\n"
        "    assert 'SPECEE_TEST_SECRET' not in os.environ\n"
        "    assert os.environ.get('HTTPS_PROXY') == ''\n"
        "    assert os.getcwd() == os.environ['HOME']\n"
        "    return a + b\n"
    )
    assert run_humaneval(PROBLEM, completion)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # killed, waiting to be reaped by init


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_humaneval_kills_leftover_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    completion = (
        "    import os, time\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.5)\n"
        "    return a + b\n"
    )
    assert run_humaneval(PROBLEM, completion, timeout=10.0)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(pid):  # pragma: no cover - clean up before failing
        os.kill(pid, 9)
        pytest.fail("the solution's child process survived")


def test_pass_at_1() -> None:
    assert pass_at_1([True, False, True, True]) == 0.75
    assert pass_at_1([False]) == 0.0
    with pytest.raises(ValueError):
        pass_at_1([])
