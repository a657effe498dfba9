"""Greedy tokens from llama.cpp itself, for comparing libspecee with it.

llama.cpp runs through llama-cpp-python in a child process, so its own
ggml libraries never meet libspecee's in the test process, and the test
process needs no special environment. Where it is found:

- ``SPECEE_LLAMA_CPP_DIR``: an unpacked llama-cpp-python source tree (the
  directory holding the ``llama_cpp`` package) whose libllama was built
  under ``vendor/llama.cpp/build/bin``;
- else ``~/.cache/specee-ref/llama_cpp_python-<version>``, the same layout;
- else an installed ``llama_cpp`` package.

Run as a script it is that child: JSON jobs on stdin, one result per job on
stdout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "SPECEE_LLAMA_CPP_DIR"
DEFAULT_DIR = Path.home() / ".cache" / "specee-ref" / "llama_cpp_python-0.3.36"
LIB_SUBDIR = Path("vendor") / "llama.cpp" / "build" / "bin"


@dataclass(frozen=True)
class LlamaCpp:
    """Where llama-cpp-python comes from for the child process."""

    source: Path | None  # a source tree, or None: an installed package

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
            env["LLAMA_CPP_LIB_PATH"] = str(self.source / LIB_SUBDIR)
        return env

    def _run(self, request: dict) -> dict:
        proc = subprocess.run([sys.executable, __file__], input=json.dumps(request), capture_output=True,
                              text=True, env=self._env(), timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"llama.cpp child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)

    def version(self) -> str:
        """llama-cpp-python's version; raises when the child cannot import it."""
        return self._run({"jobs": []})["version"]

    def greedy(self, path: str | os.PathLike, prompt: list[int], n: int, n_ctx: int) -> list[int]:
        """llama.cpp's first `n` greedy tokens after `prompt` (no BOS added)."""
        return self.run(path, prompt, n, n_ctx).greedy

    def run(self, path: str | os.PathLike, prompt: list[int], n: int, n_ctx: int,
            text: str | None = None) -> "LlamaCppRun":
        """greedy(); with `text`, also llama.cpp's ids for it (BOS as the
        vocabulary says, special tokens parsed: how llama-server tokenizes a
        chat prompt); and the bytes llama.cpp prints for each prompt token."""
        job = {"kind": "run", "path": os.fspath(path), "prompt": [int(t) for t in prompt], "n": n,
               "n_ctx": n_ctx, "text": text}
        out = self._run({"jobs": [job]})["results"][0]
        return LlamaCppRun(out["greedy"], out["text_tokens"], _pieces(out["pieces"]))

    def tokenize(self, path: str | os.PathLike, texts: list[str],
                 parse_special: bool) -> list[tuple[list[int], list[bytes]]]:
        """llama.cpp's ids for each text (no BOS; special tokens parsed or
        not), with the bytes it prints for each id; the vocabulary alone is loaded."""
        job = {"kind": "tokenize", "path": os.fspath(path), "texts": texts, "special": parse_special}
        out = self._run({"jobs": [job]})["results"][0]
        return [(ids, _pieces(pieces)) for ids, pieces in out]


def _pieces(hex_pieces: list[str]) -> list[bytes]:
    return [bytes.fromhex(p) for p in hex_pieces]


@dataclass(frozen=True)
class LlamaCppRun:
    greedy: list[int]
    text_tokens: list[int] | None
    pieces: list[bytes]  # of the prompt's tokens, special tokens as their text


def find_llama_cpp() -> tuple[LlamaCpp | None, str]:
    """(the reference, "") when its child imports llama_cpp, else (None, why not)."""
    named = os.environ.get(ENV_DIR)
    if named:
        source = Path(named).expanduser()
        if not (source / "llama_cpp").is_dir() or not (source / LIB_SUBDIR).is_dir():
            return None, f"{ENV_DIR}={named} holds no llama_cpp package with a built {LIB_SUBDIR}"
    elif (DEFAULT_DIR / "llama_cpp").is_dir() and (DEFAULT_DIR / LIB_SUBDIR).is_dir():
        source = DEFAULT_DIR
    else:
        source = None
    ref = LlamaCpp(source)
    try:
        ref.version()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        where = (f"the source tree {source}" if source else
                 f"no source tree ({ENV_DIR} unset, none built under {DEFAULT_DIR}), no installed package")
        return None, f"no usable llama-cpp-python: {where}: {str(e).splitlines()[-1]}"
    return ref, ""


# ---- the child ----------------------------------------------------------------


def _child() -> None:
    import ctypes

    import llama_cpp
    import numpy as np

    buf = ctypes.create_string_buffer(1024)

    def pieces(llm, ids: list[int]) -> list[str]:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        out = []
        for t in ids:
            n = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
            out.append(buf.raw[:n].hex())
        return out

    def run(job: dict) -> dict:
        # logits_all: Llama.eval keeps no scores without it
        llm = llama_cpp.Llama(model_path=job["path"], n_ctx=job["n_ctx"], n_threads=1, logits_all=True,
                              verbose=False)
        greedy = []
        llm.eval(job["prompt"])
        while len(greedy) < job["n"]:
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(greedy) < job["n"]:
                llm.eval([greedy[-1]])
        text_tokens = None
        if job["text"] is not None:
            text_tokens = llm.tokenize(job["text"].encode("utf-8"), add_bos=True, special=True)
        out = {"greedy": greedy, "text_tokens": text_tokens, "pieces": pieces(llm, job["prompt"])}
        llm.close()
        return out

    def tokenize(job: dict) -> list:
        llm = llama_cpp.Llama(model_path=job["path"], vocab_only=True, verbose=False)
        out = []
        for text in job["texts"]:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=job["special"])
            out.append((ids, pieces(llm, ids)))
        llm.close()
        return out

    request = json.load(sys.stdin)
    results = [run(job) if job["kind"] == "run" else tokenize(job) for job in request["jobs"]]
    json.dump({"version": llama_cpp.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    _child()
