"""The numpy engine's own parts: the forward-only loss, batch_arrays, the weight layers' gradients, Adam's
arithmetic, and NumpyDecoder over any engine's named weights."""

import math
import random

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig
from microgpt.engines import make_engine
from microgpt.engines.numpy import layers as L
from microgpt.engines.numpy.decoder import NumpyDecoder
from microgpt.engines.numpy.gpt import batch_arrays, gpt_logits

CONFIGS = [
    {},
    {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
    {'norm': 'esp32', 'bos': 'first', 'mlp_activation': 'relu2'},
    {'tie_lm_head': True, 'n_layer': 3, 'n_embd': 12, 'n_head': 3, 'block_size': 7},
    {'norm': 'none', 'attention': 'self'},
]


def config_id(switches):
    return ','.join(f'{k}={v}' for k, v in switches.items()) or 'default'


def documents(rng, cfg, count, max_len):
    """`count` documents wrapped in BOS, of random lengths (some longer than the block, so batches pad)."""
    chars = [i for i in range(cfg.vocab_size) if i != cfg.bos_id]
    return [[cfg.bos_id] + [rng.choice(chars) for _ in range(rng.randrange(1, max_len))] + [cfg.bos_id]
            for _ in range(count)]


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('batch_size', [1, 2, 5])
@pytest.mark.parametrize('switches', CONFIGS, ids=config_id)
def test_forward_only_loss_is_loss_and_grads_loss_and_changes_nothing(switches, batch_size, dtype):
    rng = random.Random(batch_size)
    cfg = ModelConfig(vocab_size=rng.randrange(4, 20), **switches).validate()
    engine = make_engine('numpy', cfg, random.Random(3), dtype)
    for step in range(2):  # after a step too, so that Adam's moments and the gradients are not zero
        engine.train_step(documents(rng, cfg, batch_size, cfg.block_size + 3), 0.01, TrainConfig())
    before = engine.state_buffer.copy()                                    # (4, P)
    batch = documents(rng, cfg, batch_size, cfg.block_size + 3)
    lengths = {min(cfg.block_size, len(doc) - 1) for doc in batch}
    assert batch_size == 1 or len(lengths) > 1, lengths  # the batch is padded
    loss = engine.loss(batch)
    np.testing.assert_array_equal(engine.state_buffer, before, err_msg="loss() changed weights, gradients or Adam")
    assert engine.adam_steps == 2, engine.adam_steps
    want = engine.loss_and_grads(batch)
    assert loss == want, (loss, want)
    assert not np.array_equal(engine.grad_flat, before[1])


def test_forward_only_loss_of_a_padded_batch_is_the_token_weighted_mean():
    cfg = ModelConfig(vocab_size=9, block_size=8)
    engine = make_engine('numpy', cfg, random.Random(4))
    short, long_ = [8, 1, 2, 8], [8, 1, 2, 3, 4, 5, 6, 7, 0, 8]    # 3 and 8 (a full block) predicted tokens
    got, want = engine.loss([short, long_]), (3 * engine.loss([short]) + 8 * engine.loss([long_])) / 11
    assert got == pytest.approx(want, rel=1e-13), (got, want)


def test_batch_arrays_pad_with_bos_and_weigh_only_predicted_tokens():
    cfg = ModelConfig(vocab_size=6, block_size=4)
    inputs, target_index, weights = batch_arrays([[5, 1, 5], [5, 1, 2, 3, 4, 5], [5]], cfg, 'float32')
    np.testing.assert_array_equal(inputs, [[5, 1, 5, 5], [5, 1, 2, 3], [5, 5, 5, 5]])
    targets = [[1, 5, 5, 5], [1, 2, 3, 4], [5, 5, 5, 5]]  # the second is cut at the block; the third predicts nothing
    np.testing.assert_array_equal(target_index, np.arange(12) * 6 + np.ravel(targets))
    assert weights.dtype == np.float32, weights.dtype
    np.testing.assert_array_equal(weights, np.float32(1 / 6) * np.array([1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match='no token to predict'):
        batch_arrays([[5], []], cfg, 'float64')


# ---- the weight layers' backward against central finite differences of a fake loss sum(out * dout)

def numerical_grad(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f() * dout)
        x[i] = old - h
        minus = np.sum(f() * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def test_matmul_backward_finite_differences():
    rng = np.random.default_rng(0)
    x, w, dout = rng.normal(size=(6, 4)), rng.normal(size=(5, 4)), rng.normal(size=(6, 5))
    dw = np.full_like(w, np.nan)  # written, not summed into
    dx = L.matmul_backward(dout, x, w, dw)
    np.testing.assert_allclose(dx, numerical_grad(lambda: L.matmul_forward(x, w), x, dout), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dw, numerical_grad(lambda: L.matmul_forward(x, w), w, dout), rtol=1e-7, atol=1e-9)


def test_encoder_backward_finite_differences():
    rng = np.random.default_rng(1)
    inputs = np.array([[0, 2, 2], [3, 0, 2]])                               # (B, T), tokens repeat
    wte, wpe = rng.normal(size=(4, 5)), rng.normal(size=(6, 5))
    dout = rng.normal(size=(6, 5))                                          # (B*T, C)
    carried = rng.normal(size=wte.shape)  # what dwte held before (the tied lm_head's gradient): summed into
    dwte, dwpe = carried.copy(), np.full_like(wpe, np.nan)
    L.encoder_backward(dout, inputs, dwte, dwpe)
    forward = lambda: L.encoder_forward(inputs, wte, wpe)                   # noqa: E731
    np.testing.assert_allclose(dwte - carried, numerical_grad(forward, wte, dout), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dwpe, numerical_grad(forward, wpe, dout), rtol=1e-7, atol=1e-9)
    assert not dwpe[3:].any(), dwpe[3:]  # positions past T get no gradient


# ---- Adam: microgpt's update on every element, bit for bit, its bias corrections folded into scalars

@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('tcfg', [TrainConfig(), TrainConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-6)],
                         ids=['adam', 'adamw'])
def test_adam_update_is_microgpts_arithmetic_exactly(tcfg, dtype):
    engine = make_engine('numpy', ModelConfig(vocab_size=5, n_embd=4, n_head=2), random.Random(0), dtype)
    rng = np.random.default_rng(2)
    scalar = np.dtype(dtype).type
    for step in range(3):
        engine.grad_flat[...] = rng.normal(size=engine.grad_flat.shape)
        p, g, m, v = (buffer.copy() for buffer in (engine.flat, engine.grad_flat, engine.m, engine.v))
        lr = 0.01 * (1 - step / 10)
        engine.adam_update(lr, tcfg)
        t = step + 1
        # microgpt's update, each constant rounded to the buffers' dtype, m_hat = m / (1 - beta1^t) and
        # v_hat = v / (1 - beta2^t) as multiplications by scalars; v_hat ** 0.5 is the correctly rounded np.sqrt
        # (Python's pow(x, 0.5) may differ from it in the last bit)
        step_size, inverse_bias2 = scalar(lr / (1 - tcfg.beta1 ** t)), scalar(1 / (1 - tcfg.beta2 ** t))
        for i in range(p.size):
            m[i] = scalar(tcfg.beta1) * m[i] + scalar(1 - tcfg.beta1) * g[i]
            v[i] = scalar(tcfg.beta2) * v[i] + scalar(1 - tcfg.beta2) * g[i] ** 2
            if tcfg.weight_decay:
                p[i] -= scalar(lr * tcfg.weight_decay) * p[i]
            p[i] -= m[i] * step_size / (np.sqrt(v[i] * inverse_bias2) + scalar(tcfg.eps))
        for name, got, want in (('m', engine.m, m), ('v', engine.v, v), ('parameters', engine.flat, p)):
            np.testing.assert_array_equal(got, want, err_msg=f'{name} after step {t}')
    assert engine.adam_steps == 3, engine.adam_steps


def test_adam_clips_the_gradient_norm_without_changing_the_gradients():
    tcfg = TrainConfig(grad_clip=0.5)
    clipped, scaled = (make_engine('numpy', ModelConfig(vocab_size=5), random.Random(0)) for _ in range(2))
    grads = np.random.default_rng(3).normal(size=clipped.grad_flat.shape)
    clipped.grad_flat[...] = grads
    scaled.grad_flat[...] = grads * (0.5 / (math.sqrt(grads @ grads) + 1e-6))
    clipped.adam_update(0.01, tcfg)
    scaled.adam_update(0.01, TrainConfig())
    np.testing.assert_array_equal(clipped.grad_flat, grads)
    np.testing.assert_array_equal(clipped.flat, scaled.flat)


# ---- NumpyDecoder: over any engine's named weights, the full forward's logits one position at a time

@pytest.mark.parametrize('switches', CONFIGS, ids=config_id)
def test_decoder_logits_equal_the_whole_sequence_forward(switches):
    cfg = ModelConfig(vocab_size=11, **switches).validate()
    engine = make_engine('numpy', cfg, random.Random(6))
    tokens = documents(random.Random(7), cfg, 1, cfg.block_size + 2)[0][:cfg.block_size]
    logits, _ = gpt_logits(engine.model_params, np.array([tokens]), cfg)                      # (T, V)
    # over copies of the weights, as another engine would hand them in: the decoder needs only the names
    for decoder in (engine.decoder(), NumpyDecoder(cfg, engine.weights(), 'float64')):
        for _ in range(2):  # the second sample overwrites the first's cache
            decoder.reset()
            got = [decoder.step(token, pos) for pos, token in enumerate(tokens)]
            np.testing.assert_allclose(got, logits, rtol=1e-12, atol=1e-13)


def test_decoder_follows_the_engines_training():
    cfg = ModelConfig(vocab_size=7, block_size=4)
    engine = make_engine('numpy', cfg, random.Random(8))
    decoder = engine.decoder()
    before = decoder.step(6, 0)
    engine.train_step([[6, 1, 2, 6]], 0.1, TrainConfig())
    after = decoder.step(6, 0)
    assert before != after and after == engine.decoder().step(6, 0), (before, after)


@pytest.mark.parametrize('token_id, pos_id', [(7, 0), (-1, 0), (0, 4), (0, -1)])
def test_decoder_refuses_tokens_and_positions_outside_the_model(token_id, pos_id):
    decoder = NumpyDecoder(ModelConfig(vocab_size=7, block_size=4), make_engine(
        'numpy', ModelConfig(vocab_size=7, block_size=4), random.Random(0)).params, 'float64')
    with pytest.raises(ValueError, match='outside the vocabulary or the block'):
        decoder.step(token_id, pos_id)
