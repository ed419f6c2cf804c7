"""The three engines compute one model: for every pair of engines, model switch and batch size, the same loss,
gradients, Adam trajectory and decoder logits, through the engine contract only (engines/__init__.py).

Float64 engines agree to rounding (loss within 1e-12 relative, gradients rtol 1e-10); float32 engines agree
with float64 to float32 rounding. The reference engine is checked against PyTorch autograd and finite
differences in test_autograd.py, so agreeing with it means being right.
"""

import functools
import random
from dataclasses import fields

import numpy as np
import pytest

from microgpt.config import (ATTENTION_KINDS, BOS_POSITIONS, MLP_ACTIVATIONS, NORM_PLACEMENTS, ModelConfig,
                             TrainConfig, learning_rate)
from microgpt.engines import make_engine

from helpers import assert_named_arrays_close, load_weights, random_batch, run_cli_in_process, switches_id

ENGINE_PAIRS = [('reference', 'numpy'), ('reference', 'fused'), ('numpy', 'fused')]
FAST_PAIR = ('numpy', 'fused')  # what the reference engine does not do: dropout, float32, large models and batches

# each switch away from microgpt's model, on a small model that the scalar reference engine computes quickly
SMALL = {'n_embd': 8, 'n_head': 2, 'block_size': 6}
SWITCHES = [{}, {'norm': 'esp32'}, {'norm': 'none'}, {'mlp_activation': 'relu2'}, {'tie_lm_head': True},
            {'attention': 'self'}, {'bos': 'first'}, {'n_layer': 2}, {'zero_init': ('attn_wo', 'mlp_fc2')}]
# microgpt's own size, and sizes and combinations that fill the fused engine's lanes in different ways
SIZES = [
    {},
    {'n_layer': 3, 'n_embd': 12, 'n_head': 3, 'block_size': 7},
    {'n_layer': 2, 'n_embd': 24, 'n_head': 6, 'block_size': 11},
    {'n_embd': 8, 'n_head': 1, 'block_size': 3},
    {'n_embd': 20, 'n_head': 4, 'block_size': 9, 'mlp_activation': 'relu2', 'init_std': 0.1},
    {'tie_lm_head': True, 'mlp_activation': 'relu2', 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02},
    {'attention': 'self', 'n_layer': 2, 'norm': 'esp32', 'bos': 'first', 'block_size': 6},
]
BATCH_SIZES = [1, 3, 7]  # one document (no padding), a padded batch, more documents than the fused engine has groups
# Batches of 7 are there for the fused engine's groups, which the fast pair covers on every model. The scalar
# reference engine takes a second or so on one: the quick loop runs its padded batches (3 and 7) on microgpt's
# model only, and one document on each switch.
REFERENCE_QUICK_BATCH_SIZES = [1]


def model_cases(pairs, batch_sizes=None):
    """(pair, switches) for every pair on every switch of the small model, and the fast pair on every size; with
    `batch_sizes`, (pair, switches, batch_size) for each, the reference engine's batches past
    REFERENCE_QUICK_BATCH_SIZES on a switched model in the full suite only."""
    cases = [((pair, {**SMALL, **switches}), f"{'-'.join(pair)}-{switches_id(switches)}", switches == {})
             for pair in pairs for switches in SWITCHES]
    if FAST_PAIR in pairs:
        cases += [((FAST_PAIR, switches), f"{'-'.join(FAST_PAIR)}-size-{switches_id(switches)}", True)
                  for switches in SIZES]
    if batch_sizes is None:
        return [pytest.param(*case, id=name) for case, name, _ in cases]
    return [pytest.param(*case, batch_size, id=f'{name}-{batch_size}',
                         marks=() if quick or 'reference' not in case[0] or batch_size in REFERENCE_QUICK_BATCH_SIZES
                         else pytest.mark.slow(seconds=1))
            for case, name, quick in cases for batch_size in batch_sizes]


ADAM = TrainConfig()
ADAMW_CLIPPED = TrainConfig(weight_decay=0.1, grad_clip=0.5, beta1=0.9, beta2=0.95)


