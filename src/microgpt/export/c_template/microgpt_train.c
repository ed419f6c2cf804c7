/* microgpt_train.c: train a microgpt character model on the device itself, then make up names. C99, no malloc.
 *
 * Build: cc -std=c99 -O2 -Wall -Wextra -pedantic -o microgpt_train microgpt_train.c -lm
 * Usage: ./microgpt_train [STEPS [SEED [N]]]   train STEPS steps (default DEFAULT_STEPS), print microgpt's
 *                                              `step k / n | loss x` lines, then N names (default 20)
 *        ./microgpt_train --gradcheck          analytic gradients of the first document against central
 *                                              finite differences, a few elements of every matrix
 *
 * train_data.h (written by `microgpt export --train`) holds the configuration, the parameter table, the
 * vocabulary and the training documents as const arrays, which a microcontroller keeps in flash. What
 * changes lives in the static buffers below, and `microgpt info` counts exactly these.
 * microgpt_common.h, copied beside it, holds what it shares with the inference program microgpt_names.c:
 * matvec, the splitmix64 generator, temperature sampling and the parsing of arguments.
 * Dimension letters: C channels (N_EMBD), T positions (BLOCK_SIZE), V vocabulary, NH heads, HS head size,
 * P parameters, n the positions of the current document (n <= T).
 *
 * The algorithm is microgpt's: one document per step, [BOS] name [BOS], predicting tokens 1..n from 0..n-1;
 * RMSNorm without gain; causal multi-head attention; a ReLU MLP; cross-entropy; Adam with bias correction
 * and a learning rate decayed linearly to 0. Every backward pass takes a matrix's gradient one element at a
 * time, as a sum over positions, after the column of the matrix it belongs to was used for the gradient
 * of the input; so Adam may update an element the moment its gradient is known.
 *
 * LOW_MEMORY 1 (`--low-memory`) keeps no gradient buffer: each element gets its Adam update at once. It
 * stores neither q, nor the MLP's hidden units, nor the attention probabilities: the backward pass recomputes
 * them (before the weights they come from change). With several layers it keeps one layer's activations and
 * recomputes each earlier layer from its saved input. The arithmetic is the same operation for operation, so
 * both builds print the same lines.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "train_data.h"
#include "microgpt_common.h" /* no fused multiply-add; matvec, splitmix64, sample_token, parse_digits */

#define C N_EMBD
#define T BLOCK_SIZE
#define V VOCAB_SIZE
#define HS HEAD_DIM
#define H4 (MLP_EXPANSION * N_EMBD) /* the MLP's hidden width */

/* ---- RAM: these buffers and rng_state (microgpt_common.h) are all the memory the program writes
   (training_memory_budget counts exactly these) */
static float params[N_PARAMS]; /* (P) the weights, laid out by the parameter table */
static float adam_m[N_PARAMS]; /* (P) Adam's first moments */
static float adam_v[N_PARAMS]; /* (P) Adam's second moments */
#if !LOW_MEMORY
static float grads[N_PARAMS];  /* (P) d loss / d params of the current document */
#endif

