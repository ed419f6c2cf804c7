"""Forward/backward pairs of the GPT's layers on NumPy arrays, llm.c style.

`out, cache = layer_forward(...)` and `d_in = layer_backward(d_out, cache)`. Dimension letters:
B batch, T time (positions), C channels (n_embd), NH heads, HS head size (C // NH), V vocabulary.
Each backward is the hand-derived gradient of its forward; tests check each against finite
differences and PyTorch autograd.
"""

import numpy as np

RMSNORM_EPS = 1e-5


def rmsnorm_forward(x):
    """y = x / sqrt(mean(x^2) + eps) over the last axis (no learned gain, as in microgpt)."""
    ms = np.einsum('...c,...c->...', x, x)[..., None] * (1.0 / x.shape[-1])  # (..., 1)
    scale = (ms + RMSNORM_EPS) ** -0.5                                      # (..., 1)
    return x * scale, (x, scale)


def rmsnorm_backward(dout, cache):
    # y_i = x_i * s, s = (mean(x^2) + eps)^-1/2, ds/dx_i = -s^3 x_i / C
    # => dx = s * dout - x * s^3 * sum_j(dout_j x_j) / C
    x, scale = cache
    dot = np.einsum('...c,...c->...', dout, x)[..., None]                  # (..., 1)
    return scale * dout - x * (scale ** 3 * dot * (1.0 / x.shape[-1]))


def attention_forward(qkv, n_head, mask_bias):
    """Multi-head attention of q over k, v, all packed in qkv (B, T, 3C); mask_bias (T, T) is 0 or -inf."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    HS = C // n_head
    q, k, v = qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)    # each (B, NH, T, HS)
    # microgpt divides by head_dim**0.5, i.e. multiplies by (head_dim**0.5)**-1: same constant here
    scale = (HS ** 0.5) ** -1
    att = (q @ k.swapaxes(-1, -2)) * scale + mask_bias                      # (B, NH, T, T)
    att -= att.max(-1, keepdims=True)
    probs = np.exp(att)
    probs /= probs.sum(-1, keepdims=True)                                   # (B, NH, T, T)
    y = probs @ v                                                           # (B, NH, T, HS)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, C)                          # (B, T, C)
    return out, (q, k, v, probs, scale)


def attention_backward(dout, cache):
    q, k, v, probs, scale = cache
    B, NH, T, HS = q.shape
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)                   # (B, NH, T, HS)
    dprobs = dy @ v.swapaxes(-1, -2)                                        # (B, NH, T, T)
    dv = probs.swapaxes(-1, -2) @ dy                                        # (B, NH, T, HS)
    # softmax: d_att = p * (d_p - sum_j(d_p_j p_j)); masked entries have p = 0 and get no gradient
    datt = probs * (dprobs - np.einsum('...t,...t->...', dprobs, probs)[..., None])
    datt *= scale                                                           # (B, NH, T, T)
    dq = datt @ k                                                           # (B, NH, T, HS)
    dk = datt.swapaxes(-1, -2) @ q                                          # (B, NH, T, HS)
    dqkv = np.stack((dq, dk, dv), axis=2)                                   # (B, NH, 3, T, HS)
    return dqkv.transpose(0, 3, 2, 1, 4).reshape(B, T, 3 * NH * HS)         # (B, T, 3C)


def activation_forward(h, kind):
    """ReLU, or squared ReLU (relu(h)^2)."""
    relu = np.maximum(h, 0.0)
    if kind == 'relu':
        return relu, h
    return relu * relu, relu


def activation_backward(dout, cache, kind):
    if kind == 'relu':
        return dout * (cache > 0)
    return dout * (2.0 * cache)  # d relu(h)^2 / dh = 2 relu(h)


def cross_entropy_forward(logits, targets, weights):
    """Mean of -log softmax(logits)[target] over positions, weighted by `weights` (B, T): 1/N on real
    tokens, 0 on padding, so the result is the mean over the N real tokens."""
    shifted = logits - logits.max(-1, keepdims=True)                        # (B, T, V)
    exp = np.exp(shifted)
    sumexp = exp.sum(-1, keepdims=True)                                     # (B, T, 1)
    probs = exp / sumexp                                                    # (B, T, V)
    B, T = targets.shape
    b, t = np.indices((B, T))
    logp = shifted[b, t, targets] - np.log(sumexp[..., 0])                  # (B, T)
    loss = -np.einsum('bt,bt->', logp, weights)
    return loss, (probs, targets, weights, b, t)


def cross_entropy_backward(cache):
    # softmax followed by NLL: d_logits = (probs - onehot(target)) * weight
    probs, targets, weights, b, t = cache
    dlogits = probs.copy()
    dlogits[b, t, targets] -= 1.0
    dlogits *= weights[..., None]                                           # (B, T, V)
    return dlogits
