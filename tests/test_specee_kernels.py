"""kernels="specee": specee's own Q4_K / Q6_K kernels in the forward graphs
(docs/kernels.md) — the logits against the numpy reference, every row of a
verification pass against a one-token step bit for bit, threads that do not
change the output, and ggml's kernels left as they were otherwise."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Reference
from specee.engine import InvalidArgumentError, Model, kernels_isa
from test_forward import QUANT_TOLERANCE, TOKENS, batched_and_stepped_logits, rel_err
from test_token_tree import PROMPT, TREE_PARENTS, TREE_TOKENS

needs_kernels = pytest.mark.skipif(kernels_isa() == "none", reason="no specee kernel runs on this CPU")
QTYPES = ["Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_1"]


@pytest.fixture(scope="module", params=QTYPES)
def model_path(request, tiny_model_factory) -> str:
    # untied: the output matrix is Q4_K / Q6_K too (its rows, the tiny vocabulary, are not a multiple of 16,
    # so it stays with ggml; the layers' matrices all go to specee's kernels)
    return tiny_model_factory(arch="qwen2", qtype=request.param, tied=False, n_layer=2, seed=3)


@needs_kernels
def test_every_layer_matrix_is_packed(model_path):
    with Model(model_path, kernels="specee") as m:
        assert m.n_packed == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
        assert m.kernels == "specee"
    with Model(model_path) as m:  # the default
        assert m.n_packed == 2 * 7 and m.kernels == "specee"
    with Model(model_path, kernels="ggml") as m:
        assert m.n_packed == 0 and m.kernels == "ggml"


@needs_kernels
def test_logits_match_the_reference(model_path):
    want = Reference(model_path).forward(TOKENS)
    with Model(model_path, kernels="specee") as m, m.context(n_ctx=64, n_threads=2) as ctx:
        batched, stepped = batched_and_stepped_logits(ctx, TOKENS)
    assert rel_err(stepped, want) < QUANT_TOLERANCE
    assert rel_err(batched, want) < QUANT_TOLERANCE  # a prompt of more than 16 tokens: ggml's kernels


@needs_kernels
def test_chain_rows_are_plain_steps_bit_for_bit(model_path):
    """The matrices of a verification pass go through specee's kernels, every
    column as one column: with the attention's planes (exact_verify) each row
    is the one-token step to the last bit."""
    with Model(model_path, kernels="specee") as m, m.context(n_ctx=64) as chain, m.context(n_ctx=64) as steps:
        chain.prefill(PROMPT)
        chain.decode_tree(TREE_TOKENS)
        steps.prefill(PROMPT)
        for i, token in enumerate(TREE_TOKENS):
            steps.decode(token)
            np.testing.assert_array_equal(chain.all_logits()[i], steps.logits(), err_msg=f"chain row {i}")


@needs_kernels
def test_tree_rows_are_plain_steps_bit_for_bit(model_path):
    """A row of a branching tree attends to the cache and its own ancestors,
    with its siblings' cells masked in between: specee's attention sums over
    the cells a row sees in their order, whatever lies between them, so every
    row is the one-token step along its own path to the last bit (greedy
    verification of a tree keeps plain decoding's output)."""
    with Model(model_path, kernels="specee") as m, m.context(n_ctx=64) as tree:
        tree.prefill(PROMPT)
        tree.decode_tree(TREE_TOKENS, TREE_PARENTS)
        rows = tree.all_logits()
        for i in range(len(TREE_TOKENS)):
            path = [i]
            while TREE_PARENTS[path[-1]] >= 0:
                path.append(TREE_PARENTS[path[-1]])
            with m.context(n_ctx=64) as steps:
                steps.prefill(PROMPT)
                for node in reversed(path):
                    steps.decode(TREE_TOKENS[node])
                np.testing.assert_array_equal(rows[i], steps.logits(), err_msg=f"tree row {i}, path {path[::-1]}")


@needs_kernels
def test_the_thread_count_does_not_change_the_output(model_path):
    out = {}
    for threads in (1, 2):
        with Model(model_path, kernels="specee") as m, m.context(n_ctx=64, n_threads=threads) as ctx:
            ctx.prefill(PROMPT)
            ctx.decode(7)
            ctx.decode_tree(TREE_TOKENS)
            out[threads] = ctx.all_logits()
    np.testing.assert_array_equal(out[1], out[2])


@needs_kernels
def test_specee_kernels_are_the_default(model_path):
    with Model(model_path) as a, Model(model_path, kernels="specee") as b, \
            a.context(n_ctx=64) as ca, b.context(n_ctx=64) as cb:
        for c in (ca, cb):
            c.prefill(PROMPT)
            c.decode(7)
        np.testing.assert_array_equal(ca.logits(), cb.logits())


def test_bad_kernel_choices_are_refused(model_path):
    with pytest.raises(InvalidArgumentError, match="kernels must be one of"):
        Model(model_path, kernels="fast")
    with pytest.raises(InvalidArgumentError, match="amx_decode and kernels"):
        Model(model_path, kernels="specee", amx_decode=True)


@needs_kernels
def test_the_avx2_kernels_give_the_same_bits(model_path, monkeypatch):
    """AVX-512 and AVX2 kernels do the same integer sums and float steps (and
    so does the reference: test_kernels.py): a model gives the same logits
    on either, and the AVX2 path is tested on AVX-512 machines too
    (SPECEE_KERNELS_ISA caps the kernel set chosen at load)."""
    def run() -> np.ndarray:
        with Model(model_path, kernels="specee") as m, m.context(n_ctx=64, n_threads=2) as ctx:
            assert m.n_packed > 0
            ctx.prefill(PROMPT)
            ctx.decode_tree(TREE_TOKENS)
            return ctx.all_logits()
    best = run()
    monkeypatch.setenv("SPECEE_KERNELS_ISA", "avx2")
    np.testing.assert_array_equal(run(), best)


@needs_kernels
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("llama", "Q4_K"), ("qwen2", "Q5_0")])
def test_a_node_that_norms_its_own_input_gives_the_same_bits(arch, qtype, tiny_model_factory, monkeypatch):
    """The Q/K/V and gate/up nodes norm their input themselves (the RMSNorm
    and its scale fold into them), each float step as ggml's norm takes it:
    the logits of a prompt, a step and a tree equal those with the separate
    norm nodes (SPECEE_FOLD_NORMS=0, read at load) bit for bit."""
    path = tiny_model_factory(arch=arch, qtype=qtype, tied=False, n_layer=2, seed=5)

    def run() -> np.ndarray:
        with Model(path, kernels="specee") as m, m.context(n_ctx=64, n_threads=2) as ctx:
            assert m.n_packed == 2 * 7
            ctx.prefill(PROMPT)
            rows = [ctx.logits().copy()]
            for token in (7, 3, 11, 5, 2, 13, 17, 19):  # a rounding step away shows in some row
                ctx.decode(token)
                rows.append(ctx.logits().copy())
            ctx.decode_tree(TREE_TOKENS)
            return np.concatenate([np.stack(rows), ctx.all_logits()])
    folded = run()
    monkeypatch.setenv("SPECEE_FOLD_NORMS", "0")
    separate = run()
    np.testing.assert_array_equal(folded, separate)


