"""Forward/backward pairs of the GPT's layers on NumPy arrays, llm.c style.

`out, cache = layer_forward(...)` and `d_in = layer_backward(d_out, cache)`; the weight layers (encoder,
matmul) take their inputs and weight gradients explicitly, as llm.c's do. Dimension letters: B batch,
T time (positions), N = B*T rows, C channels (n_embd), NH heads, HS head size (C // NH), V vocabulary.
Each backward is the hand-derived gradient of its forward; tests check each against finite differences
and PyTorch autograd.
"""

from functools import lru_cache

import numpy as np

from ...config import RMSNORM_EPS


def encoder_forward(inputs, wte, wpe):
    """Token plus position embeddings: x[b, t] = wte[inputs[b, t]] + wpe[t], as rows (B*T, C)."""
    B, T = inputs.shape
    return (wte.take(inputs, 0) + wpe[:T]).reshape(B * T, wte.shape[1])   # (N, C)


def encoder_backward(dout, inputs, dwte, dwpe):
    """Adds each row's gradient to its token's row of dwte (a token may occur many times, and with a tied
    lm_head dwte already holds that use's gradient); writes dwpe, whose rows past T get 0."""
    B, T = inputs.shape
    np.add.reduce(dout.reshape(B, T, -1), 0, out=dwpe[:T])                  # (T, C), summed over documents
    dwpe[T:].fill(0.0)
    np.add.at(dwte, inputs.ravel(), dout)                                   # (V, C) += rows of (N, C)


# The matrix products call ndarray.dot: at microgpt's size a call costs about as much as its arithmetic, and the
# method is the cheapest to call (over a (6, 16) by (16, 48) product: 1.0 us, np.dot 1.25, @ 1.5), with the same bits.


def matmul_forward(x, w):
    """out = x @ w.T for a weight w (out, in), as microgpt's linear()."""
    return x.dot(w.T)                                                       # (N, out)


def matmul_backward(dout, x, w, dw):
    """Writes dw = dout.T @ x (every weight matrix is used once per step, so nothing is summed into it);
    returns dx = dout @ w."""
    dout.T.dot(x, out=dw)                                                   # (out, in)
    return dout.dot(w)                                                      # (N, in)


def dropout_forward(x, mask):
    """Inverted dropout under a given mask (0, or 1 / (1 - rate): dropout.masks), in place; None: identity."""
    if mask is not None:
        x *= mask
    return x


def dropout_backward(dout, mask):
    return dout if mask is None else dout * mask


def rmsnorm_forward(x):
    """y = x / sqrt(mean(x^2) + eps) over the last axis (no learned gain, as in microgpt)."""
    # one NumPy call per line: at microgpt's size each costs about as much as its arithmetic
    ms = np.vecdot(x, x)                                                    # (...,)
    ms *= 1.0 / x.shape[-1]  # microgpt's sum(x^2) / C is sum * C**-1
    ms += RMSNORM_EPS
    scale = (ms ** -0.5)[..., None]                                         # (..., 1)
    out = x * scale
    return out, (out, scale)


def rmsnorm_backward(dout, cache):
    # y_i = x_i * s, s = (mean(x^2) + eps)^-1/2, ds/dx_i = -s^3 x_i / C
    # => dx = s * dout - x * s^3 * sum_j(dout_j x_j) / C = s * (dout - y * sum_j(dout_j y_j) / C)
    out, scale = cache
    dot = np.vecdot(dout, out)                                              # (...,)
    dot *= 1.0 / out.shape[-1]
    dx = out * dot[..., None]
    np.subtract(dout, dx, out=dx)
    dx *= scale
    return dx


@lru_cache(maxsize=None)
def attention_mask_bias(attention, T, dtype):
    """(T, T) added to the attention scores of T positions: 0 where position t may attend to s (s <= t for
    'causal', s == t for 'self'), -inf elsewhere. Read-only, a view of the bias of the next power of two, made
    once per T. Sized by the batch, never by the block: a --block-size 100000 over short names must not allocate
    (100000, 100000)."""
    return _mask_bias(attention, 1 << (T - 1).bit_length(), dtype)[:T, :T]  # (T, T)


