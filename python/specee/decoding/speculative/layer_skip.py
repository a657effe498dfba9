"""SpaDec-style layer skipping inside verification (lossy; docs/layer-skipping.md).

A verification pass over [last] + a drafted tree runs every row through
every layer. Here a row may leave the pass early: after `depth` layers it
goes to the final norm and the logits (specee_decode_tree_depths), so later
layers run on fewer rows. On these CPUs a pass costs nearly its row count
in layer work, so rows that leave early save real time; the price is that
a row's verdict (which drafted child it accepts, or the token it adds)
comes from an intermediate layer, and its K/V above its depth is never
computed. The output may therefore differ from the model's.

Which depth a row gets is the router's call. SpaDec trains a router per
token on verification rows; this one is a calibrated table trained from the
model's own traces (train/router.py): the draft head's confidence in the
token that follows a row (the best candidate's probability) predicts how
early the model's argmax settles. For each confidence bucket the table
holds, per layer, the share of trace tokens whose argmax after that layer
already is full depth's; a row gets the shallowest depth whose share
reaches `min_agreement`. Row 0 (the token the context has, whose verdict
is always used) runs every layer; a row never runs deeper than its parent
(it could not attend to K/V its ancestors never computed).
"""
from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...engine import InvalidArgumentError
from .draft_tree import DraftTree
from .tree import children_of

FORMAT = "specee-depth-router-1"


@dataclass
class DepthRouter:
    edges: list[float]            # confidence bucket edges, ascending (len: buckets - 1)
    agreement: np.ndarray         # [buckets, n_layer]: share right after layer l + 1 (a depth of l + 1)
    min_agreement: float = 0.95   # the default target; a router's user may ask for another
    min_depth: int = 1            # no row leaves before this many layers
    record: dict = field(default_factory=dict)  # how it was trained

    @property
    def n_layer(self) -> int:
        return int(self.agreement.shape[1])

    def depth(self, confidence: float, min_agreement: Optional[float] = None) -> int:
        """The fewest layers after which a row with this draft confidence
        agrees with full depth at least `min_agreement` of the time."""
        target = self.min_agreement if min_agreement is None else min_agreement
        share = self.agreement[bisect.bisect_right(self.edges, confidence)]
        ok = np.nonzero(share[self.min_depth - 1:] >= target)[0]
        return int(ok[0]) + self.min_depth if ok.size else self.n_layer

    def row_depths(self, draft: DraftTree, min_agreement: Optional[float] = None) -> list[int]:
        """Depths of the rows [last] + draft.tokens of a verification pass.
        A row's confidence is the draft's best child's (the token its verdict
        is most likely about); a leaf, whose verdict only picks the token
        added after an accepted path, goes by its own."""
        kids = children_of(draft.parent_of)
        depths = [self.n_layer]
        for i, parent in enumerate(draft.parent_of):
            conf = max((draft.confidence[c] for c in kids.get(i, [])), default=draft.confidence[i])
            depths.append(min(self.depth(conf, min_agreement), depths[parent + 1]))
        return depths

    # ---- file ----

    def save(self, path: str | os.PathLike) -> None:
        body = {"format": FORMAT, "edges": self.edges, "agreement": np.round(self.agreement, 5).tolist(),
                "min_agreement": self.min_agreement, "min_depth": self.min_depth, "record": self.record}
        Path(path).write_text(json.dumps(body, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DepthRouter":
        try:
            body = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"cannot read the depth router {os.fspath(path)}: {e}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise InvalidArgumentError(f"{os.fspath(path)} is not a depth router ({FORMAT})")
        agreement = np.asarray(body["agreement"], dtype=np.float64)
        edges = [float(e) for e in body["edges"]]
        if agreement.ndim != 2 or agreement.shape[0] != len(edges) + 1 or edges != sorted(edges):
            raise InvalidArgumentError(f"{os.fspath(path)}: {len(edges)} edges for {agreement.shape[0]} buckets")
        return cls(edges, agreement, float(body.get("min_agreement", 0.95)), int(body.get("min_depth", 1)),
                   body.get("record", {}))

    def check_model(self, n_layer: int, path: str | os.PathLike = "the depth router") -> None:
        if self.n_layer != n_layer:
            raise InvalidArgumentError(f"{os.fspath(path)} was trained for {self.n_layer} layers, "
                                       f"the model has {n_layer}")


def router_path_for(heads_path: str | os.PathLike) -> Path:
    """Where a head file's depth router lies: NAME.router.json beside NAME.gguf."""
    p = Path(heads_path)
    return p.with_name(p.stem + ".router.json")


def pass_order(depths: Sequence[int]) -> list[int]:
    """The pass's row order: deepest first, ties as given. A row is never
    deeper than its parent, so parents stay before their children."""
    return sorted(range(len(depths)), key=lambda i: -depths[i])
