"""One decoder shape for every mode (decoding/decoders.py) and the one place
that opens them (decoding/modes.py): the same loop gives each mode's output,
and a mode's defaults and refusals are the same for every caller."""
from __future__ import annotations

import pytest

from specee.decoding.decoders import PlainDecoder, decode
from specee.decoding.early_exit import EarlyExitDecoder
from specee.decoding.modes import check_mode, open_decoder
from specee.decoding.plain import generate
from specee.decoding.sampling import Sampler
from specee.decoding.speculative import LookupDrafter
from specee.decoding.speculative.cost import CostCurve
from specee.decoding.speculative.loop import SpeculativeDecoder
from specee.engine import Heads, InvalidArgumentError, Model
from test_generate_cli import PROMPT, tiny6_heads  # noqa: F401 (fixture)


@pytest.mark.parametrize("mode", ["vanilla", "specee", "speculative"])
def test_every_mode_decodes_plain_greedy_tokens_through_one_loop(tiny6_heads, mode):
    """Heads that never fire and a lookup drafter: every mode's greedy output
    is plain decoding's, through open_decoder and decode."""
    path, heads = tiny6_heads
    with Model(path) as m, Heads(m, heads["never"]) as h, m.context(n_ctx=64) as ctx:
        want = generate(ctx, PROMPT, 24).tokens
        ctx.truncate(0)
        decoder = open_decoder(ctx, mode, Sampler(), heads=h, drafter=LookupDrafter(),
                               curve=lambda prompt: CostCurve({1: 1.0, 2: 1.2, 3: 1.4, 9: 2.0}))
        assert decoder.mode == mode
        assert type(decoder) is {"vanilla": PlainDecoder, "specee": EarlyExitDecoder,
                                 "speculative": SpeculativeDecoder}[mode]
        got = decode(decoder, ctx, PROMPT, 24)
        assert got.tokens == want
        assert got.n_decode_steps == len(got.tokens) - 1


def test_lossy_sampling_with_early_exit_verifies_fully_unless_told_otherwise(tiny6_heads):
    path, heads = tiny6_heads
    sampled = Sampler(temperature=0.7, seed=1)
    with Model(path) as m, Heads(m, heads["always"]) as h, m.context(n_ctx=64) as ctx:
        open_decoder(ctx, "specee", Sampler(), heads=h, verify="candidates", lossy=True)
        assert ctx.exit_params()["verify_full"] is False and ctx.exit_params()["exact"] is False
        ctx.truncate(0)
        open_decoder(ctx, "specee", sampled, heads=h, lossy=True)  # the same heads, sampling: full verification
        assert ctx.exit_params()["verify_full"] is True
        with pytest.raises(InvalidArgumentError, match="use --verify full or --temp 0"):
            open_decoder(ctx, "specee", sampled, heads=h, verify="candidates", lossy=True)
        # exact: the draft is a point mass the full model checks, no exit logits needed
        ctx.truncate(0)
        open_decoder(ctx, "specee", sampled, heads=h, verify="candidates")
        assert ctx.exit_params()["verify_full"] is False and ctx.exit_params()["exact"] is True


def test_modes_refuse_what_they_cannot_run(tiny6_heads):
    path, _ = tiny6_heads
    with Model(path) as m, m.context(n_ctx=64) as ctx:
        with pytest.raises(InvalidArgumentError, match="mode must be one of"):
            open_decoder(ctx, "fast", Sampler())
        with pytest.raises(InvalidArgumentError, match="early exit needs heads"):
            open_decoder(ctx, "specee", Sampler())
        with pytest.raises(InvalidArgumentError, match="needs a drafter"):
            open_decoder(ctx, "speculative", Sampler())
        with pytest.raises(InvalidArgumentError, match="verify must be one of"):
            open_decoder(ctx, "vanilla", Sampler(), verify="some")
    check_mode("specee", greedy=True, verify="candidates")  # greedy: fine
