/* lstmc_fit from C, against lstmc_train_on_batch and lstmc_evaluate: an unshuffled fit
   takes the steps a loop of train_on_batch takes, its logs are their losses and metrics
   averaged over the samples, its validation scores are evaluate's, and misuse is
   refused before any step. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lstmc.h"

static int failures = 0;

#define CHECK(cond, ...)                  \
    do {                                  \
        if (!(cond)) {                    \
            printf("FAIL " __VA_ARGS__);  \
            printf("\n");                 \
            failures++;                   \
        }                                 \
    } while (0)

/* Compiles `src` with seed 7; a failure is counted (and the calls on its NULL network fail too). */
static lstmc_network *compile(const char *src) {
    lstmc_network *net = NULL;
    char *error = NULL;
    if (lstmc_compile(src, strlen(src), 7, &net, &error) != LSTMC_OK) {
        printf("FAIL compile: %s\n", error);
        lstmc_string_free(error);
        failures++;
    }
    return net;
}

/* Whether `status` is `want` with a message holding `part`; frees the message. The call
   is made before (C leaves the order of arguments open). */
static int refused(lstmc_status status, lstmc_status want, char *error, const char *part) {
    int ok = status == want && error && strstr(error, part);
    printf("%s: status %d, %s\n", ok ? "ok" : "FAIL", (int)status, error ? error : "(no message)");
    lstmc_string_free(error);
    return ok;
}

static int close_to(double a, double b) { return fabs(a - b) <= 1e-12 * fabs(b); }

