/* Embedding lstmc from C: compile a .model file, load its weights, and stream
 * predictions sample by sample through a stateful model.
 *
 *   cargo build --release --lib
 *   cc examples/c/host.c -Iinclude target/release/liblstmc.a -lpthread -ldl -lm -o host
 *   ./host examples/butterfly.model [WEIGHTS.safetensors] [SAMPLES]
 *
 * Sample t is x[i] = ((t * n + i) % 13) / 13 for its n input values (the
 * built-in song's notes are coded the same way, index / 13). Each line printed
 * is "t: y_0 y_1 ...". */
#include <stdio.h>
#include <stdlib.h>

#include "lstmc.h"

/* Prints the message of a failed call, frees it, and exits. */
static void check(lstmc_status status, char *error, const char *what) {
    if (status == LSTMC_OK) return;
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status,
            error ? error : "(no message)");
    lstmc_string_free(error);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [WEIGHTS] [SAMPLES]\n", argv[0]);
        return 2;
    }
    const char *weights = argc > 2 && argv[2][0] ? argv[2] : NULL;
    long samples = argc > 3 ? strtol(argv[3], NULL, 10) : 10;
    char *error = NULL;

    lstmc_network *net = NULL;
    check(lstmc_compile_file(argv[1], 0, &net, &error), error, "compile");
    if (weights) check(lstmc_load_weights(net, weights, &error), error, "load_weights");

    /* One sample at a time: batch 1, the model's own length. */
    size_t shape[3], ndim = 0;
    check(lstmc_input_shape(net, shape, &ndim, &error), error, "input_shape");
    shape[0] = 1;
    if (ndim == 3 && shape[1] == 0) shape[1] = 1;
    size_t n = 1;
    for (size_t i = 0; i < ndim; i++) n *= shape[i];
    size_t yshape[3], yndim = 0;
    check(lstmc_output_shape(net, shape, ndim, yshape, &yndim, &error), error, "output_shape");
    size_t m = 1;
    for (size_t i = 0; i < yndim; i++) m *= yshape[i];

    float *x = malloc(n * sizeof *x), *y = malloc(m * sizeof *y);
    lstmc_stream *stream = NULL;
    check(lstmc_stream_new(net, &stream, &error), error, "stream_new");
    for (long t = 0; t < samples; t++) {
        for (size_t i = 0; i < n; i++) x[i] = (float)((t * n + i) % 13) / 13.0f;
        check(lstmc_stream_predict(stream, x, n, shape, ndim, y, m, &error), error, "predict");
        printf("%ld:", t);
        for (size_t j = 0; j < m; j++) printf(" %.9g", y[j]);
        printf("\n");
    }

    /* A mistake is reported, not fatal: a buffer of the wrong size. */
    lstmc_status s = lstmc_stream_predict(stream, x, n + 1, shape, ndim, y, m, &error);
    fprintf(stderr, "wrong length: status %d: %s\n", (int)s, error ? error : "");
    lstmc_string_free(error);
    error = NULL;

    lstmc_stream_free(stream);
    lstmc_network_free(net);
    free(x);
    free(y);
    fprintf(stderr, "lstmc %s: streamed %ld samples\n", lstmc_version(), samples);
    return 0;
}
