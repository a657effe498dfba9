// context_draft_tree.cpp — EAGLE-2's dynamic draft tree: the draft head
// expands its likeliest guesses level by level, one pass per level, and the
// likeliest nodes of the whole expansion are kept. ref: EAGLE-2 (Li et al.
// 2024); docs/speculative.md#the-eagle-draft-head.
#include "runner/context.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

namespace {

// A drafted token: its parent node (-1: it follows next_token), its draft
// probability given the parent, the product of those along its path, and
// its row in the draft's cache once expanded (-1 until then).
struct draft_node {
    int32_t token;
    int32_t parent;
    float   prob;
    double  path;
    int32_t row = -1;
};

// Nodes ranked best first: higher path probability, then earlier made. A
// child's path probability never exceeds its parent's and it is made
// later, so every prefix of this order is a tree.
bool ranks_before(const std::vector<draft_node> & nodes, int32_t a, int32_t b) {
    return nodes[size_t(a)].path > nodes[size_t(b)].path || (nodes[size_t(a)].path == nodes[size_t(b)].path && a < b);
}

// The draft cache rows a full expansion takes after the sync: one per
// expanded node, at most `width` per level after the first (whose k nodes
// each have k children). Counted up to just past `limit`.
int64_t expansion_rows(int64_t depth, int64_t width, int64_t k, int64_t limit) {
    int64_t level = k, rows = 0;
    for (int64_t d = 1; d < depth && rows <= limit; d++) {
        const int64_t expanded = std::min(width, level);
        rows += expanded;
        level = std::min(expanded * k, limit + 1);
    }
    return rows;
}

} // namespace