/* what one layer's forward pass keeps for its backward pass, every position of the document */
struct layer_activations {
    float xn[T][C];      /* (T, C) attention input: RMSNorm of the residual (the residual itself if not normed) */
    float scale1[T];     /* (T) its 1 / rms */
    float kv[T][2 * C];  /* (T, 2C) key and value, heads side by side */
    float y[T][C];       /* (T, C) attention output; later its gradient */
    float xn2[T][C];     /* (T, C) MLP input */
    float scale2[T];     /* (T) its 1 / rms */
#if !LOW_MEMORY
    float q[T][C];       /* (T, C) query */
    float r[T][H4];      /* (T, 4C) relu(fc1 xn2); later the gradients of q, k, v */
    float att[N_HEAD][T][T]; /* (NH, T, T) attention probabilities */
#endif
};
#if LOW_MEMORY
static struct layer_activations acts[1];
#if N_LAYER > 1
static float layer_input[N_LAYER - 1][T][C]; /* (L-1, T, C) the residual entering layers 0..L-2 */
static float x_row[C];                       /* (C) residual of one position while a layer is recomputed */
#endif
static float d_qkv_buffer[T][3 * C];         /* (T, 3C) gradients of q, k, v */
static float q_row[C];                       /* (C) the query of one position, recomputed */
static float att_row[T];                     /* (T) attention probabilities of one query, recomputed */
#define ACTS(l) (&acts[0])
#define D_QKV(a) d_qkv_buffer
#else
static struct layer_activations acts[N_LAYER];
#define ACTS(l) (&acts[l])
#define D_QKV(a) ((float (*)[3 * C])&(a)->r[0][0]) /* in the MLP's buffer, free by then */
#endif
static float resid[T][C];       /* (T, C) residual stream; after the forward pass its gradient */
static union {
    float dlogits[T][V];        /* (T, V) logits, then d loss / d logits, until lm_head's backward */
    float d_xn[T][C];           /* (T, C) then the gradient of a normalised input */
} rows_of;
#define dlogits rows_of.dlogits
#define d_xn rows_of.d_xn
#if TIE_LM_HEAD
static float lm_grad[V][C];     /* (V, C) wte's gradient as lm_head, until the embedding's is added */
#endif
static float d_col[T];          /* (T) one column of an input's gradient; the MLP's d hidden of one unit */
static float unit_r[T];         /* (T) relu of one MLP hidden unit at every position */
static float act_row[H4];       /* (4C) MLP activation of one position */
static token_t sample_tokens[T]; /* (T) the name being sampled, after BOS */
static struct { float lr, bias1, bias2; } adam; /* this step's learning rate and bias corrections */
static int checking_gradients;  /* --gradcheck: record chosen gradient elements instead of updating */
static float checked_grads[N_TENSORS][GRADCHECK_PER_TENSOR]; /* their analytic values */

/* ---- forward pieces */

/* out = x * scale, scale = 1 / sqrt(mean(x^2) + eps): RMSNorm without a learned gain, as in microgpt */
static float rmsnorm(float *out, const float *x)
{
    float ms = 0.0f;
    for (int i = 0; i < C; i++)
        ms += x[i] * x[i];
    float scale = 1.0f / sqrtf(ms * (1.0f / C) + RMSNORM_EPS);
    for (int i = 0; i < C; i++)
        out[i] = x[i] * scale;
    return scale;
}

/* dx += d rmsnorm: y = x s  =>  dx = s (dy - y sum_j(dy_j y_j) / C) */
static void rmsnorm_backward(float *dx, const float *dy, const float *y, float scale)
{
    float dot = 0.0f;
    for (int i = 0; i < C; i++)
        dot += dy[i] * y[i];
    dot *= 1.0f / C;
    for (int i = 0; i < C; i++)
        dx[i] += (dy[i] - y[i] * dot) * scale;
}

static float mlp_activation(float r)
{
    return MLP_RELU2 ? r * r : r;
}

/* probs[s] = softmax_s(q . k_s * ATTN_SCALE) of head h over the positions position t attends to */
static void attention_row(float *probs, const struct layer_activations *a, const float *q, int h, int t, int first)
{
    attention_weights(probs, q + h * HS, a->kv[0] + h * HS, 2 * C, HS, ATTN_SCALE, first, t);
}

/* the query of position t: computed from xn[t] (the low-memory build keeps one, and recomputes it) */
static const float *query(const float *w, struct layer_activations *a, int t)
{
#if LOW_MEMORY
    float *q = q_row;
#else
    float *q = a->q[t];
#endif
    matvec(q, w + ATTN_WQ, a->xn[t], C, C, 0);
    return q;
}

/* layer l at position t (earlier positions done): x += attn(norm(x)); x += mlp(norm(x)). Returns a hash of
   which MLP units the ReLU let through, with which --gradcheck sees a parameter change cross a kink. */
