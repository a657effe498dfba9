"""Runs the app under uvicorn until Ctrl-C (or until the model fails to load)."""
from __future__ import annotations

import uvicorn

from .app import create_app
from .config import ServerConfig


def serve(config: ServerConfig, host: str, port: int, log_level: str = "info") -> int:
    """Serves on host:port; returns the process exit status."""
    failed: list[str] = []
    server: uvicorn.Server

    def on_load_failed(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(config, on_load_failed=on_load_failed)
    # one event loop thread; the compute thread is the scheduler's; no reload, no workers
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    server.run()
    return 1 if failed else 0
