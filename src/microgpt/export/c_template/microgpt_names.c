/* microgpt_names.c: a microgpt character model that makes up names, in C99 with no malloc.
 *
 * Build: cc -std=c99 -O2 -Wall -Wextra -pedantic -o microgpt_names microgpt_names.c -lm
 * Usage: ./microgpt_names [N [TEMPERATURE [SEED]]]   N names (default 20, 0.5, 42), one per line
 *        ./microgpt_names --logits TOKEN_ID...        the logits after the last token, one per line
 *
 * weights.h (written by `microgpt export`) holds the configuration, the vocabulary and the weights as
 * const arrays, which a microcontroller keeps in flash. Everything that changes lives in the static
 * buffers below: the KV cache and the activations of one position, and in the state of the random generator
 * (microgpt_common.h, with the code this program shares with the training program microgpt_train.c).
 * Dimension letters: C channels (N_EMBD), T positions (BLOCK_SIZE), V vocabulary, NH heads, HS head size.
 *
 * The arithmetic is float32 in the same order as microgpt's Python mirror of this file (`sample_like_c` in
 * tests/c_mirror.py of microgpt's repository): dot products accumulate left to right, and exp runs in double
 * (libm's exp, which Python's math.exp calls too), so both print the same names for the same seed.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weights.h"
#include "microgpt_common.h" /* no fused multiply-add; matvec, splitmix64, sample_token, parse_digits */

/* ---- RAM: these buffers and rng_state are all the memory the program writes (memory_budget counts exactly these) */
static float kv_keys[N_LAYER][BLOCK_SIZE][N_EMBD];   /* (L, T, C) keys of every position so far */
static float kv_values[N_LAYER][BLOCK_SIZE][N_EMBD]; /* (L, T, C) values */
static float act_x[N_EMBD];                          /* (C) the residual stream */
static float act_xn[N_EMBD];                         /* (C) the normalised input of attention or MLP */
static float act_q[N_EMBD];                          /* (C) query, NH heads of HS */
static float act_att[BLOCK_SIZE];                    /* (T) attention weights of one head */
static float act_y[N_EMBD];                          /* (C) attention output, heads side by side */
static float act_h[4 * N_EMBD];                      /* (4C) MLP hidden layer */
static float act_logits[VOCAB_SIZE];                 /* (V) next-token logits */

/* out = x / sqrt(mean(x^2) + 1e-5): RMSNorm without a learned gain, as in microgpt */
static void rmsnorm(float *out, const float *x)
{
    float ms = 0.0f;
    for (int i = 0; i < N_EMBD; i++)
        ms += x[i] * x[i];
    ms = ms / N_EMBD;
    float scale = 1.0f / sqrtf(ms + 1e-5f);
    for (int i = 0; i < N_EMBD; i++)
        out[i] = x[i] * scale;
}

/* act_y = softmax(q k^T / sqrt(HS)) v per head, over positions 0..pos of layer l's cache
   (only pos itself when the model was trained with attention = self) */
static void attention(int l, int pos)
{
    int first = ATTENTION_SELF ? pos : 0;
    for (int h = 0; h < N_HEAD; h++) {
        attention_weights(act_att, act_q + h * HEAD_DIM, kv_keys[l][0] + h * HEAD_DIM, N_EMBD, HEAD_DIM,
                          ATTN_SCALE, first, pos);
        for (int j = 0; j < HEAD_DIM; j++) {
            float acc = 0.0f;
            for (int t = first; t <= pos; t++)
                acc += act_att[t] * kv_values[l][t][h * HEAD_DIM + j];
            act_y[h * HEAD_DIM + j] = acc;
        }
    }
}

