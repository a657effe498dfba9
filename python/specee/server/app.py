"""The Starlette app: routes, the API key check, the body size limit, and
the translation of every failure into an OpenAI-style error body.

The model loads on a thread of its own after start-up, so /health can say
503 "loading" until it is ready. Requests become `Job`s for the scheduler;
the compute thread hands their text back through an asyncio queue.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import default_threads
from .config import ServerConfig
from .decoding import Job
from .prometheus import ServerMetrics
from .outbox import Outbox
from .responses import SSE_DONE, Responses, sse
from .markdown import render_markdown
from .runtime import Runtime, load_runtime
from .scheduler import QueueFull
from .schemas import ApiError, GenerationRequest, parse_chat, parse_completion, parse_json_object

log = logging.getLogger(__name__)

CHAT_PAGE = Path(__file__).with_name("chat.html")
PUBLIC_PATHS = ("/health", "/")  # no API key: the health probe, and the static page (its requests carry the key)
CLIENT_GONE = 499  # the status logged and counted when the client left before its answer


class ServerState:
    """What the routes share: settings, metrics, and the runtime once loaded."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics):
        self.config = config
        self.metrics = metrics
        self.runtime: Optional[Runtime] = None
        self.outbox: Optional[Outbox] = None  # set with the runtime
        self.load_error: Optional[str] = None
        self.created = int(time.time())

    def end_answers(self) -> None:
        """The server was asked to stop: decoding ends and every unfinished
        answer gets its error event ("the server is shutting down") now, so
        streams close cleanly instead of being cancelled with a traceback when
        uvicorn's grace period runs out. Blocks for up to one decode round:
        call it off the event loop."""
        if self.runtime is not None and self.outbox is not None:
            self.runtime.scheduler.stop()
            self.outbox.flush()  # the compute thread is gone: this thread hands its last events over

    def ready(self) -> Runtime:
        if self.runtime is None:
            raise ApiError(503, "the model is still loading" if self.load_error is None
                           else f"the model failed to load: {self.load_error}", type="server_error",
                           code="model_loading", headers={"Retry-After": "1"})
        return self.runtime


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# ---- middleware: count every answer, check the API key -----------------------------


class GuardAndCount:
    """Counts each answer by endpoint and status; refuses requests without
    the API key (when one is set) with 401."""

    KNOWN = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/chat/markdown")

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state
        key = state.config.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.KNOWN else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.state.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        if self.expected is not None and path not in PUBLIC_PATHS and not self._authorized(scope):
            e = ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                         type="authentication_error", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})
            return await error_response(e)(scope, receive, counting_send)
        await self.app(scope, receive, counting_send)

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)


# ---- generation ------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (checked as it arrives)."""
    too_large = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _events(queue: asyncio.Queue) -> AsyncIterator[tuple]:
    """A job's events up to and including its last one."""
    while True:
        event = await queue.get()
        yield event
        if event[0] in ("done", "error", "gone"):
            return


def _failure(message: str) -> ApiError:
    return ApiError(500, message, type="server_error", code="decode_failed")


async def _stream(out: Responses, req: GenerationRequest, queue: asyncio.Queue, cancel: Callable[[], None]):
    """The SSE body. Starlette cancels it when the client disconnects; the
    `finally` then frees the slot."""
    try:
        if out.chat:
            yield sse(out.chunk("", role=True))
        async for kind, value in _events(queue):
            if kind == "text":
                yield sse(out.chunk(value))
            elif kind == "done":
                for chunk in out.last_chunks(value, req.include_usage):
                    yield sse(chunk)
            else:
                yield sse(_failure(value).body())
        yield SSE_DONE
    finally:
        cancel()


