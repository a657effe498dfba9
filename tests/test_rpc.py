"""Layers on ggml RPC servers (`specee rpc-server`) started on 127.0.0.1:
the same tokens as local decoding, clear errors for servers that are not
there, and n_gpu_layers refused where there is no device to offload to."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from specee import engine
from specee.engine import InvalidArgumentError, Model, ModelIOError, UnsupportedModelError

PROMPT = [5, 77, 200, 13, 300, 42]
pytestmark = pytest.mark.skipif(not engine.has_rpc(), reason="libspecee built without ggml's RPC backend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-server exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("rpc-server did not start listening")


def die_with_parent() -> None:
    """Runs in the server's process before exec: SIGTERM when the test
    process dies, so a crashed run leaves no server behind (Linux prctl)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def rpc_server():
    """One `specee rpc-server` on a free loopback port for the module."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specee.cli", "rpc-server", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
                            preexec_fn=die_with_parent)
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def greedy(model: Model, n: int = 16) -> tuple[list[int], np.ndarray]:
    with model.context(n_ctx=64, n_threads=1) as ctx:
        ctx.prefill(PROMPT)
        tokens = [ctx.argmax()]
        for _ in range(n - 1):
            tokens.append(ctx.decode(tokens[-1]))
        return tokens, ctx.logits()


@pytest.mark.parametrize("n_gpu_layers", [1, 3, 99])
def test_rpc_decoding_gives_the_local_tokens(tiny_model_factory, rpc_server, n_gpu_layers):
    path = tiny_model_factory(n_layer=3, tied=False, seed=3, qtype="Q8_0")
    with Model(path) as local:
        want_tokens, want_logits = greedy(local)
    with Model(path, n_gpu_layers=n_gpu_layers, rpc_servers=rpc_server) as remote:
        tokens, logits = greedy(remote)
    assert len(set(want_tokens)) > 1
    assert tokens == want_tokens
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)


def test_tied_output_offloaded(tiny_model_factory, rpc_server):
    """A tied output matrix on the server is a second copy of the embeddings,
    which stay on the CPU for the lookup."""
    path = tiny_model_factory(n_layer=3, tied=True, seed=5)
    with Model(path) as local:
        want, _ = greedy(local)
    with Model(path, n_gpu_layers=4, rpc_servers=[rpc_server]) as remote:
        got, _ = greedy(remote)
        fingerprint = remote.fingerprint
    with Model(path) as local:
        assert local.fingerprint == fingerprint  # read from the file, wherever the weights went
    assert got == want


def test_unreachable_server_is_a_clear_error_within_seconds(tiny_llama):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ModelIOError, match=f"cannot reach RPC server 127.0.0.1:{port}"):
        Model(tiny_llama, n_gpu_layers=99, rpc_servers=f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("servers, message", [("localhost", "host:port"), ("127.0.0.1:http", "port must be"),
                                              ("127.0.0.1:1,", "empty entry")])
def test_malformed_server_lists_are_refused(tiny_llama, servers, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Model(tiny_llama, n_gpu_layers=1, rpc_servers=servers)


def test_gpu_layers_without_a_device_are_refused(tiny_llama):
    if engine.has_gpu():
        pytest.skip("this build has a GPU backend")
    with pytest.raises(UnsupportedModelError, match="no GPU backend"):
        Model(tiny_llama, n_gpu_layers=1)
    with pytest.raises(InvalidArgumentError, match="n_gpu_layers"):
        Model(tiny_llama, n_gpu_layers=-1)
    with Model(tiny_llama, n_gpu_layers=0) as m:   # 0 is the CPU: always fine
        assert m.n_layer > 0


def test_cli_generate_over_rpc(tiny_llama, rpc_server, capsys):
    from specee import cli

    args = ["--quiet", "generate", "--model", tiny_llama, "--prompt", "hello world", "-n", "8", "--threads", "1",
            "--json"]
    assert cli.main(args) == 0
    local = capsys.readouterr().out
    assert cli.main(args + ["-ngl", "99", "--rpc", rpc_server]) == 0
    remote = capsys.readouterr().out
    import json

    assert json.loads(remote)["tokens"] == json.loads(local)["tokens"]


def test_draft_tree_with_offloaded_layers(tiny_model_factory, rpc_server, tmp_path):
    """The draft head's tree passes (every row's logits, a tree mask) through
    ggml's scheduler, the target's layers on the server: the local tree."""
    from reference import Reference
    from specee.engine import Heads
    from specee.heads.head_file import constant_predictor, write_heads
    from test_draft_head import random_draft

    path = tiny_model_factory(n_layer=3, tied=False, seed=3, qtype="Q8_0")
    heads_path = tmp_path / "h.gguf"
    with Model(path) as m:
        write_heads(heads_path, m, {0: constant_predictor(-40.0)}, draft=random_draft(Reference(path), seed=11),
                    draft_dtype="f16")
    trees = []
    for params in ({}, {"n_gpu_layers": 99, "rpc_servers": rpc_server}):
        with Model(path, **params) as m, Heads(m, heads_path) as heads, m.context(n_ctx=64, n_threads=1) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            trees.append(ctx.draft_tree(ctx.argmax(), 4, 3, 3, 10))
    local, remote = trees
    assert len(local.tokens) == 10 and len(set(local.parents)) > 2  # a tree, not a chain
    assert (remote.tokens, remote.parents) == (local.tokens, local.parents)
    np.testing.assert_allclose(remote.probs, local.probs, rtol=1e-3, atol=1e-4)
