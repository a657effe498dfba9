"""Evaluation metrics: ROUGE-L, answer extraction, HumanEval execution, pass@1.

All functions are pure Python with no dependencies beyond the standard
library, so evaluation results do not depend on a scoring package's version.

- :func:`rouge_l` scores XSum summaries and the sequence agreement of
  early-exit output against full-depth output (docs/design.md#fidelity).
- :func:`extract_choice` reads a CommonsenseQA answer letter out of free text.
- :func:`extract_number` / :func:`numbers_equal` score ASDiv answers.
- :func:`humaneval_completion` cuts a generated continuation where the
  function body ends; :func:`run_humaneval` / :func:`pass_at_1` score it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = [
    "tokenize_words",
    "rouge_l",
    "extract_choice",
    "normalize_number",
    "extract_number",
    "numbers_equal",
    "humaneval_completion",
    "run_humaneval",
    "pass_at_1",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits


def tokenize_words(text: str) -> list[str]:
    """Lowercased word tokens: maximal runs of Unicode letters/digits.

    Everything else (whitespace, punctuation, underscores, symbols) separates
    tokens and is dropped, so ``"Don't stop!"`` gives ``["don", "t", "stop"]``.
    No stemming and no stop-word removal.
    """
    return _WORD.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(min) memory)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference``.

    Both texts are split with :func:`tokenize_words` (lowercase, letters and
    digits only). With ``L`` the LCS length of the two token lists,
    precision ``P = L / len(candidate)``, recall ``R = L / len(reference)``
    and the result is ``2PR / (P + R)`` (0.0 when ``L == 0``). Two texts with
    no tokens at all score 1.0 (they agree); one empty side scores 0.0.
    """
    cand, ref = tokenize_words(candidate), tokenize_words(reference)
    if not cand and not ref:
        return 1.0
    lcs = _lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------
# CommonsenseQA: answer letter
# ---------------------------------------------------------------------------


def extract_choice(text: str, labels: Iterable[str] = "ABCDE") -> str | None:
    """The choice label a model's answer picks, or ``None``.

    ``labels`` are single characters (a string such as ``"ABCDE"`` or the keys
    of a record's ``choices``). The rule, first match wins:

    1. A *marked* label, matched case-insensitively: a label in brackets
       (``"(B)"``, ``"[b]"``) or followed by ``)``, ``.`` or ``:`` (``"B."``,
       ``"b)"``, ``"C:"``), not part of a longer word (``"E.g."`` does not
       count). The first one in the text is taken, so
       ``"The answer is (B)"`` and ``"b) library"`` give ``"B"``.
    2. Otherwise the first *standalone* upper-case label, i.e. one with no
       letter, digit or apostrophe on either side (``"Answer: C"``,
       ``"I pick D because"``; not ``"E.g."``), skipping an ``"A"`` that reads as the English
       article (``"A"`` followed by a space and a lower-case letter, as in
       ``"A bank is ..."``).

    Lower-case letters only count when marked (rule 1), since "a" is usually
    a word. The result is returned in the case given in ``labels``.
    """
    by_upper = {label.upper(): label for label in labels}
    if not by_upper or any(len(label) != 1 for label in by_upper):
        raise ValueError(f"labels must be single characters, got {list(labels)!r}")
    cls = "".join(re.escape(label) for label in by_upper)
    lower_cls = "".join(re.escape(label.lower()) for label in by_upper)
    edge = r"A-Za-z0-9'"
    marked = re.compile(
        rf"(?<![{edge}])(?:[(\[]\s*([{cls}{lower_cls}])\s*[)\]]|([{cls}{lower_cls}])[).:])(?![{edge}])"
    )
    m = marked.search(text)
    if m:
        return by_upper[(m.group(1) or m.group(2)).upper()]
    for m in re.finditer(rf"(?<![{edge}])([{cls}])(?![{edge}]|\.[A-Za-z])", text):
        letter = m.group(1)
        if letter == "A" and re.match(r" [a-z]", text[m.end():m.end() + 2]):
            continue  # the article "A"
        return by_upper[letter]
    return None


# ---------------------------------------------------------------------------
# ASDiv: numbers
# ---------------------------------------------------------------------------

# Thousands groups ("1,234,567") or plain digits, optional decimals; a leading
# "-" is a sign only when it does not follow a word or digit ("5-3" is 5 and 3).
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w)])-)?\.\d+")


