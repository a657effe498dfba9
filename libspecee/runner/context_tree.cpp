// context_tree.cpp — token trees: many drafted continuations verified in one
// pass, each token attending to the cache and to its own ancestors only
// (ref: SpecInfer's tree attention; docs/speculative.md), then the accepted
// path compacted into place.
#include "runner/context.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

void context::require_no_tree() const {
    if (tree_pending()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT,
             "a token tree is pending: keep a path of it (specee_tree_accept) or truncate to at most %u first",
             tree_.base);
    }
}

// Checks a tree pass's row depths (SpaDec's layer skipping): each in
// [1, n_layer] and never above the row before it (so never above its
// parent's: a row cannot attend to K/V its ancestors never computed).
static void check_depths(const int32_t * depths, uint32_t n, int n_layer) {
    for (uint32_t i = 0; i < n; i++) {
        const int32_t d = depths[i];
        if (d < 1 || d > n_layer) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "row %u's depth %d is outside [1, %d]", i, d, n_layer);
        }
        if (i > 0 && d > depths[i - 1]) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "row %u's depth %d rises above row %u's %d: order rows by depth",
                 i, d, i - 1, depths[i - 1]);
        }
    }
}

void context::decode_tree(const int32_t * tokens, const int32_t * parents, int32_t n, const int32_t * depths) {
    check_tokens(tokens, n);
    if (uint32_t(n) > n_batch_) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "a token tree of %d tokens is larger than n_batch = %u", n, n_batch_);
    }
    token_tree t = make_token_tree(tokens, parents, n, kv_.n_past());
    const int n_layer = model_.hp.n_layer;
    if (depths != nullptr) {
        check_depths(depths, t.n, n_layer);
        if (std::all_of(depths, depths + n, [&](int32_t d) { return d == n_layer; })) {
            depths = nullptr;  // every row runs every layer: the ordinary pass
        }
    }
    clear_outputs();

    forward_plan plan;
    plan.pos          = t.base;
    plan.n_tokens     = t.n;
    plan.n_kv         = padded_n_kv(t.base + t.n);
    plan.layer_end    = model_.hp.n_layer;
    plan.n_logits     = n;
    plan.as_steps     = exact_verify_;  // each row's logits exactly a plain step's: greedy keeps plain output
    ask_hidden(plan);
    if (depths != nullptr) {
        plan.depths.assign(depths, depths + n);
    }
    const row_layout rows = row_layout::of_tree(t, 0, t.n);
    try {
        run(tokens, plan, nullptr, nullptr, &rows);
    } catch (...) {
        clear_outputs();
        throw;
    }
    if (depths == nullptr) {
        kv_.commit(t.base, t.n, n_layer);
    } else {
        for (uint32_t i = 0; i < t.n; i++) {  // a row that left early has no K/V above its depth
            kv_.commit(t.base + i, 1, depths[i]);
        }
    }
    if (has_draft()) {
        t.features.assign(hidden_.end() - long(size_t(n) * size_t(model_.hp.n_embd)), hidden_.end());
    }
    tree_ = std::move(t);
}

void context::tree_accept(const int32_t * rows, int32_t n) {
    if (!tree_pending()) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "no token tree is pending (specee_decode_tree makes one)");
    }
    if (n < 0 || uint32_t(n) > tree_.n || (n > 0 && rows == nullptr)) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "a path of 0 to %u tree tokens is needed, not %d", tree_.n, n);
    }
    std::vector<std::pair<uint32_t, uint32_t>> moves;  // (from cell, to cell)
    std::vector<int32_t> path_tokens;
    std::vector<float>   path_features;
    const size_t n_embd = size_t(model_.hp.n_embd);
    for (int32_t k = 0; k < n; k++) {
        const int32_t r = rows[k];
        if (r < 0 || uint32_t(r) >= tree_.n) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "path row %d is outside the tree's [0, %u)", r, tree_.n);
        }
        const int32_t want = k == 0 ? -1 : rows[k - 1];
        if (tree_.parents[size_t(r)] != want) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "path row %d (step %d) has parent %d, not %d: not a path from a root",
                 r, k, tree_.parents[size_t(r)], want);
        }
        if (r != k) {
            moves.emplace_back(tree_.base + uint32_t(r), tree_.base + uint32_t(k));
        }
        path_tokens.push_back(tree_.tokens[size_t(r)]);
        if (!tree_.features.empty()) {
            const float * f = &tree_.features[size_t(r) * n_embd];
            path_features.insert(path_features.end(), f, f + n_embd);
        }
    }
    // rows ascend along a path (parents come first), so a move's source is
    // never an earlier move's destination
    kv_.move_cells(moves);
    const uint32_t base = tree_.base;
    tree_ = token_tree();
    kv_.truncate(base + uint32_t(n));
    if (has_draft() && n > 0) {
        keep_pending(path_tokens.data(), path_features.data(), uint32_t(n));
    }
}

} // namespace specee