def model_and_batches(switches, batch_size, n_batches=2):
    """A config of `switches` with a vocabulary size, an init seed and batches, all drawn from a fixed seed."""
    rng = random.Random(f'{switches_id(switches)}/{batch_size}')
    cfg = ModelConfig(vocab_size=rng.randrange(3, 20), **switches).validate()
    init_seed = rng.randrange(1000)
    batches = [random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 2) for _ in range(n_batches)]
    if batch_size > 1 and batches:  # a padded batch, with a document that predicts nothing (it must add nothing)
        batches[-1][0] = [cfg.bos_id]
    return cfg, init_seed, batches


def engine_pair(pair, cfg, init_seed, dtypes=('float64', 'float64')):
    return [make_engine(name, cfg, random.Random(init_seed), dtype) for name, dtype in zip(pair, dtypes)]


def assert_loss_close(got, want, rtol, what=''):
    assert abs(got - want) <= rtol * abs(want), (what, got, want, abs(got - want) / abs(want))


@functools.lru_cache(maxsize=None)
def losses_and_gradients(name, switches_key, batch_size):
    """Initial weights and [(loss_and_grads, gradients, loss)] of engine `name` on model_and_batches' batches;
    cached, so that the reference engine computes each case once for its two pairs."""
    cfg, init_seed, batches = model_and_batches(dict(switches_key), batch_size)
    engine = make_engine(name, cfg, random.Random(init_seed))
    results = []
    for batch in batches:  # the second batch runs in the workspace the first one left behind
        loss = engine.loss_and_grads(batch)
        results.append((loss, engine.gradients(), engine.loss(batch)))
    return engine.weights(), results


@pytest.mark.parametrize('pair, switches, batch_size', model_cases(ENGINE_PAIRS, BATCH_SIZES))
def test_loss_and_gradients_agree(pair, switches, batch_size):
    (want_weights, want), (got_weights, got) = [losses_and_gradients(name, tuple(switches.items()), batch_size)
                                                for name in pair]
    # the same seeded stream gives every engine the same initial weights, bit for bit
    assert_named_arrays_close(got_weights, want_weights, rtol=0, atol=0, what='initial weight')
    for (got_loss, got_grads, got_forward), (want_loss, want_grads, want_forward) in zip(got, want):
        assert_loss_close(got_loss, want_loss, 1e-12, 'loss_and_grads')
        assert_named_arrays_close(got_grads, want_grads, rtol=1e-10, atol=1e-13, what='gradient')
        assert_loss_close(got_forward, want_loss, 1e-12, 'loss (forward only)')
        assert_loss_close(want_forward, want_loss, 1e-12, 'loss (forward only)')


@pytest.mark.parametrize('pair', ENGINE_PAIRS, ids='-'.join)
def test_a_document_with_nothing_to_predict_adds_nothing(pair):
    """A one-token document in a batch (padding only; in the fused engine, a group of its own) changes no number
    (in the numpy engine, none beyond the BLAS's rounding)."""
    cfg = ModelConfig(vocab_size=5, block_size=4)
    results = []
    for name in pair:
        engine = make_engine(name, cfg, random.Random(12))
        alone = engine.loss_and_grads([[4, 1, 2, 4]])
        grads = engine.gradients()
        with_empty = engine.loss_and_grads([[4], [4, 1, 2, 4]])
        assert with_empty == pytest.approx(alone, rel=1e-15, abs=0), (name, with_empty, alone)
        # NumPy's products come from the BLAS, whose blocking, and so the order of its sums, changes with the
        # matrices' shape: on a Zen 3, OpenBLAS summed the padded batch's gradients in another order (5e-14 apart
        # relative, 3e-21 absolute where a sum cancelled to 8e-10). A padding document that added anything would
        # move them by far more
        rtol, atol = (1e-12, 1e-17) if name == 'numpy' else (1e-14, 0)
        assert_named_arrays_close(engine.gradients(), grads, rtol=rtol, atol=atol, what=f'{name} gradient')
        results.append((alone, grads))
    assert_loss_close(results[1][0], results[0][0], 1e-12)
    assert_named_arrays_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-13, what='gradient')


