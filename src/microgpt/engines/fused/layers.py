"""The fused engine's layers: forward/backward pairs on feature-major activations, compiled by numba.

An activation is (features, NP): llm.c's (B, T, C) turned into (C, NP), one column per predicted position
of the packed batch (documents back to back; attention stays within a document), the columns padded to a
multiple of 8 with zero columns that attend to themselves. Kernels run over the first nb columns, 8 at a
time (lanes.py). The linear layers are matrix products (matmul.py).
No fastmath: every sum runs in a fixed order, the reference's where it has one; the multiply-adds of axpy8 and
mac8 are fused (lanes.madd: one rounding where the reference rounds the product and the sum). Dimension letters as
in
numpy/layers.py: C channels, NH heads, HS head size, V vocabulary, T block size, NP column capacity.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ... import dropout as _dropout
from ...config import RMSNORM_EPS
from .lanes import (LANES, add8, axpy8, column8, div8, exp8, exp_nonpositive, fill8, kernel, lane_by_lane,
                    load8, mac8, max8, min2, mul8, store8)

_draw, _group_index, _keep_scale = kernel(_dropout.draw), kernel(_dropout.group_index), kernel(_dropout.keep_scale)


@kernel
def rmsnorm_forward(out, scale, x, nb):
    """out = x / sqrt(mean(x^2) + eps) per column (no learned gain); scale (NP,) keeps the factor."""
    real = out.dtype.type
    zero, n, eps = real(0), real(x.shape[0]), real(RMSNORM_EPS)
    for j in range(0, nb, LANES):
        ms = fill8(zero)
        for c in range(x.shape[0]):
            x_c = load8(x[c], j)
            ms = mac8(ms, x_c, x_c)
        s = _rsqrt8(ms, n, eps)
        store8(scale, j, s)
        for c in range(x.shape[0]):
            store8(out[c], j, mul8(load8(x[c], j), s))


@intrinsic
def _rsqrt8(typingctx, ms, n, eps):
    """(ms / n + eps)^-1/2 as 1 / sqrt (math.sqrt's code; no call to pow), lane by lane, in the lanes' float type."""
    if not (isinstance(ms, types.UniTuple) and isinstance(ms.dtype, types.Float) and n == eps == ms.dtype):
        return None

    def codegen(context, builder, signature, args):
        sqrt, one = context.get_function(math.sqrt, ms.dtype(ms.dtype)), context.get_constant(ms.dtype, 1.0)

        def lane(k, m, n_, eps_):
            return builder.fdiv(one, sqrt(builder, [builder.fadd(builder.fdiv(m, n_), eps_)]))
        return lane_by_lane(context, builder, signature, args, lane)
    return ms(ms, n, eps), codegen


@kernel
def rmsnorm_backward(dx, dout, out, scale, nb, accumulate):
    # y = x s, s = (mean(x^2) + eps)^-1/2  =>  dx = s (dout - y sum_c(dout_c y_c) / C)
    real = dx.dtype.type
    zero, minus_one, inv_n = real(0), real(-1), real(1.0 / out.shape[0])
    for j in range(0, nb, LANES):
        dot = fill8(zero)
        for c in range(out.shape[0]):
            dot = mac8(dot, load8(dout[c], j), load8(out[c], j))
        dot, s = mul8(dot, fill8(inv_n)), load8(scale, j)
        for c in range(out.shape[0]):
            d = mul8(s, axpy8(load8(dout[c], j), minus_one, mul8(load8(out[c], j), dot)))
            store8(dx[c], j, add8(load8(dx[c], j), d) if accumulate else d)


@kernel
def attention_forward(y, probs, qkv, first, nb, n_head):
    """Softmax attention per head for 8 query columns t at a time, each over the keys u in first[t] .. t.

    first[t] is the column of t's document start (t itself for self attention and padding columns).
    qkv (3C, NP) stacks q, k, v; probs (NH U, NP) keeps p[h U + u - first[j], t] for the block of columns
    j .. j + 7 (0 where t does not attend to u), for the backward.
    """
    C_ = y.shape[0]
    hs, U = C_ // n_head, probs.shape[0] // n_head
    real = y.dtype.type  # every lane in the activations' float type: float32 lanes are twice as many per register
    zero, minus_inf = real(0), real(-np.inf)
    sqrt_hs = real(hs ** 0.5)  # microgpt divides the scores by head_dim ** 0.5
    for j in range(0, nb, LANES):
        lo, hi = first[j], j + LANES  # the keys any query of the block attends to
        starts = load8(first, j)
        for h in range(n_head):
            q, k, v, row = h * hs, C_ + h * hs, 2 * C_ + h * hs, h * U - lo
            peak = fill8(minus_inf)
            for u in range(lo, hi):
                score = fill8(zero)
                for d in range(hs):
                    score = axpy8(score, qkv[k + d, u], load8(qkv[q + d], j))
                score = _mask8(score, sqrt_hs, minus_inf, u, starts, j)
                store8(probs[row + u], j, score)
                peak = max8(peak, score)
            total = fill8(zero)
            for u in range(lo, hi):
                e = exp8(load8(probs[row + u], j), peak)
                store8(probs[row + u], j, e)
                total = add8(total, e)
            for u in range(lo, hi):
                store8(probs[row + u], j, div8(load8(probs[row + u], j), total))
            for d in range(hs):
                acc = fill8(zero)
                for u in range(lo, hi):
                    acc = axpy8(acc, qkv[v + d, u], load8(probs[row + u], j))
                store8(y[q + d], j, acc)


@intrinsic
def _mask8(typingctx, score, sqrt_hs, minus_inf, u, starts, j):
    """score / sqrt(HS) where query j + k attends to key u (starts[k] <= u <= j + k), else -inf, lane by lane."""
    if not (isinstance(score, types.UniTuple) and isinstance(starts, types.UniTuple) and score.dtype == sqrt_hs
            == minus_inf and all(isinstance(kind, types.Integer) for kind in (u, starts.dtype, j))):
        return None

    def codegen(context, builder, signature, args):
        def lane(k, s, sqrt_hs_, minus_inf_, u_, start, j_):
            u_, start, j_ = (context.cast(builder, value, kind, types.int64)
                             for value, kind in ((u_, u), (start, starts.dtype), (j_, j)))
            attends = builder.and_(builder.icmp_signed('<=', start, u_),
                                   builder.icmp_signed('<=', u_, builder.add(j_, ir.Constant(j_.type, k))))
            return builder.select(attends, builder.fdiv(s, sqrt_hs_), minus_inf_)
        return lane_by_lane(context, builder, signature, args, lane)
    return score(score, sqrt_hs, minus_inf, u, starts, j), codegen


@kernel
def attention_backward(dqkv, dy, probs, dp, qkv, first, nb, n_head):
    """dqkv (3C, NP) from dy (C, NP): keys and values get gradient from every later query of their document.

    dp (U, NP) is scratch: d loss / d p, then d loss / d score.
    """
    C_ = dy.shape[0]
    hs, U = C_ // n_head, probs.shape[0] // n_head
    real = dqkv.dtype.type
    zero, minus_one, inv_sqrt_hs = real(0), real(-1), real(1.0 / hs ** 0.5)
    for r in range(3 * C_):
        for j in range(nb):
            dqkv[r, j] = 0.0
    for j in range(0, nb, LANES):
        lo, hi = first[j], j + LANES
        for h in range(n_head):
            q, k, v, row = h * hs, C_ + h * hs, 2 * C_ + h * hs, h * U - lo
            dsum = fill8(zero)
            for u in range(lo, hi):
                p, g = load8(probs[row + u], j), fill8(zero)
                for d in range(hs):
                    g = axpy8(g, qkv[v + d, u], load8(dy[q + d], j))
                store8(dp[u - lo], j, g)                  # d p[u, t] = dy_t . v_u
                dsum = mac8(dsum, g, p)
            _keys_gradient(dqkv, v, probs[row + lo:row + hi], lo, hi, dy, q, j, hs)  # d v_u = sum_t p[u, t] dy_t
            # softmax: d score = p (d p - sum_u d p_u p_u), and the score is q.k / sqrt(HS)
            for u in range(lo, hi):
                g = mul8(load8(probs[row + u], j), axpy8(load8(dp[u - lo], j), minus_one, dsum))
                store8(dp[u - lo], j, mul8(g, fill8(inv_sqrt_hs)))
            _keys_gradient(dqkv, k, dp[:hi - lo], lo, hi, qkv, q, j, hs)  # d k_u = sum_t ds[u, t] q_t
            for d in range(hs):
                dq = load8(dqkv[q + d], j)
                for u in range(lo, hi):
                    dq = axpy8(dq, qkv[k + d, u], load8(dp[u - lo], j))
                store8(dqkv[q + d], j, dq)


@kernel
def _keys_gradient(out, at, weights, lo, hi, x, x_at, j, hs):
    """out[at + d, u] += sum_t weights[u - lo, j + t] x[x_at + d, j + t] for keys lo <= u < hi (hi - lo >= 8) and
    d < hs: the keys' value (or key) gradients from the block of queries j .. j + 7, each a sum over the 8 queries t
    in lane order with its products rounded. That is what a dot product across the lanes gave, one key at a time
    (lanes.dot8, before 2026-12-03), bit for bit except a NaN's sign. Here 8 keys are in the lanes: 8 products and
    7 sums of 8 lanes a feature, where the dot product made them one lane at a time (attention's backward 1.65x as
    fast at the makemore size's shapes, docs/PERFORMANCE.md). The last keys, past a multiple of 8, come in a group
    that overlaps the one before, its first lanes left as they are."""
    for u in range(lo, hi, LANES):
        first = min2(u, hi - LANES)  # the group's first key: a last group of fewer than 8 keys starts 8 before hi
        r = first - lo  # its row of weights
        w0, w1, w2, w3 = column8(weights, r, j), column8(weights, r, j + 1), column8(weights, r, j + 2), \
            column8(weights, r, j + 3)
        w4, w5, w6, w7 = column8(weights, r, j + 4), column8(weights, r, j + 5), column8(weights, r, j + 6), \
            column8(weights, r, j + 7)
        for d in range(hs):
            x_d, before = load8(x[x_at + d], j), load8(out[at + d], first)
            total = add8(add8(add8(mul8(w0, fill8(x_d[0])), mul8(w1, fill8(x_d[1]))), mul8(w2, fill8(x_d[2]))),
                         mul8(w3, fill8(x_d[3])))
            total = add8(add8(add8(add8(total, mul8(w4, fill8(x_d[4]))), mul8(w5, fill8(x_d[5]))),
                              mul8(w6, fill8(x_d[6]))), mul8(w7, fill8(x_d[7])))
            store8(out[at + d], first, _from_lane8(add8(before, total), before, u - first))


@intrinsic
def _from_lane8(typingctx, new, old, lane):
    """new's lanes from `lane` on, old's before it."""
    if not (isinstance(new, types.UniTuple) and new == old and isinstance(lane, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        lane_ = context.cast(builder, args[2], lane, types.int64)
        return lane_by_lane(context, builder, signature, args, lambda k, n, o, _: builder.select(
            builder.icmp_signed('<=', lane_, ir.Constant(lane_.type, k)), n, o))
    return new(new, old, lane), codegen


@kernel
def activation_forward(a, h, nb, relu2):
    """ReLU, or squared ReLU (relu(h)^2)."""
    zero = fill8(a.dtype.type(0))
    for c in range(h.shape[0]):
        for j in range(0, nb, LANES):
            r = max8(load8(h[c], j), zero)
            store8(a[c], j, mul8(r, r) if relu2 else r)


@kernel
def activation_backward(dh, h, nb, relu2):
    """In place: dh *= relu'(h) (1 where h > 0), or 2 relu(h) for relu2."""
    zero = fill8(dh.dtype.type(0))
    for c in range(h.shape[0]):
        for j in range(0, nb, LANES):
            r = max8(load8(h[c], j), zero)
            slope = add8(r, r) if relu2 else _positive8(r, zero[0])
            store8(dh[c], j, mul8(load8(dh[c], j), slope))


@intrinsic
def _positive8(typingctx, r, zero):
    """1 where r > 0, else 0, lane by lane, in zero's float type (r's)."""
    if not (isinstance(r, types.UniTuple) and r.dtype == zero and isinstance(zero, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        one = context.get_constant(zero, 1.0)
        return lane_by_lane(context, builder, signature, args,
                            lambda k, x, zero_: builder.select(builder.fcmp_ordered('>', x, zero_), one, zero_))
    return r(r, zero), codegen


@kernel
def cross_entropy_forward(probs, logits, targets, stats, n, nb, n_mean):
    """Sum of -log softmax(logits)[target] over the first n columns, divided by n_mean (n, or the whole batch's
    count when these columns are one group of it). probs (V, NP) gets softmax(logits) (may be logits); stats
    (2, NP) keeps, per column, the sum of e^(logit - peak) and the target's logit - peak, for the backward."""
    V_ = logits.shape[0]
    for j in range(0, nb, LANES):
        peak = load8(logits[0], j)
        for v in range(1, V_):
            peak = max8(peak, load8(logits[v], j))
        store8(stats[1], j, peak)
        for t in range(j, j + LANES):
            stats[1, t] = logits[targets[t], t] - stats[1, t]  # the target's shifted logit
        total = fill8(probs.dtype.type(0))
        for v in range(V_):
            e = exp8(load8(logits[v], j), peak)
            store8(probs[v], j, e)
            total = add8(total, e)
        store8(stats[0], j, total)
        for v in range(V_):
            store8(probs[v], j, div8(load8(probs[v], j), total))
    loss = 0.0
    for t in range(n):
        loss -= stats[1, t] - math.log(stats[0, t])
    return loss * (1.0 / n_mean)


@kernel
def cross_entropy_backward(d_logits, probs, targets, stats, n, nb, n_mean):
    """softmax followed by NLL: d_logits = (probs - onehot(target)) / n_mean over the first n columns, 0 in the
    padding columns n .. nb. The target's probability minus 1 is computed from stats, not from probs (it
    would lose the digits of a probability near 1)."""
    weight = 1.0 / n_mean  # each predicted position counts 1/n_mean towards the mean
    lane_weight, zero = d_logits.dtype.type(weight), d_logits.dtype.type(0)
    for j in range(0, nb, LANES):
        weights = _weights8(j, n, lane_weight, zero)
        for v in range(probs.shape[0]):
            store8(d_logits[v], j, mul8(load8(probs[v], j), weights))
    for t in range(n):  # one value a column, in float64 as the loss is: p - 1 keeps its digits
        d_logits[targets[t], t] = (exp_nonpositive(stats[1, t]) / stats[0, t] - 1.0) * weight


@intrinsic
def _weights8(typingctx, j, n, weight, zero):
    """weight on the columns below n, 0 on the padding: lane k is weight where j + k < n, else zero."""
    if not (isinstance(j, types.Integer) and isinstance(n, types.Integer) and isinstance(weight, types.Float)
            and weight == zero):
        return None
    lanes_type = types.UniTuple(weight, LANES)

    def codegen(context, builder, signature, args):
        j_, n_ = context.cast(builder, args[0], j, types.int64), context.cast(builder, args[1], n, types.int64)
        return lane_by_lane(context, builder, signature, args, lambda k, _j, _n, weight_, zero_: builder.select(
            builder.icmp_signed('<', builder.add(j_, ir.Constant(j_.type, k)), n_), weight_, zero_))
    return lanes_type(j, n, weight, zero), codegen


@kernel
def dropout_columns(out, x, rows, n, site, n_sites, key, threshold):
    """out = x * mask over the first n columns (out may be x), the mask being dropout.masks' elements of `site`:
    rows (NP,) holds each column's document * block_size + position, key (int64) the step's dropout.step_key.
    The padding columns up to a multiple of 8 are set to 0, as they are without dropout."""
    C_ = x.shape[0]
    n_chunks = -(-C_ // _dropout.CHUNKS)
    scale, zero = out.dtype.type(_keep_scale(threshold)), out.dtype.type(0)
    key_bits = np.uint64(key)
    for j in range(n):
        for chunk in range(n_chunks):
            bits = _draw(key_bits, np.uint64(_group_index(rows[j], site, chunk, n_sites, n_chunks)))
            for k in range(min2(_dropout.CHUNKS, C_ - chunk * _dropout.CHUNKS)):
                c = chunk * _dropout.CHUNKS + k
                kept = (bits >> np.uint64(_dropout.CHUNK_BITS * k)) & np.uint64(0xFFFF) >= threshold
                out[c, j] = x[c, j] * (scale if kept else zero)
    for c in range(C_):
        for j in range(n, n + (-n) % LANES):
            out[c, j] = zero


@kernel
def add_columns(out, a, b, nb):
    """out = a + b over the first nb columns (out may be a or b)."""
    for c in range(out.shape[0]):
        for j in range(0, nb, LANES):
            store8(out[c], j, add8(load8(a[c], j), load8(b[c], j)))
