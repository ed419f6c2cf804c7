"""The fused engine's decoder: one position per call, with a KV cache, as microgpt's gpt() runs at sampling time.

Plain loops on vectors (one position is too little work for the training kernels' 8 lanes), sums in the
reference's order.
"""

import math

from numba import njit

from ...config import RMSNORM_EPS
from .lanes import kernel
from .plan import (NORM_MICROGPT, NORM_NONE, SLOT_C, SLOT_CAUSAL, SLOT_L, SLOT_LM_HEAD, SLOT_NH, SLOT_NORM,
                   SLOT_RELU2, SLOT_T, SLOT_V, SLOT_WPE, SLOT_WTE, layer_weights)


@njit(cache=True, error_model='numpy')
def decode_step(params, plan, kv_cache, scratch, token, pos, logits):
    """Logits (V,) of the token after `token` at `pos`; stores its keys and values in kv_cache (L, 2, T, C)."""
    V_, C_, NH_, L_, norm = plan[SLOT_V], plan[SLOT_C], plan[SLOT_NH], plan[SLOT_L], plan[SLOT_NORM]
    hs = C_ // NH_
    pm = params.reshape((params.size // C_, C_))
    x, x_in, qkv, y = scratch[0, :C_], scratch[1, :C_], scratch[2, :3 * C_], scratch[3, :C_]
    hidden, scores = scratch[4, :4 * C_], scratch[5, :plan[SLOT_T]]
    wte, wpe = pm[plan[SLOT_WTE]:plan[SLOT_WTE] + V_], pm[plan[SLOT_WPE]:]
    for c in range(C_):
        x[c] = wte[token, c] + wpe[pos, c]
    if norm == NORM_MICROGPT:
        _rmsnorm(x, x)
    first = 0 if plan[SLOT_CAUSAL] == 1 else pos  # self attention: each position sees only itself
    for i in range(L_):
        w_qkv, w_o, w_fc1, w_fc2 = layer_weights(pm, plan, i)
        _rmsnorm(x_in, x) if norm != NORM_NONE else _copy(x_in, x)
        _matvec(qkv, w_qkv, x_in)
        kv_cache[i, 0, pos] = qkv[C_:2 * C_]
        kv_cache[i, 1, pos] = qkv[2 * C_:]
        keys, values = kv_cache[i, 0], kv_cache[i, 1]
        for q in range(0, C_, hs):  # each head: q .. q + hs
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
        _add_residual(x, x_in)
        _rmsnorm(x_in, x) if norm == NORM_MICROGPT else _copy(x_in, x)
        _matvec(hidden, w_fc1, x_in)
        for k in range(hidden.size):
            r = max(hidden[k], 0.0)
            hidden[k] = r * r if plan[SLOT_RELU2] == 1 else r
        _matvec(x_in, w_fc2, hidden)
        _add_residual(x, x_in)
    _matvec(logits, pm[plan[SLOT_LM_HEAD]:plan[SLOT_LM_HEAD] + V_], x)


@kernel
def _matvec(out, w, x):
    """out = w @ x, each sum left to right."""
    for o in range(w.shape[0]):
        acc = w[o, 0] * x[0]
        for i in range(1, w.shape[1]):
            acc += w[o, i] * x[i]
        out[o] = acc


@kernel
def _rmsnorm(out, x):
    ms = x[0] * x[0]
    for c in range(1, x.size):
        ms += x[c] * x[c]
    scale = 1.0 / math.sqrt(ms / x.size + RMSNORM_EPS)
    for c in range(x.size):
        out[c] = x[c] * scale


@kernel
def _copy(out, x):
    out[:] = x


@kernel
def _add_residual(x, layer_out):
    """x = layer_out + x, microgpt's order."""
    for c in range(x.size):
        x[c] = layer_out[c] + x[c]