def test_batches_of_growing_and_shrinking_size_agree():
    """The fused engine grows its workspaces for larger batches and keeps them for smaller ones."""
    cfg = ModelConfig(vocab_size=11, n_layer=2, block_size=6)
    want_engine, got_engine = engine_pair(FAST_PAIR, cfg, 2)
    rng = random.Random(3)
    for batch_size in (1, 7, 2, 40, 1):
        batch = random_batch(rng, cfg, batch_size, max_len=9)
        want, got = want_engine.loss_and_grads(batch), got_engine.loss_and_grads(batch)
        assert_loss_close(got, want, 1e-12, batch_size)
        assert_named_arrays_close(got_engine.gradients(), want_engine.gradients(), rtol=1e-10, atol=1e-13,
                                  what=f'gradient at batch size {batch_size}')


# ---- dropout (numpy and fused): the masks are a function of (seed, step, document, position, site, channel)

DROPOUT_MODELS = [{}, {'n_layer': 2, 'n_embd': 10, 'n_head': 2, 'block_size': 6},  # 10: a part-filled draw
                  {'norm': 'esp32', 'tie_lm_head': True, 'mlp_activation': 'relu2'}, {'norm': 'none', 'n_layer': 2}]


@pytest.mark.parametrize('batch_size', [1, 2, 3, 7])
@pytest.mark.parametrize('switches', DROPOUT_MODELS, ids=switches_id)
def test_dropout_loss_and_gradients_agree(switches, batch_size):
    """The fused engine draws each mask element where it needs it (in parallel groups for 2+ documents) and gets
    the numpy engine's masks."""
    cfg, init_seed, batches = model_and_batches(switches, batch_size)
    want_engine, got_engine = engine_pair(FAST_PAIR, cfg, init_seed)
    for step, batch in enumerate(batches, 1):
        want = want_engine.loss_and_grads(batch, 0.3, (5, step))
        without_dropout = got_engine.loss_and_grads(batch)
        got = got_engine.loss_and_grads(batch, 0.3, (5, step))
        assert_loss_close(got, want, 1e-12, step)
        assert abs(got - without_dropout) > 1e-6, (got, without_dropout)  # the masks did drop something
        assert_named_arrays_close(got_engine.gradients(), want_engine.gradients(), rtol=1e-10, atol=1e-13,
                                  what='gradient')


# ---- float32: the same model within float32 rounding

