"""The server's hand-off of events from the compute thread to the event loop."""
from __future__ import annotations

import asyncio
import threading
import time

from specee.server.outbox import Outbox


def run_loop_in_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def test_events_leave_at_the_flush_in_order_and_the_wait_covers_their_handling():
    loop, thread = run_loop_in_thread()
    try:
        queues = [asyncio.run_coroutine_threadsafe(_make_queue(), loop).result() for _ in range(2)]
        handled: list[list] = [[], []]

        async def consume(i: int) -> None:
            while (event := await queues[i].get())[0] != "done":
                handled[i].append(event)

        consumers = [asyncio.run_coroutine_threadsafe(consume(i), loop) for i in range(2)]
        outbox = Outbox(loop, wait_s=5.0)
        for round_ in range(3):
            for i in range(2):
                outbox.post(queues[i], ("text", f"{i}:{round_}"))
            assert len(handled[0]) == round_  # nothing leaves before the flush
            outbox.flush()
            # the flush waited until both consumers had their events
            assert handled == [[("text", f"{i}:{r}") for r in range(round_ + 1)] for i in range(2)]
        for i in range(2):
            outbox.post(queues[i], ("done", None))
        outbox.flush()
        for c in consumers:
            c.result(timeout=5)
    finally:
        stop_loop(loop, thread)


def test_a_flush_without_wait_returns_at_once_and_events_still_arrive():
    loop, thread = run_loop_in_thread()
    try:
        queue = asyncio.run_coroutine_threadsafe(_make_queue(), loop).result()
        outbox = Outbox(loop)
        outbox.flush()  # nothing posted: nothing to do
        outbox.post(queue, ("text", "a"))
        outbox.post(queue, ("done", None))
        outbox.flush()
        got = asyncio.run_coroutine_threadsafe(_drain(queue, 2), loop).result(timeout=5)
        assert got == [("text", "a"), ("done", None)]
    finally:
        stop_loop(loop, thread)


def test_a_flush_after_the_loop_closed_drops_the_events_quietly():
    loop, thread = run_loop_in_thread()
    queue = asyncio.run_coroutine_threadsafe(_make_queue(), loop).result()
    stop_loop(loop, thread)
    outbox = Outbox(loop, wait_s=5.0)
    outbox.post(queue, ("text", "late"))
    t0 = time.monotonic()
    outbox.flush()  # no exception, and no waiting for a loop that will never answer
    assert time.monotonic() - t0 < 4.0
    assert queue.qsize() == 0


async def _make_queue() -> asyncio.Queue:
    return asyncio.Queue()


async def _drain(queue: asyncio.Queue, n: int) -> list:
    return [await queue.get() for _ in range(n)]
