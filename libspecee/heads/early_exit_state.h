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
    int32_t max_chain = 1;      // exact: unverified exits one verification may take (a chain)
};

// A token of an exact early-exit chain waiting for its verification: the
// token, where it stopped, the hidden state it stopped at, and the draft it
// chose (the next token of the chain). A chained step that reached the
// chain's cap without an exit chose nothing (draft -1) and ends the chain.
struct pending_exit {
    int32_t            token = -1;
    uint32_t           pos   = 0;
    int32_t            layer = 0;   // layers it computed; its own row enters the verification pass here
    int32_t            draft = -1;  // the token its exit chose; -1: stopped at the cap, no exit
    std::vector<float> state;       // [n_embd] residual stream after those layers
};

// A chain's exits as the online schedule learnt them: the schedule's recent
// exits before the chain began, and each chain token's exit (layer index,
// -1 for none), so that a truncation can take back the exits it drops.
struct chain_exits {
    std::deque<int32_t>  recent_before;
    uint32_t             first_pos = UINT32_MAX;  // UINT32_MAX: none to take back
    std::vector<int32_t> exit_index;              // per token of the chain, from first_pos on
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
    std::vector<pending_exit> chain;           // exact mode, between the first exit and verify_exit
    // exact mode: the exits of the chain pending or verified last (until the
    // next pass); a truncation that drops a draft (a miss) takes its exit and
    // those after it back out of the online schedule
    chain_exits          learnt;
    std::vector<int32_t> last_check_layers;    // the last step's checks, in order
    std::vector<float>   last_check_features;  // [n checks, 3 n_cand] of them
    std::vector<int32_t> trace_argmax;         // [n_layer] of the last trace step
    std::vector<float>   trace_change;         // [n_layer] of the last trace step: how much each layer moved it
    std::vector<float>   trace_hidden;         // [n_layer][n_embd] of the last trace step: final-normed states
};

} // namespace specee