FLOAT32_MODELS = [{}, {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
                  {'norm': 'none', 'mlp_activation': 'relu2', 'tie_lm_head': True, 'n_layer': 2}]


def float32_cases():
    """(pair, switches, batch_size, dropout) over every combination. The fused engine's float32 cases run in the full
    suite only (helpers.QUICK_DTYPES: the quick loop compiles the fused engine in float64 alone)."""
    for pair in [('numpy', 'numpy'), FAST_PAIR]:
        for switches in FLOAT32_MODELS:
            for batch_size in BATCH_SIZES:
                for dropout in [0.0, 0.25]:
                    case = (pair, switches, batch_size, dropout)
                    name = f'{pair[0]}64-{pair[1]}32-{switches_id(switches)}-{batch_size}-{dropout}'
                    quick = pair != FAST_PAIR
                    yield pytest.param(*case, id=name, marks=() if quick else pytest.mark.slow(seconds=1))


@pytest.mark.parametrize('pair, switches, batch_size, dropout', list(float32_cases()))
def test_float32_agrees_with_float64(pair, switches, batch_size, dropout):
    cfg, init_seed, batches = model_and_batches(switches, batch_size, n_batches=1)
    f64, f32 = engine_pair(pair, cfg, init_seed, ('float64', 'float32'))
    assert (f64.dtype, f32.dtype) == ('float64', 'float32'), (f64.dtype, f32.dtype)
    masks = (1, 7) if dropout else None
    want, got = f64.loss_and_grads(batches[0], dropout, masks), f32.loss_and_grads(batches[0], dropout, masks)
    assert_loss_close(got, want, 1e-5)
    grads, state = f32.gradients(), f32.state()
    dtypes = {np.asarray(a).dtype for a in (*grads.values(), *state.weights.values(), state.adam_m, state.adam_v)}
    assert dtypes == {np.dtype('float32')}, dtypes
    assert_named_arrays_close(grads, f64.gradients(), rtol=1e-3, atol=1e-6, what='float32 gradient')


@pytest.mark.slow(seconds=1)  # the fused engine in float32 (helpers.QUICK_DTYPES)
@pytest.mark.parametrize('batch_size', [1, 5])
def test_float32_engines_agree_with_each_other(batch_size):
    """The recipe's dtype, with dropout: both float32 engines round alike."""
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    want_engine, got_engine = engine_pair(FAST_PAIR, cfg, 3, ('float32', 'float32'))
    batch = random_batch(random.Random(4), cfg, batch_size, max_len=9)
    want, got = want_engine.loss_and_grads(batch, 0.25, (1, 7)), got_engine.loss_and_grads(batch, 0.25, (1, 7))
    assert_loss_close(got, want, 1e-5)
    assert_named_arrays_close(got_engine.gradients(), want_engine.gradients(), rtol=2e-3, atol=2e-6,
                              what='float32 gradient')


@pytest.mark.slow(seconds=1)  # the fused engine in float32 (helpers.QUICK_DTYPES)
@pytest.mark.parametrize('batch_size', BATCH_SIZES)
def test_float32_trajectories_agree(batch_size):
    """Eight Adam steps with decay, clipping and dropout in float32: both engines stay within float32 rounding."""
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    tcfg = TrainConfig(steps=8, batch_size=batch_size, weight_decay=0.1, grad_clip=0.5, dropout=0.1, seed=2)
    docs = random_batch(random.Random(5), cfg, 11, max_len=9)
    lrs = [learning_rate(tcfg, s) for s in range(tcfg.steps)]
    want_engine, got_engine = engine_pair(FAST_PAIR, cfg, 3, ('float32', 'float32'))
    want, got = want_engine.train_steps(docs, 0, 8, tcfg, lrs), got_engine.train_steps(docs, 0, 8, tcfg, lrs)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_named_arrays_close(got_engine.weights(), want_engine.weights(), rtol=1e-4, atol=1e-6, what='weight')


@pytest.mark.slow
@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_float32_training_ends_as_low_as_float64(names_path, engine_name):
    """microgpt's 1000 steps in float32 end within 0.01 of float64's mean loss over the last 100 steps."""
    def last_mean_loss(*flags):
        code, out, err = run_cli_in_process('train', '--data', names_path, '--num-samples', '0', '--engine',
                                            engine_name, *flags)
        assert code == 0, err
        losses = [float(line.rsplit(' ', 1)[1]) for line in out.splitlines() if line.startswith('step')]
        assert len(losses) == 1000, len(losses)
        return sum(losses[-100:]) / 100

    f64, f32 = last_mean_loss(), last_mean_loss('--dtype', 'float32')
    assert abs(f32 - f64) <= 0.01, (f32, f64)


# ---- training: Adam steps, with decay and clipping, keep the engines together

@functools.lru_cache(maxsize=None)
def adam_trajectory(name, switches_key, batch_size, tcfg, steps):
    """(losses, final EngineState) of `steps` train_step calls on engine `name`; cached like losses_and_gradients."""
    cfg, init_seed, _ = model_and_batches(dict(switches_key), batch_size, n_batches=0)
    engine = make_engine(name, cfg, random.Random(init_seed))
    rng = random.Random(6)
    losses = [engine.train_step(random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 3),
                                learning_rate(tcfg, step), tcfg) for step in range(steps)]
    return losses, engine.state()


def adam_cases():
    """(pair, batch_size) for every pair and batch size; the reference engine's batches past
    REFERENCE_QUICK_BATCH_SIZES in the full suite only (its three steps take 0.6 s at 3, a second or more at 7)."""
    return [pytest.param(pair, batch_size, id=f"{'-'.join(pair)}-{batch_size}",
                         marks=() if 'reference' not in pair or batch_size in REFERENCE_QUICK_BATCH_SIZES
                         else pytest.mark.slow(seconds=1))
            for pair in ENGINE_PAIRS for batch_size in BATCH_SIZES]


