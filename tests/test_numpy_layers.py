"""The numpy engine's layers: each backward against central finite differences of a fake loss sum(out * dout)
(llm.c's layernorm tutorial), in float64."""

import numpy as np
import pytest

from microgpt.engines.numpy import layers as L


def numerical_grad(f, x, dout, h=1e-6):
    """d sum(f(x) * dout) / dx by central differences, moving one element of x at a time."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def test_rmsnorm_backward_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8))
    dout = rng.normal(size=x.shape)
    _, cache = L.rmsnorm_forward(x)
    dx = L.rmsnorm_backward(dout, cache)
    np.testing.assert_allclose(dx, numerical_grad(lambda z: L.rmsnorm_forward(z)[0], x, dout), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('attention', ['causal', 'self'])
def test_attention_backward_finite_differences(attention):
    rng = np.random.default_rng(1)
    B, T, n_head, C = 2, 5, 2, 8
    qkv = rng.normal(size=(B * T, 3 * C))
    allowed = np.tril(np.ones((T, T), bool)) if attention == 'causal' else np.eye(T, dtype=bool)
    mask = np.where(allowed, 0.0, -np.inf)                                  # (T, T) added to the scores
    dout = rng.normal(size=(B * T, C))
    _, cache = L.attention_forward(qkv, B, n_head, mask)
    dqkv = L.attention_backward(dout, cache)
    want = numerical_grad(lambda z: L.attention_forward(z, B, n_head, mask)[0], qkv, dout)
    np.testing.assert_allclose(dqkv, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('kind', ['relu', 'relu2'])
def test_activation_backward_finite_differences(kind):
    rng = np.random.default_rng(2)
    h = rng.normal(size=(3, 10))
    h[np.abs(h) < 1e-3] = 0.5  # keep clear of the kink, where the derivative is not defined
    dout = rng.normal(size=h.shape)
    _, cache = L.activation_forward(h, kind)
    dh = L.activation_backward(dout, cache, kind)
    np.testing.assert_allclose(dh, numerical_grad(lambda z: L.activation_forward(z, kind)[0], h, dout),
                               rtol=1e-6, atol=1e-8)


def test_cross_entropy_backward_finite_differences():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 5))
    targets = rng.integers(0, 5, size=6)
    weights = np.array([0.25, 0.25, 0.25, 0.25, 0.0, 0.0])  # two padded rows
    index = np.arange(6) * 5 + targets
    _, cache = L.cross_entropy_forward(logits, index, weights)
    dlogits = L.cross_entropy_backward(cache)
    want = numerical_grad(lambda z: np.array(L.cross_entropy_forward(z, index, weights)[0]), logits, 1.0)
    np.testing.assert_allclose(dlogits, want, rtol=1e-6, atol=1e-9)
