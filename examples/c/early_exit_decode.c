/* early_exit_decode.c — libspecee embedded in a C program: load a model and a
 * head file, prefill a prompt of token ids, then decode step by step with the
 * draft head's candidates and exact early exit: a step that exits returns a
 * draft, which specee_verify_exit checks against the full model in one pass
 * beside the token after it. The output is plain greedy decoding's.
 *
 *   early_exit_decode MODEL.gguf HEADS.gguf N TOKEN [TOKEN ...]
 *
 * Greedy, one thread; prints "token T layer L of N" per early-exit step (T
 * the step's token, a draft when L < N), then "tokens: ..." (the prompt's next
 * token first): the tokens specee's Python API gives for the same heads
 * (tests/test_c_api.py checks it). Built by CMake with
 * -DSPECEE_BUILD_EXAMPLES=ON, or: cc -Iinclude early_exit_decode.c -lspecee */
#include "specee.h"

#include <stdio.h>
#include <stdlib.h>

static int fail(const char * what, const char * message) {
    fprintf(stderr, "error: %s: %s\n", what, message);
    return 1;
}

int main(int argc, char ** argv) {
    char                     err[512];
    struct specee_model *    model = NULL;
    struct specee_context *  ctx   = NULL;
    struct specee_heads *    heads = NULL;
    specee_token             prompt[256];
    specee_token             cands[SPECEE_MAX_CANDIDATES];
    int32_t                  n_cands = 0;
    int                      rc      = 1;
    if (argc < 5 || argc - 4 > 256 || atoi(argv[3]) < 1) {
        fprintf(stderr, "usage: %s MODEL.gguf HEADS.gguf N TOKEN [TOKEN ...] (N >= 1, at most 256 tokens)\n", argv[0]);
        return 2;
    }
    const int n_new    = atoi(argv[3]);
    const int n_prompt = argc - 4;
    for (int i = 0; i < n_prompt; i++) {
        prompt[i] = (specee_token) atoi(argv[4 + i]);
    }

    struct specee_model_params mp = specee_model_default_params();
    if (specee_model_load(argv[1], &mp, &model, err, sizeof err) != SPECEE_STATUS_OK) {
        return fail("model", err);
    }
    struct specee_context_params cp = specee_context_default_params();
    cp.n_ctx     = (uint32_t) (n_prompt + n_new + 1);
    cp.n_threads = 1;
    if (specee_context_init(model, &cp, &ctx, err, sizeof err) != SPECEE_STATUS_OK) {
        rc = fail("context", err);
        goto done;
    }
    if (specee_heads_load(model, argv[2], &heads, err, sizeof err) != SPECEE_STATUS_OK) {
        rc = fail("heads", err);
        goto done;
    }
    if (!specee_heads_has_draft(heads)) {
        rc = fail("heads", "no draft head: this example takes its candidates from one");
        goto done;
    }
    struct specee_exit_params ep;
    if (specee_set_heads(ctx, heads) != SPECEE_STATUS_OK || specee_get_exit_params(ctx, &ep) != SPECEE_STATUS_OK) {
        rc = fail("heads", specee_context_error(ctx));
        goto done;
    }
    ep.exact       = true;   /* an exit's token is a draft: specee_verify_exit checks it */
    ep.verify_full = false;  /* exits pick from the candidates; the full model checks them anyway */
    if (specee_set_exit_params(ctx, &ep) != SPECEE_STATUS_OK ||
        specee_prefill(ctx, prompt, n_prompt, false) != SPECEE_STATUS_OK) {
        rc = fail("prefill", specee_context_error(ctx));
        goto done;
    }

    specee_token token = specee_argmax(ctx, 0);
    specee_token out[1024];
    int          n_out = 0;
    out[n_out++]       = token;
    /* the draft head catches up on the prompt and proposes the first candidates */
    if (specee_draft_sync(ctx, token, cands, SPECEE_MAX_CANDIDATES, &n_cands) != SPECEE_STATUS_OK) {
        rc = fail("draft", specee_context_error(ctx));
        goto done;
    }
    while (n_out < n_new && n_out < 1024) {
        struct specee_step step;
        if (specee_decode_with_candidates(ctx, token, cands, specee_heads_n_candidates(heads), &step) !=
            SPECEE_STATUS_OK) {
            rc = fail("step", specee_context_error(ctx));
            goto done;
        }
        const int32_t n_layer = specee_model_n_layer(model);
        printf("token %d layer %d of %d\n", (int) step.token, (int) step.exit_layer, (int) n_layer);
        if (step.exit_layer == n_layer) {  /* no exit: the full model's token */
            token        = step.token;
            out[n_out++] = token;
            for (int j = 0; j < step.n_next && j < SPECEE_MAX_CANDIDATES; j++) {
                cands[j] = step.next[j];
            }
            continue;
        }
        /* an exit: one pass completes the exited token beside the draft */
        const specee_token draft = step.token;
        if (specee_verify_exit(ctx, draft) != SPECEE_STATUS_OK) {
            rc = fail("verify", specee_context_error(ctx));
            goto done;
        }
        const specee_token full = specee_argmax(ctx, 0);  /* the full model's token after the exited one */
        if (full != draft) {
            specee_kv_truncate(ctx, specee_n_past(ctx) - 1);  /* the draft's position goes */
            token = full;
        } else if (n_out + 2 > n_new) {
            token = draft;  /* the last token wanted */
        } else {
            out[n_out++] = draft;
            token        = specee_argmax(ctx, 1);  /* what follows the draft, at full depth */
        }
        out[n_out++] = token;
        /* the draft head reads the verified tokens, then proposes the next candidates */
        if (n_out < n_new && specee_draft_sync(ctx, token, cands, SPECEE_MAX_CANDIDATES, &n_cands) != SPECEE_STATUS_OK) {
            rc = fail("draft", specee_context_error(ctx));
            goto done;
        }
    }
    printf("tokens:");
    for (int i = 0; i < n_out; i++) {
        printf(" %d", (int) out[i]);
    }
    printf("\n");
    rc = 0;
done: /* each free takes NULL */
    specee_context_free(ctx);
    specee_heads_free(heads);
    specee_model_free(model);
    return rc;
}
