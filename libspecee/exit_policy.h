// exit_policy.h — which layers to check, and the predictor's features.
// ref: SpecEE (ISCA 2025) sec. 4 (features), sec. 5 (two-level scheduling);
// DESIGN.md sec. 2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <set>
#include <vector>

namespace specee {

struct exit_schedule {
    bool use_offline = true;   // the head file's layer set
    bool use_online  = true;   // e-2, e, e+2 around the last exits
    static constexpr size_t n_recent = 5;
    std::deque<int32_t> recent;  // layer indices of the last exits (full-depth steps not counted)

    // Ascending layer indices to check this step: offline set plus, once
    // n_recent exits are known, e-2, e, e+2 for each; only layers with a
    // predictor and never the last layer.
    std::vector<int32_t> layers(const std::vector<int32_t> & offline, const std::set<int32_t> & has_predictor,
                                int32_t n_layer) const;

    void record_exit(int32_t layer);
    void reset() { recent.clear(); }
};

// The predictor's 3k features from the k candidate logits at this layer:
// logits, softmax over them, and the change of that softmax since the
// previous checked layer (the softmax itself at the first one).
// `p_prev` (k values) is updated to this layer's softmax.
void exit_features(const float * cand_logits, int32_t k, std::vector<float> & p_prev, bool first, float * out);

} // namespace specee
