"""The fast engines (numpy, fused) equal the reference engine, PyTorch autograd, and finite differences."""

import random

import numpy as np
import pytest

from microgpt.engines.numpy import layers as L
from microgpt.config import ModelConfig, TrainConfig
from microgpt.engines import make_engine

from conftest import run_cli_in_process

SWITCHES = [
    {},
    {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
    {'n_layer': 3, 'n_embd': 12, 'n_head': 3, 'block_size': 7},
    {'n_embd': 8, 'n_head': 1, 'block_size': 3},
    {'norm': 'esp32', 'bos': 'first', 'init_std': 0.1},
    {'tie_lm_head': True, 'mlp_activation': 'relu2', 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02},
    {'norm': 'none'},
    {'attention': 'self'},
]


def random_batch(rng, cfg, batch_size, max_len):
    """Documents of random length (some longer than the block), wrapped in BOS."""
    bos = cfg.bos_id
    chars = [i for i in range(cfg.vocab_size) if i != bos]
    return [[bos] + [rng.choice(chars) for _ in range(rng.randrange(0, max_len))] + [bos]
            for _ in range(batch_size)]


FAST_ENGINES = ['numpy', 'fused']


@pytest.fixture(params=FAST_ENGINES)
def fast_engine(request):
    return request.param


def engines_pair(cfg, seed, name):
    return make_engine('reference', cfg, random.Random(seed)), make_engine(name, cfg, random.Random(seed))


def assert_grads_equal(got, want, rtol, atol):
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=rtol, atol=atol,
                                   err_msg=f'gradient of {name}')


@pytest.mark.parametrize('switches', SWITCHES, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()) or 'default')
@pytest.mark.parametrize('batch_size', [1, 3])
def test_loss_and_gradients_equal_reference(switches, batch_size, fast_engine):
    rng = random.Random(hash((str(switches), batch_size)) % 1000)
    cfg = ModelConfig(vocab_size=rng.randrange(3, 30), **switches).validate()
    reference, engine = engines_pair(cfg, rng.randrange(1000), fast_engine)
    batch = random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 4)
    want_loss = reference.loss_and_grads(batch)
    got_loss = engine.loss_and_grads(batch)
    assert abs(got_loss - want_loss) <= 1e-12 * abs(want_loss), (got_loss, want_loss)
    assert_grads_equal(engine.gradients(), reference.gradients(), rtol=1e-10, atol=1e-13)