@lru_cache(maxsize=None)
def _mask_bias(attention, size, dtype):
    """The bias of `size` positions, a power of two: a few sizes cover every T."""
    if attention == 'causal':
        allowed = np.tril(np.ones((size, size), bool))                      # (size, size)
    else:
        allowed = np.eye(size, dtype=bool)                                  # (size, size)
    bias = np.where(allowed, 0.0, -np.inf).astype(dtype)                  # (size, size)
    bias.flags.writeable = False
    return bias


def attention_forward(qkv, B, n_head, mask_bias):
    """Multi-head attention of q over k, v, all packed in qkv (B*T, 3C); mask_bias (T, T) is 0 or -inf."""
    N, C3 = qkv.shape
    T, C = N // B, C3 // 3
    HS = C // n_head
    heads = qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)      # (3, B, NH, T, HS)
    q, k, v = heads[0], heads[1], heads[2]                                  # each (B, NH, T, HS)
    # microgpt divides by head_dim**0.5, i.e. multiplies by (head_dim**0.5)**-1: same constant here
    scale = (HS ** 0.5) ** -1
    att = q @ k.swapaxes(-1, -2)                                            # (B, NH, T, T)
    att *= scale
    att += mask_bias
    att -= np.maximum.reduce(att, -1, keepdims=True)
    probs = np.exp(att, out=att)
    probs /= np.add.reduce(probs, -1, keepdims=True)                        # (B, NH, T, T)
    y = probs @ v                                                           # (B, NH, T, HS)
    out = y.transpose(0, 2, 1, 3).reshape(N, C)                             # (B*T, C)
    return out, (q, k, v, probs, scale)


def attention_backward(dout, cache):
    q, k, v, probs, scale = cache
    B, NH, T, HS = q.shape
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)                   # (B, NH, T, HS) from (B*T, C)
    dprobs = dy @ v.swapaxes(-1, -2)                                        # (B, NH, T, T)
    # softmax: d_att = p * (d_p - sum_j(d_p_j p_j)); masked entries have p = 0 and get no gradient
    datt = dprobs - np.vecdot(dprobs, probs)[..., None]
    datt *= probs
    datt *= scale                                                           # (B, NH, T, T)
    dqkv = np.empty((B, T, 3, NH, HS), q.dtype)                             # (B, T, 3, NH, HS): packed like qkv
    dq_dk_dv = dqkv.transpose(2, 0, 3, 1, 4)                                # (3, B, NH, T, HS) view of it
    np.matmul(datt, k, out=dq_dk_dv[0])
    np.matmul(datt.swapaxes(-1, -2), q, out=dq_dk_dv[1])
    np.matmul(probs.swapaxes(-1, -2), dy, out=dq_dk_dv[2])
    return dqkv.reshape(B * T, 3 * NH * HS)                                 # (B*T, 3C)


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


def cross_entropy_forward(logits, target_index, weights):
    """Weighted sum of -log softmax(logits)[target] over rows.

    logits (N, V); target_index (N,) indexes logits.ravel() at each row's target; weights (N,) are 1/n
    on the n real positions and 0 on padding, so the loss is the mean over real tokens.
    """
    shifted = logits - np.maximum.reduce(logits, -1, keepdims=True)        # (N, V)
    target_logit = shifted.ravel()[target_index]                            # (N,)
    exp = np.exp(shifted, out=shifted)                                      # (N, V)
    sumexp = np.add.reduce(exp, -1)                                         # (N,)
    loss = (np.log(sumexp) - target_logit).dot(weights)                     # -log p[target], weighted
    return loss, (exp, sumexp, target_index, weights)


def cross_entropy_backward(cache):
    # softmax followed by NLL: d_logits = (probs - onehot(target)) * weight = exp * (weight / sumexp) - onehot * weight
    exp, sumexp, target_index, weights = cache
    dlogits = np.multiply(exp, (weights / sumexp)[:, None], out=exp)        # (N, V), in place of the cache's exp
    dlogits.ravel()[target_index] -= weights
    return dlogits
