"""Runs the app under uvicorn until Ctrl-C (or until the model fails to load)."""
from __future__ import annotations

import threading

import uvicorn

from .app import create_app
from .config import ServerConfig


class _Server(uvicorn.Server):
    """uvicorn's server, which on Ctrl-C (or SIGTERM) first ends the answers
    still streaming, each with an error event, so they finish within the grace period."""

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            state = self.config.app.state.server
            threading.Thread(target=state.end_answers, name="specee-end-answers", daemon=True).start()
        super().handle_exit(sig, frame)


def serve(config: ServerConfig, host: str, port: int, log_level: str = "info") -> int:
    """Serves on host:port; returns the process exit status."""
    failed: list[str] = []
    server: uvicorn.Server

    def on_load_failed(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(config, on_load_failed=on_load_failed)
    # one event loop thread; the compute thread is the scheduler's; no reload, no workers
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    server.run()
    return 1 if failed else 0
