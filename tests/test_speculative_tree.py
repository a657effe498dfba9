"""Token trees in speculative decoding: merging drafts into one tree,
greedy tree verification equal to plain greedy, lookup trees and merged
drafters (SpecInfer). Multi-step speculative sampling over sibling drafts
is tested with the other sampling tests (test_speculative.py)."""
from __future__ import annotations

import numpy as np
import pytest

from specee.engine import Model
from specee.decoding.speculative import (DraftTree, Kind, LookupDrafter, MergedDrafter, merge_drafts,
                                open_drafter, parse_draft)
from test_speculative import COPY_PROMPT, PROMPT, UNTIED, plain, speculative


def test_merge_shares_prefixes_branches_where_drafts_differ_and_orders_best_first():
    a = DraftTree([1, 2, 3], [0.9, 0.9, 0.9], "a")
    b = DraftTree([1, 2, 4], [0.5, 0.5, 0.5], "b")
    c = DraftTree([5], [0.95], "c")
    t = merge_drafts([a, b, c], "t")
    assert t.kind == "t" and sorted(t.tokens) == [1, 2, 3, 4, 5]
    # best first: the path chance never rises along the order, parents come first
    chances = t.path_chances()
    assert chances == sorted(chances, reverse=True)
    node = {tok: i for i, tok in enumerate(t.tokens)}
    assert t.parents[node[1]] == -1 and t.parents[node[5]] == -1
    assert t.parents[node[2]] == node[1] and t.parents[node[3]] == node[2] and t.parents[node[4]] == node[2]
    assert t.confidence[node[1]] == 0.9  # shared: the highest confidence given
    # by support: two of three drafts start with 1
    s = merge_drafts([a, b, c], "t", by_support=True)
    conf = dict(zip(s.tokens, s.confidence))
    assert conf[1] == pytest.approx(0.9 * 2 / 3) and conf[5] == pytest.approx(0.95 / 3)
    assert conf[3] == pytest.approx(0.9 / 2)


def test_sampled_nodes_are_never_shared():
    q = np.full(8, 1 / 8)
    drawn = [DraftTree([3, 4], [0.5, 0.5], "m", [q, q]), DraftTree([3, 4], [0.5, 0.5], "m", [q, q])]
    t = merge_drafts(drawn, "t")
    assert len(t) == 4 and t.tokens.count(3) == 2  # independent draws stay apart (verify.py)


def test_cut_keeps_a_subtree_and_bad_trees_are_refused():
    t = DraftTree([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6], "t", parents=[-1, -1, 0, 2])
    assert t.cut(3).parents == [-1, -1, 0] and t.cut(3).tokens == [1, 2, 3]
    assert t.path_chances() == pytest.approx([0.9, 0.8, 0.63, 0.378])
    with pytest.raises(ValueError, match="must come before its child"):
        DraftTree([1, 2], [0.5, 0.5], "t", parents=[1, -1])


class ScriptedTree:
    """Knows the greedy continuation and proposes a tree of three branches:
    two wrong first tokens, then the right chain, which itself branches into
    a wrong and a right continuation at every step."""

    name = "scripted-tree"
    kinds = {"tree": Kind(0.0, 0.5)}

    def __init__(self, ref, n_vocab):
        self.ref, self.n_vocab = ref, n_vocab

    def propose(self, tokens, max_len, sampler=None, limits=None):
        truth = self.ref[len(tokens):len(tokens) + max(1, max_len // 3)]
        if not truth:
            return DraftTree([], [], "tree")
        wrong = lambda t, k: (t + k) % self.n_vocab  # noqa: E731
        out, parents, conf = [wrong(truth[0], 1), wrong(truth[0], 2)], [-1, -1], [0.5, 0.5]
        parent = -1
        for t in truth:
            out.append(t)
            parents.append(parent)
            conf.append(0.5)
            parent = len(out) - 1
            out.append(wrong(t, 3))  # a wrong sibling of the next one
            parents.append(parent)
            conf.append(0.5)
        return DraftTree(out[:max_len], conf[:max_len], "tree", parents=parents[:max_len])

    def close(self):
        pass


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_greedy_tree_verification_is_plain_greedy(tiny_model_factory, qtype):
    with Model(tiny_model_factory(qtype=qtype, **UNTIED)) as m:
        want = plain(m, PROMPT, 30)
        got = speculative(m, PROMPT, 30, ScriptedTree(PROMPT + want.tokens, m.n_vocab), draft_max=9)
    assert got.tokens == want.tokens
    x = got.extra
    # the right branch was never the first: accepted tokens came from other branches
    assert x["accepted"] > 0 and x["tokens_per_verify"] > 1.5


@pytest.mark.parametrize("spec", ["lookup:3", "lookup:3+model:DRAFT"])
def test_lookup_trees_and_merged_drafters_match_plain(tiny_model_factory, spec):
    target = tiny_model_factory(**UNTIED)
    spec = spec.replace("DRAFT", tiny_model_factory(seed=1, **UNTIED))
    prompt = COPY_PROMPT + [9, 5, 77, 11, 5, 77, 200, 13]  # several earlier matches, different continuations
    with Model(target) as m:
        want = plain(m, prompt, 40)
        drafter = open_drafter(spec, m, n_ctx=64, n_threads=1)
        try:
            assert isinstance(drafter, MergedDrafter if "+" in spec else LookupDrafter)
            got = speculative(m, prompt, 40, drafter, draft_max=8)
        finally:
            drafter.close()
    assert got.tokens == want.tokens and got.extra["verify_steps"] > 0


def test_lookup_tree_branches_over_earlier_occurrences():
    d = LookupDrafter(branches=3)
    # "0 1 2" was followed by 7 6, then 9 9, then 7 8: a tree 7 -> (8, 6), 9 -> 9
    t = d.propose([0, 1, 2, 7, 6, 0, 1, 2, 9, 9, 0, 1, 2, 7, 8, 0, 1, 2], 9)
    assert len(t) == 9  # the 9 nodes with the best path chances of the whole merged tree
    assert t.kind == "lookup/3" and t.parents is not None
    paths = set()
    for i in range(len(t)):
        path, node = [], i
        while node >= 0:
            path.append(t.tokens[node])
            node = t.parents[node]
        paths.add(tuple(reversed(path)))
    assert {(7, 8, 0), (9, 9), (7, 6, 0)} <= paths
    conf = dict((tuple([t.tokens[i]]), t.confidence[i]) for i in range(len(t)) if t.parents[i] == -1)
    assert conf[(7,)] == pytest.approx(2 * conf[(9,)])  # two of three occurrences go on with 7


def test_drafter_specs_for_trees():
    assert parse_draft("lookup:4") == ("lookup", "4")
    assert parse_draft("lookup+lookup:2") == ("merge", "lookup+lookup:2")