static uint32_t layer_forward(int l, struct layer_activations *a, float *x, int t)
{
    const float *w = params + layer_offset[l];
    int first = ATTENTION_SELF ? t : 0;
    if (NORM_BEFORE_ATTN)
        a->scale1[t] = rmsnorm(a->xn[t], x);
    else
        memcpy(a->xn[t], x, sizeof a->xn[t]);
    const float *q = query(w, a, t);
    matvec(a->kv[t], w + ATTN_WK, a->xn[t], 2 * C, C, 0); /* attn_wk, attn_wv: one (2C, C) matrix */
    for (int h = 0; h < N_HEAD; h++) {
#if LOW_MEMORY
        float *probs = att_row;
#else
        float *probs = a->att[h][t];
#endif
        attention_row(probs, a, q, h, t, first);
        for (int j = 0; j < HS; j++) {
            float acc = 0.0f;
            for (int s = first; s <= t; s++)
                acc += probs[s] * a->kv[s][C + h * HS + j];
            a->y[t][h * HS + j] = acc;
        }
    }
    matvec(x, w + ATTN_WO, a->y[t], C, C, 1);
    if (NORM_BEFORE_MLP)
        a->scale2[t] = rmsnorm(a->xn2[t], x);
    else
        memcpy(a->xn2[t], x, sizeof a->xn2[t]);
#if LOW_MEMORY
    float *hidden = act_row; /* relu(fc1 xn2) is recomputed in the backward pass */
#else
    float *hidden = a->r[t];
#endif
    matvec(hidden, w + MLP_FC1, a->xn2[t], H4, C, 0);
    uint32_t relu_signs = 2166136261u; /* FNV-1a over the units' signs */
    for (int i = 0; i < H4; i++) {
        relu_signs = (relu_signs ^ (uint32_t)(hidden[i] > 0.0f)) * 16777619u;
        hidden[i] = hidden[i] > 0.0f ? hidden[i] : 0.0f;
        act_row[i] = mlp_activation(hidden[i]);
    }
    matvec(x, w + MLP_FC2, act_row, C, H4, 1);
    return relu_signs;
}

/* the embedding of tokens[t] at position t, normalised when the model norms it; returns the 1 / rms */
static float embed(float *x, const token_t *tokens, int t)
{
    for (int i = 0; i < C; i++)
        x[i] = params[OFFSET_WTE + tokens[t] * C + i] + params[OFFSET_WPE + t * C + i];
    return NORM_EMBEDDING ? rmsnorm(x, x) : 1.0f;
}

/* resid[t] = the final residual of positions 0..n-1, layer after layer; returns a hash of every ReLU's sign */
static uint32_t forward(const token_t *tokens, int n)
{
    uint32_t relu_signs = 0;
    for (int t = 0; t < n; t++)
        embed(resid[t], tokens, t);
    for (int l = 0; l < N_LAYER; l++) {
#if LOW_MEMORY && N_LAYER > 1
        if (l < N_LAYER - 1)
            memcpy(layer_input[l], resid, (size_t)n * sizeof resid[0]);
#endif
        for (int t = 0; t < n; t++)
            relu_signs = relu_signs * 31u + layer_forward(l, ACTS(l), resid[t], t);
    }
    return relu_signs;
}

/* mean cross-entropy of predicting tokens[1..n] from positions 0..n-1; dlogits[t] = its gradient */
static float loss_and_dlogits(const token_t *tokens, int n)
{
    float weight = (float)(1.0 / n), loss = 0.0f;
    for (int t = 0; t < n; t++) {
        float *row = dlogits[t];
        matvec(row, params + OFFSET_LM_HEAD, resid[t], V, C, 0);
        float max_logit = row[0], sum = 0.0f;
        for (int i = 1; i < V; i++)
            if (row[i] > max_logit)
                max_logit = row[i];
        float target = row[tokens[t + 1]] - max_logit;
        for (int i = 0; i < V; i++) {
            row[i] = (float)exp((double)(row[i] - max_logit));
            sum += row[i];
        }
        loss += ((float)log((double)sum) - target) * weight;
        /* softmax followed by NLL: d_logits = (probs - onehot(target)) / n */
        float per_sum = weight / sum;
        for (int i = 0; i < V; i++)
            row[i] = row[i] * per_sum;
        row[tokens[t + 1]] -= weight;
    }
    return loss;
}

/* ---- Adam, element by element */

/* Adam with bias correction on params[i], microgpt's update in float32 (the numpy engine multiplies by
   1 / (1 - beta^t) where this divides by 1 - beta^t: an ulp apart) */
static void adam_update(long i, float g)
{
    adam_m[i] = adam_m[i] * (float)BETA1 + g * (float)(1.0 - BETA1);
    adam_v[i] = adam_v[i] * (float)BETA2 + (g * g) * (float)(1.0 - BETA2);
    float m_hat = adam_m[i] / adam.bias1, v_hat = adam_v[i] / adam.bias2;
    params[i] -= (m_hat * adam.lr) / (sqrtf(v_hat) + (float)ADAM_EPS);
}

/* the element checked by --gradcheck as number k of parameter tensor p */
static long checked_element(int p, int k)
{
    long size = parameters[p].rows * parameters[p].cols;
    return parameters[p].offset + ((size * k) / GRADCHECK_PER_TENSOR + k % parameters[p].cols) % size;
}

