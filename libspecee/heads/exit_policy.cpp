#include "heads/exit_policy.h"

#include "specee.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace specee {

std::vector<int32_t> exit_schedule::layers(const std::vector<int32_t> & offline,
                                           const std::set<int32_t> & has_predictor, int32_t n_layer) const {
    std::set<int32_t> out;
    auto add = [&](int32_t l) {
        if (l >= 0 && l + 1 < n_layer && has_predictor.count(l)) {
            out.insert(l);
        }
    };
    if (use_offline) {
        for (int32_t l : offline) {
            add(l);
        }
    }
    if (use_online && recent.size() >= n_recent) {
        for (int32_t e : recent) {
            add(e - 2);
            add(e);
            add(e + 2);
        }
    }
    return std::vector<int32_t>(out.begin(), out.end());
}

void exit_schedule::record_exit(int32_t layer) {
    recent.push_back(layer);
    if (recent.size() > n_recent) {
        recent.pop_front();
    }
}

namespace {

void softmax(const float * logits, int32_t k, float * p) {
    float mx = logits[0];
    for (int32_t i = 1; i < k; i++) {
        mx = std::max(mx, logits[i]);
    }
    float sum = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        p[i] = std::exp(logits[i] - mx);
        sum += p[i];
    }
    for (int32_t i = 0; i < k; i++) {
        p[i] /= sum;
    }
}

} // namespace

void exit_features(const float * logits, const float * prev_logits, int32_t k, float * out) {
    float p[SPECEE_MAX_CANDIDATES];
    float p_prev[SPECEE_MAX_CANDIDATES];
    softmax(logits, k, p);
    if (prev_logits) {
        softmax(prev_logits, k, p_prev);
    }
    for (int32_t i = 0; i < k; i++) {
        out[i]         = logits[i];
        out[k + i]     = p[i];
        out[2 * k + i] = prev_logits ? p[i] - p_prev[i] : 0.0f;
    }
}

} // namespace specee