int32_t context::draft_tree(int32_t next_token, int32_t depth, int32_t width, int32_t k, int32_t capacity,
                            int32_t * out_tokens, int32_t * out_parents, float * out_probs, float * out_path) {
    // ---- every check before the context changes ----
    if (out_tokens == nullptr || out_parents == nullptr || out_probs == nullptr) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "a draft tree needs out_tokens, out_parents and out_probs");
    }
    if (depth < 1 || k < 1 || capacity < 1) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "a draft tree needs depth >= 1, k >= 1 and capacity >= 1, not %d, %d, %d",
             depth, k, capacity);
    }
    if (width < 1 || uint32_t(width) > n_batch_) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "width = %d must be in [1, n_batch = %u] (a level is one pass)", width,
             n_batch_);
    }
    require_draft_k(k);
    require_no_tree();
    const uint64_t synced_at = uint64_t(draft_.kv->n_past()) + draft_.pending_tokens.size();  // after the sync
    const int64_t  n_rows    = expansion_rows(depth, width, k, int64_t(draft_.kv->n_ctx()));
    if (synced_at + uint64_t(n_rows) > draft_.kv->n_ctx()) {
        fail(SPECEE_STATUS_CONTEXT_FULL,
             "a draft tree of depth %d and width %d needs up to %lld draft cache cells after the %llu synced ones; "
             "n_ctx = %u", depth, width, (long long) n_rows, (unsigned long long) synced_at, draft_.kv->n_ctx());
    }

    // ---- the first level: the draft's k best after the sync ----
    draft_sync(next_token);  // checks next_token and the pending features
    const uint32_t synced = draft_.kv->n_past();
    const size_t   n_embd = size_t(model_.hp.n_embd);
    const std::vector<float> root_feature = draft_.hidden;  // what every first-level node is fed
    std::vector<draft_node>  nodes;
    std::vector<float>       probs(static_cast<size_t>(k));
    auto add_children = [&](size_t logits_row, int32_t parent) {
        const std::vector<int32_t> top = draft_top(logits_row, size_t(k), probs.data());
        const double base = parent < 0 ? 1.0 : nodes[size_t(parent)].path;
        for (size_t i = 0; i < top.size(); i++) {
            nodes.push_back({top[i], parent, probs[i], base * double(probs[i])});
        }
    };
    add_children(0, -1);

    // ---- further levels: expand the likeliest nodes of the last one ----
    std::vector<int32_t> cache_tokens, cache_parents;  // the expanded nodes, as a tree of draft cache rows
    std::vector<float>   cache_features;               // their predicted features [rows, n_embd]
    try {
        size_t level_begin = 0;
        for (int32_t d = 1; d < depth; d++) {
            const size_t level_end = nodes.size();
            std::vector<int32_t> frontier(level_end - level_begin);
            for (size_t i = 0; i < frontier.size(); i++) {
                frontier[i] = int32_t(level_begin + i);
            }
            auto better = [&](int32_t a, int32_t b) { return ranks_before(nodes, a, b); };
            std::sort(frontier.begin(), frontier.end(), better);
            frontier.resize(std::min(frontier.size(), size_t(width)));
            if (nodes.size() >= size_t(capacity)) {
                // a node no better than the capacity-th best so far cannot get
                // a descendant into the result: leave it unexpanded
                std::vector<int32_t> all(nodes.size());
                for (size_t i = 0; i < all.size(); i++) {
                    all[i] = int32_t(i);
                }
                std::nth_element(all.begin(), all.begin() + (capacity - 1), all.end(), better);
                const double bar = nodes[size_t(all[size_t(capacity - 1)])].path;
                frontier.erase(std::remove_if(frontier.begin(), frontier.end(),
                                              [&](int32_t f) { return nodes[size_t(f)].path <= bar; }),
                               frontier.end());
            }
            if (frontier.empty()) {
                break;
            }
            // each node's input: its token with its parent's predicted feature
            const size_t first = cache_tokens.size();
            std::vector<float> features;
            for (int32_t f : frontier) {
                draft_node & node = nodes[size_t(f)];
                node.row = int32_t(cache_tokens.size());
                const int32_t parent_row = node.parent < 0 ? -1 : nodes[size_t(node.parent)].row;
                cache_tokens.push_back(node.token);
                cache_parents.push_back(parent_row);
                const float * pf = parent_row < 0 ? root_feature.data() : &cache_features[size_t(parent_row) * n_embd];
                features.insert(features.end(), pf, pf + n_embd);
            }
            // one pass over the level: positions synced + depth, each row
            // attending to the synced cache and its own ancestors
            const token_tree t = make_token_tree(cache_tokens.data(), cache_parents.data(), int32_t(cache_tokens.size()),
                                           synced);
            const row_layout rows = row_layout::of_tree(t, uint32_t(first), uint32_t(frontier.size()));
            draft_pass(&cache_tokens[first], features.data(), uint32_t(frontier.size()), /*every_row=*/true, &rows);
            cache_features.insert(cache_features.end(), draft_.hidden.begin(), draft_.hidden.end());
            for (size_t i = 0; i < frontier.size(); i++) {
                add_children(i, frontier[i]);
            }
            level_begin = level_end;
        }
    } catch (...) {
        draft_.kv->truncate(synced);
        throw;
    }
    draft_.kv->truncate(synced);  // the tree was a guess: keep only what the target confirmed

    // ---- the rerank: the capacity likeliest nodes, best first ----
    std::vector<int32_t> order(nodes.size());
    for (size_t i = 0; i < order.size(); i++) {
        order[i] = int32_t(i);
    }
    const size_t n_out = std::min(order.size(), size_t(capacity));
    std::partial_sort(order.begin(), order.begin() + long(n_out), order.end(),
                      [&](int32_t a, int32_t b) { return ranks_before(nodes, a, b); });
    std::vector<int32_t> out_index(nodes.size(), -1);
    for (size_t i = 0; i < n_out; i++) {
        const draft_node & node = nodes[size_t(order[i])];
        out_index[size_t(order[i])] = int32_t(i);
        const int32_t parent = node.parent < 0 ? -1 : out_index[size_t(node.parent)];
        if (node.parent >= 0 && parent < 0) {
            fail(SPECEE_STATUS_INTERNAL, "draft tree node %zu ranks above its parent", i);
        }
        out_tokens[i]  = node.token;
        out_parents[i] = parent;
        out_probs[i]   = node.prob;
        if (out_path) {
            out_path[i] = float(node.path);
        }
    }
    return int32_t(n_out);
}

} // namespace specee