/* the complete gradient of params[i]: stored (normal build) or applied at once (LOW_MEMORY) */
static void gradient(long i, float g)
{
    if (checking_gradients) {
        for (int p = 0; p < N_TENSORS; p++)
            for (int k = 0; k < GRADCHECK_PER_TENSOR; k++)
                if (checked_element(p, k) == i)
                    checked_grads[p][k] = g;
        return;
    }
#if LOW_MEMORY
    adam_update(i, g);
#else
    grads[i] = g;
#endif
}

/* ---- backward pieces */

/* Backward of out[t] = W in[t] for t < n, W (R, K) at params[w]. Column by column j:
   d_in[t][j] = sum_i W[i][j] d_out[t][i] (d_in may be `in` itself: column j of in is read first), and
   dW[i][j] = sum_t d_out[t][i] in[t][j], complete, so it goes to gradient() (or to grad_sink). */
static void linear_backward(float *d_in, const float *d_out, int d_out_stride, const float *in, long w, int R,
                            int K, int n, float *grad_sink)
{
    for (int j = 0; j < K; j++) {
        for (int t = 0; t < n; t++) {
            float acc = 0.0f;
            for (int i = 0; i < R; i++)
                acc += params[w + i * K + j] * d_out[t * d_out_stride + i];
            d_col[t] = acc;
        }
        for (int i = 0; i < R; i++) {
            float g = 0.0f;
            for (int t = 0; t < n; t++)
                g += d_out[t * d_out_stride + i] * in[t * K + j];
            if (grad_sink)
                grad_sink[i * K + j] = g;
            else
                gradient(w + i * K + j, g);
        }
        for (int t = 0; t < n; t++)
            d_in[t * K + j] = d_col[t];
    }
}

/* MLP backward, one hidden unit i at a time: r_t = relu(fc1[i] . xn2[t]), out[t] += fc2[:, i] act(r_t).
   Row i of fc1 and column i of fc2 get complete gradients together; d_xn gets fc1[i] d_h before row i may
   change, in the order of a column-wise pass (the sums run over i). */
static void mlp_backward(long w, const struct layer_activations *a, int n)
{
    for (int t = 0; t < n; t++)
        for (int k = 0; k < C; k++)
            d_xn[t][k] = 0.0f;
    for (int i = 0; i < H4; i++) {
        for (int t = 0; t < n; t++) {
#if LOW_MEMORY
            float h = 0.0f; /* fc1 xn2 again, as the forward pass summed it */
            for (int k = 0; k < C; k++)
                h += params[w + MLP_FC1 + i * C + k] * a->xn2[t][k];
            unit_r[t] = h > 0.0f ? h : 0.0f;
#else
            unit_r[t] = a->r[t][i];
#endif
            float d_act = 0.0f;
            for (int c = 0; c < C; c++)
                d_act += params[w + MLP_FC2 + c * H4 + i] * resid[t][c];
            /* relu: 1 where r > 0; squared relu: 2 r */
            d_col[t] = MLP_RELU2 ? d_act * (2.0f * unit_r[t]) : (unit_r[t] > 0.0f ? d_act : 0.0f);
        }
        for (int c = 0; c < C; c++) { /* column i of fc2 */
            float g = 0.0f;
            for (int t = 0; t < n; t++)
                g += resid[t][c] * mlp_activation(unit_r[t]);
            gradient(w + MLP_FC2 + c * H4 + i, g);
        }
        for (int k = 0; k < C; k++) { /* row i of fc1 */
            float g = 0.0f;
            for (int t = 0; t < n; t++) {
                g += d_col[t] * a->xn2[t][k];
                d_xn[t][k] += params[w + MLP_FC1 + i * C + k] * d_col[t];
            }
            gradient(w + MLP_FC1 + i * C + k, g);
        }
    }
}

/* dq, dk, dv into d_qkv (T, 3C) from dy in a->y: p = softmax(q k^T scale), y = p v;
   d_att = p (dp - sum_s dp_s p_s) scale, dq = d_att k, dk += d_att^T q (earlier positions too), dv += p^T dy */
