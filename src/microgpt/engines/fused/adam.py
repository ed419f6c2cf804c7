"""The fused engine's Adam: one pass over the parameters, in the reference's operation order.

`adam` is the float64 array of Adam's settings (TrainConfig's), indexed by BETA1 ... GRAD_CLIP; the update of
each parameter is independent of the others' (`adam_parameters`' loop), so parallel.py runs it in parallel.
"""

import math

import numpy as np

from .lanes import kernel, min2

BETA1, BETA2, EPS, WEIGHT_DECAY, GRAD_CLIP = range(5)


@kernel
def adam_step(state, adam, lr, t):
    """Adam step t (1-based) with learning rate lr, optionally AdamW and clipped, on state = (params, grads, m, v).

    p -= lr m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps), the reference's expression with its two
    bias-correction divisions turned into multiplications (one division per parameter instead of three:
    Adam is then ~1/3 less of a step; results move by an ulp). beta^t is C's pow, as in Python.
    """
    clip_gradients(state[1], adam)
    adam_parameters(state, 0, state.shape[1], adam_settings(adam, lr, t))


@kernel
def clip_gradients(g, adam):
    """Scale g to the global norm adam[GRAD_CLIP] when it is above it (0: off); the norm summed in order."""
    if adam[GRAD_CLIP] > 0:
        total = 0.0
        for i in range(g.size):
            total += g[i] * g[i]
        g *= min2(1.0, adam[GRAD_CLIP] / (math.sqrt(total) + 1e-6))


@kernel
def adam_settings(adam, lr, t):
    """(beta1, 1 - beta1, beta2, 1 - beta2, eps, step size, 1 / (1 - beta2^t), decay) of Adam step t, in float64
    (a float32 beta2 of 0.99999999 would be 1, and its 1 - beta2 0)."""
    beta1, beta2 = adam[BETA1], adam[BETA2]
    return (beta1, 1 - beta1, beta2, 1 - beta2, adam[EPS], lr / (1 - beta1 ** np.float64(t)),
            1.0 / (1 - beta2 ** np.float64(t)), lr * adam[WEIGHT_DECAY])


@kernel
def adam_parameters(state, first, stop, settings):
    """Adam on parameters first .. stop - 1 of state = (params, grads, m, v). Indexed from 0 in slices of the rows,
    so that LLVM vectorizes the loop: with indices from first on, which might be negative as far as it knows (a
    negative index counts from the end), it did not, and Adam, one scalar update at a time, took 13% of the makemore
    size's float32 step, one thread."""
    p, g, m, v = state[0, first:stop], state[1, first:stop], state[2, first:stop], state[3, first:stop]
    real = state.dtype.type  # each factor in the parameters' float type: float32 runs update in float32
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inverse_bias2, decay = (
        real(settings[0]), real(settings[1]), real(settings[2]), real(settings[3]), real(settings[4]),
        real(settings[5]), real(settings[6]), real(settings[7]))
    for i in range(p.size):  # each parameter's update independent of every other's
        m[i] = m[i] * beta1 + g[i] * one_minus_beta1
        v[i] = v[i] * beta2 + g[i] * g[i] * one_minus_beta2
        if decay:
            p[i] -= p[i] * decay  # decoupled (AdamW) decay
        p[i] -= m[i] * step_size / (math.sqrt(v[i] * inverse_bias2) + eps)
