// context_exit.cpp — the SpecEE decode step: layers in segments between
// checked layers, a predictor at each, exit when it fires and the layer's
// argmax is a candidate. ref: SpecEE sec. 4; docs/design.md#exit-verification.
#include "runner/context.h"

#include "api/error.h"

#include <algorithm>

namespace specee {

void context::set_heads(const heads * h) {
    require_no_pending_exit();
    early_exit_.attached = h;
    early_exit_.predictor_layers.clear();
    draft_.kv.reset();
    draft_.pending_tokens.clear();
    draft_.pending_features.clear();
    runner_.forget(graph_kind::draft_head);  // another draft head's weights
    if (h && h->draft.present) {
        if (kv_.n_past() > 0) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT,
                 "attach heads with a draft head before the prompt (the draft needs its features)");
        }
        hparams one = model_.hp;
        one.n_layer = 1;
        draft_.kv = std::make_unique<kv_cache>(one, kv_.n_ctx(), kv_.v_trans());
    }
    if (h) {
        for (const auto & kvp : h->predictors) {
            early_exit_.predictor_layers.insert(kvp.first);
        }
        exit_params p = early_exit_.params;  // the head file's defaults; set_exit_params keeps the schedule in step
        p.threshold   = h->threshold;
        p.verify_full = h->verify_full;
        p.use_online  = h->use_online;
        set_exit_params(p);
    }
    early_exit_.schedule.reset();
}

void context::set_exit_params(const exit_params & p) {
    if (!(p.threshold >= 0.0f && p.threshold <= 1.0f)) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "threshold %g is outside [0, 1]", double(p.threshold));
    }
    if (p.exact && (p.fill_kv || p.full_depth)) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "exact early exit takes neither fill_kv (approximate K/V) nor full_depth");
    }
    if (p.max_chain < 1 || p.max_chain > SPECEE_MAX_EXIT_CHAIN) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "max_chain %d is outside [1, %d]", p.max_chain, SPECEE_MAX_EXIT_CHAIN);
    }
    if (p.exact != early_exit_.params.exact || p.max_chain < early_exit_.params.max_chain) {
        require_no_pending_exit();
    }
    early_exit_.params = p;
    early_exit_.schedule.use_offline = p.use_offline;
    early_exit_.schedule.use_online  = p.use_online;
}

std::vector<int32_t> context::checked_layers() const {
    if (early_exit_.attached == nullptr) {
        return {};
    }
    return early_exit_.schedule.layers(early_exit_.attached->offline_layers, early_exit_.predictor_layers, model_.hp.n_layer);
}

int32_t context::logits_argmax_in(const int32_t * cands, int32_t n_cand, bool & is_candidate) const {
    const int32_t am = argmax(0);
    is_candidate = std::find(cands, cands + n_cand, am) != cands + n_cand;
    return am;
}

void context::begin_candidate_step(int32_t token, const int32_t * cands, int32_t n_cand, bool chaining) {
    check_tokens(&token, 1, chaining);
    if (cands == nullptr || n_cand < 1 || n_cand > SPECEE_MAX_CANDIDATES) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "1 to %d candidates are needed, not %d", SPECEE_MAX_CANDIDATES, n_cand);
    }
    for (int32_t i = 0; i < n_cand; i++) {
        if (cands[i] < 0 || cands[i] >= model_.hp.n_vocab) {
            fail(SPECEE_STATUS_INVALID_ARGUMENT, "candidate %d is outside the vocabulary [0, %d)", cands[i],
                 model_.hp.n_vocab);
        }
    }
    if (has_draft() && !draft_.pending_tokens.empty()) {
        draft_sync(token);  // catch the draft up; this step's candidates are the caller's
    }
    clear_outputs();
    draft_.next_cands.clear();
}

void context::run_to_output(int32_t token, forward_plan & plan, int32_t from, int32_t to) {
    plan.layer_begin  = from;
    plan.layer_end    = to;
    plan.save_state   = false;
    plan.n_logits     = 1;
    plan.n_cand       = 0;
    // the draft head's feature: an exact exit's comes from its verification,
    // so an exact step keeps only full depth's, unless the exit may chain
    // (the draft head then guesses the chain's next candidates from it)
    const bool feature = has_draft() && (to == model_.hp.n_layer || exit_feature_wanted());
    plan.hidden_layer = feature ? to : -1;
    plan.hidden_norm  = true;
    clear_outputs();
    run(&token, plan);
    plan.hidden_layer = -1;
}

