"""Token trees: several drafts merged into one tree (SpecInfer's token tree
merge), ordered so that any prefix of it is the most promising subtree.

Merging: drafts that agree on their first tokens share those nodes (a
trie); where they differ, the tree branches. A shared node keeps the
highest confidence any draft gave it, or, with `by_support`, the share of
the drafts through its parent that pass through it, times that confidence.
Sampled nodes (drawn from a distribution q) are never shared: the
multi-step verification of sampled siblings is exact only for independent
draws, duplicates included (verify.py). Nodes are then ordered by the chance
of their whole path being accepted (best first; a child never scores above
its parent, so parents stay before children), and the decode loop verifies
the prefix of that order that pays most (policy.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .draft_tree import DraftTree, empty_draft


def merge_drafts(drafts: Sequence[DraftTree], kind: str, by_support: bool = False) -> DraftTree:
    """One tree holding every draft's tokens, best paths first."""
    drafts = [d for d in drafts if len(d)]
    if not drafts:
        return empty_draft()
    tokens: list[int] = []
    parents: list[int] = []
    conf: list[float] = []
    qs: list[Optional[np.ndarray]] = []
    support: list[int] = []                    # drafts passing through each node
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> shared point-mass node
    for d in drafts:
        mapped: list[int] = []  # d's node i -> merged node
        for i, (tok, p) in enumerate(zip(d.tokens, d.parent_of)):
            parent = mapped[p] if p >= 0 else -1
            q = None if d.q is None else d.q[i]
            node = children.get((parent, tok)) if q is None else None
            if node is None:
                node = len(tokens)
                if q is None:
                    children[(parent, tok)] = node
                tokens.append(tok)
                parents.append(parent)
                conf.append(d.confidence[i])
                qs.append(q)
                support.append(0)
            else:
                conf[node] = max(conf[node], d.confidence[i])
            support[node] += 1
            mapped.append(node)
    if by_support:
        conf = [c * support[i] / (support[parents[i]] if parents[i] >= 0 else len(drafts))
                for i, c in enumerate(conf)]
    return best_first(DraftTree(tokens, conf, kind, qs if any(q is not None for q in qs) else None, parents))


def best_first(draft: DraftTree) -> DraftTree:
    """The same tree with its nodes ordered by path chance, best first
    (ties: shallower first, then as given), parents renumbered."""
    chance = draft.path_chances()
    depth: list[int] = []
    for p in draft.parent_of:
        depth.append(depth[p] + 1 if p >= 0 else 0)
    order = sorted(range(len(draft)), key=lambda i: (-chance[i], depth[i], i))
    new_index = {old: new for new, old in enumerate(order)}
    parents = [new_index[draft.parent_of[i]] if draft.parent_of[i] >= 0 else -1 for i in order]
    return DraftTree([draft.tokens[i] for i in order], [draft.confidence[i] for i in order], draft.kind,
                 None if draft.q is None else [draft.q[i] for i in order], parents)


def children_of(parents: Sequence[int]) -> dict[int, list[int]]:
    """node -> its children in order (key -1: the roots)."""
    out: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        out.setdefault(p, []).append(i)
    return out
