/* fuzz_heads_load.c — libFuzzer target for the head-file loader.
 *
 * Head files are checked against a model, so the target loads one at start:
 * the GGUF named by $SPECEE_FUZZ_MODEL (the model the seed head files were
 * made for). Every input is a candidate head file; a file that loads is
 * attached to a context and runs a prompt, the draft's first candidates and
 * one early-exit step, so that what the loader accepts is exercised too. */
#include "specee.h"

#include "fuzz_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int * argc, char *** argv);
int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

static struct specee_model   * g_model = NULL;
static struct specee_context * g_ctx   = NULL;

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    char err[256];
    const char * path = getenv("SPECEE_FUZZ_MODEL");
    if (path == NULL) {
        fprintf(stderr, "fuzz_heads_load: set SPECEE_FUZZ_MODEL to the model the seed head files were made for\n");
        exit(2);
    }
    if (specee_model_load(path, NULL, &g_model, err, sizeof err) != SPECEE_STATUS_OK) {
        fprintf(stderr, "fuzz_heads_load: %s: %s\n", path, err);
        exit(2);
    }
    struct specee_context_params cp = specee_context_default_params();
    cp.n_ctx = 16;
    cp.n_threads = 1;
    if (specee_context_init(g_model, &cp, &g_ctx, err, sizeof err) != SPECEE_STATUS_OK) {
        fprintf(stderr, "fuzz_heads_load: context: %s\n", err);
        exit(2);
    }
    return 0;
}

/* Runs the model with the heads attached; failures with a status are fine. */
static void exercise(const struct specee_heads * heads) {
    const specee_token prompt[3] = {1, 2, 3};
    specee_token cand[SPECEE_MAX_CANDIDATES];
    int32_t n_cand = specee_heads_n_candidates(heads);
    struct specee_step step;

    if (n_cand < 1 || n_cand > SPECEE_MAX_CANDIDATES) {
        abort();  /* the loader must refuse such a file */
    }
    specee_kv_truncate(g_ctx, 0);
    if (specee_set_heads(g_ctx, heads) != SPECEE_STATUS_OK || specee_prefill(g_ctx, prompt, 3, false) != SPECEE_STATUS_OK) {
        return;
    }
    for (int32_t i = 0; i < n_cand; i++) {
        cand[i] = i;
    }
    if (specee_heads_has_draft(heads)) {
        int32_t n = 0;
        specee_draft_sync(g_ctx, 4, cand, n_cand, &n);
    }
    specee_decode_with_candidates(g_ctx, 4, cand, n_cand, &step);
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    char err[256];
    struct specee_heads * heads = NULL;
    enum specee_status st = specee_heads_load(g_model, fuzz_input_path(data, size), &heads, err, sizeof err);
    if (st != SPECEE_STATUS_OK) {
        if (heads != NULL || err[0] == '\0') {
            abort();
        }
        return 0;
    }
    exercise(heads);
    specee_set_heads(g_ctx, NULL);
    specee_heads_free(heads);
    return 0;
}
