"""The fused engine's compiled kernels: one call runs a whole training step (forward, backward, Adam).

Activations are stored feature-major, llm.c's (B, T, C) turned into (C, NP): one column per predicted
position of the packed batch (documents back to back, no padding between them; attention stays within
a document), the column count rounded up to a multiple of 8 with zero columns that attend to themselves.
Every kernel then works on lanes of 8 adjacent columns, held in 8-tuples by the inlined `_*8` helpers,
which LLVM's SLP vectorizer turns into SIMD registers: a linear layer out = W @ in needs no transposed
copy of W, the backward's d_in = W.T @ d_out is the same `matmul`, and d_W = d_out @ in.T reads `in`
transposed once. No fastmath: sums run in a fixed order, in the reference's order where it has one.
Dimension letters as in numpy_layers: C channels, NH heads, HS head size, V vocabulary, T block size,
L layers, NP the workspace's column capacity.

All kernels live in this one file: numba's disk cache is invalidated only by changes to the file that
defines a function, so a kernel inlining code from another module would keep running stale code.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

RMSNORM_EPS = 1e-5  # as numpy_layers.RMSNORM_EPS; repeated so that the cached kernels depend on this file only
LANES = 8           # columns per SIMD register; the workspace's column count is a multiple of it

# plan: the int64 array describing the model, the workspace and the batch (FusedEngine._reserve fills it)
V, C, NH, L, T, NORM, RELU2, CAUSAL, OFF_WPE, OFF_LM, OFF_LAYERS, NP, BATCH_AT = range(13)
NORM_MICROGPT, NORM_ESP32, NORM_NONE = 0, 1, 2
WORKSPACE = ('xs', 'xmid', 'xn1', 'xn2', 'scales', 'qkv', 'y', 'h', 'a', 'probs', 'logits',
             'dx', 'dtmp', 'dqkv', 'dy', 'dh', 'dp', 'rows', 'scratch')
XS, XMID, XN1, XN2, SCALES, QKV, Y, H, A, PROBS, LOGITS, DX, DTMP, DQKV, DY, DH, DP, ROWS, SCRATCH = range(19)
WS = 13                        # plan[WS + k]: first workspace row of WORKSPACE[k]
COLUMNS = WS + len(WORKSPACE)  # plan[COLUMNS:COLUMNS + 4 NP]: (4, NP) input token, target, position, first key
# plan[plan[BATCH_AT]:]: B, then the B documents' lengths, then their tokens back to back
# adam: the float64 array of Adam's settings (TrainConfig's)
BETA1, BETA2, EPS, WEIGHT_DECAY, GRAD_CLIP = range(5)

kernel = njit(cache=True, error_model='numpy', fastmath={'contract'})  # numpy's error model: no ZeroDivisionError branch in every loop
lanes = njit(cache=True, error_model='numpy', fastmath={'contract'}, inline='always')  # inlined into numba IR, so SLP sees the 8 lanes


def workspace_rows(V_, C_, NH_, L_, T_):
    """Rows of each workspace array (each row has NP columns), by name."""
    U = T_ + LANES - 1  # keys a block of 8 queries can attend to
    return {'xs': (L_ + 1) * C_, 'xmid': L_ * C_, 'xn1': L_ * C_, 'xn2': L_ * C_, 'scales': 2 * L_ + 1,
            'qkv': L_ * 3 * C_, 'y': L_ * C_, 'h': L_ * 4 * C_, 'a': L_ * 4 * C_, 'probs': L_ * NH_ * U,
            'logits': V_, 'dx': C_, 'dtmp': C_, 'dqkv': 3 * C_, 'dy': C_, 'dh': 4 * C_, 'dp': U,
            'rows': 4 * C_, 'scratch': 2}


# ---- 8 lanes: tuples of 8 values, one per column

@lanes
def _load8(row, j):
    # through a slice, so that the lanes are constant, non-negative offsets from one pointer: no per-lane
    # negative-index fix-up, and LLVM sees 8 consecutive addresses
    r = row[j:j + LANES]
    return r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]


@lanes
def _store8(row, j, x):
    r = row[j:j + LANES]
    r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] = x


@lanes
def _fill8(s):
    return s, s, s, s, s, s, s, s


@lanes
def _axpy8(acc, s, x):
    """acc + s x, s a scalar."""
    return (acc[0] + s * x[0], acc[1] + s * x[1], acc[2] + s * x[2], acc[3] + s * x[3],
            acc[4] + s * x[4], acc[5] + s * x[5], acc[6] + s * x[6], acc[7] + s * x[7])


@lanes
def _mac8(acc, a, b):
    """acc + a b, lane by lane."""
    return (acc[0] + a[0] * b[0], acc[1] + a[1] * b[1], acc[2] + a[2] * b[2], acc[3] + a[3] * b[3],
            acc[4] + a[4] * b[4], acc[5] + a[5] * b[5], acc[6] + a[6] * b[6], acc[7] + a[7] * b[7])


@lanes
def _add8(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7]


@lanes
def _max8(a, b):
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]),
            max(a[4], b[4]), max(a[5], b[5]), max(a[6], b[6]), max(a[7], b[7]))


@lanes
def _div8(a, b):
    return a[0] / b[0], a[1] / b[1], a[2] / b[2], a[3] / b[3], a[4] / b[4], a[5] / b[5], a[6] / b[6], a[7] / b[7]


@lanes
def _dot8(a, b):
    """sum_i a_i b_i, left to right."""
    return (a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3] + a[4] * b[4] + a[5] * b[5] + a[6] * b[6]
            + a[7] * b[7])


@lanes
def _exp8(x, peak):
    """e^(x - peak), lane by lane."""
    return (_exp(x[0] - peak[0]), _exp(x[1] - peak[1]), _exp(x[2] - peak[2]), _exp(x[3] - peak[3]),
            _exp(x[4] - peak[4]), _exp(x[5] - peak[5]), _exp(x[6] - peak[6]), _exp(x[7] - peak[7]))


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 `bits`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@lanes
def _exp(x):
    """e^x for x <= 0, within an ulp of libm's exp, with neither a branch nor a call, so that it vectorizes.

    e^x = 2^k e^r with k = round(x / ln 2) and r = x - k ln 2 (ln 2 in fdlibm's two parts, so k ln2_hi is
    exact), |r| <= ln 2 / 2; e^r is its Taylor series to r^13 (truncation error < 2e-17). Below 2^-1022: 0.
    """
    x = max(x, -746.0)
    k = math.floor(x * 1.4426950408889634 + 0.5)
    r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    p = ((((((1 / 6227020800 * r + 1 / 479001600) * r + 1 / 39916800) * r + 1 / 3628800) * r + 1 / 362880) * r
          + 1 / 40320) * r + 1 / 5040) * r + 1 / 720
    p = (((((p * r + 1 / 120) * r + 1 / 24) * r + 1 / 6) * r + 1 / 2) * r + 1) * r + 1
    return p * _bits_to_float((max(np.int64(k), -1023) + 1023) << 52)  # 2^k; the bits of 0.0 below 2^-1022


# ---- layers: forward/backward pairs on feature-major (features, NP) arrays, over the first nb columns

@kernel
def matmul(out, a, b, n_rows, n_cols, n_inner, accumulate):
    """out[r, j] (+)= sum_k a[r, k] b[k, j] for r < n_rows, j < n_cols, k < n_inner, summed in k order.

    Four rows by 8 columns at a time: four independent chains of 8 accumulators. With a row count that is
    not a multiple of 4 the last rows repeat (each row's loads all come before its stores: harmless).
    """
    zero = out.dtype.type(0)
    n8 = n_cols - n_cols % LANES
    for r0 in range(0, n_rows, 4):
        r1, r2, r3 = min(r0 + 1, n_rows - 1), min(r0 + 2, n_rows - 1), min(r0 + 3, n_rows - 1)
        for j in range(0, n8, LANES):
            c0 = c1 = c2 = c3 = _fill8(zero)
            for k in range(n_inner):
                x = _load8(b[k], j)
                c0, c1, c2, c3 = _axpy8(c0, a[r0, k], x), _axpy8(c1, a[r1, k], x), _axpy8(c2, a[r2, k], x), \
                    _axpy8(c3, a[r3, k], x)
            if accumulate:
                c0, c1 = _add8(c0, _load8(out[r0], j)), _add8(c1, _load8(out[r1], j))
                c2, c3 = _add8(c2, _load8(out[r2], j)), _add8(c3, _load8(out[r3], j))
            _store8(out[r0], j, c0)
            _store8(out[r1], j, c1)
            _store8(out[r2], j, c2)
            _store8(out[r3], j, c3)
        for row in range(r0, r3 + 1):
            for j in range(n8, n_cols):  # weight gradients of a width that is not a multiple of 8
                acc = zero
                for k in range(n_inner):
                    acc += a[row, k] * b[k, j]
                out[row, j] = acc + out[row, j] if accumulate else acc


@kernel
def transpose(out, x, n):
    """out[j, c] = x[c, j] for the first n columns: (K, NP) -> row-major (n, K), for weight gradients."""
    for c in range(x.shape[0]):
        for j in range(n):
            out[j, c] = x[c, j]


@kernel
def rmsnorm_forward(out, scale, x, nb):
    """out = x / sqrt(mean(x^2) + eps) per column (no learned gain); scale (NP,) keeps the factor."""
    for j in range(0, nb, LANES):
        ms = _fill8(0.0)
        for c in range(x.shape[0]):
            x_c = _load8(x[c], j)
            ms = _mac8(ms, x_c, x_c)
        s = _rsqrt8(ms, x.shape[0])
        _store8(scale, j, s)
        for c in range(x.shape[0]):
            _store8(out[c], j, _mul8(_load8(x[c], j), s))


@lanes
def _rsqrt8(ms, n):
    """(ms / n + eps)^-1/2 as 1 / sqrt: no call to pow."""
    return (1.0 / math.sqrt(ms[0] / n + RMSNORM_EPS), 1.0 / math.sqrt(ms[1] / n + RMSNORM_EPS),
            1.0 / math.sqrt(ms[2] / n + RMSNORM_EPS), 1.0 / math.sqrt(ms[3] / n + RMSNORM_EPS),
            1.0 / math.sqrt(ms[4] / n + RMSNORM_EPS), 1.0 / math.sqrt(ms[5] / n + RMSNORM_EPS),
            1.0 / math.sqrt(ms[6] / n + RMSNORM_EPS), 1.0 / math.sqrt(ms[7] / n + RMSNORM_EPS))


@lanes
def _mul8(a, b):
    return a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3], a[4] * b[4], a[5] * b[5], a[6] * b[6], a[7] * b[7]


@kernel
def rmsnorm_backward(dx, dout, out, scale, nb, accumulate):
    # y = x s, s = (mean(x^2) + eps)^-1/2  =>  dx = s (dout - y sum_c(dout_c y_c) / C)
    for j in range(0, nb, LANES):
        dot = _fill8(0.0)
        for c in range(out.shape[0]):
            dot = _mac8(dot, _load8(dout[c], j), _load8(out[c], j))
        dot, s = _mul8(dot, _fill8(1.0 / out.shape[0])), _load8(scale, j)
        for c in range(out.shape[0]):
            d = _mul8(s, _axpy8(_load8(dout[c], j), -1.0, _mul8(_load8(out[c], j), dot)))
            _store8(dx[c], j, _add8(_load8(dx[c], j), d) if accumulate else d)


@kernel
def attention_forward(y, probs, qkv, first, nb, n_head):
    """Softmax attention per head for 8 query columns t at a time, each over the keys u in first[t] .. t.

    first[t] is the column of t's document start (t itself for self attention and padding columns).
    qkv (3C, NP) stacks q, k, v; probs (NH U, NP) keeps p[h U + u - first[j], t] for the block of columns
    j .. j + 7 (0 where t does not attend to u), for the backward.
    """
    C_ = y.shape[0]
    hs, U = C_ // n_head, probs.shape[0] // n_head
    sqrt_hs = hs ** 0.5  # microgpt divides the scores by head_dim ** 0.5
    for j in range(0, nb, LANES):
        lo, hi = first[j], j + LANES  # the keys any query of the block attends to
        starts = _load8(first, j)
        for h in range(n_head):
            q, k, v, row = h * hs, C_ + h * hs, 2 * C_ + h * hs, h * U - lo
            peak = _fill8(-np.inf)
            for u in range(lo, hi):
                score = _fill8(0.0)
                for d in range(hs):
                    score = _axpy8(score, qkv[k + d, u], _load8(qkv[q + d], j))
                score = _mask8(score, sqrt_hs, u, starts, j)
                _store8(probs[row + u], j, score)
                peak = _max8(peak, score)
            total = _fill8(0.0)
            for u in range(lo, hi):
                e = _exp8(_load8(probs[row + u], j), peak)
                _store8(probs[row + u], j, e)
                total = _add8(total, e)
            for u in range(lo, hi):
                _store8(probs[row + u], j, _div8(_load8(probs[row + u], j), total))
            for d in range(hs):
                acc = _fill8(0.0)
                for u in range(lo, hi):
                    acc = _axpy8(acc, qkv[v + d, u], _load8(probs[row + u], j))
                _store8(y[q + d], j, acc)


@lanes
def _mask8(score, sqrt_hs, u, starts, j):
    """score / sqrt(HS) where query j + i attends to key u (starts[i] <= u <= j + i), else -inf."""
    return (score[0] / sqrt_hs if (starts[0] <= u) & (u <= j) else -np.inf,
            score[1] / sqrt_hs if (starts[1] <= u) & (u <= j + 1) else -np.inf,
            score[2] / sqrt_hs if (starts[2] <= u) & (u <= j + 2) else -np.inf,
            score[3] / sqrt_hs if (starts[3] <= u) & (u <= j + 3) else -np.inf,
            score[4] / sqrt_hs if (starts[4] <= u) & (u <= j + 4) else -np.inf,
            score[5] / sqrt_hs if (starts[5] <= u) & (u <= j + 5) else -np.inf,
            score[6] / sqrt_hs if (starts[6] <= u) & (u <= j + 6) else -np.inf,
            score[7] / sqrt_hs if (starts[7] <= u) & (u <= j + 7) else -np.inf)


@kernel
def attention_backward(dqkv, dy, probs, dp, qkv, first, nb, n_head):
    """dqkv (3C, NP) from dy (C, NP): keys and values get gradient from every later query of their document.

    dp (U, NP) is scratch: d loss / d p, then d loss / d score.
    """
    C_ = dy.shape[0]
    hs, U = C_ // n_head, probs.shape[0] // n_head
    sqrt_hs = hs ** 0.5
    for r in range(3 * C_):
        for j in range(nb):
            dqkv[r, j] = 0.0
    for j in range(0, nb, LANES):
        lo, hi = first[j], j + LANES
        for h in range(n_head):
            q, k, v, row = h * hs, C_ + h * hs, 2 * C_ + h * hs, h * U - lo
            dsum = _fill8(0.0)
            for u in range(lo, hi):
                p, g = _load8(probs[row + u], j), _fill8(0.0)
                for d in range(hs):
                    dy_d = _load8(dy[q + d], j)
                    g = _axpy8(g, qkv[v + d, u], dy_d)
                    dqkv[v + d, u] += _dot8(p, dy_d)       # d v_u = sum_t p[u, t] dy_t
                _store8(dp[u - lo], j, g)                  # d p[u, t] = dy_t . v_u
                dsum = _mac8(dsum, g, p)
            # softmax: d score = p (d p - sum_u d p_u p_u), and the score is q.k / sqrt(HS)
            for u in range(lo, hi):
                g = _mul8(_load8(probs[row + u], j), _axpy8(_load8(dp[u - lo], j), -1.0, dsum))
                _store8(dp[u - lo], j, _mul8(g, _fill8(1.0 / sqrt_hs)))
            for d in range(hs):
                dq, q_d = _load8(dqkv[q + d], j), _load8(qkv[q + d], j)
                for u in range(lo, hi):
                    ds = _load8(dp[u - lo], j)
                    dq = _axpy8(dq, qkv[k + d, u], ds)
                    dqkv[k + d, u] += _dot8(ds, q_d)
                _store8(dqkv[q + d], j, dq)


@kernel
def activation_forward(a, h, nb, relu2):
    """ReLU, or squared ReLU (relu(h)^2)."""
    zero = _fill8(0.0)
    for c in range(h.shape[0]):
        for j in range(0, nb, LANES):
            r = _max8(_load8(h[c], j), zero)
            _store8(a[c], j, _mul8(r, r) if relu2 else r)


@kernel
def activation_backward(dh, h, nb, relu2):
    """In place: dh *= relu'(h) (1 where h > 0), or 2 relu(h) for relu2."""
    zero = _fill8(0.0)
    for c in range(h.shape[0]):
        for j in range(0, nb, LANES):
            r = _max8(_load8(h[c], j), zero)
            slope = _add8(r, r) if relu2 else _positive8(r)
            _store8(dh[c], j, _mul8(_load8(dh[c], j), slope))


@lanes
def _positive8(r):
    return (1.0 if r[0] > 0 else 0.0, 1.0 if r[1] > 0 else 0.0, 1.0 if r[2] > 0 else 0.0, 1.0 if r[3] > 0 else 0.0,
            1.0 if r[4] > 0 else 0.0, 1.0 if r[5] > 0 else 0.0, 1.0 if r[6] > 0 else 0.0, 1.0 if r[7] > 0 else 0.0)


@kernel
def cross_entropy(logits, targets, scratch, n, nb):
    """Mean of -log softmax(logits)[target] over the first n columns; logits (V, NP) become d_logits in place
    (0 in the padding columns n .. nb). scratch (2, NP)."""
    V_ = logits.shape[0]
    weight = 1.0 / n  # each predicted position counts 1/n towards the mean
    for j in range(0, nb, LANES):
        peak = _load8(logits[0], j)
        for v in range(1, V_):
            peak = _max8(peak, _load8(logits[v], j))
        _store8(scratch[1], j, peak)
        for t in range(j, j + LANES):
            scratch[1, t] = logits[targets[t], t] - scratch[1, t]  # the target's shifted logit
        total = _fill8(0.0)
        for v in range(V_):
            e = _exp8(_load8(logits[v], j), peak)
            _store8(logits[v], j, e)
            total = _add8(total, e)
        _store8(scratch[0], j, total)
        # softmax followed by NLL: d_logits = (probs - onehot(target)) / n
        weights = _weights8(j, n, weight)
        for v in range(V_):
            _store8(logits[v], j, _mul8(_div8(_load8(logits[v], j), total), weights))
    loss = 0.0
    for t in range(n):
        loss -= scratch[1, t] - math.log(scratch[0, t])
        logits[targets[t], t] = (_exp(scratch[1, t]) / scratch[0, t] - 1.0) * weight
    return loss * weight


@lanes
def _weights8(j, n, weight):
    """weight on the columns below n, 0 on the padding."""
    return (weight if j < n else 0.0, weight if j + 1 < n else 0.0, weight if j + 2 < n else 0.0,
            weight if j + 3 < n else 0.0, weight if j + 4 < n else 0.0, weight if j + 5 < n else 0.0,
            weight if j + 6 < n else 0.0, weight if j + 7 < n else 0.0)


# ---- the model: views of the parameters and the workspace (a slice is free, a reshape costs ~20 ns), the
# forward, the backward, Adam

@kernel
def _block(ws, plan, k, i, rows):
    """Layer i's (rows, NP) slice of workspace array WORKSPACE[k]."""
    start = plan[WS + k] + i * rows
    return ws[start:start + rows]


@kernel
def _layer(pm, plan, i):
    """Layer i's (w_qkv (3C, C), attn_wo (C, C), mlp_fc1 (4C, C), mlp_fc2 (C, 4C)) in pm, the (P / C, C) parameters."""
    C_ = plan[C]
    r = plan[OFF_LAYERS] // C_ + 12 * C_ * i  # wq, wk, wv are adjacent: one (3C, C) matrix
    return pm[r:r + 3 * C_], pm[r + 3 * C_:r + 4 * C_], pm[r + 4 * C_:r + 8 * C_], \
        pm[r + 8 * C_:r + 12 * C_].reshape((C_, 4 * C_))


@kernel
def _copy_columns(out, x, nb):
    for c in range(x.shape[0]):
        for j in range(0, nb, LANES):
            _store8(out[c], j, _load8(x[c], j))


@kernel
def _row_major(rows, x, n):
    """x (K, NP) -> its first n columns as row-major (n, K), in rows (NP, K)."""
    transpose(rows, x, n)
    return rows[:n]


@kernel
def _pack_columns(plan, columns):
    """Fills columns (4, NP) from the batch: per predicted position its input token, target, position, and the
    first column it attends to. Returns n, the number of columns; the padding up to a multiple of 8 attends
    to itself only."""
    T_, at, causal = plan[T], plan[BATCH_AT], plan[CAUSAL] == 1
    n_docs = plan[at]
    token = at + 1 + n_docs
    j = 0
    for b in range(n_docs):
        length = plan[at + 1 + b]
        for p in range(min(T_, length - 1)):
            columns[0, j], columns[1, j], columns[2, j] = plan[token + p], plan[token + p + 1], p
            columns[3, j] = j - p if causal else j
            j += 1
        token += length
    for pad in range(j, j + (-j) % LANES):
        columns[0, pad], columns[1, pad], columns[2, pad], columns[3, pad] = 0, 0, 0, pad
    return j


@kernel
def _forward(pm, ws, plan, columns, n):
    """Mean loss of the packed batch; leaves every activation, and d_logits, in the workspace."""
    V_, C_, NH_, L_, norm = plan[V], plan[C], plan[NH], plan[L], plan[NORM]
    nb = n + (-n) % LANES  # the micro-kernels' columns; the padding columns stay zero
    wte, wpe = pm[:V_], pm[plan[OFF_WPE] // C_:plan[OFF_WPE] // C_ + plan[T]]
    scales = _block(ws, plan, SCALES, 0, 2 * L_ + 1)
    x = _block(ws, plan, XS, 0, C_)
    for c in range(C_):
        for j in range(nb):
            x[c, j] = wte[columns[0, j], c] + wpe[columns[2, j], c] if j < n else 0.0
    if norm == NORM_MICROGPT:
        rmsnorm_forward(x, scales[0], x, nb)
    for i in range(L_):
        w_qkv, w_o, w_fc1, w_fc2 = _layer(pm, plan, i)
        x_in, xn1, qkv, y = (_block(ws, plan, XS, i, C_), _block(ws, plan, XN1, i, C_),
                             _block(ws, plan, QKV, i, 3 * C_), _block(ws, plan, Y, i, C_))
        x_mid, xn2, h, a = (_block(ws, plan, XMID, i, C_), _block(ws, plan, XN2, i, C_),
                            _block(ws, plan, H, i, 4 * C_), _block(ws, plan, A, i, 4 * C_))
        if norm != NORM_NONE:
            rmsnorm_forward(xn1, scales[1 + 2 * i], x_in, nb)
        matmul(qkv, w_qkv, x_in if norm == NORM_NONE else xn1, 3 * C_, nb, C_, False)  # (3C, N)
        attention_forward(y, _block(ws, plan, PROBS, i, NH_ * (plan[T] + LANES - 1)), qkv, columns[3], nb, NH_)
        _copy_columns(x_mid, x_in, nb)
        matmul(x_mid, w_o, y, C_, nb, C_, True)                        # x = attn_wo @ y + residual
        if norm == NORM_MICROGPT:
            rmsnorm_forward(xn2, scales[2 + 2 * i], x_mid, nb)
        matmul(h, w_fc1, xn2 if norm == NORM_MICROGPT else x_mid, 4 * C_, nb, C_, False)  # (4C, N)
        activation_forward(a, h, nb, plan[RELU2] == 1)
        x_out = _block(ws, plan, XS, i + 1, C_)
        _copy_columns(x_out, x_mid, nb)
        matmul(x_out, w_fc2, a, C_, nb, 4 * C_, True)                  # x = mlp_fc2 @ a + residual
    logits = _block(ws, plan, LOGITS, 0, V_)
    lm_head = pm[plan[OFF_LM] // C_:plan[OFF_LM] // C_ + V_]
    matmul(logits, lm_head, _block(ws, plan, XS, L_, C_), V_, nb, C_, False)  # (V, N)
    return cross_entropy(logits, columns[1], _block(ws, plan, SCRATCH, 0, 2), n, nb)


@kernel
def _backward(pm, gm, ws, plan, columns, rows_c, rows_4c, n):
    """Fills gm (grads as (P / C, C)) from the activations _forward left; each layer's backward in reverse."""
    V_, C_, NH_, L_, norm = plan[V], plan[C], plan[NH], plan[L], plan[NORM]
    nb = n + (-n) % LANES
    scales, d_logits = _block(ws, plan, SCALES, 0, 2 * L_ + 1), _block(ws, plan, LOGITS, 0, V_)
    dx, dtmp, dqkv = _block(ws, plan, DX, 0, C_), _block(ws, plan, DTMP, 0, C_), _block(ws, plan, DQKV, 0, 3 * C_)
    dy, dh, dp = _block(ws, plan, DY, 0, C_), _block(ws, plan, DH, 0, 4 * C_), _block(ws, plan, DP, 0, plan[T] + LANES - 1)
    # every weight matrix is used once per step, so its gradient is written, not summed; only the embeddings'
    # rows are summed into (with lm_head tied, wte's gradient is first written by the lm_head matmul)
    lm, wpe = plan[OFF_LM] // C_, plan[OFF_WPE] // C_
    gm[wpe:wpe + plan[T]] = 0
    if lm != 0:
        gm[:V_] = 0
    x_final = _row_major(rows_c, _block(ws, plan, XS, L_, C_), n)
    matmul(gm[lm:lm + V_], d_logits, x_final, V_, C_, n, False)         # (V, C)
    matmul(dx, pm[lm:lm + V_].T, d_logits, C_, nb, V_, False)          # (C, N)
    for i in range(L_ - 1, -1, -1):
        w_qkv, w_o, w_fc1, w_fc2 = _layer(pm, plan, i)
        d_qkv, d_o, d_fc1, d_fc2 = _layer(gm, plan, i)
        x_in, xn1, qkv, y = (_block(ws, plan, XS, i, C_), _block(ws, plan, XN1, i, C_),
                             _block(ws, plan, QKV, i, 3 * C_), _block(ws, plan, Y, i, C_))
        x_mid, xn2, h, a = (_block(ws, plan, XMID, i, C_), _block(ws, plan, XN2, i, C_),
                            _block(ws, plan, H, i, 4 * C_), _block(ws, plan, A, i, 4 * C_))
        # mlp block: x_out = mlp_fc2 @ act(mlp_fc1 @ xn2) + x_mid
        matmul(d_fc2, dx, _row_major(rows_4c, a, n), C_, 4 * C_, n, False)
        matmul(dh, w_fc2.T, dx, 4 * C_, nb, C_, False)                # (4C, N)
        activation_backward(dh, h, nb, plan[RELU2] == 1)
        matmul(d_fc1, dh, _row_major(rows_c, xn2 if norm == NORM_MICROGPT else x_mid, n), 4 * C_, C_, n, False)
        if norm == NORM_MICROGPT:
            matmul(dtmp, w_fc1.T, dh, C_, nb, 4 * C_, False)
            rmsnorm_backward(dx, dtmp, xn2, scales[2 + 2 * i], nb, True)
        else:
            matmul(dx, w_fc1.T, dh, C_, nb, 4 * C_, True)
        # attention block: x_mid = attn_wo @ attention(w_qkv @ xn1) + x_in
        matmul(d_o, dx, _row_major(rows_c, y, n), C_, C_, n, False)
        matmul(dy, w_o.T, dx, C_, nb, C_, False)                      # (C, N)
        attention_backward(dqkv, dy, _block(ws, plan, PROBS, i, NH_ * (plan[T] + LANES - 1)), dp, qkv, columns[3],
                           nb, NH_)
        matmul(d_qkv, dqkv, _row_major(rows_c, x_in if norm == NORM_NONE else xn1, n), 3 * C_, C_, n, False)
        if norm == NORM_NONE:
            matmul(dx, w_qkv.T, dqkv, C_, nb, 3 * C_, True)
        else:
            matmul(dtmp, w_qkv.T, dqkv, C_, nb, 3 * C_, False)
            rmsnorm_backward(dx, dtmp, xn1, scales[1 + 2 * i], nb, True)
    if norm == NORM_MICROGPT:
        rmsnorm_backward(dtmp, dx, _block(ws, plan, XS, 0, C_), scales[0], nb, False)
        dx = dtmp
    d_wte, d_wpe = gm[:V_], gm[wpe:]
    for j in range(n):
        for c in range(C_):
            d_wpe[columns[2, j], c] += dx[c, j]
            d_wte[columns[0, j], c] += dx[c, j]


@kernel
def _loss_and_grads(state, ws, plan):
    """Loss of the batch in plan; fills state[1] with the gradients."""
    C_, NP_, P = plan[C], plan[NP], state.shape[1]
    columns = plan[COLUMNS:COLUMNS + 4 * NP_].reshape((4, NP_))
    rows = _block(ws, plan, ROWS, 0, 4 * C_)
    n = _pack_columns(plan, columns)
    pm = state[0].reshape((P // C_, C_))
    loss = _forward(pm, ws, plan, columns, n)
    _backward(pm, state[1].reshape((P // C_, C_)), ws, plan, columns, rows[:C_].reshape((NP_, C_)),
              rows.reshape((NP_, 4 * C_)), n)
    return loss


@kernel
def _adam(state, adam, lr, t):
    """Adam step t (1-based) with learning rate lr, optionally AdamW and clipped, on state = (params, grads, m, v).

    p -= lr m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps), the reference's expression with its two
    bias-correction divisions turned into multiplications (one division per parameter instead of three:
    Adam is then ~1/3 less of a step; results move by an ulp). beta^t is C's pow, as in Python.
    """
    p, g, m, v = state[0], state[1], state[2], state[3]
    beta1, beta2, eps = adam[BETA1], adam[BETA2], adam[EPS]
    step_size = lr / (1 - beta1 ** np.float64(t))
    inverse_bias2, decay = 1.0 / (1 - beta2 ** np.float64(t)), lr * adam[WEIGHT_DECAY]
    if adam[GRAD_CLIP] > 0:
        total = 0.0
        for i in range(g.size):
            total += g[i] * g[i]
        g *= min(1.0, adam[GRAD_CLIP] / (math.sqrt(total) + 1e-6))
    for i in range(p.size):
        m[i] = m[i] * beta1 + g[i] * (1 - beta1)
        v[i] = v[i] * beta2 + g[i] * g[i] * (1 - beta2)
        if decay:
            p[i] -= p[i] * decay  # decoupled (AdamW) decay
        p[i] -= m[i] * step_size / (math.sqrt(v[i] * inverse_bias2) + eps)


# ---- entry points, called from FusedEngine

@kernel
def loss_and_grads(state, ws, plan):
    return _loss_and_grads(state, ws, plan)


@kernel
def adam_update(state, adam, lr, t):
    _adam(state, adam, lr, t)


@kernel
def train_step(state, ws, plan, adam, lr, t):
    """One step: loss and gradients of the batch in plan, then Adam step t. Returns the loss before the update."""
    loss = _loss_and_grads(state, ws, plan)
    _adam(state, adam, lr, t)
    return loss


@kernel
def train_steps(state, ws, plan, adam, docs, doc_starts, batch_size, lrs, first_t, losses):
    """len(losses) steps: step i trains on documents i B .. i B + B - 1 of docs (tokens back to back,
    document d at docs[doc_starts[d]:doc_starts[d + 1]]) with learning rate lrs[i], as Adam step first_t + i."""
    at = plan[BATCH_AT]
    for i in range(losses.size):
        plan[at] = batch_size
        token = at + 1 + batch_size
        for b in range(batch_size):
            d = i * batch_size + b
            length = doc_starts[d + 1] - doc_starts[d]
            plan[at + 1 + b] = length
            plan[token:token + length] = docs[doc_starts[d]:doc_starts[d + 1]]
            token += length
        losses[i] = train_step(state, ws, plan, adam, lrs[i], first_t + i)


@kernel
def decode_step(params, plan, kv_cache, scratch, token, pos, logits):
    """Logits (V,) of the token after `token` at `pos`; appends its keys and values to kv_cache (L, 2, T, C)."""
    V_, C_, NH_, L_, norm = plan[V], plan[C], plan[NH], plan[L], plan[NORM]
    hs = C_ // NH_
    pm = params.reshape((params.size // C_, C_))
    x, x_in, qkv, y, hidden = scratch[0, :C_], scratch[1, :C_], scratch[2, :3 * C_], scratch[3, :C_], scratch[4, :4 * C_]
    scores = scratch[5, :plan[T]]
    wte, wpe = pm[:V_], pm[plan[OFF_WPE] // C_:]
    for c in range(C_):
        x[c] = wte[token, c] + wpe[pos, c]
    if norm == NORM_MICROGPT:
        _rmsnorm_vector(x, x)
    first = 0 if plan[CAUSAL] == 1 else pos
    for i in range(L_):
        w_qkv, w_o, w_fc1, w_fc2 = _layer(pm, plan, i)
        _rmsnorm_vector(x_in, x) if norm != NORM_NONE else _copy(x_in, x)
        _matvec(qkv, w_qkv, x_in)
        kv_cache[i, 0, pos] = qkv[C_:2 * C_]
        kv_cache[i, 1, pos] = qkv[2 * C_:]
        for hd in range(NH_):
            q, keys, values = hd * hs, kv_cache[i, 0], kv_cache[i, 1]
            for u in range(first, pos + 1):
                s = qkv[q] * keys[u, q]
                for d in range(1, hs):
                    s += qkv[q + d] * keys[u, q + d]
                scores[u] = s / hs ** 0.5
            peak = scores[first:pos + 1].max()
            total = 0.0
            for u in range(first, pos + 1):
                scores[u] = math.exp(scores[u] - peak)
                total += scores[u]
            for d in range(hs):
                acc = scores[first] / total * values[first, q + d]
                for u in range(first + 1, pos + 1):
                    acc += scores[u] / total * values[u, q + d]
                y[q + d] = acc
        _matvec(x_in, w_o, y)
        _add(x, x_in)
        _rmsnorm_vector(x_in, x) if norm == NORM_MICROGPT else _copy(x_in, x)
        _matvec(hidden, w_fc1, x_in)
        for k in range(hidden.size):
            r = max(hidden[k], 0.0)
            hidden[k] = r * r if plan[RELU2] == 1 else r
        _matvec(x_in, w_fc2, hidden)
        _add(x, x_in)
    _matvec(logits, pm[plan[OFF_LM] // C_:plan[OFF_LM] // C_ + V_], x)


@kernel
def _matvec(out, w, x):
    for o in range(w.shape[0]):
        acc = w[o, 0] * x[0]
        for i in range(1, w.shape[1]):
            acc += w[o, i] * x[i]
        out[o] = acc


@kernel
def _rmsnorm_vector(out, x):
    ms = 0.0
    for c in range(x.size):
        ms += x[c] * x[c]
    scale = 1.0 / math.sqrt(ms / x.size + RMSNORM_EPS)
    for c in range(x.size):
        out[c] = x[c] * scale


@kernel
def _copy(out, x):
    out[:] = x


@kernel
def _add(out, x):
    for c in range(x.size):
        out[c] = x[c] + out[c]  # the layer's output plus the residual, in microgpt's order