async def _watch_disconnect(request: Request, on_gone: Callable[[], None]) -> None:
    """Waits for the client to go away (the body is read by now, so the next
    ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    on_gone()


async def _whole(out: Responses, request: Request, queue: asyncio.Queue, cancel: Callable[[], None]) -> Response:
    def gone() -> None:
        cancel()
        queue.put_nowait(("gone", None))

    watcher = asyncio.create_task(_watch_disconnect(request, gone))
    try:
        text = []
        async for kind, value in _events(queue):
            if kind == "text":
                text.append(value)
            elif kind == "done":
                return JSONResponse(out.whole("".join(text), value))
            elif kind == "error":
                return error_response(_failure(value))
        return Response(status_code=CLIENT_GONE)
    finally:
        watcher.cancel()


def _generation_route(state: ServerState, kind: str):
    parse = parse_chat if kind == "chat" else parse_completion
    param = "messages" if kind == "chat" else "prompt"

    async def route(request: Request) -> Response:
        runtime = state.ready()
        req = parse(parse_json_object(await read_body(request, state.config.max_body_bytes)), state.config)
        ids = runtime.chat_ids(req.messages) if kind == "chat" else runtime.prompt_ids(req.prompt)
        runtime.check_fits(ids, param)
        if req.options.mode == "specee" and runtime.heads is None:
            raise ApiError(400, "early exit needs heads: none ship for this model; start the server with --heads",
                           param="specee.mode")
        queue: asyncio.Queue = asyncio.Queue()
        job = Job(ids, req.options, runtime.tokenizer, functools.partial(state.outbox.post, queue))
        try:
            runtime.scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; try again", type="server_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        out = Responses(kind, state.config.model_id)
        cancel = lambda: runtime.scheduler.cancel(job)  # noqa: E731
        if req.stream:
            return StreamingResponse(_stream(out, req, queue, cancel), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(out, request, queue, cancel)

    return route


# ---- the rest ----------------------------------------------------------------------------


def _routes(state: ServerState) -> list[Route]:
    page = CHAT_PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        if state.runtime is not None:
            return JSONResponse({"status": "ok"})
        if state.load_error is not None:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def models(request: Request) -> Response:
        entry = {"id": state.config.model_id, "object": "model", "created": state.created, "owned_by": "specee"}
        if state.runtime is not None:
            entry["meta"] = {"n_ctx": state.runtime.n_ctx, "n_layer": state.runtime.model.n_layer,
                             "n_vocab": state.runtime.model.n_vocab, "slots": state.config.parallel,
                             "modes": ["vanilla", "speculative"] + (["specee"] if state.runtime.heads else []),
                             "default_mode": state.config.mode, "draft": state.config.draft}
        return JSONResponse({"object": "list", "data": [entry]})

    async def markdown(request: Request) -> Response:
        # the chat page's answers as HTML (server side: the page stays one file with no scripts of others)
        text = parse_json_object(await read_body(request, state.config.max_body_bytes)).get("text")
        if not isinstance(text, str):
            raise ApiError(400, 'the body must be {"text": "a string of Markdown"}', param="text")
        return JSONResponse({"html": render_markdown(text)})

    return [
        Route("/", index, methods=["GET"]),
        Route("/chat/markdown", markdown, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", _generation_route(state, "chat"), methods=["POST"]),
        Route("/v1/completions", _generation_route(state, "completion"), methods=["POST"]),
    ]


async def _on_api_error(request: Request, e: ApiError) -> Response:
    return error_response(e)


async def _on_http_error(request: Request, e: HTTPException) -> Response:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=kind))


async def _on_disconnect(request: Request, e: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_GONE)


async def _on_crash(request: Request, e: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "internal server error (see the server log)", type="server_error"))


def create_app(config: ServerConfig, loader: Callable[[ServerConfig, ServerMetrics], Runtime] = load_runtime,
               on_load_failed: Optional[Callable[[str], None]] = None) -> Starlette:
    """The app; `loader` builds the runtime on a thread of its own once the
    app starts, and `on_load_failed` hears when it raises."""
    config.check()
    state = ServerState(config, ServerMetrics(config.parallel))

    def load(loop: asyncio.AbstractEventLoop) -> None:
        try:
            runtime = loader(config, state.metrics)
            scheduler = getattr(runtime, "scheduler", None)
            busy_cores = scheduler is not None and scheduler.slots[0].ctx.n_threads >= default_threads()
            state.outbox = Outbox(loop, wait_s=0.05 if busy_cores else None)  # why the wait: see Outbox
            if scheduler is not None:
                scheduler.after_round = state.outbox.flush
            state.runtime = runtime  # ready: requests may come now
        except Exception as e:
            log.error("cannot load %s: %s", config.model_path, e)
            state.load_error = str(e)
            if on_load_failed is not None:
                on_load_failed(str(e))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loading = threading.Thread(target=load, args=(asyncio.get_running_loop(),), name="specee-load", daemon=True)
        loading.start()
        yield
        await asyncio.to_thread(loading.join)
        if state.runtime is not None:
            await asyncio.to_thread(state.runtime.close)

    app = Starlette(
        routes=_routes(state),
        middleware=[Middleware(GuardAndCount, state=state)],
        exception_handlers={ApiError: _on_api_error, HTTPException: _on_http_error,
                            ClientDisconnect: _on_disconnect, Exception: _on_crash},
        lifespan=lifespan,
    )
    app.state.server = state
    return app
