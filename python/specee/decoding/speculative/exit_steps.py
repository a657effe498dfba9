"""Early exits as the speculative loop's drafter (`--drafter exit`, and part
of `auto` where heads ship for the model): exact SpecEE's steps
(docs/exact-specee.md) for the steps on which no drafted text is worth
verifying.

An exit draft is not proposed ahead of a pass as the other drafters' are:
it comes out of the step itself (the predictors stop the token at layer e
and the exit's token is the draft), and the next pass verifies it while it
completes the exited token's upper layers. So the loop asks its draft policy
first (prompt lookup, a draft model: verified in one pass when they pay);
where that says a plain step, the exit decoder takes the step instead, and
its own switch (exit_switch.py, measured on the text at hand) decides
between a step that tries to exit and a plain one, so exits that do not pay
turn themselves off. The output stays plain decoding's either way.

The exit decoder shares the loop's text (one list) and sampler; after a
verification of drafted text the draft head catches up at the next exit
step (EarlyExitDecoder: next_cands None means sync first).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from ...engine import Context, Heads, InvalidArgumentError
from ..sampling import Sampler
from .draft_tree import DraftTree, empty_draft
from .drafters import Drafter, Kind

if TYPE_CHECKING:  # early_exit imports this package (speculative.verify): no import cycle at run time
    from ..early_exit import CandidateSource, EarlyExitDecoder


class NoDrafts:
    """`--drafter exit` alone: no drafted text, only exit steps."""

    name = "none"
    kinds: dict[str, Kind] = {}

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        return empty_draft()

    def close(self) -> None:
        pass


class WithExits:
    """A drafter (drafted text, verified in passes) plus exit steps for the
    rest; `open_exits` gives the loop its exit decoder."""

    def __init__(self, text: Drafter, ctx: Context, heads: Heads, owns_heads: bool = False,
                 source: Optional["CandidateSource"] = None, adaptive: bool = True, owns_text: bool = True):
        """Attaches `heads` (with predictors) to `ctx`, whose cache must be
        empty: the exits' draft head follows the target from the prompt on.
        `owns_heads` / `owns_text`: close the heads / the text drafter with
        this one (not when they serve other contexts too, as in
        `specee eval`, which opens one per item). `source` and `adaptive`:
        EarlyExitDecoder's (candidates from the draft head, or prompt lookup
        without one; exits switched off where they do not pay)."""
        if ctx.n_past != 0:
            raise InvalidArgumentError("the exit drafter needs an empty context (attach before the prompt)")
        if ctx.heads is not heads:
            ctx.set_heads(heads)
        # exact exits pick from the candidates: the full model checks them anyway (modes.open_decoder)
        ctx.set_exit_params(verify_full=False)
        self.text, self.ctx, self.heads, self.owns_heads, self.owns_text = text, ctx, heads, owns_heads, owns_text
        self.source, self.adaptive = source, adaptive
        self.name = "exit" if isinstance(text, NoDrafts) else f"{text.name}+exit"
        self.kinds = text.kinds

    def propose(self, tokens: Sequence[int], max_len: int, sampler: Optional[Sampler] = None,
                limits: Optional[Mapping[str, int]] = None) -> DraftTree:
        return self.text.propose(tokens, max_len, sampler, limits)

    def open_exits(self, sampler: Sampler) -> "EarlyExitDecoder":
        """The exact early-exit decoder the loop steps with when no drafted
        text is verified; it switches exits off where they do not pay."""
        from ..early_exit import EarlyExitDecoder

        return EarlyExitDecoder(self.ctx, sampler, self.heads.n_candidates, self.source, exact=True,
                                adaptive=self.adaptive)

    def close(self) -> None:
        if self.owns_text:
            self.text.close()
        self.ctx.set_heads(None)
        if self.owns_heads:
            self.heads.close()
