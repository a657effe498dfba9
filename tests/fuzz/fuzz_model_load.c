/* fuzz_model_load.c — libFuzzer target for the GGUF model loader.
 *
 * Every input is a candidate model file. specee_model_load must either refuse
 * it with a status and a message or load it; a model it accepts must then run
 * a context and a short prefill without memory errors (failing with a status
 * is fine). Sanitizer reports and aborts are the bugs this finds. */
#include "specee.h"

#include "fuzz_input.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    char err[256];
    struct specee_model * model = NULL;
    struct specee_model_params mp = specee_model_default_params();
    mp.check_tensors = true;  /* the validation pass is part of what is fuzzed */

    enum specee_status st = specee_model_load(fuzz_input_path(data, size), &mp, &model, err, sizeof err);
    if (st != SPECEE_STATUS_OK) {
        /* the contract on failure: no model, and a message */
        if (model != NULL || err[0] == '\0') {
            abort();
        }
        return 0;
    }

    struct specee_context_params cp = specee_context_default_params();
    cp.n_ctx = 8;
    cp.n_threads = 1;
    struct specee_context * ctx = NULL;
    if (specee_context_init(model, &cp, &ctx, err, sizeof err) == SPECEE_STATUS_OK) {
        const specee_token prompt[2] = {0, specee_model_n_vocab(model) - 1};
        if (specee_prefill(ctx, prompt, 2, true) == SPECEE_STATUS_OK) {
            specee_token next = specee_argmax(ctx, 1);
            specee_decode(ctx, next < 0 ? 0 : next, &next);
        }
        specee_context_free(ctx);
    }
    specee_model_free(model);
    return 0;
}