def test_adam_steps_track_reference(fast_engine):
    """Three Adam steps (with weight decay and clipping) leave the same weights in both engines."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, n_embd=8, n_head=2, block_size=6)
    tcfg = TrainConfig(weight_decay=0.1, grad_clip=0.5)
    reference, engine = engines_pair(cfg, 3, fast_engine)
    rng = random.Random(4)
    for step in range(3):
        batch = random_batch(rng, cfg, 2, max_len=8)
        assert abs(reference.train_step(batch, 0.01, tcfg) - engine.train_step(batch, 0.01, tcfg)) < 1e-12
    assert_grads_equal(engine.weights(), reference.weights(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize('switches', SWITCHES, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()) or 'default')
def test_gradients_equal_torch_autograd(switches, require_torch, fast_engine):
    from microgpt.engines.torch.model import loss_and_grads as torch_loss_and_grads
    rng = random.Random(7)
    cfg = ModelConfig(vocab_size=11, **switches).validate()
    engine = make_engine(fast_engine, cfg, random.Random(1))
    batch = random_batch(rng, cfg, 3, max_len=cfg.block_size + 3)
    loss = engine.loss_and_grads(batch)
    want_loss, want = torch_loss_and_grads(engine.weights(), cfg, batch)
    assert abs(loss - want_loss) <= 1e-12 * want_loss, (loss, want_loss)
    assert_grads_equal(engine.gradients(), want, rtol=1e-10, atol=1e-13)


def test_decoder_logits_equal_reference(fast_engine):
    cfg = ModelConfig(vocab_size=13, n_layer=2, block_size=6)
    reference, engine = engines_pair(cfg, 5, fast_engine)
    ref_dec, np_dec = reference.decoder(), engine.decoder()
    for tokens in ([12, 3, 4, 5], [12, 0, 0, 1, 2, 3]):
        ref_dec.reset()
        np_dec.reset()
        for pos, token in enumerate(tokens):
            np.testing.assert_allclose(np_dec.step(token, pos), ref_dec.step(token, pos), rtol=1e-12, atol=1e-13)


# ---- each layer's backward against central finite differences of a fake loss sum(out * dout)

def numerical_grad(f, x, dout, h=1e-6):
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
    out, cache = L.rmsnorm_forward(x)
    dx = L.rmsnorm_backward(dout, cache)
    np.testing.assert_allclose(dx, numerical_grad(lambda z: L.rmsnorm_forward(z)[0], x, dout), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('causal', [True, False])
def test_attention_backward_finite_differences(causal):
    rng = np.random.default_rng(1)
    T, n_head = 5, 2
    B = 2
    qkv = rng.normal(size=(B * T, 3 * 8))
    allowed = np.tril(np.ones((T, T), bool)) if causal else np.eye(T, dtype=bool)
    mask = np.where(allowed, 0.0, -np.inf)
    dout = rng.normal(size=(B * T, 8))
    out, cache = L.attention_forward(qkv, B, n_head, mask)
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


def test_padding_does_not_change_the_gradient(fast_engine):
    """A batch of one document equals the same document inside a padded batch, scaled by token counts."""
    cfg = ModelConfig(vocab_size=7, block_size=8)
    engine = make_engine(fast_engine, cfg, random.Random(0))
    short, long_ = [6, 1, 2, 6], [6, 1, 2, 3, 4, 5, 0, 6]
    engine.loss_and_grads([short])
    g_short = engine.gradients()
    engine.loss_and_grads([long_])
    g_long = engine.gradients()
    engine.loss_and_grads([short, long_])
    both = engine.gradients()
    n_short, n_long = 3, 7
    for name in both:
        want = (n_short * g_short[name] + n_long * g_long[name]) / (n_short + n_long)
        np.testing.assert_allclose(both[name], want, rtol=1e-10, atol=1e-14, err_msg=name)


# ---- the default seeded job against microgpt.py's recorded output

def run_train(*args):
    code, out, err = run_cli_in_process('train', *args)
    assert code == 0, err
    return out


def assert_matches_golden(got, golden):
    """Same header and samples; step lines equal except at most 2 differing by one unit in the last digit."""
    got_lines, want_lines = got.splitlines(), golden.splitlines()
    assert len(got_lines) == len(want_lines), (len(got_lines), len(want_lines))
    off_by_one = []
    for got_line, want_line in zip(got_lines, want_lines):
        if got_line == want_line:
            continue
        assert got_line.startswith('step') and want_line.startswith('step'), (got_line, want_line)
        got_loss, want_loss = float(got_line.rsplit(' ', 1)[1]), float(want_line.rsplit(' ', 1)[1])
        assert round(abs(got_loss - want_loss) * 1e4) == 1, (got_line, want_line)
        off_by_one.append(got_line)
    assert len(off_by_one) <= 2, off_by_one


def test_default_run_reproduces_golden_trajectory(names_path, golden_path, fast_engine):
    with open(golden_path, encoding='utf-8') as f:
        golden = f.read()
    assert_matches_golden(run_train('--data', names_path, '--engine', fast_engine), golden)


def last_mean_loss(output, last=100):
    losses = [float(line.rsplit(' ', 1)[1]) for line in output.splitlines() if line.startswith('step')]
    return sum(losses[-last:]) / last


def test_float32_trains_as_well_as_float64(names_path, fast_engine):
    common = ('--data', names_path, '--num-samples', '0', '--engine', fast_engine)
    f64 = last_mean_loss(run_train(*common))
    f32 = last_mean_loss(run_train(*common, '--dtype', 'float32'))
    assert abs(f32 - f64) <= 0.01, (f32, f64)


def test_float32_buffers_are_float32(fast_engine):
    engine = make_engine(fast_engine, ModelConfig(vocab_size=5), random.Random(0), 'float32')
    engine.loss_and_grads([[4, 0, 1, 4]])
    assert {engine.flat.dtype, engine.grad_flat.dtype, engine.m.dtype} == {np.dtype('float32')}


@pytest.mark.parametrize('batch', [[[4]], [[4], [4]], [[4], [], [4]]], ids=['one', 'two', 'three'])
def test_a_batch_with_nothing_to_predict_is_a_clear_error(fast_engine, batch):
    engine = make_engine(fast_engine, ModelConfig(vocab_size=5), random.Random(0))
    with pytest.raises(ValueError, match='no token to predict'):
        engine.loss_and_grads(batch)


def test_dropout_gradients_equal_finite_differences_under_the_same_masks():
    """Dropout's masks come from a seed, so the loss is a fixed function of the weights: its gradient is checked
    like any other, and it differs from the loss without dropout."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, n_embd=8, n_head=2, block_size=6).validate()
    engine = make_engine('numpy', cfg, random.Random(5))
    batch = random_batch(random.Random(6), cfg, 3, max_len=8)
    seed = (3, 17)
    loss = engine.loss_and_grads(batch, 0.3, seed)
    grads = engine.grad_flat.copy()
    assert abs(loss - engine.loss_and_grads(batch)) > 1e-3
    h = 1e-6
    for i in random.Random(7).sample(range(engine.flat.size), 60):
        old = engine.flat[i]
        engine.flat[i] = old + h
        plus = engine.loss_and_grads(batch, 0.3, seed)
        engine.flat[i] = old - h
        minus = engine.loss_and_grads(batch, 0.3, seed)
        engine.flat[i] = old
        assert (plus - minus) / (2 * h) == pytest.approx(grads[i], rel=1e-5, abs=1e-8), i


