/* microgpt_common.h: the pieces microgpt_names.c (inference) and microgpt_train.c (training) share, copied
 * beside each of them by `microgpt export`. Include it after weights.h or train_data.h, which define
 * VOCAB_SIZE, and before the program's own functions. Every function here is used by both programs, so neither
 * warns of an unused one.
 */
#ifndef MICROGPT_COMMON_H
#define MICROGPT_COMMON_H

/* No fused multiply-add in what follows, here and in the program after its #include, so that every build rounds
 * alike and as the Python mirrors do: C99 lets a compiler contract a * b + c into one rounding, which clang turns
 * off by the standard pragma and GCC (whose GNU modes contract) by its own. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>

static uint64_t rng_state; /* splitmix64 state, 8 bytes of RAM (in each program's budget) */

/* Standard output's buffer, static: newlib's stdio would take 1 KB of heap for it at the first character.
   Line-buffered, so each line leaves when it is complete (on a desktop, a write a line: 300,000 names took 19%
   longer than with stdio's own buffer); STDOUT_BUFFER_BYTES of RAM, in each program's budget. */
static char stdout_buffer[STDOUT_BUFFER_BYTES];

static void buffer_stdout(void)
{
    setvbuf(stdout, stdout_buffer, _IOLBF, sizeof stdout_buffer);
}

/* out[i] (+)= sum_j w[i][j] x[j] for a (rows, cols) row-major matrix; the sum runs left to right */
static void matvec(float *out, const float *w, const float *x, int rows, int cols, int accumulate)
{
    for (int i = 0; i < rows; i++) {
        float acc = 0.0f;
        for (int j = 0; j < cols; j++)
            acc += w[i * cols + j] * x[j];
        out[i] = accumulate ? out[i] + acc : acc;
    }
}

/* probs[s] = softmax over s = first..t of (q . k_s) * scale, key s starting at keys + s * stride: the
   scores' maximum subtracted, exp in double, the sums left to right, as the engines' float32 softmax */
static void attention_weights(float *probs, const float *q, const float *keys, int stride, int head_dim,
                              float scale, int first, int t)
{
    float max_score = 0.0f, sum = 0.0f;
    for (int s = first; s <= t; s++) {
        const float *k = keys + s * stride;
        float dot = 0.0f;
        for (int j = 0; j < head_dim; j++)
            dot += q[j] * k[j];
        probs[s] = dot * scale;
        if (s == first || probs[s] > max_score)
            max_score = probs[s];
    }
    for (int s = first; s <= t; s++) {
        probs[s] = (float)exp((double)(probs[s] - max_score));
        sum += probs[s];
    }
    for (int s = first; s <= t; s++)
        probs[s] = probs[s] / sum;
}

/* splitmix64, and a uniform double in [0, 1) from its top 53 bits */
static double random_uniform(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* a token drawn from softmax(logits / temperature) by inverse CDF: the first token whose cumulative
   weight exceeds u * total, u ~ U[0, 1). The weights are recomputed rather than stored, to save RAM. */
static int sample_token(const float *logits, double temperature)
{
    float max_logit = logits[0];
    for (int i = 1; i < VOCAB_SIZE; i++)
        if (logits[i] > max_logit)
            max_logit = logits[i];
    double total = 0.0, cumulative = 0.0;
    for (int i = 0; i < VOCAB_SIZE; i++)
        total += exp(((double)logits[i] - (double)max_logit) / temperature);
    double u = random_uniform() * total;
    for (int i = 0; i < VOCAB_SIZE; i++) {
        cumulative += exp(((double)logits[i] - (double)max_logit) / temperature);
        if (u < cumulative)
            return i;
    }
    return VOCAB_SIZE - 1; /* not reached: the last cumulative weight equals total, and u < total */
}

/* `status`, or 1 with a line on stderr when stdout could not take everything printed (a full disk, a closed pipe) */
static int exit_status(const char *program, int status)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return status;
    fprintf(stderr, "%s: error: could not write to standard output\n", program);
    return 1;
}

/* An argument that is only decimal digits (no sign, no spaces) and at most `hi`; strtoull alone would take
 * " -1" as 2^64 - 1. */
static int parse_digits(const char *s, uint64_t hi, uint64_t *out)
{
    uint64_t value = 0;
    if (!*s)
        return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        unsigned digit = (unsigned)(*s - '0');
        if (digit > hi || value > (hi - digit) / 10) /* hi - digit would wrap around for a bound under 9 */
            return 0;
        value = value * 10 + digit;
    }
    *out = value;
    return 1;
}

#endif
