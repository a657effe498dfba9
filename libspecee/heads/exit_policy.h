// exit_policy.h — which layers to check, and the predictor's features.
// ref: SpecEE (ISCA 2025) sec. 4 (features), sec. 5 (two-level scheduling);
// docs/design.md#predictor-features, #schedule.
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

// The exit features of one layer (version SPECEE_EXIT_FEATURE_VERSION, the
// one definition that training and inference share, docs/heads.md): from
// the k candidates' logits after layer l and after layer l - 1
// (`prev_logits`, NULL at layer 0), out[3k] = the logits, their softmax p_l,
// and p_l - p_(l-1) (zero at layer 0). Depending on the previous *layer*
// rather than the previous *checked* layer keeps the features the same
// whatever the schedule checks, so predictors trained on traces of every
// layer see at inference exactly what they were trained on.
void exit_features(const float * logits, const float * prev_logits, int32_t k, float * out);

} // namespace specee