@needs_kernels
@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_K", "Q6_K"])
def test_weights_moved_into_one_block_give_the_same_bits(qtype, tiny_model_factory, monkeypatch):
    """At load the packed matrices of a decode step move into one block of
    2 MB pages, in step order; the kernels then read them there. The logits
    equal those read from the matrices where repacking left them
    (SPECEE_HUGE_PAGES=0, read at load)."""
    path = tiny_model_factory(arch="llama", qtype=qtype, tied=False, n_layer=2, seed=9)

    def run() -> np.ndarray:
        with Model(path, kernels="specee") as m, m.context(n_ctx=64, n_threads=2) as ctx:
            ctx.prefill(PROMPT)
            ctx.decode(7)
            ctx.decode_tree(TREE_TOKENS)
            return ctx.all_logits()
    placed = run()
    monkeypatch.setenv("SPECEE_HUGE_PAGES", "0")
    np.testing.assert_array_equal(run(), placed)


@needs_kernels
@pytest.mark.parametrize("kernels", ["ggml", "specee"])
def test_a_draft_head_does_not_change_a_prompts_logits(tiny_model_factory, tmp_path, kernels):
    """With a draft head attached, a prompt keeps every row's last hidden
    state (the draft's features), so its last layer runs for every row; the
    last token's logits still come from that layer run for its row alone, as
    without a draft head (one column goes to specee's kernels, a whole prompt
    to ggml's: their sums round differently)."""
    from specee.engine import Heads
    from specee.heads.head_file import constant_predictor, write_heads
    from test_draft_head import random_draft

    # Q4_1 (SmolLM2's type): there the two kernels' sums differ in the last bits
    path = tiny_model_factory(arch="qwen2", qtype="Q4_1", tied=False, n_layer=2, seed=3)
    prompt = [(7 * i + 3) % 200 for i in range(40)]  # more than a pass of specee's kernels takes
    with Model(path, kernels=kernels) as m:
        write_heads(tmp_path / "h.gguf", m, {0: constant_predictor(-40.0)}, draft=random_draft(Reference(path), 7))
        with Heads(m, tmp_path / "h.gguf") as heads:
            logits = []
            for attach in (False, True):
                with m.context(n_ctx=64) as ctx:
                    if attach:
                        ctx.set_heads(heads)
                    ctx.prefill(prompt)
                    logits.append(ctx.logits())
    np.testing.assert_array_equal(logits[0], logits[1])
