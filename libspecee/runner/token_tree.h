// token_tree.h — a tree of drafted tokens laid out after the cache: each
// token's parent and depth, and who is whose ancestor (what its attention
// may see). The target's trees (context_tree.cpp) and the draft head's
// EAGLE-2 trees (context_draft_tree.cpp) both use it.
#pragma once

#include <cstdint>
#include <vector>

namespace specee {

struct token_tree {
    uint32_t             base = 0;  // the cell of row 0
    uint32_t             n    = 0;
    std::vector<int32_t> tokens, parents, depth;
    std::vector<uint8_t> ancestor;  // [n, n]: 1 where j is i or an ancestor of i
    std::vector<float>   features;  // [n, n_embd], with a draft head only (the target's pending tree)
};

// parents[i] is -1 (the token follows the cache) or an earlier row; null
// parents make a chain. Fails (INVALID_ARGUMENT) on a parent that is not.
token_tree make_token_tree(const int32_t * tokens, const int32_t * parents, int32_t n, uint32_t base);

} // namespace specee
