"""Creating and freeing models and contexts many times leaks no memory.

1,000 cycles of load model / create context / prefill / free both on a tiny
model, with the resident set size read from /proc/self/statm after a warm-up
of 50 cycles and at the end. The bound: the smallest object a cycle makes is
the context's KV cache, 16 KiB here (2 layers x 64 cells x 32 K/V values x 2
(K and V) x 2 bytes of f16), and the weights are 380 KiB; leaking either one
per cycle grows the RSS by at least 950 x 16 KiB = 15 MiB, so growth must stay
under 8 MiB. Smaller leaks (a string, a struct) are below what RSS can show:
the sanitizer runs catch those (LeakSanitizer in the fuzz targets and the C
smoke test, docs/usage.md "Hardening").
"""
from __future__ import annotations

import os

import pytest

from specee.engine import Model

WARM_UP, CYCLES = 50, 1000
MAX_GROWTH = 8 << 20
KV_BYTES = 2 * 64 * 32 * 2 * 2  # n_layer x n_ctx x n_embd_kv x (K, V) x sizeof(f16)


def under_asan() -> bool:
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_load_and_free_cycles_keep_rss_flat(tiny_model_factory):
    if under_asan():
        pytest.skip("AddressSanitizer keeps freed memory in quarantine, so RSS grows; LeakSanitizer covers leaks there")
    path = tiny_model_factory(n_embd=64, n_ff=128, n_layer=2, n_head=2, n_head_kv=1)
    assert (CYCLES - WARM_UP) * KV_BYTES > MAX_GROWTH  # a leaked KV cache per cycle would show

    def cycle() -> None:
        with Model(path) as model, model.context(n_ctx=64, n_threads=1) as ctx:
            ctx.prefill([1, 2, 3])  # allocates the compute buffers too
            assert ctx.n_past == 3

    for _ in range(WARM_UP):
        cycle()
    before = rss_bytes()
    for _ in range(CYCLES - WARM_UP):
        cycle()
    growth = rss_bytes() - before
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB over {CYCLES - WARM_UP} cycles"
