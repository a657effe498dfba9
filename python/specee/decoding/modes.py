"""The decode modes and the one place that opens a decoder for a mode: the
CLI (`specee generate`), `specee eval` and `specee serve` all go through
`open_decoder`, so a mode's defaults and errors are the same everywhere."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from ..engine import Context, Heads, InvalidArgumentError
from ..ranges import AGREEMENT, CHAIN, THRESHOLD
from .decoders import Decoder, PlainDecoder
from .early_exit import DEFAULT_CHAIN, EarlyExitDecoder
from .sampling import Sampler
from .speculative.cost import CostCurve
from .speculative.drafters import Drafter
from .speculative.layer_skip import DepthRouter, router_path_for
from .speculative.loop import DEFAULT_DRAFT_MAX, SpeculativeDecoder

MODES = ("vanilla", "specee", "speculative")
VERIFY = ("full", "candidates")


def check_mode(mode: str, greedy: bool, verify: Optional[str] = None, lossy: bool = False,
               exit_chain: Optional[int] = None) -> None:
    """Refuses a mode and settings that no decoder runs with, before anything
    loads (open_decoder asks again)."""
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if verify is not None and verify not in VERIFY:
        raise InvalidArgumentError(f"verify must be one of {', '.join(VERIFY)}, not {verify!r}")
    if lossy and mode == "vanilla":
        raise InvalidArgumentError("lossy goes with the specee mode (the paper's early exit) or the speculative "
                                   "mode (layer skipping inside verification); vanilla is the model itself")
    if mode == "specee" and lossy and not greedy and verify == "candidates":
        raise InvalidArgumentError("lossy early exit samples from each step's full-vocabulary logits, which "
                                   "verification by candidates skips: use --verify full or --temp 0 (in a request: "
                                   "specee.verify \"full\" or temperature 0)")
    if exit_chain is not None and (mode != "specee" or lossy):
        raise InvalidArgumentError("a chain of exits is what exact early exit verifies in one pass: it goes with "
                                   "--mode specee without --lossy")


def open_decoder(ctx: Context, mode: str, sampler: Sampler, *, heads: Optional[Heads] = None,
                 threshold: Optional[float] = None, verify: Optional[str] = None,
                 drafter: Optional[Drafter] = None, draft_max: Optional[int] = None,
                 curve: Optional[Callable[[Sequence[int]], CostCurve]] = None, lossy: bool = False,
                 router: Optional[str | os.PathLike] = None, skip_agreement: Optional[float] = None,
                 exit_chain: Optional[int] = None) -> Decoder:
    """A decoder for `mode` on `ctx`, whose cache is empty.

    vanilla: full depth. specee: early exit with `heads` (attached to `ctx`
    unless they already are; `threshold` and `verify` override their file's
    settings): exact, an exit's token is a draft the rest of the model checks
    (plain decoding's output; exits pick from the candidates unless `verify`
    says "full"; up to `exit_chain` exits, default 1, share one verification),
    unless `lossy` (the paper's early exit, whose
    sampling draws from each step's full-vocabulary logits, so it verifies
    fully unless `verify` says "candidates", which is refused).
    speculative: drafts from `drafter`, at most `draft_max` a verification,
    priced by `curve(prompt)` (default: the cached batch cost curve); with
    `lossy`, rows leave the verification early as the depth router
    (`router`, default: the one beside the EAGLE drafter's head file) says
    for `skip_agreement` (default: the router's)."""
    check_mode(mode, sampler.greedy, verify, lossy, exit_chain)
    if mode == "vanilla":
        return PlainDecoder(ctx, sampler)
    if mode == "speculative":
        if drafter is None:
            raise InvalidArgumentError("speculative decoding needs a drafter")
        depth_router = open_router(drafter, ctx.model.n_layer, router, skip_agreement) if lossy else None
        return SpeculativeDecoder(ctx, drafter, sampler, None, draft_max or DEFAULT_DRAFT_MAX, curve, depth_router)
    if heads is None:
        raise InvalidArgumentError("early exit needs heads (the shipped ones for known models, or --heads PATH)")
    THRESHOLD.check_optional("threshold", threshold)
    CHAIN.check_optional("exit_chain", exit_chain)
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
    return EarlyExitDecoder(ctx, sampler, heads.n_candidates, exact=not lossy,
                            chain=DEFAULT_CHAIN if exit_chain is None else exit_chain)


def open_router(drafter: Drafter, n_layer: int, path: Optional[str | os.PathLike] = None,
                min_agreement: Optional[float] = None) -> DepthRouter:
    """The depth router for lossy layer skipping: `path`, else the one
    trained beside the EAGLE drafter's head file. Its confidences are the
    draft head's, so other drafters are refused."""
    heads = getattr(drafter, "heads", None)
    if getattr(drafter, "name", "").split(":")[0] != "eagle" or heads is None:
        raise InvalidArgumentError("layer skipping (lossy speculative decoding) routes rows by the EAGLE draft "
                                   "head's confidence: use --draft eagle or eagle:chain")
    path = path or router_path_for(heads.path)
    if not os.path.exists(path):
        raise InvalidArgumentError(f"no depth router at {os.fspath(path)}: train one with `specee train router "
                                   f"--heads {os.fspath(heads.path)} --out DIR` and pass --router DIR/router.json")
    router = DepthRouter.load(path)
    router.check_model(n_layer, path)
    if min_agreement is not None:
        AGREEMENT.check("skip_agreement", min_agreement)
        router.min_agreement = min_agreement
    return router