int main(void) {
    const char *src = "GRU 4 input_dim=2 input_length=3\nDense 1\n"
                      "compile loss=mse optimizer=adam learning_rate=0.01 metrics=mae\n"
                      "fit epochs=3 batch_size=2 shuffle=false\n";
    float x[24], y[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    for (int i = 0; i < 24; i++) x[i] = (float)((i * 7) % 11) / 11.0f - 0.4f;
    size_t xs[3] = {4, 3, 2}, ys[2] = {4, 1}, half_x[3] = {2, 3, 2}, half_y[2] = {2, 1};
    char *error = NULL;

    /* Three epochs of two batches, unshuffled, against the same six steps one by one. */
    lstmc_network *fitted = compile(src), *stepped = compile(src);
    lstmc_epoch history[3];
    size_t done = 99;
    lstmc_status s = lstmc_fit(fitted, x, 24, xs, 3, y, 4, ys, 2, 0, 0, history, 3, &done, &error);
    CHECK(s == LSTMC_OK, "fit: status %d, %s", (int)s, error ? error : "");
    lstmc_string_free(error);
    error = NULL;
    CHECK(done == 3, "epochs done %zu", done);
    for (int e = 0; e < 3; e++) {
        double l[2], m[2];
        for (int b = 0; b < 2; b++)
            lstmc_train_on_batch(stepped, x + 12 * b, 12, half_x, 3, y + 2 * b, 2, half_y, 2, &l[b], &m[b], NULL);
        double loss = (2 * l[0] + 2 * l[1]) / 4, metric = (2 * m[0] + 2 * m[1]) / 4;
        CHECK(close_to(history[e].loss, loss), "epoch %d loss %.17g, steps %.17g", e + 1, history[e].loss, loss);
        CHECK(close_to(history[e].metric, metric), "epoch %d mae %.17g, steps %.17g", e + 1, history[e].metric, metric);
        CHECK(isnan(history[e].val_loss) && isnan(history[e].val_metric), "epoch %d validation without a split", e + 1);
    }
    float pf[4], ps[4];
    lstmc_predict(fitted, x, 24, xs, 3, pf, 4, NULL);
    lstmc_predict(stepped, x, 24, xs, 3, ps, 4, NULL);
    CHECK(memcmp(pf, ps, sizeof pf) == 0, "fitted and stepped predictions differ: %.9g %.9g", pf[0], ps[0]);

    /* Overrides: one epoch of one batch of all four is one step. */
    lstmc_network *once = compile(src), *one_step = compile(src);
    lstmc_epoch one[1];
    s = lstmc_fit(once, x, 24, xs, 3, y, 4, ys, 2, 1, 4, one, 1, NULL, NULL);
    double step_loss = -1;
    lstmc_train_on_batch(one_step, x, 24, xs, 3, y, 4, ys, 2, &step_loss, NULL, NULL);
    CHECK(s == LSTMC_OK && close_to(one[0].loss, step_loss), "override: status %d, loss %g against %g", (int)s, one[0].loss, step_loss);

    /* A validation split of 0.25 holds out the last sample: its scores are evaluate's. */
    const char *split = "GRU 4 input_dim=2 input_length=3\nDense 1\n"
                        "compile loss=mse optimizer=adam learning_rate=0.01 metrics=mae\n"
                        "fit epochs=1 batch_size=3 shuffle=false validation_split=0.25\n";
    lstmc_network *val = compile(split);
    size_t last_x[3] = {1, 3, 2}, last_y[2] = {1, 1};
    s = lstmc_fit(val, x, 24, xs, 3, y, 4, ys, 2, 0, 0, one, 1, NULL, NULL);
    double vl = -1, vm = -1;
    lstmc_evaluate(val, x + 18, 6, last_x, 3, y + 3, 1, last_y, 2, 1, &vl, &vm, NULL);
    CHECK(s == LSTMC_OK && close_to(one[0].val_loss, vl) && close_to(one[0].val_metric, vm),
          "validation: status %d, %g %g against evaluate's %g %g", (int)s, one[0].val_loss, one[0].val_metric, vl, vm);

    /* Refused before any step: the weights stay as they were. */
    float before[4], after[4];
    lstmc_predict(fitted, x, 24, xs, 3, before, 4, NULL);
    done = 99;
    s = lstmc_fit(fitted, x, 24, xs, 3, y, 4, ys, 2, 0, 0, history, 2, &done, &error);
    CHECK(refused(s, LSTMC_USAGE_ERROR, error, "room for 2 epochs"), "short history");
    error = NULL;
    CHECK(done == 0, "short history: epochs done %zu", done);
    float bad[24];
    memcpy(bad, x, sizeof bad);
    bad[5] = NAN;
    s = lstmc_fit(fitted, bad, 24, xs, 3, y, 4, ys, 2, 0, 0, NULL, 0, NULL, &error);
    CHECK(refused(s, LSTMC_DATA_ERROR, error, "NaN"), "NaN in x");
    error = NULL;
    s = lstmc_fit(fitted, x, 24, xs, 3, y, 3, ys, 2, 0, 0, NULL, 0, NULL, &error);
    CHECK(refused(s, LSTMC_USAGE_ERROR, error, "3 elements"), "short y");
    error = NULL;
    s = lstmc_fit(NULL, x, 24, xs, 3, y, 4, ys, 2, 0, 0, NULL, 0, NULL, &error);
    CHECK(refused(s, LSTMC_USAGE_ERROR, error, "NULL"), "null network");
    error = NULL;
    lstmc_predict(fitted, x, 24, xs, 3, after, 4, NULL);
    CHECK(memcmp(before, after, sizeof before) == 0, "a refused fit changed the weights");

    /* A loss that diverges at the second epoch stops it: the first is reported. */
    const char *wild = "Dense 1 input_dim=1\ncompile loss=mse optimizer=sgd learning_rate=1\n"
                       "fit epochs=3 batch_size=1 shuffle=false\n";
    lstmc_network *diverging = compile(wild);
    float big[1] = {1e18f}, zero[1] = {0};
    size_t bs[2] = {1, 1};
    lstmc_epoch log[3];
    done = 99;
    s = lstmc_fit(diverging, big, 1, bs, 2, zero, 1, bs, 2, 0, 0, log, 3, &done, &error);
    CHECK(refused(s, LSTMC_DATA_ERROR, error, "epoch 2"), "divergence");
    error = NULL;
    CHECK(done == 1 && log[0].loss > 0 && isfinite(log[0].loss), "divergence: epochs done %zu, first loss %g", done, log[0].loss);

    lstmc_network *nets[] = {fitted, stepped, once, one_step, val, diverging};
    for (int i = 0; i < 6; i++) lstmc_network_free(nets[i]);
    printf("%d failures\n", failures);
    return failures != 0;
}
