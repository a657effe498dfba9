"""KV cache: truncation (rollback), per-layer validity, context overflow."""
from __future__ import annotations

import numpy as np
import pytest

from specee.engine import ContextFullError, Model

PROMPT = [5, 77, 200, 13, 300, 42]


def greedy(ctx, first: int, n: int) -> list[int]:
    out, tok = [], first
    for _ in range(n):
        tok = ctx.decode(tok)
        out.append(tok)
    return out


def test_truncate_then_regenerate_is_identical(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        first = ctx.argmax()
        run1 = greedy(ctx, first, 12)
        logits1 = ctx.logits()
        assert ctx.n_past == len(PROMPT) + 12

        ctx.truncate(len(PROMPT))
        assert ctx.n_past == len(PROMPT)
        run2 = greedy(ctx, first, 12)
        assert run1 == run2
        np.testing.assert_array_equal(ctx.logits(), logits1)


def test_truncate_to_middle_of_prompt_equals_shorter_prompt(tiny_llama):
    with Model(tiny_llama) as m:
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT)
            ctx.truncate(3)
            ctx.prefill([99, 98])
            rolled_back = ctx.logits()
        with m.context(n_ctx=64) as ctx:
            ctx.prefill(PROMPT[:3] + [99, 98])
            fresh = ctx.logits()
    np.testing.assert_allclose(rolled_back, fresh, rtol=0, atol=1e-4 * np.abs(fresh).max())


def test_truncate_forward_is_refused(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=64) as ctx:
        ctx.prefill(PROMPT)
        with pytest.raises(ValueError, match="only 6 tokens"):
            ctx.truncate(7)
        assert ctx.n_past == 6


def test_cells_are_valid_in_every_layer_after_full_depth_passes(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=16) as ctx:
        ctx.prefill(PROMPT)
        ctx.decode(3)
        for layer in range(m.n_layer):
            assert all(ctx.cell_valid(layer, p) for p in range(7))
            assert not ctx.cell_valid(layer, 7)
        ctx.truncate(2)
        assert ctx.cell_valid(0, 1) and not ctx.cell_valid(0, 2)
        with pytest.raises(ValueError):
            ctx.cell_valid(m.n_layer, 0)
        with pytest.raises(ValueError):
            ctx.cell_valid(0, 16)


def test_context_overflow_is_a_clean_error(tiny_llama):
    with Model(tiny_llama) as m, m.context(n_ctx=8) as ctx:
        ctx.prefill(PROMPT)
        with pytest.raises(ContextFullError, match="n_ctx = 8"):
            ctx.prefill([1, 2, 3])  # 6 + 3 > 8: refused whole
        assert ctx.n_past == 6
        ctx.decode(1)
        ctx.decode(2)
        assert ctx.n_past == 8
        with pytest.raises(ContextFullError):
            ctx.decode(3)
        assert ctx.n_past == 8
        ctx.truncate(4)  # rolling back frees room again
        ctx.decode(3)
        assert ctx.n_past == 5


def test_default_context_size_follows_the_model(tiny_llama):
    with Model(tiny_llama) as m, m.context() as ctx:
        assert ctx.n_ctx == m.n_ctx_train  # 256 < the 4096 cap
        assert ctx.n_threads >= 1
