"""The chat page of `specee serve`, driven by a real headless Chromium
(playwright), against the server on the tiny model: what a person sees and
what the page sends. Where a test needs an answer of a known shape (Markdown,
an error), the page's request is answered by the test instead of the model.

Skipped without playwright or a Chromium (`apt-get install chromium`;
SPECEE_CHROMIUM names another executable)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
pytest.importorskip("markdown_it")

from test_server import LIMIT, config, running, slow_down_steps  # noqa: E402

CHROMIUM = os.environ.get("SPECEE_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("no Chromium to drive (apt-get install chromium, or set SPECEE_CHROMIUM)", allow_module_level=True)

WAIT_MS = 15000  # bounds on waiting for the page, not timing claims
CHAT = "**/v1/chat/completions"


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> str:
    return tiny_model_factory(tied=False, seed=3)


@pytest.fixture
def streaming_answer(monkeypatch):
    """Each step takes 250 ms more, so an answer of LIMIT tokens streams for
    16 s: the page is still answering when the test clicks, however loaded the
    machine (at 20 ms a step it sometimes finished first)."""
    slow_down_steps(monkeypatch, 0.25)


@pytest.fixture(scope="module")
def server(tiny):
    with running(config(tiny, parallel=1)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """The page, loaded and connected; fails the test on any script error."""
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.base + "/")
    playwright_api.expect(pg.locator("#model")).to_contain_text("layers", timeout=WAIT_MS)
    yield pg
    pg.close()
    assert errors == []


def sse_body(pieces: list[str], finish: str = "stop") -> str:
    """An OpenAI-style stream of `pieces`, with the server's last chunk (timings and stats)."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                   "timings": {"predicted_n": len(pieces), "predicted_per_second": 50.0, "prompt_n": 5,
                               "prompt_ms": 12.0},
                   "specee": {"mode": "vanilla"}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def answer_with(pg, body: str, status: int = 200, content_type: str = "text/event-stream") -> list[dict]:
    """Answers the page's next chat requests with `body`; returns the list their JSON bodies go to."""
    sent: list[dict] = []

    def handle(route):
        sent.append(route.request.post_data_json)
        route.fulfill(status=status, content_type=content_type, body=body)

    pg.route(CHAT, handle)
    return sent


def ask(pg, text: str) -> None:
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def test_an_answer_streams_from_the_model_with_its_stats(page):
    page.fill("#max_tokens", "")  # empty: the server's limit (it said "got 0" before)
    page.select_option("#mode", "vanilla")
    ask(page, "hello there")
    stats = page.locator(".msg.stats")
    playwright_api.expect(stats).to_contain_text("tokens · decode", timeout=WAIT_MS)
    assert page.locator(".msg.error").count() == 0
    assert page.locator(".msg.assistant").inner_text().strip() != ""
    assert page.locator("#stop").is_hidden() and page.locator("#send").is_enabled()


def test_markdown_is_rendered_and_the_system_prompt_and_limits_go_out(page):
    sent = answer_with(page, sse_body(["Here:\n\n", "```python\n", "print(1)\n", "```\n", "and <b>not bold</b>"]))
    page.fill("#system", "You are terse.")
    page.fill("#max_tokens", "")
    ask(page, "show code")
    code = page.locator(".msg.assistant.md pre code")
    playwright_api.expect(code).to_have_text("print(1)\n", timeout=WAIT_MS)
    assert page.locator(".msg.assistant.md b").count() == 0  # raw HTML stays text
    assert "<b>not bold</b>" in page.locator(".msg.assistant").inner_text()
    playwright_api.expect(page.locator(".msg.stats")).to_contain_text("5 tokens · decode")
    body = sent[0]
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "show code"}]
    assert "max_tokens" not in body and body["stream"] is True


def test_an_error_shows_once_and_gives_the_message_back(page):
    answer_with(page, json.dumps({"error": {"message": "the prompt is too long", "type": "invalid_request_error"}}),
                status=400, content_type="application/json")
    ask(page, "my long question")
    playwright_api.expect(page.locator(".msg.error")).to_have_text("the prompt is too long", timeout=WAIT_MS)
    assert page.locator(".msg.assistant").count() == 0  # no empty answer bubble above the error
    assert page.locator(".msg.user").count() == 0
    assert page.input_value("#input") == "my long question"  # the typed message is not lost
    # and the next request does not carry the failed turn
    page.unroute(CHAT)
    sent = answer_with(page, sse_body(["ok"]))
    ask(page, "short one")
    playwright_api.expect(page.locator(".msg.stats")).to_be_visible(timeout=WAIT_MS)
    assert sent[0]["messages"] == [{"role": "user", "content": "short one"}]


def lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def test_stop_ends_the_answer_and_keeps_it_in_the_history(page, streaming_answer):
    page.fill("#max_tokens", str(LIMIT))
    ask(page, "tell me a story")
    answer = page.locator(".msg.assistant")
    playwright_api.expect(answer).not_to_have_text("", timeout=WAIT_MS)
    playwright_api.expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    playwright_api.expect(page.locator(".msg.stats")).to_have_text("stopped", timeout=WAIT_MS)
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_hidden()
    assert page.inner_text("#speed") == ""
    shown = answer.inner_text()
    sent = answer_with(page, sse_body(["fine"]))
    ask(page, "go on")
    playwright_api.expect(page.locator(".msg.stats").last).to_contain_text("tokens · decode", timeout=WAIT_MS)
    history = sent[0]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    # the cut-off answer on screen is the one sent (innerText shows a CR of the
    # tiny model's random text as a line feed)
    assert lines(history[1]["content"]) == lines(shown)


def test_new_chat_while_an_answer_streams_starts_clean(page, streaming_answer):
    page.fill("#max_tokens", str(LIMIT))
    ask(page, "tell me a long story")
    playwright_api.expect(page.locator(".msg.assistant")).not_to_have_text("", timeout=WAIT_MS)
    page.click("#clear")
    page.wait_for_timeout(500)  # the old stream would have written more by now
    assert page.locator("#log .msg").count() == 0
    assert page.inner_text("#speed") == ""
    sent = answer_with(page, sse_body(["Hello!"]))
    ask(page, "Hi")
    playwright_api.expect(page.locator(".msg.stats")).to_be_visible(timeout=WAIT_MS)
    assert sent[0]["messages"] == [{"role": "user", "content": "Hi"}]
    assert page.locator(".msg.assistant").count() == 1