def test_dropout_masks_drop_the_asked_share_and_scale_the_rest():
    engine = make_engine('numpy', ModelConfig(vocab_size=5, n_layer=2), random.Random(0))
    masks = engine._dropout_masks(0.25, (1, 2), 50, 10)                  # (1 + 2L, B * T, C)
    assert masks.shape == (5, 500, 16) and set(np.unique(masks)) == {0.0, 1 / 0.75}
    assert (masks == 0).mean() == pytest.approx(0.25, abs=0.01)
    np.testing.assert_array_equal(masks, engine._dropout_masks(0.25, (1, 2), 50, 10))
    assert not np.array_equal(masks, engine._dropout_masks(0.25, (1, 3), 50, 10))
    assert not np.array_equal(masks, engine._dropout_masks(0.25, (2, 2), 50, 10))


def test_a_dropout_mask_element_is_the_same_whatever_the_batchs_padded_length():
    """An element depends on (seed, step, document, position, site, channel) only, so the fused engine can draw
    it in any group and any order."""
    engine = make_engine('numpy', ModelConfig(vocab_size=5, n_layer=1, n_embd=10), random.Random(0))
    short, full = engine._dropout_masks(0.5, (4, 9), 3, 5), engine._dropout_masks(0.5, (4, 9), 3, 16)
    np.testing.assert_array_equal(short.reshape(3, 3, 5, 10), full.reshape(3, 3, 16, 10)[:, :, :5])
    assert not np.array_equal(full[0], full[1]) and not np.array_equal(full[:, :16], full[:, 16:32])


def test_dropout_levels_agree_between_config_and_the_masks():
    """config validates --dropout without importing NumPy, so it keeps its own copy of the resolution."""
    from microgpt.config import DROPOUT_LEVELS
    from microgpt.dropout import LEVELS, drop_threshold
    assert DROPOUT_LEVELS == LEVELS and drop_threshold(0.1) == 6554
