"""Events from the compute thread to the requests' queues on the event loop,
handed over once per round."""
from __future__ import annotations

import asyncio
import threading
from typing import Optional


class Outbox:
    """The compute thread `post`s each job's events during a round and
    `flush`es at its end: one wake-up of the event loop per round, whatever
    the number of events, instead of one per token.

    With `wait_s`, `flush` then waits (at most that long) until the loop has
    handled the round's events, the chunks written to the sockets included.
    With as many compute threads as cores, the web side's work would
    otherwise run during the next decode step and hold up one of ggml's
    threads, which the others then wait for at every barrier. The wait is
    bounded, so a busy loop cannot stall decoding.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wait_s: Optional[float] = None):
        self.loop = loop
        self.wait_s = wait_s
        self._items: list[tuple[asyncio.Queue, tuple]] = []

    def post(self, queue: asyncio.Queue, event: tuple) -> None:
        """Keeps `event` for `queue` until the next flush (compute thread only)."""
        self._items.append((queue, event))

    def flush(self) -> None:
        """Hands the kept events to the loop (compute thread only)."""
        if not self._items:
            return
        items, self._items = self._items, []
        handled = threading.Event()

        def deliver() -> None:
            for queue, event in items:
                queue.put_nowait(event)  # schedules each consumer's wake-up...
            self.loop.call_soon(handled.set)  # ...which the loop runs before this

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop has closed: nobody is listening
            return
        if self.wait_s:
            handled.wait(self.wait_s)
