// toggle-llama-logits: llama.cpp's own next-token logits for given token sequences, so that
// `toggle audit FILE.gguf --engine llama.cpp` scores what llama.cpp will actually run.
//
//   toggle-llama-logits MODEL.gguf N_CTX N_THREADS  < requests  > replies
//
// Built by tools/build_llama_cpp.sh against the libllama it builds (C, the public llama.h API,
// so no struct layout is guessed from Python). Protocol, little-endian int32 / float32:
//   reply once at start:   n_vocab
//   request:               n_tokens, n_out, then n_tokens token ids   (n_tokens = 0: quit)
//   reply:                 status (0 ok, else an error), then n_out * n_vocab logits: the
//                          next-token logits after each of the last n_out tokens, in order
// Each request is one sequence decoded from an empty KV cache in one batch (n_tokens <= N_CTX).
// Errors go to stderr with a non-zero exit, or as a non-zero status for one request.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int read_all(void * buf, size_t size, size_t n) {
    return fread(buf, size, n, stdin) == n;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_CTX N_THREADS\n", argv[0]);
        return 2;
    }
    const int n_ctx = atoi(argv[2]);
    const int n_threads = atoi(argv[3]);
    if (n_ctx <= 0 || n_threads <= 0) {
        fprintf(stderr, "%s: N_CTX and N_THREADS must be positive\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == NULL) {
        fprintf(stderr, "%s: llama.cpp could not load %s\n", argv[0], argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_ctx;
    cp.n_ubatch = (uint32_t) n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == NULL) {
        fprintf(stderr, "%s: llama.cpp could not create a context of %d tokens\n", argv[0], n_ctx);
        return 1;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    fwrite(&n_vocab, sizeof n_vocab, 1, stdout);
    fflush(stdout);

    struct llama_batch batch = llama_batch_init(n_ctx, 0, 1);
    llama_token * tokens = malloc(sizeof(llama_token) * (size_t) n_ctx);
    for (;;) {
        int32_t head[2];
        if (!read_all(head, sizeof head[0], 2) || head[0] == 0) {
            break;
        }
        const int32_t n = head[0], n_out = head[1];
        int32_t status = 0;
        if (n < 0 || n > n_ctx || n_out < 1 || n_out > n) {
            fprintf(stderr, "%s: bad request: %d tokens, %d outputs (context %d)\n", argv[0], n, n_out, n_ctx);
            return 1;
        }
        if (!read_all(tokens, sizeof tokens[0], (size_t) n)) {
            fprintf(stderr, "%s: request cut short\n", argv[0]);
            return 1;
        }
        for (int32_t i = 0; i < n; i++) {
            if (tokens[i] < 0 || tokens[i] >= n_vocab) {
                status = 3;  // a token id the model does not have
            }
        }
        if (status == 0) {
            llama_memory_clear(llama_get_memory(ctx), true);
            batch.n_tokens = n;
            for (int32_t i = 0; i < n; i++) {
                batch.token[i] = tokens[i];
                batch.pos[i] = i;
                batch.n_seq_id[i] = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i] = i >= n - n_out;
            }
            status = llama_decode(ctx, batch) == 0 ? 0 : 4;
        }
        fwrite(&status, sizeof status, 1, stdout);
        if (status == 0) {
            for (int32_t j = 0; j < n_out; j++) {
                const float * row = llama_get_logits_ith(ctx, n - n_out + j);
                fwrite(row, sizeof(float), (size_t) n_vocab, stdout);
            }
        }
        fflush(stdout);
    }
    free(tokens);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
