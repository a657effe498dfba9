/* smoke.c — a plain C99 program against libspecee: the header compiles as C,
 * the library links, and the documented contracts hold at the C level.
 * Usage: smoke MODEL.gguf ; exit status 0 on success. */
#include "specee.h"

#include <stdio.h>
#include <string.h>

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); return 1; } } while (0)

int main(int argc, char ** argv) {
    char err[512];
    struct specee_model * model = NULL;
    struct specee_context * ctx = NULL;
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    CHECK(specee_api_version() == SPECEE_API_VERSION);
    CHECK(strcmp(specee_status_name(SPECEE_STATUS_CONTEXT_FULL), "SPECEE_STATUS_CONTEXT_FULL") == 0);

    /* freeing NULL is a no-op */
    specee_model_free(NULL);
    specee_context_free(NULL);

    /* a missing file: status + message, no model */
    model = (struct specee_model *) &err; /* must be reset to NULL */
    CHECK(specee_model_load("/nonexistent.gguf", NULL, &model, err, sizeof err) == SPECEE_STATUS_IO_ERROR);
    CHECK(model == NULL && strlen(err) > 0);
    CHECK(specee_model_load(NULL, NULL, &model, err, sizeof err) == SPECEE_STATUS_INVALID_ARGUMENT);

    {
        struct specee_model_params mp = specee_model_default_params();
        mp.check_tensors = true;
        CHECK(specee_model_load(argv[1], &mp, &model, err, sizeof err) == SPECEE_STATUS_OK);
    }
    CHECK(specee_model_n_layer(model) > 0 && specee_model_n_vocab(model) > 0);

    {
        struct specee_context_params cp = specee_context_default_params();
        cp.n_ctx = 8;
        cp.n_threads = 1;
        CHECK(specee_context_init(model, &cp, &ctx, err, sizeof err) == SPECEE_STATUS_OK);
    }
    CHECK(specee_n_ctx(ctx) == 8 && specee_n_past(ctx) == 0);

    {
        const specee_token prompt[3] = {1, 2, 3};
        specee_token next = -1;
        const float * logits;
        int32_t i;
        CHECK(specee_prefill(ctx, prompt, 3, true) == SPECEE_STATUS_OK);
        CHECK(specee_n_outputs(ctx) == 3 && specee_n_past(ctx) == 3);
        logits = specee_get_logits(ctx, 2);
        CHECK(logits != NULL && specee_get_logits(ctx, 3) == NULL);
        for (i = 0; i < specee_model_n_vocab(model); i++) {
            CHECK(logits[i] <= logits[specee_argmax(ctx, 2)]);
        }
        CHECK(specee_decode(ctx, specee_argmax(ctx, 2), &next) == SPECEE_STATUS_OK);
        CHECK(next >= 0 && next < specee_model_n_vocab(model));
        CHECK(strcmp(specee_context_error(ctx), "") == 0);

        /* bad token: clean error, nothing appended */
        CHECK(specee_decode(ctx, specee_model_n_vocab(model), &next) == SPECEE_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(specee_context_error(ctx), "vocabulary") != NULL);
        CHECK(specee_n_past(ctx) == 4);

        /* overflow: 4 + 5 > 8 */
        {
            const specee_token five[5] = {1, 2, 3, 4, 5};
            CHECK(specee_prefill(ctx, five, 5, false) == SPECEE_STATUS_CONTEXT_FULL);
            CHECK(specee_n_past(ctx) == 4);
        }
        CHECK(specee_kv_truncate(ctx, 1) == SPECEE_STATUS_OK && specee_n_past(ctx) == 1);
        CHECK(specee_kv_cell_valid(ctx, 0, 0) == 1 && specee_kv_cell_valid(ctx, 0, 1) == 0);
        CHECK(specee_kv_cell_valid(ctx, -1, 0) == -1);
    }

    specee_context_free(ctx);
    specee_model_free(model);
    printf("smoke ok\n");
    return 0;
}