int32_t context::trace_step(int32_t token, const int32_t * cands, int32_t n_cand, float * cand_logits,
                            int32_t * layer_argmax) {
    const hparams & hp = model_.hp;
    if (cand_logits == nullptr || layer_argmax == nullptr) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "trace_step needs its output arrays");
    }
    begin_candidate_step(token, cands, n_cand);
    const uint32_t pos  = kv_.n_past();
    forward_plan   plan = plan_at_end(1);
    plan.layer_end    = hp.n_layer;
    plan.n_logits     = 1;
    plan.n_cand       = n_cand;
    plan.trace        = true;
    plan.hidden_layer = has_draft() ? hp.n_layer : -1;
    plan.hidden_norm  = true;
    try {
        run(&token, plan, cands);
    } catch (...) {
        kv_.truncate(pos);
        throw;
    }
    kv_.commit(pos, 1, hp.n_layer);
    std::copy(cand_logits_.begin(), cand_logits_.end(), cand_logits);
    std::copy(early_exit_.trace_argmax.begin(), early_exit_.trace_argmax.end(), layer_argmax);
    const int32_t chosen = argmax(0);
    if (has_draft()) {
        draft_.next_cands = draft_run(&chosen, hidden_.data() + hidden_.size() - size_t(hp.n_embd), 1);
    }
    return chosen;
}

bool context::exit_feature_wanted() const {
    const exit_params & p = early_exit_.params;
    return !p.exact || int32_t(early_exit_.chain.size()) + 1 < p.max_chain;
}

