"""DraftTree: the tokens a drafter proposes (a chain is a tree without
branches), with what the decode loop needs to decide on them and verify
them (drafters.py explains the fields). The names keep four things apart:
the draft head (the EAGLE head in the heads file), a draft model (a smaller
GGUF), a DraftTree (this value), and the drafter that makes it (a Drafter,
chosen with --drafter)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class DraftTree:
    tokens: list[int]
    confidence: list[float]                 # per token, in (0, 1]
    kind: str                               # running acceptance is kept per kind
    q: Optional[list[Optional[np.ndarray]]] = None  # draw distributions (sampling); None: picked outright
    parents: Optional[list[int]] = None     # a tree: each token's parent index, -1 at the root; None: a chain

    def __post_init__(self) -> None:
        if len(self.confidence) != len(self.tokens) or (self.q is not None and len(self.q) != len(self.tokens)):
            raise ValueError("a draft needs one confidence (and one distribution, if any) per token")
        if self.parents is not None:
            if len(self.parents) != len(self.tokens):
                raise ValueError("a draft tree needs one parent per token")
            if any(not -1 <= p < i for i, p in enumerate(self.parents)):
                raise ValueError("every parent in a draft tree must come before its child (or be -1)")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def parent_of(self) -> list[int]:
        """Each token's parent index (-1: follows the text), for chains too."""
        return list(self.parents) if self.parents is not None else list(range(-1, len(self.tokens) - 1))

    def path_chances(self, confidence: Optional[Sequence[float]] = None) -> list[float]:
        """Per token, the chance that it and all its ancestors are accepted
        (the product of the confidences along its path)."""
        conf = self.confidence if confidence is None else confidence
        out: list[float] = []
        for i, p in enumerate(self.parent_of):
            out.append(conf[i] * (out[p] if p >= 0 else 1.0))
        return out

    def cut(self, k: int) -> "DraftTree":
        """The first k tokens (a subtree: parents come first)."""
        return DraftTree(self.tokens[:k], self.confidence[:k], self.kind, None if self.q is None else self.q[:k],
                     None if self.parents is None else self.parents[:k])


EMPTY_KIND = "none"


def empty_draft() -> DraftTree:
    return DraftTree([], [], EMPTY_KIND)
