"""Layers on ggml RPC servers (`specee rpc-server`) started on 127.0.0.1:
the same tokens as local decoding, clear errors for servers that are not
there, and n_gpu_layers refused where there is no device to offload to."""
from __future__ import annotations

import json
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
    with Model(path, kernels="ggml") as local:  # offloading runs ggml's kernels, attention included
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


LOST_SERVER_SCENARIO = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as in a C program: a write to a closed socket would kill us
from specee.engine import Model, ModelIOError
model_path, port = sys.argv[1], sys.argv[2]
server = subprocess.Popen([sys.executable, "-m", "specee.cli", "rpc-server", "--port", port, "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import socket
for _ in range(300):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", int(port))) == 0:
            break
    time.sleep(0.1)
model = Model(model_path, n_gpu_layers=99, rpc_servers=f"127.0.0.1:{port}")
ctx = model.context(n_ctx=64, n_threads=1)
ctx.prefill([5, 77, 200, 13])
token = ctx.argmax()
for _ in range(3):
    token = ctx.decode(token)
print("decoded", flush=True)
server.kill()
server.wait()
for attempt in range(2):   # the first call finds the server gone, later ones are refused the same way
    try:
        ctx.decode(token)
        print("no error", flush=True)
    except ModelIOError as e:
        print("error:", e, flush=True)
ctx.close()
model.close()
print("closed", flush=True)
"""


def test_a_server_lost_mid_generation_is_an_error_not_a_crash(tiny_model_factory):
    """A server that dies between steps of a generation: the next step raises
    ModelIOError naming the server, later steps too, and closing the context
    and model returns normally (ggml's client aborts the process here
    without cmake/ggml-patches/0001; without 0002 SIGPIPE ends it). The
    scenario runs in a child process so that a crash fails this test instead
    of ending the test run."""
    path = tiny_model_factory(n_layer=3, tied=False, seed=3, qtype="Q8_0")
    port = str(free_port())
    done = subprocess.run([sys.executable, "-c", LOST_SERVER_SCENARIO, path, port], capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert lines[0] == "decoded"
    assert lines[1:3] == [f"error: the RPC server 127.0.0.1:{port} closed the connection or sent a malformed reply"] * 2
    assert lines[3] == "closed"


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
    for params in ({"kernels": "ggml"}, {"n_gpu_layers": 99, "rpc_servers": rpc_server}):  # offloaded: ggml's
        with Model(path, **params) as m, Heads(m, heads_path) as heads, m.context(n_ctx=64, n_threads=1) as ctx:
            ctx.set_heads(heads)
            ctx.prefill(PROMPT)
            trees.append(ctx.draft_tree(ctx.argmax(), 4, 3, 3, 10))
    local, remote = trees
    assert len(local.tokens) == 10 and len(set(local.parents)) > 2  # a tree, not a chain
    assert (remote.tokens, remote.parents) == (local.tokens, local.parents)
    np.testing.assert_allclose(remote.probs, local.probs, rtol=1e-3, atol=1e-4)


def test_server_request_ends_with_an_error_when_its_rpc_server_is_lost(tiny_model_factory):
    """`specee serve --rpc`: requests decode over the RPC server; once that
    server dies a request gets an error naming it, and the HTTP server keeps
    answering (health, the next request) instead of dying with it."""
    pytest.importorskip("uvicorn")
    from test_server import config, running

    path = tiny_model_factory(n_layer=3, tied=False, seed=3, qtype="Q8_0")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specee.cli", "rpc-server", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    try:
        wait_for_port(port, proc)
        body = {"prompt": "hello world", "max_tokens": 8, "temperature": 0}
        cfg = config(path, parallel=1, n_gpu_layers=99, rpc_servers=f"127.0.0.1:{port}")
        with running(cfg) as srv:
            status, _, ok = srv.request("POST", "/v1/completions", body)
            assert status == 200 and ok["usage"]["completion_tokens"] > 0
            proc.kill()
            proc.wait()
            status, _, failed = srv.request("POST", "/v1/completions", body)
            assert status >= 500
            assert f"the RPC server 127.0.0.1:{port} closed the connection" in json.dumps(failed)
            assert srv.request("GET", "/health")[0] == 200
    finally:
        proc.kill()
        proc.wait()
