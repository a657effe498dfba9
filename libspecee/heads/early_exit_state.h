// early_exit_state.h — what a context keeps for speculative early exit:
// the attached heads, their settings and schedule, statistics, and what
// the last step checked. The steps themselves are context_exit.cpp's.
#pragma once

#include "heads/exit_policy.h"
#include "heads/heads.h"

#include <cstdint>
#include <set>
#include <vector>

namespace specee {

struct exit_params {
    float threshold   = 0.5f;
    bool  use_offline = true;
    bool  use_online  = true;
    bool  full_depth  = false;  // also run every layer and report the full model's token
    bool  fill_kv     = false;  // give skipped layers K/V projected from the exit hidden state
    bool  verify_full = true;   // on a fire, the full-vocabulary argmax must be a candidate
    bool  exact       = false;  // an exit's token is a draft: verify_exit completes the exited
                                // token's layers beside it (docs/exact-specee.md)
};

// An exact early exit waiting for its verification: the token that exited,
// where, and the hidden state it stopped at.
struct pending_exit {
    int32_t            token = -1;  // -1: none
    uint32_t           pos   = 0;
    int32_t            layer = 0;   // layers it computed; its own row enters the verification pass here
    std::vector<float> state;       // [n_embd] residual stream after those layers
    bool active() const { return token >= 0; }
};

struct exit_stats {
    uint64_t n_steps = 0, n_exits = 0, sum_exit_layers = 0, n_checks = 0, n_fires = 0, n_false_fires = 0;
    uint64_t n_draft_top1 = 0, n_draft_topk = 0;
};

struct early_exit_state {
    const heads *        attached = nullptr;  // nullptr: no heads, no early exit
    std::set<int32_t>    predictor_layers;    // layers with a predictor in the attached heads
    exit_params          params;
    exit_schedule        schedule;
    exit_stats           stats;
    int32_t              last_exit_layer = -1;
    pending_exit         pending;              // exact mode, between an exit and its verify_exit
    // exact mode: the cell of the draft verify_exit checked last, until the
    // next pass; a truncation that drops it (a miss) takes the exit back out
    // of the online schedule. UINT32_MAX: none.
    uint32_t             verified_draft_cell = UINT32_MAX;
    std::vector<int32_t> last_check_layers;    // the last step's checks, in order
    std::vector<float>   last_check_features;  // [n checks, 3 n_cand] of them
    std::vector<int32_t> trace_argmax;         // [n_layer] of the last trace step
    std::vector<float>   trace_change;         // [n_layer] of the last trace step: how much each layer moved it
    std::vector<float>   trace_hidden;         // [n_layer][n_embd] of the last trace step: final-normed states
};

} // namespace specee