int32_t context::decode_with_candidates(int32_t token, const int32_t * cands, int32_t n_cand, int32_t * out_full) {
    const hparams & hp = model_.hp;
    if (early_exit_.attached == nullptr) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "no heads are attached to this context (specee_set_heads)");
    }
    if (n_cand != early_exit_.attached->n_cand) {
        fail(SPECEE_STATUS_INVALID_ARGUMENT, "%d candidates given; the heads were trained for %d", n_cand,
             early_exit_.attached->n_cand);
    }
    scoped_timer step_timer(perf_.t_exit_step_us);
    const int32_t cap = chain_cap(token);  // n_layer, or the last exit layer of the chain this step continues
    begin_candidate_step(token, cands, n_cand, /*chaining=*/cap < hp.n_layer);
    const uint32_t pos  = kv_.n_past();
    forward_plan   plan = plan_at_end(1);
    auto &         chain = early_exit_.chain;
    const size_t   chain_before = chain.size();
    // this step's exit feature feeds the draft head (a lossy exit, or an exact
    // one that a chained step may follow)
    const bool     exit_feature = exit_feature_wanted();

    int32_t exit_layers = hp.n_layer;  // layers computed when the token was chosen
    int32_t chosen      = -1;
    int32_t done        = 0;           // layers computed so far
    std::vector<float> features(static_cast<size_t>(SPECEE_EXIT_FEATURES_PER_CANDIDATE * n_cand));
    early_exit_.last_check_layers.clear();
    early_exit_.last_check_features.clear();
    try {
        const std::vector<int32_t> checks = checked_layers();
        for (size_t c = 0; c < checks.size() && chosen < 0 && checks[c] < cap; c++) {
            const int32_t il = checks[c];
            // layers [done, il] then the candidates' logits after layer il
            plan.layer_begin  = done;
            plan.layer_end    = il + 1;
            plan.save_state   = true;
            plan.n_logits     = 0;
            plan.n_cand       = n_cand;
            // without the full-vocabulary pass, an exit's draft feature comes from here
            const bool feature = has_draft() && !early_exit_.params.verify_full && exit_feature;
            plan.hidden_layer = feature ? il + 1 : -1;
            plan.hidden_norm  = true;
            run(&token, plan, cands);
            done = il + 1;

            float prob = 0.0f;
            {
                scoped_timer timer(perf_.t_predictor_us);
                exit_features(cand_logits_.data(), cand_logits_prev_.empty() ? nullptr : cand_logits_prev_.data(),
                              n_cand, features.data());
                prob = early_exit_.attached->predictors.at(il)(features.data());
            }
            early_exit_.last_check_layers.push_back(il);
            early_exit_.last_check_features.insert(early_exit_.last_check_features.end(), features.begin(), features.end());
            early_exit_.stats.n_checks++;
            if (prob <= early_exit_.params.threshold) {
                continue;
            }
            early_exit_.stats.n_fires++;
            if (!early_exit_.params.verify_full) {
                // the candidates' own logits decide: no lm_head pass, no logits
                const auto best = std::max_element(cand_logits_.begin(), cand_logits_.begin() + n_cand);
                chosen      = cands[best - cand_logits_.begin()];
                exit_layers = done;
                continue;
            }
            // the full-vocabulary logits at this layer decide (ref: SpecEE sec. 4.2)
            scoped_timer timer(perf_.t_verify_us);
            run_to_output(token, plan, done, done);
            bool hit = false;
            const int32_t am = logits_argmax_in(cands, n_cand, hit);
            if (hit) {
                chosen      = am;
                exit_layers = done;
            } else {
                early_exit_.stats.n_false_fires++;
            }
        }
        if (chosen < 0 && cap < hp.n_layer) {
            // a chained step with no exit at or below the chain's last exit
            // layer: it stops there, chooses nothing and ends the chain
            if (done < cap) {
                plan.layer_begin  = done;
                plan.layer_end    = cap;
                plan.save_state   = true;
                plan.n_logits     = 0;
                plan.n_cand       = 0;
                plan.hidden_layer = -1;
                run(&token, plan);
                done = cap;
            }
            logits_.clear();
            n_outputs_ = 0;
            chain.push_back(exit_state_at(token, pos, done, -1));
        } else if (chosen < 0 || early_exit_.params.full_depth) {
            // the rest of the layers: the normal path, or the debug reference
            std::vector<float> exit_logits, exit_hidden;
            if (chosen >= 0) {
                exit_logits.swap(logits_);
                exit_hidden.swap(hidden_);
            }
            run_to_output(token, plan, done, hp.n_layer);
            if (chosen >= 0) {
                hidden_.swap(exit_hidden);  // the draft follows the token that was chosen
            }
            const int32_t full = argmax(0);
            if (out_full) {
                *out_full = full;
            }
            if (chosen < 0) {
                chosen = full;
            } else {
                logits_.swap(exit_logits);  // the caller gets the logits it decided on
            }
            done = hp.n_layer;
        } else {
            if (out_full) {
                *out_full = -1;
            }
            if (early_exit_.params.exact) {
                // the chosen token is a draft: verify_exit runs this token's
                // remaining layers from here, beside it (or a chained step first)
                chain.push_back(exit_state_at(token, pos, done, chosen));
            }
            if (early_exit_.params.fill_kv) {
                plan.layer_begin = done;
                plan.layer_end   = hp.n_layer;
                plan.save_state  = false;
                plan.n_logits    = 0;
                plan.n_cand      = 0;
                plan.fill_kv     = true;
                std::vector<float> exit_logits;
                exit_logits.swap(logits_);
                run(&token, plan);
                logits_.swap(exit_logits);
                done = hp.n_layer;  // every layer now holds K/V for this position
            }
        }
    } catch (...) {
        kv_.truncate(pos);  // this position never happened
        logits_.clear();
        n_outputs_ = 0;
        chain.resize(chain_before);
        throw;
    }

    // layers after the exit never computed this token's K/V: their masks hide
    // it (lossy), or its verification computes it (exact)
    kv_.commit(pos, 1, done);
    const bool exited = chosen >= 0 && exit_layers < hp.n_layer;
    early_exit_.last_exit_layer = chosen >= 0 ? exit_layers : done;
    early_exit_.stats.n_steps++;
    early_exit_.stats.sum_exit_layers += uint64_t(exit_layers);
    if (chain.size() > chain_before) {
        // an exact chain's exits, as the online schedule learns them: a
        // truncation that drops their drafts takes them back
        chain_exits & learnt = early_exit_.learnt;
        if (chain_before == 0) {
            learnt               = chain_exits();
            learnt.recent_before = early_exit_.schedule.recent;
            learnt.first_pos     = pos;
        }
        learnt.exit_index.push_back(exited ? exit_layers - 1 : -1);
    }
    if (exited) {
        early_exit_.stats.n_exits++;
        early_exit_.schedule.record_exit(exit_layers - 1);
    }
    if (chosen >= 0) {
        early_exit_.stats.n_draft_top1 += chosen == cands[0];
        early_exit_.stats.n_draft_topk += std::find(cands, cands + n_cand, chosen) != cands + n_cand;
    }
    if (has_draft() && chosen >= 0 && (chain.size() == chain_before || exit_feature)) {
        // the draft's next guess, from this step's feature and chosen token
        // (after an exact exit the verification's full-depth features replace
        // it; a chain's next step takes the guess from the exit layer's)
        draft_.next_cands = draft_run(&chosen, hidden_.data() + hidden_.size() - size_t(hp.n_embd), 1);
    }
    return chosen;
}

pending_exit context::exit_state_at(int32_t token, uint32_t pos, int32_t layer, int32_t draft) const {
    pending_exit pe;
    pe.token = token;
    pe.pos   = pos;
    pe.layer = layer;
    pe.draft = draft;
    pe.state.resize(size_t(model_.hp.n_embd));
    ggml_backend_tensor_get(state_, pe.state.data(), 0, pe.state.size() * sizeof(float));
    return pe;
}

} // namespace specee