def normalize_number(text: str | int | float) -> str | None:
    """Canonical decimal string of a number, or ``None`` if it is not one.

    Commas are removed and trailing zeros dropped: ``"1,720" -> "1720"``,
    ``"5.0" -> "5"``, ``"-3.50" -> "-3.5"``, ``".5" -> "0.5"``, ``"-0" -> "0"``.
    """
    s = str(text).strip().replace(",", "")
    if not s:
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The last number in ``text``, normalized (see :func:`normalize_number`).

    Numbers are integers or decimals, optionally with a sign and thousands
    separators (``"1,234.5"``); a sentence-final period is not a decimal
    point. ``"7 + 2 = 9 apples."`` gives ``"9"``; no number gives ``None``.
    Fractions and times are read as separate numbers (``"3/4"`` gives ``"4"``).
    """
    matches = _NUMBER.findall(text)
    return normalize_number(matches[-1]) if matches else None


def numbers_equal(a: str | int | float | None, b: str | int | float | None) -> bool:
    """True if both are numbers with the same exact decimal value (``"5.0" == "5"``)."""
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    return na is not None and na == nb


# ---------------------------------------------------------------------------
# HumanEval: run a completion against the problem's tests
# ---------------------------------------------------------------------------

_MEMORY_LIMIT = 2 << 30  # bytes of address space for the test process
_FILE_LIMIT = 16 << 20  # bytes any one written file may reach
_OUTPUT_TAIL = 2000  # characters of the program's output kept for logging


def _limit_resources(cpu_seconds: int) -> None:
    """preexec_fn: cap address space, CPU time, file size and core dumps."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    for name, value in (
        ("RLIMIT_AS", _MEMORY_LIMIT),
        ("RLIMIT_CPU", cpu_seconds),
        ("RLIMIT_FSIZE", _FILE_LIMIT),
        ("RLIMIT_CORE", 0),
    ):
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            _, hard = resource.getrlimit(which)
            soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def _sandbox_env(home: str) -> dict[str, str]:
    """A fresh environment: nothing inherited (no tokens, no proxies)."""
    env = {
        "PATH": os.defpath,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "no_proxy": "*",
        "NO_PROXY": "*",
    }
    for var in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy"):
        env[var] = env[var.upper()] = ""
    return env


def _field(problem: Any, name: str) -> str:
    value = problem[name] if isinstance(problem, Mapping) else getattr(problem, name)
    if not isinstance(value, str):
        raise TypeError(f"HumanEval problem field {name!r} must be a string, got {type(value).__name__}")
    return value


# HumanEval's own protocol (Chen et al. 2021, sec. 2.3): a completion ends at
# the first line that starts one of these at the top level
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def humaneval_completion(text: str) -> str:
    """``text`` up to the first top-level line that starts a class, a def, a
    comment, an ``if`` or a ``print`` (HUMANEVAL_STOPS): the function body
    the prompt asked for. Without the cut, whatever a model writes after the
    body (more functions, a test driver) is run too, and a continuation cut
    at the token limit in the middle of such extra code fails with a syntax
    error although the body was right."""
    cut = min((i for i in (text.find(s) for s in HUMANEVAL_STOPS) if i >= 0), default=len(text))
    return text[:cut]


def run_humaneval(problem: Any, completion: str, timeout: float = 5.0) -> bool:
    """True if ``prompt + completion`` passes the problem's tests.

    ``problem`` is a :class:`specee.evaluation.datasets.HumanEvalProblem` or a mapping
    with ``prompt``, ``test`` and ``entry_point``. The program
    ``prompt + completion + test + check(entry_point)`` is written to a fresh
    temporary directory and run there by ``python -I`` (isolated mode: no
    user site, no ``PYTHON*`` variables) in a new session with an empty
    environment (proxies blanked), address space / CPU time / file size
    limits where :mod:`resource` exists, and a wall-clock ``timeout``; the
    whole process group is killed when time is up. It passes only if it
    exits with status 0 *and* prints a random per-run token after
    ``check`` returns, so an early ``sys.exit(0)`` in the completion fails.

    This is a subprocess, not a jail: the code runs as the current user and
    can read files and open network sockets if the host allows it. Run
    untrusted model output only on a machine where that is acceptable.
    """
    prompt, test, entry = _field(problem, "prompt"), _field(problem, "test"), _field(problem, "entry_point")
    if not entry.isidentifier():
        raise ValueError(f"entry_point {entry!r} is not an identifier")
    token = secrets.token_hex(16)
    program = (
        f"{prompt}{completion}\n\n{test}\n\n"
        f"check({entry})\n"
        f"import sys as _specee_sys\n_specee_sys.stdout.write('\\n{token}\\n')\n_specee_sys.stdout.flush()\n"
    )
    cpu_seconds = max(1, int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="specee-humaneval-") as tmp:
        work = Path(tmp)
        (work / "program.py").write_text(program, encoding="utf-8")
        out_path = work / "output.txt"
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-X", "utf8", "program.py"],
                    cwd=tmp,
                    env=_sandbox_env(tmp),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=(lambda: _limit_resources(cpu_seconds)) if os.name == "posix" else None,
                )
            except OSError as e:
                logger.warning("could not start the HumanEval subprocess: %s", e)
                return False
            returncode: int | None = None
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            finally:
                _kill_group(proc)  # on time-out, and any children left behind
        if returncode is None:
            logger.debug("%s: timed out after %.1f s", entry, timeout)
            return False
        output = out_path.read_bytes().decode("utf-8", errors="replace")
    passed = returncode == 0 and token in output
    if not passed:
        logger.debug("%s: failed (exit %s): %s", entry, returncode, output[-_OUTPUT_TAIL:])
    return passed


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group started for ``proc`` and reap ``proc``."""
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    else:  # pragma: no cover - no process groups
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
        logger.warning("HumanEval subprocess %d did not exit after SIGKILL", proc.pid)


def pass_at_1(results: Sequence[bool]) -> float:
    """Fraction of problems solved with one sample each (mean of ``results``)."""
    if not results:
        raise ValueError("pass_at_1 needs at least one result")
    return sum(1 for r in results if r) / len(results)