/* one transformer block on act_x at position pos: x += attn(norm(x)); x += mlp(norm(x)) */
static void block(int l, int pos, const float *wq, const float *wk, const float *wv, const float *wo,
                  const float *fc1, const float *fc2)
{
    if (NORM_BEFORE_ATTN)
        rmsnorm(act_xn, act_x);
    else
        memcpy(act_xn, act_x, sizeof act_xn);
    matvec(act_q, wq, act_xn, N_EMBD, N_EMBD, 0);
    matvec(kv_keys[l][pos], wk, act_xn, N_EMBD, N_EMBD, 0);
    matvec(kv_values[l][pos], wv, act_xn, N_EMBD, N_EMBD, 0);
    attention(l, pos);
    matvec(act_x, wo, act_y, N_EMBD, N_EMBD, 1);

    if (NORM_BEFORE_MLP)
        rmsnorm(act_xn, act_x);
    else
        memcpy(act_xn, act_x, sizeof act_xn);
    matvec(act_h, fc1, act_xn, 4 * N_EMBD, N_EMBD, 0);
    for (int i = 0; i < 4 * N_EMBD; i++) {
        float relu = act_h[i] > 0.0f ? act_h[i] : 0.0f;
        act_h[i] = MLP_RELU2 ? relu * relu : relu;
    }
    matvec(act_x, fc2, act_h, N_EMBD, 4 * N_EMBD, 1);
}

/* act_logits for the token after `token` at position `pos`; keys and values of pos go into the cache */
static void forward(int token, int pos)
{
    for (int i = 0; i < N_EMBD; i++)
        act_x[i] = wte[token * N_EMBD + i] + wpe[pos * N_EMBD + i];
    if (NORM_EMBEDDING)
        rmsnorm(act_x, act_x);
#define RUN_BLOCK(l, wq, wk, wv, wo, fc1, fc2) block(l, pos, wq, wk, wv, wo, fc1, fc2);
    FOR_EACH_LAYER(RUN_BLOCK)
#undef RUN_BLOCK
    matvec(act_logits, LM_HEAD, act_x, VOCAB_SIZE, N_EMBD, 0);
}

/* one name: start from BOS, stop at BOS or after BLOCK_SIZE tokens, as microgpt's inference loop does */
static void print_name(double temperature)
{
    int token = BOS_ID;
    for (int pos = 0; pos < BLOCK_SIZE; pos++) {
        forward(token, pos);
        token = sample_token(act_logits, temperature);
        if (token == BOS_ID)
            break;
        fputs(token_text[token], stdout);
    }
    putchar('\n');
}

static int usage(const char *why)
{
    fprintf(stderr, "microgpt_names: %s\nusage: microgpt_names [N [TEMPERATURE [SEED]]]\n"
                    "       microgpt_names --logits TOKEN_ID... (1 to %d ids below %d)\n",
            why, BLOCK_SIZE, VOCAB_SIZE);
    return 2;
}

/* A finite number > 0 written as strtod reads it, with no leading space, "inf" or "nan" */
static int parse_temperature(const char *s, double *out)
{
    char *end;
    if (!((*s >= '0' && *s <= '9') || *s == '.'))
        return 0;
    errno = 0;
    *out = strtod(s, &end);
    return !*end && !errno && isfinite(*out) && *out > 0;
}

int main(int argc, char **argv)
{
    uint64_t n = 20, id;
    double temperature = 0.5;
    buffer_stdout();
    if (argc > 1 && strcmp(argv[1], "--logits") == 0) {
        if (argc < 3 || argc - 2 > BLOCK_SIZE)
            return usage("wrong number of token ids after --logits");
        for (int pos = 0; pos < argc - 2; pos++) {
            if (!parse_digits(argv[pos + 2], VOCAB_SIZE - 1, &id))
                return usage("a token id after --logits is not a whole number below VOCAB_SIZE");
            forward((int)id, pos);
        }
        for (int i = 0; i < VOCAB_SIZE; i++)
            printf("%.9g\n", (double)act_logits[i]);
        return exit_status("microgpt_names", 0);
    }
    if (argc > 4)
        return usage("too many arguments");
    if (argc > 1 && !parse_digits(argv[1], 1000000000u, &n))
        return usage("N must be a whole number from 0 to 1000000000, digits only");
    if (argc > 2 && !parse_temperature(argv[2], &temperature))
        return usage("TEMPERATURE must be a number > 0, from about 2.2e-308 to 1.7e308");
    rng_state = 42;
    if (argc > 3 && !parse_digits(argv[3], UINT64_MAX, &rng_state))
        return usage("SEED must be a whole number in [0, 2^64), digits only");
    for (uint64_t i = 0; i < n; i++)
        print_name(temperature);
    return exit_status("microgpt_names", 0);
}