@pytest.mark.parametrize('tcfg', [ADAM, ADAMW_CLIPPED], ids=['adam', 'adamw-clipped'])
@pytest.mark.parametrize('switches', [{**SMALL, 'n_layer': 2, 'tie_lm_head': True}], ids=switches_id)
@pytest.mark.parametrize('pair, batch_size', adam_cases())
def test_adam_trajectories_agree(pair, switches, batch_size, tcfg):
    """Steps of train_step leave the same losses, weights, Adam moments and step count in both engines."""
    steps = 3 if 'reference' in pair else 8
    (want, want_state), (got, got_state) = [adam_trajectory(name, tuple(switches.items()), batch_size, tcfg, steps)
                                            for name in pair]
    for step, (got_loss, want_loss) in enumerate(zip(got, want)):
        assert_loss_close(got_loss, want_loss, 1e-11, step)
    assert got_state.adam_steps == want_state.adam_steps == steps, (got_state.adam_steps, want_state.adam_steps)
    assert_named_arrays_close(got_state.weights, want_state.weights, rtol=1e-9, atol=1e-12, what='weight')
    np.testing.assert_allclose(np.asarray(got_state.adam_m), np.asarray(want_state.adam_m), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got_state.adam_v), np.asarray(want_state.adam_v), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize('batch_size', [1, 4])
def test_dropout_trajectories_agree(batch_size):
    """train_steps with dropout (each step's masks from (seed, step)) keeps the engines together, and an evaluation
    afterwards has no dropout."""
    cfg = ModelConfig(vocab_size=10, n_layer=2, block_size=6)
    tcfg = TrainConfig(steps=12, batch_size=batch_size, dropout=0.2, seed=3, weight_decay=0.1)
    docs = random_batch(random.Random(8), cfg, 9, max_len=9)
    lrs = [learning_rate(tcfg, s) for s in range(tcfg.steps)]
    want_engine, got_engine = engine_pair(FAST_PAIR, cfg, 9)
    want, got = want_engine.train_steps(docs, 0, 12, tcfg, lrs), got_engine.train_steps(docs, 0, 12, tcfg, lrs)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert_named_arrays_close(got_engine.weights(), want_engine.weights(), rtol=1e-8, atol=1e-11, what='weight')
    for batch in (docs[:1], docs):
        assert_loss_close(got_engine.loss(batch), want_engine.loss(batch), 1e-12)
        assert_loss_close(got_engine.loss_and_grads(batch), want_engine.loss(batch), 1e-12)


# ---- sampling: the decoders give the same logits one token at a time

@pytest.mark.parametrize('pair, switches', model_cases(ENGINE_PAIRS))
def test_decoder_logits_agree(pair, switches):
    cfg, init_seed, batches = model_and_batches(switches, 3, n_batches=1)
    want_engine, got_engine = engine_pair(pair, cfg, init_seed)
    trainer = make_engine('numpy', cfg, random.Random(init_seed))
    trainer.train_step(batches[0], 0.01, ADAM)  # trained weights, not only the initial ones
    for engine in (want_engine, got_engine):
        load_weights(engine, trainer.weights())
    want_decoder, got_decoder = want_engine.decoder(), got_engine.decoder()
    for tokens in batches[0]:
        want_decoder.reset()
        got_decoder.reset()
        for pos, token in enumerate(tokens[:cfg.block_size]):
            got, want = got_decoder.step(token, pos), want_decoder.step(token, pos)
            assert isinstance(got, list) and len(got) == cfg.vocab_size, (type(got), len(got))
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=f'position {pos}')


def test_the_cases_cover_every_switch():
    """SWITCHES and SIZES set every ModelConfig field (but the vocabulary size, drawn per test) away from its
    default, and SWITCHES use every choice of each."""
    defaults = ModelConfig(vocab_size=2)
    models = [{**SMALL, **switches} for switches in SWITCHES] + SIZES
    changed = {name for switches in models for name, value in switches.items() if getattr(defaults, name) != value}
    every = {f.name for f in fields(ModelConfig)} - {'vocab_size'}
    assert changed == every, sorted(every ^ changed)
    for name, choices in (('norm', NORM_PLACEMENTS), ('mlp_activation', MLP_ACTIVATIONS),
                          ('attention', ATTENTION_KINDS), ('bos', BOS_POSITIONS)):
        used = {switches.get(name, getattr(defaults, name)) for switches in SWITCHES}
        assert used == set(choices), (name, used, choices)
