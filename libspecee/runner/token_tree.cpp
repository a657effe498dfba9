// token_tree.cpp — see token_tree.h.
#include "runner/token_tree.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

token_tree make_token_tree(const int32_t * tokens, const int32_t * parents, int32_t n, uint32_t base) {
    token_tree t;
    t.base = base;
    t.n    = uint32_t(n);
    t.tokens.assign(tokens, tokens + n);
    t.parents.resize(size_t(n));
    t.depth.resize(size_t(n));
    t.ancestor.assign(size_t(n) * size_t(n), 0);
    for (int32_t i = 0; i < n; i++) {
        const int32_t p = parents ? parents[i] : i - 1;  // no parents: a chain
        if (p < -1 || p >= i) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT,
                 "parent %d of tree token %d must be -1 (follows the cache) or an earlier token in [0, %d)", p, i, i);
        }
        t.parents[size_t(i)] = p;
        t.depth[size_t(i)]   = p < 0 ? 0 : t.depth[size_t(p)] + 1;
        uint8_t * row = &t.ancestor[size_t(i) * size_t(n)];
        if (p >= 0) {
            const uint8_t * prow = &t.ancestor[size_t(p) * size_t(n)];
            std::copy(prow, prow + p + 1, row);
        }
        row[i] = 1;
    }
    return t;
}

} // namespace specee
