/* The C ABI's checks, from C: every misuse gets a status and a message, never a crash. */
#include <stdio.h>
#include <string.h>

#include "lstmc.h"

static int failures = 0;

/* Expects `status` to be `want` with a message containing `part`; frees the message. */
static void expect(const char *what, lstmc_status status, lstmc_status want, char *error, const char *part) {
    int ok = status == want && (want == LSTMC_OK || (error && strstr(error, part)));
    printf("%s %s: status %d, %s\n", ok ? "ok" : "FAIL", what, (int)status, error ? error : "(no message)");
    if (!ok) failures++;
    lstmc_string_free(error);
}

/* The call runs before its message is read (C leaves argument order open). */
#define EXPECT(what, call, want, part)                \
    do {                                              \
        lstmc_status status_ = (call);                \
        expect(what, status_, want, error, part);     \
        error = NULL;                                 \
    } while (0)

int main(void) {
    char *error = NULL;
    lstmc_network *net = NULL;
    const char *bad = "LSTM 4 input_dim=2 retrun_sequences\n";
    EXPECT("bad model", lstmc_compile(bad, strlen(bad), 0, &net, &error), LSTMC_MODEL_ERROR, "return_sequences");
    EXPECT("null source", lstmc_compile(NULL, 3, 0, &net, &error), LSTMC_USAGE_ERROR, "NULL");
    EXPECT("missing file", lstmc_compile_file("/nonexistent.model", 0, &net, &error), LSTMC_IO_ERROR, "nonexistent");

    const char *src = "LSTM 3 input_dim=2 input_length=4 batch_size=2 stateful\nDense 1\n"
                      "compile loss=mse optimizer=sgd learning_rate=0.1\n";
    EXPECT("compile", lstmc_compile(src, strlen(src), 1, &net, &error), LSTMC_OK, "");
    float x[24] = {0}, y[3], target[2] = {1, 1};
    size_t xs[3] = {2, 4, 2}, ys[2] = {2, 1}, wrong[3] = {2, 4, 3};
    EXPECT("predict", lstmc_predict(net, x, 16, xs, 3, y, 2, &error), LSTMC_OK, "");
    EXPECT("null network", lstmc_predict(NULL, x, 16, xs, 3, y, 2, &error), LSTMC_USAGE_ERROR, "NULL");
    EXPECT("null x", lstmc_predict(net, NULL, 16, xs, 3, y, 2, &error), LSTMC_USAGE_ERROR, "NULL");
    EXPECT("x length", lstmc_predict(net, x, 15, xs, 3, y, 2, &error), LSTMC_USAGE_ERROR, "15 elements");
    EXPECT("y length", lstmc_predict(net, x, 16, xs, 3, y, 3, &error), LSTMC_USAGE_ERROR, "room for 3");
    EXPECT("features", lstmc_predict(net, x, 24, wrong, 3, y, 2, &error), LSTMC_USAGE_ERROR, "");
    EXPECT("axes", lstmc_predict(net, x, 16, xs, 0, y, 2, &error), LSTMC_USAGE_ERROR, "axes");
    size_t one[3] = {1, 4, 2};
    EXPECT("stateful batch", lstmc_predict(net, x, 8, one, 3, y, 1, &error), LSTMC_USAGE_ERROR, "stateful");
    double loss = -1, acc = 0;
    EXPECT("train", lstmc_train_on_batch(net, x, 16, xs, 3, target, 2, ys, 2, &loss, &acc, &error), LSTMC_OK, "");
    if (!(loss > 0)) { printf("FAIL loss %g\n", loss); failures++; }
    /* The model's compile line names no metric: NaN in its place. */
    if (acc == acc) { printf("FAIL metric %g without metrics=\n", acc); failures++; }
    float nan_target[2] = {0.0f / 0.0f, 1};
    EXPECT("nan target", lstmc_train_on_batch(net, x, 16, xs, 3, nan_target, 2, ys, 2, NULL, NULL, &error), LSTMC_DATA_ERROR, "NaN");
    EXPECT("reset", lstmc_reset_states(net, &error), LSTMC_OK, "");
    /* evaluate from zero states gives the loss the next step reports from them. */
    double eval_loss = -1, eval_metric = 0, step_loss = -1;
    EXPECT("evaluate", lstmc_evaluate(net, x, 16, xs, 3, target, 2, ys, 2, 2, &eval_loss, &eval_metric, &error), LSTMC_OK, "");
    if (eval_metric == eval_metric) { printf("FAIL evaluate metric %g without metrics=\n", eval_metric); failures++; }
    EXPECT("reset", lstmc_reset_states(net, &error), LSTMC_OK, "");
    EXPECT("train after evaluate", lstmc_train_on_batch(net, x, 16, xs, 3, target, 2, ys, 2, &step_loss, NULL, &error), LSTMC_OK, "");
    double gap = step_loss - eval_loss;
    if (gap < 0) gap = -gap;
    if (!(eval_loss > 0) || !(gap <= 1e-5 * eval_loss)) { printf("FAIL evaluate loss %g, step loss %g\n", eval_loss, step_loss); failures++; }
    EXPECT("evaluate batch 0", lstmc_evaluate(net, x, 16, xs, 3, target, 2, ys, 2, 0, NULL, NULL, &error), LSTMC_USAGE_ERROR, "batch size");
    EXPECT("evaluate y length", lstmc_evaluate(net, x, 16, xs, 3, target, 1, ys, 2, 2, NULL, NULL, &error), LSTMC_USAGE_ERROR, "");
    EXPECT("reset", lstmc_reset_states(net, &error), LSTMC_OK, "");
    EXPECT("load missing", lstmc_load_weights(net, "/nonexistent.safetensors", &error), LSTMC_IO_ERROR, "nonexistent");
    EXPECT("save to a missing directory", lstmc_save_weights(net, "/nonexistent/dir/w.safetensors", &error), LSTMC_IO_ERROR, "nonexistent");
    /* A NULL error pointer is allowed: the status still says what happened. */
    lstmc_status s = lstmc_predict(net, NULL, 16, xs, 3, y, 2, NULL);
    if (s != LSTMC_USAGE_ERROR) { printf("FAIL null error pointer: %d\n", (int)s); failures++; }
    lstmc_stream *stream = NULL;
    EXPECT("stream", lstmc_stream_new(net, &stream, &error), LSTMC_OK, "");
    EXPECT("stream predict", lstmc_stream_predict(stream, x, 16, xs, 3, y, 2, &error), LSTMC_OK, "");
    EXPECT("null stream", lstmc_stream_predict(NULL, x, 16, xs, 3, y, 2, &error), LSTMC_USAGE_ERROR, "NULL");
    lstmc_stream_free(stream);
    lstmc_stream_free(NULL);
    lstmc_network_free(net);
    lstmc_network_free(NULL);
    lstmc_string_free(NULL);
    printf("%d failures\n", failures);
    return failures != 0;
}
