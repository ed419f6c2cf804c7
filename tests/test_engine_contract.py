"""Every engine honours the contract in engines/__init__.py on its own: `loss` is forward only, `train_step`
returns the loss before its update, `train_steps` gives the bits of one `train_step` per step, the state
round-trips, padding changes nothing, and a batch with nothing to predict is an error."""

import random
from itertools import islice

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, learning_rate, num_parameters, parameter_table
from microgpt.data import batch_for_step
from microgpt.engines import EngineState, make_engine
from microgpt.errors import MicrogptError
from microgpt.train.loop import train

from helpers import assert_named_arrays_close, flat, random_batch

CONTRACT_ENGINES = ('reference', 'numpy', 'fused')  # the torch engine: test_torch_engine.py
SMALL = ModelConfig(vocab_size=10, n_embd=8, n_head=2, block_size=6)


def small_engine(name, seed=9, cfg=SMALL):
    return make_engine(name, cfg, random.Random(seed))


def assert_states_equal(got, want):
    assert got.adam_steps == want.adam_steps, (got.adam_steps, want.adam_steps)
    assert_named_arrays_close(got.weights, want.weights, rtol=0, atol=0, what='weight')
    np.testing.assert_array_equal(np.asarray(got.adam_m), np.asarray(want.adam_m))
    np.testing.assert_array_equal(np.asarray(got.adam_v), np.asarray(want.adam_v))


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_names_sizes_and_initial_state(engine_name):
    engine = small_engine(engine_name)
    assert (engine.name, engine.cfg, engine.dtype) == (engine_name, SMALL, 'float64'), (engine.name, engine.dtype)
    assert engine.num_params() == num_parameters(SMALL) == 10 * 8 * 2 + 6 * 8 + 12 * 8 * 8, engine.num_params()
    weights = engine.weights()
    assert [(name, np.shape(w)) for name, w in weights.items()] == [(p.name, p.shape) for p in parameter_table(SMALL)]
    state = engine.state()
    assert state.adam_steps == 0 and not np.any(state.adam_m) and not np.any(state.adam_v), state.adam_steps
    assert len(state.adam_m) == len(state.adam_v) == engine.num_params(), (len(state.adam_m), len(state.adam_v))


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_state_round_trips_exactly(engine_name):
    """state() of a trained engine, loaded into one with other weights, restores every bit; load_state without
    Adam moments sets the weights only."""
    tcfg = TrainConfig(weight_decay=0.1)
    trained = small_engine(engine_name)
    docs = random_batch(random.Random(1), SMALL, 4, max_len=8)
    trained.train_steps(docs, 0, 3, tcfg, [0.01] * 3)
    other = small_engine(engine_name, seed=99)
    other.load_state(trained.state())
    assert_states_equal(other.state(), trained.state())
    assert other.train_step(docs[:2], 0.01, tcfg) == trained.train_step(docs[:2], 0.01, tcfg)
    shifted = {name: np.asarray(w) + 1.0 for name, w in trained.weights().items()}
    other.load_state(EngineState(shifted, None, None, 0))
    assert_named_arrays_close(other.weights(), shifted, rtol=0, atol=0, what='loaded weight')
    assert other.state().adam_steps == 0, other.state().adam_steps


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_loss_is_forward_only(engine_name):
    """loss() equals loss_and_grads() and leaves the gradients and the state alone."""
    engine = small_engine(engine_name)
    first, second = random_batch(random.Random(2), SMALL, 3, max_len=8), random_batch(random.Random(3), SMALL, 2, 8)
    want = engine.loss_and_grads(first)
    grads, state = engine.gradients(), engine.state()
    assert engine.loss(second) == pytest.approx(small_engine(engine_name).loss_and_grads(second), rel=1e-14)
    assert engine.loss(first) == pytest.approx(want, rel=1e-14), (engine.loss(first), want)
    assert_named_arrays_close(engine.gradients(), grads, rtol=0, atol=0, what='gradient after loss()')
    assert_states_equal(engine.state(), state)


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_train_step_returns_the_loss_before_its_update(engine_name):
    tcfg = TrainConfig(weight_decay=0.01)
    batch = [[9, 1, 2, 3, 9], [9, 4, 9]]
    stepped = small_engine(engine_name)
    want = small_engine(engine_name).loss_and_grads(batch)
    assert stepped.train_step(batch, 0.01, tcfg) == want, want
    assert stepped.state().adam_steps == 1
    assert stepped.loss(batch) < want - 1e-3, (stepped.loss(batch), want)  # the step moved the weights downhill


@pytest.mark.parametrize('engine_name, dropout, batch_size', [  # the reference engine has no dropout
    pytest.param(name, dropout, batch_size, id=f'{name}-{dropout}-{batch_size}',
                 marks=pytest.mark.slow(seconds=1) if (name, batch_size) == ('reference', 3) else ())  # 1 s
    for batch_size in (1, 3) for name in CONTRACT_ENGINES for dropout in (0.0, 0.2)
    if not (name == 'reference' and dropout)])
