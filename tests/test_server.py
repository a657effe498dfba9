"""`specee serve` in-process on 127.0.0.1, on the tiny model, through the
real `openai` client and raw HTTP."""
from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from specee import cli  # noqa: E402
from specee.tokenizer.chat_template import chat_prompt_ids, read_chat_template  # noqa: E402
from specee.engine import Model  # noqa: E402
from specee.decoding.plain import generate  # noqa: E402
from specee.heads.head_file import constant_predictor, write_heads  # noqa: E402
from specee.decoding.sampling import Sampler  # noqa: E402
from specee.server.app import create_app  # noqa: E402
from specee.server.config import ServerConfig  # noqa: E402
from specee.server.decoding import Job  # noqa: E402
from specee.server.runtime import load_runtime  # noqa: E402
from specee.server.serve import _Server  # noqa: E402
from specee.server.stop_text import StopText  # noqa: E402
from specee.tokenizer import Tokenizer  # noqa: E402

NEVER = -40.0  # predictor logit: never fires, so early exit computes every layer
CTX = 128
LIMIT = 64


class Server:
    def __init__(self, port: int, app):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.state = app.state.server

    def client(self, key: str = "none") -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=30)

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, object]:
        """(status, headers, JSON body or text) of one raw HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, dict(r.getheaders()), parsed

    def metrics(self) -> dict:
        """{(name, labels...): value} of every sample on /metrics."""
        _, _, text = self.request("GET", "/metrics", headers=self.auth())
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, *sorted(s.labels.values()))] = s.value
        return out

    def auth(self) -> dict:
        key = self.state.config.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def wait_until(condition, timeout: float = 10.0) -> None:
    """Polls `condition` (a bounded wait, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached within the wait bound")
        time.sleep(0.01)


@contextlib.contextmanager
def running(config: ServerConfig, loader=load_runtime, ready: bool = True, server_class=uvicorn.Server):
    app = create_app(config, loader=loader)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = server_class(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        srv = Server(sock.getsockname()[1], app)
        srv.uvicorn = server
        if ready:
            wait_until(lambda: srv.request("GET", "/health")[0] == 200)
        yield srv
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def config(model: str, **changes) -> ServerConfig:
    base = dict(model_path=Path(model), model_id="tiny", parallel=2, queue=8, ctx_size=CTX, threads=1,
                max_tokens_limit=LIMIT)
    return ServerConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> str:
    # untied output: varied text (the default tiny model repeats itself)
    return tiny_model_factory(tied=False, seed=3)


@pytest.fixture(scope="module")
def tiny_heads(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server_heads") / "never.gguf"
    with Model(tiny) as m:
        write_heads(path, m, {layer: constant_predictor(NEVER) for layer in range(m.n_layer - 1)})
    return path


@pytest.fixture(scope="module")
def server(tiny, tiny_heads):
    with running(config(tiny, heads=tiny_heads)) as srv:
        yield srv


@pytest.fixture(scope="module")
def single(tiny):
    """One slot, no queue."""
    with running(config(tiny, parallel=1, queue=0)) as srv:
        yield srv


def slow_down_steps(monkeypatch, seconds: float) -> None:
    """Each decode step takes `seconds` more."""
    for name in ("step", "step_batched"):  # alone, and after a batched pass
        def slow(self, ctx, step=getattr(Job, name)):
            time.sleep(seconds)
            step(self, ctx)

        monkeypatch.setattr(Job, name, slow)


@pytest.fixture
def slow_steps(monkeypatch):
    """Each decode step takes 20 ms more, so a request outlives its client."""
    slow_down_steps(monkeypatch, 0.02)


def reference(model: str, ids: list[int], max_tokens: int, sampler: Sampler | None = None) -> str:
    """What the library alone generates for `ids`, as text."""
    tok = Tokenizer.from_gguf(model)
    with Model(model) as m, m.context(n_ctx=CTX, n_threads=1) as ctx:
        tokens = generate(ctx, ids, max_tokens, sampler, stop_ids=tok.eot_ids).tokens
    return tok.decode([t for t in tokens if t not in tok.eot_ids], skip_special=True)


def chat_ids(model: str, text: str) -> list[int]:
    return chat_prompt_ids(Tokenizer.from_gguf(model), read_chat_template(model), [{"role": "user", "content": text}])


def streamed_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") if hasattr(c.choices[0], "delta") else c.choices[0].text
                   for c in chunks if c.choices)
    return text, chunks


# ---- endpoints ----------------------------------------------------------------------


def test_health_models_and_chat_page(server):
    assert server.request("GET", "/health")[:3:2] == (200, {"status": "ok"})
    models = server.client().models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].meta["n_ctx"] == CTX and models[0].meta["modes"] == ["vanilla", "speculative", "specee"]
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page and 'id="input"' in page


def test_chat_greedy_matches_the_library_streamed_and_not(server, tiny):
    ids = chat_ids(tiny, "hello world")
    want = reference(tiny, ids, 12)
    client = server.client()
    messages = [{"role": "user", "content": "hello world"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == want
    assert whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 12)
    assert whole.model_extra["timings"]["predicted_n"] == 12

    text, chunks = streamed_text(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert text == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_text_and_token_prompts(server, tiny):
    tok = Tokenizer.from_gguf(tiny)
    ids = tok.encode("the cat", parse_special=False)
    want = reference(tiny, ids, 10)
    client = server.client()
    r = client.completions.create(model="tiny", prompt="the cat", max_tokens=10, temperature=0)
    assert r.choices[0].text == want and r.usage.prompt_tokens == len(ids)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == want
    text, chunks = streamed_text(client.completions.create(model="tiny", prompt="the cat", max_tokens=10,
                                                           temperature=0, stream=True))
    assert text == want and chunks[-1].choices[0].finish_reason == "length"


def test_same_seed_same_text_as_the_library(server, tiny):
    client = server.client()
    ids = Tokenizer.from_gguf(tiny).encode("once", parse_special=False)
    runs = [client.completions.create(model="tiny", prompt="once", max_tokens=24, temperature=0.9, top_p=0.95,
                                      seed=seed).choices[0].text for seed in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
    # top_k 40 and min_p 0.05: the server's defaults, llama.cpp's
    assert runs[0] == reference(tiny, ids, 24, Sampler(temperature=0.9, top_p=0.95, top_k=40, min_p=0.05, seed=7))


def test_sampling_defaults_are_llama_cpp_s(server, tiny):
    """No sampling fields: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05."""
    client = server.client()
    ids = Tokenizer.from_gguf(tiny).encode("once", parse_special=False)
    text = client.completions.create(model="tiny", prompt="once", max_tokens=24, seed=5).choices[0].text
    assert text == reference(tiny, ids, 24, Sampler(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=5))
    greedy = client.completions.create(model="tiny", prompt="once", max_tokens=24, temperature=0).choices[0].text
    assert greedy == reference(tiny, ids, 24, Sampler())


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text_and_end_generation(server, stream):
    client = server.client()
    args = dict(model="tiny", prompt="once", max_tokens=40, temperature=1.0, seed=3)
    full = client.completions.create(**args).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert len(stop) == 2
    want = full[:full.find(stop)]
    if stream:
        text, chunks = streamed_text(client.completions.create(**args, stop=["never there", stop], stream=True))
        finish = chunks[-1].choices[0].finish_reason
    else:
        r = client.completions.create(**args, stop=stop)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert r.usage.completion_tokens < 40
    assert (text, finish) == (want, "stop")


def test_stop_text_holds_back_a_possible_start():
    s = StopText(["END", "xyz"])
    assert s.feed("abcE") == "abc"        # "E" may begin "END"
    assert s.feed("Nd") == "ENd"          # it did not
    assert s.feed("12xy") == "12"
    assert s.flush() == "xy" and not s.stopped
    s = StopText(["END"])
    assert s.feed("hi EN") == "hi " and s.feed("D and more") == "" and s.stopped
    assert s.feed("later") == "" and s.flush() == ""


def test_early_exit_per_request(server, tiny):
    """Heads that never fire: the early-exit path gives the full model's tokens."""
    client = server.client()
    before = server.metrics()
    args = dict(model="tiny", prompt="the cat", max_tokens=10, temperature=0)
    vanilla = client.completions.create(**args)
    specee = client.completions.create(**args, extra_body={"specee": {"mode": "specee", "threshold": 0.9}})
    assert specee.choices[0].text == vanilla.choices[0].text
    assert vanilla.model_extra["specee"] == {"mode": "vanilla"}
    x = specee.model_extra["specee"]
    assert x["mode"] == "specee" and x["n_layer"] == 3 and x["mean_exit_layer"] == 3 and x["exit_ratio"] == 0
    after = server.metrics()
    assert after[("specee_exit_steps_total",)] - before[("specee_exit_steps_total",)] == 9
    assert after[("specee_exit_layers_total",)] - before[("specee_exit_layers_total",)] == 27


@pytest.fixture
def drafting_always_pays(monkeypatch):
    """Verification priced as one token: the policy drafts whenever lookup has a match."""
    from specee.server.speculative import ServedDrafting
    from specee.decoding.speculative import CostCurve

    monkeypatch.setattr(ServedDrafting, "curve", lambda self, ctx, prompt: CostCurve({1: 1.0, 17: 1.0}))


@pytest.mark.parametrize("stream", [False, True])
def test_speculative_per_request_gives_plain_greedy_text(server, drafting_always_pays, stream):
    """Lossless: the speculative mode's text is vanilla's, token for token;
    its statistics reach the response and /metrics."""
    client = server.client()
    before = server.metrics()
    # a prompt that repeats itself, so that prompt lookup finds drafts
    args = dict(model="tiny", prompt="the cat sat on the mat " * 4, max_tokens=40, temperature=0)
    vanilla = client.completions.create(**args).choices[0].text
    extra = {"specee": {"mode": "speculative"}}
    if stream:
        text, chunks = streamed_text(client.completions.create(**args, stream=True, extra_body=extra))
        assert text == vanilla and len(chunks) > 2
        return
    r = client.completions.create(**args, extra_body=extra)
    assert r.choices[0].text == vanilla
    x = r.model_extra["specee"]
    assert x["mode"] == "speculative" and x["draft_source"] == "lookup"
    assert x["drafted"] > 0 and x["verify_steps"] > 0 and 0 <= x["accepted"] <= x["drafted"]
    after = server.metrics()
    for name, key in (("specee_speculative_drafted_tokens_total", "drafted"),
                      ("specee_speculative_accepted_tokens_total", "accepted"),
                      ("specee_speculative_verify_steps_total", "verify_steps")):
        assert after[(name,)] - before[(name,)] == x[key]


def test_speculative_server_mode_with_a_stop_string_and_a_token_limit(tiny, drafting_always_pays):
    """--mode speculative as the server's default: a verification that
    accepts past max_tokens or a stop string still ends where plain decoding would."""
    with running(config(tiny, mode="speculative", draft="lookup:2", draft_max=6)) as srv:
        client = srv.client()
        args = dict(model="tiny", prompt="the cat sat on the mat " * 4, temperature=0)
        plain = client.completions.create(**args, max_tokens=23, extra_body={"specee": {"mode": "vanilla"}})
        spec = client.completions.create(**args, max_tokens=23)
        assert spec.choices[0].text == plain.choices[0].text and spec.usage.completion_tokens == 23
        assert spec.model_extra["specee"]["mode"] == "speculative" and spec.model_extra["specee"]["drafted"] > 0
        text = plain.choices[0].text
        assert len(text) > 8
        stop = text[len(text) // 2:len(text) // 2 + 3]
        cut = client.completions.create(**args, max_tokens=23, stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
        assert plain.choices[0].text.startswith(cut.choices[0].text)


def test_speculative_with_a_draft_model_per_slot(tiny, tiny_model_factory, drafting_always_pays):
    """--draft model:PATH loads the draft (here a one-layer model with the
    tiny vocabulary) once per slot; its cache follows each request's text,
    request after request on either slot, and the answers stay vanilla's."""
    draft = tiny_model_factory(tied=False, seed=3, n_layer=1)
    with running(config(tiny, mode="speculative", draft=f"model:{draft}", draft_max=4)) as srv:
        drafting = srv.state.runtime.scheduler.drafting
        assert len(drafting.model_drafters) == 2 and all(d is not None for d in drafting.model_drafters)
        client = srv.client()
        for prompt in ("the cat", "a dog ran", "the cat"):
            args = dict(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
            plain = client.completions.create(**args, extra_body={"specee": {"mode": "vanilla"}})
            spec = client.completions.create(**args)
            x = spec.model_extra["specee"]
            assert spec.choices[0].text == plain.choices[0].text
            assert x["draft_source"] == "model" and x["drafted"] > 0


# ---- bad input ------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "hi"}]

BAD = [
    (CHAT, b"{not json", None),
    (CHAT, b"[1, 2]", None),
    (CHAT, b"[" * 100000 + b"]" * 100000, None),
    (CHAT, {}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content"),
    (CHAT, {"messages": HELLO, "temperature": "hot"}, "temperature"),
    (CHAT, {"messages": HELLO, "temperature": 2.5}, "temperature"),
    (CHAT, {"messages": HELLO, "top_p": 0}, "top_p"),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": HELLO, "max_tokens": LIMIT + 1}, "max_tokens"),
    (CHAT, {"messages": HELLO, "max_tokens": True}, "max_tokens"),
    (CHAT, {"messages": HELLO, "seed": -1}, "seed"),
    (CHAT, {"messages": HELLO, "stop": ""}, "stop"),
    (CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"messages": HELLO, "stream": "yes"}, "stream"),
    (CHAT, {"messages": HELLO, "n": 2}, "n"),
    (CHAT, {"messages": HELLO, "model": 5}, "model"),
    (CHAT, {"messages": HELLO, "specee": {"mode": "turbo"}}, "specee.mode"),
    (CHAT, {"messages": HELLO, "specee": {"speed": 1}}, "specee.speed"),
    (CHAT, {"messages": HELLO, "specee": {"mode": "specee", "threshold": 2}}, "specee.threshold"),
    # lossy sampling draws from full-vocabulary logits: asking for verification by candidates is refused,
    # as in the CLI
    (CHAT, {"messages": HELLO, "temperature": 0.7,
            "specee": {"mode": "specee", "lossy": True, "verify": "candidates"}}, "specee.verify"),
    (CHAT, {"messages": HELLO, "specee": {"mode": "specee", "lossy": "yes"}}, "specee.lossy"),
    (CHAT, {"messages": [{"role": "user", "content": "word " * CTX}]}, "messages"),
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 99999]}, "prompt"),
    (COMPLETIONS, {"prompt": list(range(3, 3 + CTX))}, "prompt"),
]


@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_an_openai_style_400(server, path, body, param):
    status, _, reply = server.request("POST", path, body)
    assert status == 400, reply
    err = reply["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_too_long_prompt_names_the_context(server):
    _, _, reply = server.request("POST", COMPLETIONS, {"prompt": list(range(3, 3 + CTX))})
    assert reply["error"]["code"] == "context_length_exceeded" and str(CTX) in reply["error"]["message"]


def test_oversized_body_wrong_method_unknown_path(server):
    status, _, reply = server.request("POST", CHAT, b"x" * (server.state.config.max_body_bytes + 1))
    assert status == 413 and reply["error"]["code"] == "request_too_large"
    status, _, reply = server.request("GET", CHAT)
    assert status == 405 and reply["error"]["code"] == "method_not_allowed"
    status, _, reply = server.request("GET", "/v2/nothing")
    assert status == 404 and reply["error"]["code"] == "not_found"
    assert server.request("GET", "/health")[0] == 200  # nothing a client sent stopped the server


def test_api_key(tiny):
    with running(config(tiny, api_key="sekret", parallel=1)) as srv:
        with pytest.raises(openai.AuthenticationError):
            srv.client("wrong").models.list()
        r = srv.client("sekret").completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
        status, headers, reply = srv.request("GET", "/metrics")
        assert status == 401 and reply["error"]["code"] == "invalid_api_key" and headers["www-authenticate"] == "Bearer"
        assert srv.request("POST", COMPLETIONS, {"prompt": "hi"})[0] == 401
        assert srv.request("GET", "/health")[0] == 200 and srv.request("GET", "/")[0] == 200


# ---- loading, queueing, disconnects ----------------------------------------------------------------


def test_health_is_503_while_loading_and_after_a_failed_load(tiny, tmp_path):
    gate = threading.Event()

    def slow_loader(cfg, metrics):
        gate.wait(10)
        return load_runtime(cfg, metrics)

    with running(config(tiny), loader=slow_loader, ready=False) as srv:
        assert srv.request("GET", "/health")[:3:2] == (503, {"status": "loading"})
        status, headers, reply = srv.request("POST", CHAT, {"messages": HELLO})
        assert status == 503 and reply["error"]["code"] == "model_loading" and headers["retry-after"] == "1"
        gate.set()
        wait_until(lambda: srv.request("GET", "/health")[0] == 200)
        assert srv.request("POST", CHAT, {"messages": HELLO, "max_tokens": 2})[0] == 200

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with running(config(str(broken)), ready=False) as srv:
        wait_until(lambda: srv.request("GET", "/health")[2]["status"] == "error")
        assert srv.request("GET", "/health")[0] == 503


def test_a_client_that_has_its_answer_finds_the_slot_free(single):
    """One slot, no queue: requests one after another never meet a busy
    server (the slot is freed before the answer goes out)."""
    client = single.client()
    for i in range(12):
        r = client.completions.create(model="tiny", prompt="the cat", max_tokens=3 + i % 3, temperature=0,
                                      stream=bool(i % 2))
        if i % 2:
            r = list(r)
        assert r


def test_full_queue_gets_503_at_once(single, slow_steps):
    hold = single.client().completions.create(model="tiny", prompt="hold", max_tokens=LIMIT, temperature=0,
                                              stream=True)
    next(iter(hold))  # the slot is taken
    status, headers, reply = single.request("POST", COMPLETIONS, {"prompt": "hi", "max_tokens": 2})
    assert status == 503 and reply["error"]["code"] == "server_busy" and headers["retry-after"] == "1"
    hold.close()
    wait_until(lambda: single.metrics()[("specee_busy_slots",)] == 0)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(single, slow_steps, stream):
    before = single.metrics()
    conn = http.client.HTTPConnection("127.0.0.1", single.port, timeout=30)
    # greedy: a sampled reply could end (end token) before the client goes away, and count as finished
    conn.request("POST", COMPLETIONS, body=json.dumps({"prompt": "bye", "max_tokens": LIMIT, "stream": stream,
                                                      "temperature": 0}),
                 headers={"Content-Type": "application/json"})
    if stream:
        assert conn.getresponse().readline().startswith(b"data: ")  # mid-stream
    else:
        wait_until(lambda: single.metrics()[("specee_busy_slots",)] == 1)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: single.metrics()[("specee_busy_slots",)] == 0)
    after = single.metrics()
    assert after[("specee_cancelled_requests_total",)] - before[("specee_cancelled_requests_total",)] == 1
    # it stopped early: far fewer steps than the LIMIT - 1 it asked for
    assert after[("specee_decode_steps_total",)] - before[("specee_decode_steps_total",)] < LIMIT // 2
    assert after[("specee_generated_tokens_total",)] == before[("specee_generated_tokens_total",)]
    r = single.client().completions.create(model="tiny", prompt="again", max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason == "length"


def test_concurrent_greedy_requests_share_batched_passes_and_match_the_library(server, tiny):
    """Four requests on two slots: full-depth slots decode in one batched
    pass per round (continuous batching), and each answer is what the
    library alone generates for it."""
    tok = Tokenizer.from_gguf(tiny)
    prompts = [tok.encode(f"the story number {i}", parse_special=False) for i in range(4)]
    before = server.metrics()
    client = server.client()
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda ids: client.completions.create(model="tiny", prompt=ids, max_tokens=40,
                                                                   temperature=0).choices[0].text, prompts))
    assert texts == [reference(tiny, ids, 40) for ids in prompts]
    batched = server.metrics()[("specee_batched_steps_total",)] - before.get(("specee_batched_steps_total",), 0)
    assert batched > 0


def test_load_200_requests_8_at_once(server):
    """Every request answered, nothing lost, and /metrics adds up."""
    before = server.metrics()
    client = server.client()

    def one(i: int) -> tuple[int, int, str]:
        args = dict(model="tiny", prompt=f"request {i}", max_tokens=4 + i % 5, temperature=0)
        if i % 2:
            r = client.completions.create(**args)
            return r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].finish_reason
        chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        return chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens, finish

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200 and all(f in ("stop", "length") for _, _, f in results)
    after = server.metrics()

    def delta(*key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta("specee_requests_total", "/v1/completions", "200") == 200
    assert delta("specee_prompt_tokens_total") == sum(p for p, _, _ in results)
    assert delta("specee_generated_tokens_total") == sum(g for _, g, _ in results)
    assert delta("specee_decode_steps_total") == sum(g - 1 for _, g, _ in results)
    assert after[("specee_busy_slots",)] == 0 and after[("specee_queue_depth",)] == 0
    # one compute thread ran every slot, each context with --threads threads
    scheduler = server.state.runtime.scheduler
    assert len(scheduler.compute_threads) == 1 and threading.get_ident() not in scheduler.compute_threads
    assert {s.ctx.n_threads for s in scheduler.slots} == {1}


# ---- the command line ------------------------------------------------------------------


def test_serve_refuses_bad_flags(tiny, capsys):
    assert cli.main(["serve", "--model", tiny, "--parallel", "0"]) == 1
    assert "--parallel must be at least 1" in capsys.readouterr().err
    for bad, words in ((["--threshold", "1.5"], "--threshold"), (["--port", "70000"], "--port"),
                       (["--heads", "/no/such/heads.gguf"], "no such file")):
        with pytest.raises(SystemExit) as e:  # refused by the command line, before the model is fetched
            cli.main(["serve", "--model", tiny, *bad])
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_serve_exits_when_the_model_cannot_serve_the_mode(tiny):
    # no heads ship for the tiny model: --mode specee fails at load time and the server exits
    assert cli.main(["serve", "--model", tiny, "--mode", "specee", "--port", "0", "--threads", "1"]) == 1
    # nor has it a draft head for the eagle drafter
    assert cli.main(["serve", "--model", tiny, "--draft", "eagle", "--port", "0", "--threads", "1"]) == 1


def test_serve_refuses_a_bad_drafter(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model", tiny, "--draft", "telepathy"])
    assert e.value.code == 2 and "unknown drafter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model", tiny, "--draft-max", "0"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="--draft"):
        config(tiny, draft="model:").check()


@pytest.mark.real_model
def test_real_model_early_exit_with_the_draft_head_matches_the_library(real_model_path):
    """The shipped SmolLM2 heads (with a draft head): the server's stepwise
    early exit gives the tokens generate_specee gives."""
    from specee.decoding.early_exit import attach_heads, generate_specee
    from specee.engine import Heads
    from specee.heads.shipped import default_heads

    messages = [{"role": "user", "content": "Name three colours."}]
    tok = Tokenizer.from_gguf(real_model_path)
    ids = chat_prompt_ids(tok, read_chat_template(real_model_path), messages)
    with Model(real_model_path) as m, Heads(m, default_heads(m.fingerprint)) as heads, \
            m.context(n_ctx=512, n_threads=1) as ctx:
        attach_heads(ctx, heads)
        result = generate_specee(ctx, ids, 12, heads.n_candidates, stop_ids=tok.eot_ids)
    want = tok.decode([t for t in result.tokens if t not in tok.eot_ids], skip_special=True)
    cfg = ServerConfig(model_path=Path(real_model_path), model_id="smollm2-135m", parallel=1, queue=0,
                       ctx_size=512, threads=1, max_tokens_limit=64, mode="specee")
    with running(cfg) as srv:
        r = srv.client().chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12,
                                                 temperature=0)
    assert r.choices[0].message.content == want
    x = r.model_extra["specee"]
    assert x["mode"] == "specee" and x["mean_exit_layer"] == result.extra["mean_exit_layer"]


@pytest.mark.real_model
@pytest.mark.parametrize("draft", ["lookup", "eagle"])
def test_real_model_speculative_matches_vanilla(real_model_path, draft):
    """SmolLM2 on a copy-heavy chat request, drafts from prompt lookup or
    the shipped heads' draft head: the server's speculative answer is its
    vanilla answer."""
    messages = [{"role": "user", "content": "Repeat this sentence exactly, twice: the quick brown fox jumps over "
                                            "the lazy dog near the old stone bridge."}]
    cfg = ServerConfig(model_path=Path(real_model_path), model_id="smollm2-135m", parallel=1, queue=0,
                       ctx_size=512, threads=2, max_tokens_limit=64, mode="speculative", draft=draft)
    with running(cfg) as srv:
        client = srv.client()
        args = dict(model="smollm2-135m", messages=messages, max_tokens=48, temperature=0)
        plain = client.chat.completions.create(**args, extra_body={"specee": {"mode": "vanilla"}})
        spec = client.chat.completions.create(**args)
    assert spec.choices[0].message.content == plain.choices[0].message.content
    assert spec.model_extra["specee"]["mode"] == "speculative"
    assert spec.model_extra["specee"]["draft_source"] == draft


def test_markdown_for_the_chat_page_escapes_html_and_script_links(server):
    text = "**hi** <script>alert(1)</script>\n\n```python\nprint(1 < 2)\n```\n\n[x](javascript:alert(1))"
    status, _, reply = server.request("POST", "/chat/markdown", {"text": text}, headers=server.auth())
    assert status == 200
    html = reply["html"]
    assert "<strong>hi</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<pre><code class="language-python">print(1 &lt; 2)\n</code></pre>' in html
    assert "javascript:" not in html.replace("[x](javascript:alert(1))", "")  # kept as text, never as a link
    assert 'href="javascript' not in html
    for body in ({"text": 3}, {}, [1]):
        status, _, reply = server.request("POST", "/chat/markdown", body, headers=server.auth())
        assert status == 400 and reply["error"]["type"] == "invalid_request_error"


def test_stopping_the_server_ends_open_streams_cleanly(tiny, slow_steps):
    """Ctrl-C while an answer streams: the stream ends at once with an error
    event and [DONE] (before: it was cancelled with a traceback when the
    grace period ran out), and the server stops."""
    with running(config(tiny, parallel=1), server_class=_Server) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", COMPLETIONS, body=json.dumps({"prompt": "bye", "max_tokens": LIMIT, "stream": True,
                                                          "temperature": 0}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")  # mid-stream
        srv.uvicorn.handle_exit(signal.SIGINT, None)
        rest = response.read().decode()
        conn.close()
        assert "the server is shutting down" in rest and rest.rstrip().endswith("data: [DONE]")
        assert srv.uvicorn.should_exit
