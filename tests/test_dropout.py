"""dropout.py's masks: the asked share dropped, the rest scaled, a pure function of (seed, step, document,
position, site, channel); and a dropout loss's gradients against finite differences under its fixed masks."""

import random

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig
from microgpt.dropout import masks
from microgpt.engines import make_engine
from microgpt.errors import MicrogptError

from helpers import flat, load_weights, random_batch


def test_masks_drop_the_asked_share_and_scale_the_rest():
    # 2 layers: 1 + 2 * 2 sites; 50 documents padded to 10 of block_size 16 positions; 16 channels
    got = masks(0.25, 1, 2, 50, 10, 16, 5, 16, 'float64')                   # (1 + 2L, B * T, C)
    assert got.shape == (5, 500, 16) and set(np.unique(got)) == {0.0, 1 / 0.75}, (got.shape, np.unique(got))
    assert (got == 0).mean() == pytest.approx(0.25, abs=0.01), (got == 0).mean()
    np.testing.assert_array_equal(got, masks(0.25, 1, 2, 50, 10, 16, 5, 16, 'float64'))
    assert not np.array_equal(got, masks(0.25, 1, 3, 50, 10, 16, 5, 16, 'float64'))  # another step
    assert not np.array_equal(got, masks(0.25, 2, 2, 50, 10, 16, 5, 16, 'float64'))  # another seed


def test_a_mask_element_is_the_same_whatever_the_batchs_padded_length():
    """An element depends on (seed, step, document, position, site, channel) only, so the fused engine can draw
    it in any group and any order."""
    short, full = masks(0.5, 4, 9, 3, 5, 16, 3, 10, 'float64'), masks(0.5, 4, 9, 3, 16, 16, 3, 10, 'float64')
    np.testing.assert_array_equal(short.reshape(3, 3, 5, 10), full.reshape(3, 3, 16, 10)[:, :, :5])
    assert not np.array_equal(full[0], full[1]) and not np.array_equal(full[:, :16], full[:, 16:32])


@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_dropout_gradients_equal_finite_differences_under_the_same_masks(engine_name):
    """Dropout's masks come from (seed, step), so the loss is a fixed function of the weights: its gradient is
    checked like any other, and it differs from the loss without dropout."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, n_embd=8, n_head=2, block_size=6).validate()
    engine = make_engine(engine_name, cfg, random.Random(5))
    batch = random_batch(random.Random(6), cfg, 3, max_len=8)
    seed_and_step = (3, 17)
    loss = engine.loss_and_grads(batch, 0.3, seed_and_step)
    grads = flat(engine.gradients())
    assert abs(loss - engine.loss_and_grads(batch)) > 1e-3, loss
    weights = engine.weights()
    names = [(name, index) for name, w in weights.items() for index in np.ndindex(np.shape(w))]
    h = 1e-6
    for i in random.Random(7).sample(range(len(names)), 60):
        name, index = names[i]
        shifted = []
        for step in (h, -h):
            moved = {k: np.array(w, copy=True) for k, w in weights.items()}
            moved[name][index] += step
            load_weights(engine, moved)
            shifted.append(engine.loss_and_grads(batch, 0.3, seed_and_step))
        numerical = (shifted[0] - shifted[1]) / (2 * h)
        assert numerical == pytest.approx(grads[i], rel=1e-5, abs=1e-8), (name, index, numerical, grads[i])


@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_dropout_without_its_seed_and_step_is_an_error(engine_name):
    engine = make_engine(engine_name, ModelConfig(vocab_size=5), random.Random(0))
    with pytest.raises(ValueError, match='dropout needs seed_and_step'):
        engine.loss_and_grads([[4, 1, 4]], 0.1)


def test_dropout_is_refused_by_the_reference_engine():
    with pytest.raises(MicrogptError, match='train with --engine fused'):
        TrainConfig(steps=2, dropout=0.1).check_engine('reference')
    engine = make_engine('reference', ModelConfig(vocab_size=5), random.Random(0))
    with pytest.raises(ValueError, match='no dropout'):
        engine.loss_and_grads([[4, 1, 4]], 0.1, (1, 1))


