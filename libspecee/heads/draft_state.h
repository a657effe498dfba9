// draft_state.h — what a context keeps for its draft head (EAGLE): the
// draft's one-layer cache, the target tokens and features it has not
// consumed yet, and the outputs of its last pass. The passes are
// context_draft.cpp's and context_draft_tree.cpp's; their graphs live with
// the context's other graphs.
#pragma once

#include "kv/kv_cache.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace specee {

struct draft_state {
    std::unique_ptr<kv_cache> kv;                // nullptr: the attached heads have no draft head
    std::vector<int32_t>      pending_tokens;    // target tokens not fed to the draft yet
    std::vector<float>        pending_features;  // their features [n_pending, n_embd]
    std::vector<float>        logits;            // [rows, n_vocab] of the last draft pass
    size_t                    n_vocab = 0;       // the draft's output rows (a reduced vocabulary or the model's)
    std::vector<float>        hidden;            // the last pass's predicted features [rows, n_embd]
    std::vector<int32_t>      next_cands;        // its candidates after the last early-exit step
};

} // namespace specee