static void attention_backward(const float *w, struct layer_activations *a, float (*d_qkv)[3 * C], int n)
{
    for (int t = 0; t < n; t++)
        for (int i = 0; i < 3 * C; i++)
            d_qkv[t][i] = 0.0f;
    for (int t = 0; t < n; t++) {
        int first = ATTENTION_SELF ? t : 0;
#if LOW_MEMORY
        const float *q = query(w, a, t);
#else
        const float *q = a->q[t];
        (void)w;
#endif
        for (int h = 0; h < N_HEAD; h++) {
#if LOW_MEMORY
            float *probs = att_row;
            attention_row(probs, a, q, h, t, first);
#else
            float *probs = a->att[h][t];
#endif
            const float *dy = a->y[t] + h * HS;
            float dp_dot_p = 0.0f;
            for (int s = first; s <= t; s++) {
                float dp = 0.0f;
                for (int j = 0; j < HS; j++)
                    dp += dy[j] * a->kv[s][C + h * HS + j];
                d_col[s] = dp;
                dp_dot_p += dp * probs[s];
            }
            for (int s = first; s <= t; s++) {
                float d_att = (d_col[s] - dp_dot_p) * probs[s] * ATTN_SCALE;
                for (int j = 0; j < HS; j++) {
                    d_qkv[t][h * HS + j] += d_att * a->kv[s][h * HS + j];
                    d_qkv[s][C + h * HS + j] += d_att * q[h * HS + j];
                    d_qkv[s][2 * C + h * HS + j] += probs[s] * dy[j];
                }
            }
        }
    }
}

/* layer l backward: resid holds d loss / d (its output) and becomes d loss / d (its input) */
static void layer_backward(int l, struct layer_activations *a, int n)
{
    long w = layer_offset[l];
    /* mlp: x_out = x_mid + fc2 act(fc1 xn2) */
    mlp_backward(w, a, n);
    for (int t = 0; t < n; t++)
        if (NORM_BEFORE_MLP)
            rmsnorm_backward(resid[t], d_xn[t], a->xn2[t], a->scale2[t]);
        else
            for (int i = 0; i < C; i++)
                resid[t][i] += d_xn[t][i];
    /* attention: x_mid = x_in + wo attn(wq xn, wk xn, wv xn) */
    linear_backward(&a->y[0][0], &resid[0][0], C, &a->y[0][0], w + ATTN_WO, C, C, n, NULL);
    attention_backward(params + w, a, D_QKV(a), n);
    /* attn_wq, attn_wk, attn_wv: one (3C, C) matrix */
    linear_backward(&d_xn[0][0], &D_QKV(a)[0][0], 3 * C, &a->xn[0][0], w + ATTN_WQ, 3 * C, C, n, NULL);
    for (int t = 0; t < n; t++)
        if (NORM_BEFORE_ATTN)
            rmsnorm_backward(resid[t], d_xn[t], a->xn[t], a->scale1[t]);
        else
            for (int i = 0; i < C; i++)
                resid[t][i] += d_xn[t][i];
}

/* gradients of the document tokens[0..n] (forward already run, dlogits filled), each handed to gradient() */
static void backward(const token_t *tokens, int n)
{
    /* lm_head: logits[t] = W x[t]; the residual's gradient overwrites the residual column by column */
#if TIE_LM_HEAD
    float *lm_head_grad = &lm_grad[0][0]; /* wte's gradient is complete only after the embedding's part */
#else
    float *lm_head_grad = NULL;
#endif
    linear_backward(&resid[0][0], &dlogits[0][0], V, &resid[0][0], OFFSET_LM_HEAD, V, C, n, lm_head_grad);
    for (int l = N_LAYER - 1; l >= 0; l--) {
#if LOW_MEMORY && N_LAYER > 1
        if (l < N_LAYER - 1) /* recompute layer l's activations from its saved input */
            for (int t = 0; t < n; t++) {
                memcpy(x_row, layer_input[l][t], sizeof x_row);
                layer_forward(l, ACTS(l), x_row, t);
            }
#endif
        layer_backward(l, ACTS(l), n);
    }
    if (NORM_EMBEDDING)
        for (int t = 0; t < n; t++) {
            memcpy(d_xn[t], resid[t], sizeof d_xn[t]);
            memset(resid[t], 0, sizeof resid[t]);
            float scale = embed(act_row, tokens, t); /* the normalised embedding again, in a free row */
            rmsnorm_backward(resid[t], d_xn[t], act_row, scale);
        }
    for (int p = 0; p < T; p++) /* wpe: row p's gradient is position p's, 0 past the document */
        for (int i = 0; i < C; i++)
            gradient(OFFSET_WPE + p * C + i, p < n ? resid[p][i] : 0.0f);
    for (int v = 0; v < V; v++) /* wte: the sum over the positions holding token v (and lm_head's part) */
        for (int i = 0; i < C; i++) {
#if TIE_LM_HEAD
            float g = lm_grad[v][i];
#else
            float g = 0.0f;
#endif
            for (int t = 0; t < n; t++)
                if (tokens[t] == v)
                    g += resid[t][i];
            gradient(OFFSET_WTE + v * C + i, g);
        }
}