def test_train_steps_equal_train_step_calls(engine_name, dropout, batch_size):
    """train_steps in chunks (the loop inside one compiled call for the fused engine), train() and one train_step
    per step give the same bits, wrapping around the documents."""
    steps = 4 if engine_name == 'reference' else 30
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, warmup=3, lr_schedule='cosine', dropout=dropout, seed=3)
    docs = random_batch(random.Random(8), SMALL, 11, max_len=9)
    lrs = [learning_rate(tcfg, s) for s in range(steps)]
    looped, trained, stepped = (small_engine(engine_name) for _ in range(3))
    split = steps // 3
    got = list(looped.train_steps(docs, 0, split, tcfg, lrs[:split]))
    got += list(looped.train_steps(docs, split, steps, tcfg, lrs[split:]))
    assert [report.loss for report in train(trained, docs, tcfg)] == got
    assert [stepped.train_step(batch_for_step(docs, s, batch_size), lrs[s], tcfg) for s in range(steps)] == got
    for engine in (trained, stepped):
        assert_states_equal(engine.state(), looped.state())
    assert looped.state().adam_steps == steps


def test_batch_for_step_wraps_around_the_documents():
    docs = [[i] for i in range(11)]
    assert batch_for_step(docs, 29, 3) == [[10], [0], [1]], batch_for_step(docs, 29, 3)  # documents 87, 88, 89
    assert batch_for_step(docs, 7, 1) == batch_for_step(docs, 18, 1) == [[7]], batch_for_step(docs, 18, 1)


@pytest.mark.parametrize('batch_size, sync_every', [(1, ()), (3, ()), (3, (5,))])
def test_train_reports_each_steps_tokens_and_syncs_at_chunk_ends(batch_size, sync_every):
    """Each report names its 1-based step, the tokens its own batch predicts (documents s*B .. s*B + B - 1 of step
    s, wrapping around, cut to the block) and whether the engine's state is that step's: at a chunk's end only,
    every chunk_steps steps (numpy: 8) and at each multiple of sync_every."""
    tcfg = TrainConfig(steps=19, batch_size=batch_size)
    docs = random_batch(random.Random(2), SMALL, 7, max_len=12)  # some longer than the block of 6
    engine = small_engine('numpy')
    reports = list(train(engine, docs, tcfg, start_step=2, sync_every=sync_every))
    assert [r.step for r in reports] == list(range(3, 20)), [r.step for r in reports]
    B = batch_size
    want = [sum(min(SMALL.block_size, len(docs[d % len(docs)]) - 1) for d in range(s * B, s * B + B))
            for s in range(2, 19)]
    assert [r.tokens for r in reports] == want, ([r.tokens for r in reports], want)
    ends, step = [], 2
    while step < 19:
        step = min([19, step + engine.chunk_steps] + [(step // every + 1) * every for every in sync_every])
        ends.append(step)
    assert [r.step for r in reports if r.synced] == ends, ([r.step for r in reports if r.synced], ends)


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_train_stops_on_chunk_ends_and_resumes_there(engine_name):
    """train() with sync_every ends a chunk on each multiple, and a run resumed there from the state continues
    with the same bits."""
    tcfg = TrainConfig(steps=6, batch_size=2, seed=1)
    docs = random_batch(random.Random(4), SMALL, 5, max_len=8)
    straight = small_engine(engine_name)
    want = [report.loss for report in train(straight, docs, tcfg)]
    first = small_engine(engine_name)
    reports = list(islice(train(first, docs, tcfg, sync_every=(4,)), 4))
    assert reports[-1].synced and reports[-1].step == 4, reports[-1]
    resumed = small_engine(engine_name, seed=5)
    resumed.load_state(first.state())
    got = [r.loss for r in reports] + [report.loss for report in train(resumed, docs, tcfg, start_step=4)]
    assert got == want, (got, want)
    assert_states_equal(resumed.state(), straight.state())


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_padding_does_not_change_the_gradient(engine_name):
    """A batch's gradient is its documents' gradients weighted by their predicted tokens."""
    cfg = ModelConfig(vocab_size=7, block_size=8, n_embd=8, n_head=2)
    engine = make_engine(engine_name, cfg, random.Random(0))
    short, long_ = [6, 1, 2, 6], [6, 1, 2, 3, 4, 5, 0, 6]
    engine.loss_and_grads([short])
    g_short = flat(engine.gradients())
    engine.loss_and_grads([long_])
    g_long = flat(engine.gradients())
    engine.loss_and_grads([short, long_])
    n_short, n_long = 3, 7
    np.testing.assert_allclose(flat(engine.gradients()), (n_short * g_short + n_long * g_long) / (n_short + n_long),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('batch', [[], [[4]], [[4], [4]], [[4], [], [4]]], ids=['empty', 'one', 'two', 'three'])
@pytest.mark.parametrize('engine_name', ['reference', 'numpy', 'fused'])
def test_a_batch_with_nothing_to_predict_is_a_clear_error(engine_name, batch):
    engine = make_engine(engine_name, ModelConfig(vocab_size=5), random.Random(0))
    for compute in (engine.loss_and_grads, engine.loss):
        with pytest.raises(ValueError, match='no token to predict'):
            compute(batch)


@pytest.mark.parametrize('engine_name', CONTRACT_ENGINES)
def test_decoder_reset_starts_a_new_sample(engine_name):
    engine = small_engine(engine_name)
    decoder = engine.decoder()
    first = [decoder.step(token, pos) for pos, token in enumerate([9, 3, 4])]
    decoder.reset()
    again = [decoder.step(token, pos) for pos, token in enumerate([9, 3, 4])]
    assert again == first and all(isinstance(logits, list) and len(logits) == 10 for logits in first), first
    assert first[1] != first[2]


def test_the_reference_engine_refuses_float32():
    with pytest.raises(MicrogptError, match='use --engine numpy for --dtype float32'):
        make_engine('reference', SMALL, random.Random(0), 'float32')
