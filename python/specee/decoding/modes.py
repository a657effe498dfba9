"""The decode modes and the one place that opens a decoder for a mode: the
CLI (`specee generate`), `specee eval` and `specee serve` all go through
`open_decoder`, so a mode's defaults and errors are the same everywhere."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..engine import Context, Heads, InvalidArgumentError
from ..ranges import THRESHOLD
from .decoders import Decoder, PlainDecoder
from .early_exit import EarlyExitDecoder
from .sampling import Sampler
from .speculative.cost import CostCurve
from .speculative.drafters import Drafter
from .speculative.loop import DEFAULT_DRAFT_MAX, SpeculativeDecoder

MODES = ("vanilla", "specee", "speculative")
VERIFY = ("full", "candidates")


def check_mode(mode: str, greedy: bool, verify: Optional[str] = None, lossy: bool = False) -> None:
    """Refuses a mode and settings that no decoder runs with, before anything
    loads (open_decoder asks again)."""
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if verify is not None and verify not in VERIFY:
        raise InvalidArgumentError(f"verify must be one of {', '.join(VERIFY)}, not {verify!r}")
    if lossy and mode != "specee":
        raise InvalidArgumentError("lossy goes with the specee mode only (the other modes are exact)")
    if mode == "specee" and lossy and not greedy and verify == "candidates":
        raise InvalidArgumentError("lossy early exit samples from each step's full-vocabulary logits, which "
                                   "verification by candidates skips: use --verify full or --temp 0 (in a request: "
                                   "specee.verify \"full\" or temperature 0)")


def open_decoder(ctx: Context, mode: str, sampler: Sampler, *, heads: Optional[Heads] = None,
                 threshold: Optional[float] = None, verify: Optional[str] = None,
                 drafter: Optional[Drafter] = None, draft_max: Optional[int] = None,
                 curve: Optional[Callable[[Sequence[int]], CostCurve]] = None, lossy: bool = False) -> Decoder:
    """A decoder for `mode` on `ctx`, whose cache is empty.

    vanilla: full depth. specee: early exit with `heads` (attached to `ctx`
    unless they already are; `threshold` and `verify` override their file's
    settings): exact, an exit's token is a draft the rest of the model checks
    (plain decoding's output; exits pick from the candidates unless `verify`
    says "full"), unless `lossy` (the paper's early exit, whose
    sampling draws from each step's full-vocabulary logits, so it verifies
    fully unless `verify` says "candidates", which is refused).
    speculative: drafts from `drafter`, at most `draft_max` a verification,
    priced by `curve(prompt)` (default: the cached batch cost curve)."""
    check_mode(mode, sampler.greedy, verify, lossy)
    if mode == "vanilla":
        return PlainDecoder(ctx, sampler)
    if mode == "speculative":
        if drafter is None:
            raise InvalidArgumentError("speculative decoding needs a drafter")
        return SpeculativeDecoder(ctx, drafter, sampler, None, draft_max or DEFAULT_DRAFT_MAX, curve)
    if heads is None:
        raise InvalidArgumentError("early exit needs heads (the shipped ones for known models, or --heads PATH)")
    THRESHOLD.check_optional("threshold", threshold)
    if ctx.heads is not heads:
        ctx.set_heads(heads)  # with their file's exit settings
    changes = {"threshold": threshold} if threshold is not None else {}
    if verify is None and not lossy:
        # exact: the full model checks every exit anyway, so the exit layer's
        # own full-vocabulary pass buys nothing but a few more right drafts
        # (Qwen2.5-Coder-1.5B: 0.964x plain with candidates, 0.940x with it;
        # docs/exact-specee.md#measured)
        verify = "candidates"
    if verify is not None or (lossy and not sampler.greedy):
        changes["verify_full"] = verify != "candidates"
    if changes:
        ctx.set_exit_params(**changes)
    return EarlyExitDecoder(ctx, sampler, heads.n_candidates, exact=not lossy)