/* ---- random numbers: Gaussians by Box-Muller from splitmix64's uniform doubles (microgpt_common.h) */

#if !HAS_INIT_WEIGHTS
static double random_gauss(void)
{
    double u1 = 1.0 - random_uniform(), u2 = random_uniform(); /* u1 in (0, 1]: log(u1) is finite */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif

/* the weights exported with the program, or microgpt's init: N(0, INIT_STD), zero for zero-init matrices */
static void init_params(void)
{
#if HAS_INIT_WEIGHTS
    memcpy(params, init_weights, sizeof params);
#else
    for (int p = 0; p < N_TENSORS; p++)
        for (long i = 0; i < parameters[p].rows * parameters[p].cols; i++)
            params[parameters[p].offset + i] = parameters[p].zero_init ? 0.0f : (float)(INIT_STD * random_gauss());
#endif
}

/* ---- training */

/* the document whose leading BOS is doc_tokens[start]: returns its predictions n = min(T, length + 1) and
   sets *next to the start of the following document, wrapping around after the last */
static int document(long start, long *next)
{
    long end = start + 1;
    while (doc_tokens[end] != BOS_ID)
        end++;
    *next = end == N_DOC_TOKENS - 1 ? 0 : end;
    return end - start < T ? (int)(end - start) : T;
}

/* one step of microgpt on one document: forward, backward, Adam at the linearly decayed learning rate */
static float train_step(const token_t *tokens, int n, long step, long steps)
{
    adam.lr = (float)(LEARNING_RATE * (1.0 - (double)step / (double)steps));
    adam.bias1 = (float)(1.0 - pow(BETA1, (double)(step + 1)));
    adam.bias2 = (float)(1.0 - pow(BETA2, (double)(step + 1)));
    forward(tokens, n);
    float loss = loss_and_dlogits(tokens, n);
    backward(tokens, n);
#if !LOW_MEMORY
    for (long i = 0; i < N_PARAMS; i++)
        adam_update(i, grads[i]);
#endif
    return loss;
}

/* (loss(p + h) - loss(p - h)) / 2h for params[i], the loss in float32 as training computes it. *smooth is 0
   when a ReLU changes sign between p - h and p + h: the loss has a kink there, which the difference straddles */
static double finite_difference(const token_t *tokens, int n, long i, float h, int *smooth)
{
    float saved = params[i];
    uint32_t relu_signs = forward(tokens, n);
    params[i] = saved + h;
    uint32_t up_signs = forward(tokens, n);
    double up = loss_and_dlogits(tokens, n);
    params[i] = saved - h;
    uint32_t down_signs = forward(tokens, n);
    double down = loss_and_dlogits(tokens, n);
    params[i] = saved;
    *smooth = up_signs == relu_signs && down_signs == relu_signs;
    return (up - down) / (2.0 * (double)h);
}

static double relative_error(double a, double b)
{
    return fabs(a - b) / (fabs(a) + fabs(b) + GRADCHECK_FLOOR);
}

/* --gradcheck: the analytic gradient of chosen elements on the first document against central differences.
   Where a ReLU changes sign within the step the loss is not smooth there, so the element is skipped; any
   other error above GRADCHECK_TOLERANCE fails. */
static int gradcheck(void)
{
    long next;
    int n = document(0, &next), skipped = 0, smooth;
    checking_gradients = 1;
    forward(doc_tokens, n);
    printf("loss %.6f\n", (double)loss_and_dlogits(doc_tokens, n));
    backward(doc_tokens, n);
    double worst = 0.0;
    for (int p = 0; p < N_TENSORS; p++)
        for (int k = 0; k < GRADCHECK_PER_TENSOR; k++) {
            long i = checked_element(p, k);
            double numeric = finite_difference(doc_tokens, n, i, GRADCHECK_STEP, &smooth);
            double analytic = checked_grads[p][k], error = relative_error(analytic, numeric);
            if (smooth)
                worst = error > worst ? error : worst;
            skipped += !smooth;
            printf("%s[%ld] analytic %.9g numeric %.9g%s\n", parameters[p].name, i - parameters[p].offset,
                   analytic, numeric, smooth ? "" : " skipped");
        }
    printf("gradcheck: largest relative error %.3g (tolerance %g), %d not smooth within the step: %s\n", worst,
           GRADCHECK_TOLERANCE, skipped, worst <= GRADCHECK_TOLERANCE ? "ok" : "FAILED");
    return worst <= GRADCHECK_TOLERANCE ? 0 : 1;
}

/* ---- sampling */

/* one name: from BOS, one token per position until BOS or BLOCK_SIZE tokens, as microgpt's inference loop;
   each position runs the forward pass over the name so far (no KV cache beyond the training buffers) */
static void print_name(long index)
{
    printf("sample %2ld: ", index);
    sample_tokens[0] = BOS_ID;
    for (int pos = 0; pos < T; pos++) {
        forward(sample_tokens, pos + 1);
        matvec(dlogits[0], params + OFFSET_LM_HEAD, resid[pos], V, C, 0);
        int token = sample_token(dlogits[0], TEMPERATURE); /* as microgpt_names.c draws it */
        if (token == BOS_ID)
            break;
        fputs(token_text[token], stdout);
        if (pos + 1 < T)
            sample_tokens[pos + 1] = (token_t)token;
    }
    putchar('\n');
}

/* ---- command line */

/* printf("%.4f", x) without printf's floating-point conversion, which takes heap in newlib: x = m 2^(e - 24)
   exactly (m < 2^24), so x 10^4 = m 10^4 2^(e - 24), rounded half to even as printf rounds; a loss from 0 to 1e9
   (a negative number, inf or nan, which a diverged run may print, goes to printf) */
static void print_4_decimals(float x)
{
    if (signbit(x) || !(x < 1e9f)) {
        printf("%.4f", (double)x);
        return;
    }
    int e;
    uint64_t m = (uint64_t)ldexpf(frexpf(x, &e), 24), scaled = m * 10000u, q = 0; /* scaled < 2^38 */
    int shift = 24 - e;
    if (shift <= 0) {
        q = scaled << -shift;
    } else if (shift < 39) { /* from 39 on, scaled is below half a unit: q stays 0 */
        uint64_t rest = scaled & ((UINT64_C(1) << shift) - 1), half = UINT64_C(1) << (shift - 1);
        q = (scaled >> shift) + (rest > half || (rest == half && ((scaled >> shift) & 1)));
    }
    printf("%lu.%04lu", (unsigned long)(q / 10000u), (unsigned long)(q % 10000u));
}

static int usage(const char *why)
{
    fprintf(stderr, "microgpt_train: %s\nusage: microgpt_train [STEPS [SEED [N]]]   (default %d 42 20)\n"
                    "       microgpt_train --gradcheck\n", why, DEFAULT_STEPS);
    return 2;
}

int main(int argc, char **argv)
{
    uint64_t steps = DEFAULT_STEPS, n = 20;
    buffer_stdout();
    rng_state = 42;
    if (argc == 2 && strcmp(argv[1], "--gradcheck") == 0) {
        init_params();
        return exit_status("microgpt_train", gradcheck());
    }
    if (argc > 4)
        return usage("too many arguments");
    if (argc > 1 && (!parse_digits(argv[1], 1000000000u, &steps) || steps < 1))
        return usage("STEPS must be a whole number from 1 to 1000000000, digits only");
    if (argc > 2 && !parse_digits(argv[2], UINT64_MAX, &rng_state))
        return usage("SEED must be a whole number in [0, 2^64), digits only");
    if (argc > 3 && !parse_digits(argv[3], 1000000000u, &n))
        return usage("N must be a whole number from 0 to 1000000000, digits only");
    init_params();
    long start = 0, next;
    for (long step = 0; step < (long)steps; step++) {
        int n_predicted = document(start, &next);
        float loss = train_step(doc_tokens + start, n_predicted, step, (long)steps);
        printf("step %4ld / %4ld | loss ", step + 1, (long)steps);
        print_4_decimals(loss);
        putchar('\n');
        start = next;
    }
    printf("\n--- inference (new, hallucinated names) ---\n");
    for (long i = 0; i < (long)n; i++)
        print_name(i + 1);
    return exit_status("microgpt_train", 0);
}
