"""Early exits as the speculative loop's drafter (`--drafter exit`,
`lookup+exit`, `auto` where heads ship): forced exits that hit and miss,
alone and beside verified lookup drafts, write plain decoding's tokens; the
specs that cannot work are refused before anything runs."""
from __future__ import annotations

import pytest

from specee.decoding.sampling import Sampler
from specee.decoding.speculative import LookupDrafter, generate_speculative, open_drafter, parse_draft
from specee.decoding.speculative.cost import CostCurve
from specee.decoding.speculative.exit_steps import NoDrafts, WithExits
from specee.engine import Model
from specee.heads.shipped import NoHeadsError
from test_exact_early_exit import PROMPT, Fixed, always_exit_heads, vanilla_tokens

FLAT = CostCurve({1: 1.0, 17: 1.0})  # verification as cheap as one token: every lookup draft is verified
N = 24


@pytest.fixture(scope="module")
def tiny6(tiny_model_factory) -> str:
    return tiny_model_factory(n_layer=6, tied=False, seed=3)


@pytest.mark.parametrize("text", ["none", "lookup"])
@pytest.mark.parametrize("exit_layer", [1, 3])
def test_exit_steps_write_plain_decodings_tokens(tiny6, tmp_path, text, exit_layer):
    want = vanilla_tokens(tiny6, N)
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [exit_layer]) as heads, \
            m.context(n_ctx=64) as ctx:
        drafter = WithExits(NoDrafts() if text == "none" else LookupDrafter(), ctx, heads,
                            source=Fixed(want, len(PROMPT)), adaptive=False)
        ctx.set_exit_params(use_online=False)  # every step's check fires: exits hit and miss in turn
        got = generate_speculative(ctx, PROMPT, N, drafter, curve=FLAT)
        drafter.close()
        assert ctx.heads is None
    assert got.tokens == want
    x = got.extra
    assert x["draft_source"] == ("exit" if text == "none" else "lookup+exit")
    assert x["exit_steps"] > 0 and 0 < x["exit_drafts_accepted"] < x["exit_drafts_verified"]
    if text == "lookup":
        assert x["verify_steps"] > 0  # drafted text was verified too, between exit steps
    else:
        assert x["verify_steps"] == 0 and x["plain_steps"] == 0  # every step was the exit decoder's


def test_sampled_exit_steps_are_reproducible_from_the_seed(tiny6, tmp_path):
    """With sampling the exit decoder draws from the loop's sampler (its
    acceptance test is tested against plain sampling's distribution in
    test_exact_early_exit): the same seed gives the same text."""
    runs = []
    for _ in range(2):
        with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, \
                m.context(n_ctx=64) as ctx:
            drafter = WithExits(LookupDrafter(), ctx, heads, adaptive=False)
            runs.append(generate_speculative(ctx, PROMPT, N, drafter, Sampler(temperature=0.9, seed=7),
                                             curve=FLAT))
            drafter.close()
    assert runs[0].tokens == runs[1].tokens and len(runs[0].tokens) == N
    assert runs[0].extra["exit_steps"] > 0


@pytest.mark.parametrize("spec, message", [("exit+eagle", "choose one"), ("exit+lookup+exit", "one exit"),
                                           ("exit:2", "unknown drafter")])
def test_specs_that_cannot_work_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_draft(spec)


def test_exit_specs_parse():
    assert parse_draft("exit") == ("exit", None)
    assert parse_draft("lookup:2+exit") == ("merge", "lookup:2+exit")


def test_exit_without_heads_is_a_clear_error_and_auto_goes_without(tiny6):
    with Model(tiny6) as m, m.context(n_ctx=64) as ctx:
        with pytest.raises(NoHeadsError, match="exit drafter"):
            open_drafter("lookup+exit", m, 64, ctx=ctx)
        assert ctx.heads is None
        auto = open_drafter("auto", m, 64, ctx=ctx)
        assert "exit" not in auto.name and not hasattr(auto, "open_exits")
        auto.close()


def test_auto_and_exit_take_given_heads(tiny6, tmp_path):
    with Model(tiny6) as m, always_exit_heads(tmp_path / "h.gguf", m, [2]) as heads, m.context(n_ctx=64) as ctx:
        for spec in ("auto", "exit", "lookup+exit"):
            d = open_drafter(spec, m, 64, ctx=ctx, heads=heads)
            assert d.name.endswith("exit") and ctx.heads is heads
            d.close()  # the given heads stay open: not the drafter's
            assert ctx.heads is None
        assert heads.n_candidates > 0


@pytest.mark.parametrize("module", ["specee.decoding.early_exit", "specee.decoding.speculative", "specee.cli",
                                    "specee.server.runtime"])
def test_every_entry_module_imports_first(module):
    """early_exit and the speculative package import each other's parts:
    each must import on its own, first, in a fresh interpreter."""
    import subprocess
    import sys

    if module.startswith("specee.server"):
        pytest.importorskip("uvicorn")
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-1500:]
