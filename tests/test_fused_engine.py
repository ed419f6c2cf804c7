"""The fused engine equals the reference engine and the NumPy engine, and reproduces microgpt's seeded run."""

import random

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, learning_rate
from microgpt.data import Vocabulary, load_documents, shuffled
from microgpt.sampling import generate
from microgpt.engines import EngineState, make_engine
from microgpt.engines.fused.engine import kernels_are_cached
from microgpt.data import batch_for_step
from microgpt.train.loop import train

CONFIGS = [
    {},
    {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
    {'n_layer': 3, 'n_embd': 12, 'n_head': 3, 'block_size': 7},
    {'n_layer': 2, 'n_embd': 24, 'n_head': 6, 'block_size': 11},
    {'n_embd': 8, 'n_head': 1, 'block_size': 3},
    {'n_embd': 20, 'n_head': 4, 'block_size': 9, 'mlp_activation': 'relu2'},
    {'norm': 'esp32', 'bos': 'first', 'init_std': 0.1},
    {'norm': 'none', 'n_layer': 2},
    {'tie_lm_head': True, 'mlp_activation': 'relu2', 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02},
    {'tie_lm_head': True, 'n_layer': 2, 'n_embd': 12, 'n_head': 2},
    {'attention': 'self'},
    {'attention': 'self', 'n_layer': 2, 'norm': 'esp32', 'block_size': 6},
]


def config_id(switches):
    return ','.join(f'{k}={v}' for k, v in switches.items()) or 'default'


def random_batch(rng, cfg, batch_size, max_len):
    """Documents of random length (some longer than the block), wrapped in BOS."""
    bos = cfg.bos_id
    chars = [i for i in range(cfg.vocab_size) if i != bos]
    return [[bos] + [rng.choice(chars) for _ in range(rng.randrange(0, max_len))] + [bos]
            for _ in range(batch_size)]


def assert_arrays_equal(got, want, rtol, atol, what):
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=rtol, atol=atol,
                                   err_msg=f'{what} of {name}')


@pytest.mark.parametrize('switches', CONFIGS, ids=config_id)
@pytest.mark.parametrize('batch_size', [1, 3])
def test_loss_and_gradients_equal_reference(switches, batch_size):
    rng = random.Random(f'{config_id(switches)}/{batch_size}')
    cfg = ModelConfig(vocab_size=rng.randrange(3, 40), **switches).validate()
    seed = rng.randrange(1000)
    reference = make_engine('reference', cfg, random.Random(seed))
    engine = make_engine('fused', cfg, random.Random(seed))
    for _ in range(2):  # a second batch reuses the workspace the first one left behind
        batch = random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 4)
        want_loss = reference.loss_and_grads(batch)
        got_loss = engine.loss_and_grads(batch)
        assert abs(got_loss - want_loss) <= 1e-12 * abs(want_loss), (got_loss, want_loss)
        assert_arrays_equal(engine.gradients(), reference.gradients(), rtol=1e-10, atol=1e-13, what='gradient')


def test_workspace_grows_for_larger_batches():
    cfg = ModelConfig(vocab_size=11, n_layer=2, block_size=6)
    numpy_engine, engine = make_engine('numpy', cfg, random.Random(2)), make_engine('fused', cfg, random.Random(2))
    rng = random.Random(3)
    for batch_size in (1, 7, 2, 40, 1):
        batch = random_batch(rng, cfg, batch_size, max_len=9)
        want_loss, got_loss = numpy_engine.loss_and_grads(batch), engine.loss_and_grads(batch)
        assert abs(got_loss - want_loss) <= 1e-12 * want_loss, (batch_size, got_loss, want_loss)
        assert_arrays_equal(engine.gradients(), numpy_engine.gradients(), rtol=1e-10, atol=1e-13, what='gradient')


@pytest.mark.parametrize('dropout', [0.0, 0.2])
def test_split_batches_give_the_same_bits_on_any_number_of_threads(dropout):
    """Batches of 2+ documents run in groups on every core (fused_groups); the split depends on the batch
    size alone, and a dropout mask on the document alone, so one thread and two give the same parameters, bit
    for bit."""
    import numba
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    tcfg = TrainConfig(steps=20, batch_size=9, weight_decay=0.1, grad_clip=1.0, dropout=dropout)
    docs = random_batch(random.Random(10), cfg, 23, max_len=10)
    results = []
    threads = numba.get_num_threads()
    if threads == 1:
        pytest.skip("one numba thread: nothing to compare with")
    try:
        for n in (1, threads):
            numba.set_num_threads(n)
            engine = make_engine('fused', cfg, random.Random(11))
            losses = engine.train_steps(docs, 0, tcfg.steps, tcfg)
            results.append((losses, engine.flat.copy()))
    finally:
        numba.set_num_threads(threads)
    for losses, flat in results[1:]:
        np.testing.assert_array_equal(losses, results[0][0])
        np.testing.assert_array_equal(flat, results[0][1])


def test_a_group_of_one_token_documents_adds_nothing():
    """Group 0 of this batch holds only a one-token document: no positions to predict, no gradient."""
    cfg = ModelConfig(vocab_size=5, block_size=4)
    numpy_engine, engine = make_engine('numpy', cfg, random.Random(12)), make_engine('fused', cfg, random.Random(12))
    batch = [[4], [4, 1, 2, 4]]
    assert engine.loss_and_grads(batch) == pytest.approx(numpy_engine.loss_and_grads(batch), rel=1e-12)
    assert_arrays_equal(engine.gradients(), numpy_engine.gradients(), rtol=1e-10, atol=1e-13, what='gradient')


@pytest.mark.parametrize('tcfg', [TrainConfig(), TrainConfig(weight_decay=0.1, grad_clip=0.5, beta1=0.9, beta2=0.95)],
                         ids=['adam', 'adamw-clipped'])
@pytest.mark.parametrize('switches', [{}, {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'tie_lm_head': True}],
                         ids=config_id)
def test_adam_steps_track_numpy_engine(switches, tcfg):
    """Eight Adam steps (batches of 1 and 3) leave the same parameters and moments in both engines."""
    cfg = ModelConfig(vocab_size=13, block_size=8, **switches)
    numpy_engine, engine = make_engine('numpy', cfg, random.Random(5)), make_engine('fused', cfg, random.Random(5))
    rng = random.Random(6)
    for step in range(8):
        batch = random_batch(rng, cfg, 1 + 2 * (step % 2), max_len=11)
        lr = learning_rate(tcfg, step)
        want, got = numpy_engine.train_step(batch, lr, tcfg), engine.train_step(batch, lr, tcfg)
        assert abs(got - want) <= 1e-10 * want, (step, got, want)
    assert engine.adam_steps == numpy_engine.adam_steps == 8
    assert_arrays_equal(engine.weights(), numpy_engine.weights(), rtol=1e-9, atol=1e-12, what='parameter')
    np.testing.assert_allclose(engine.m, numpy_engine.m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(engine.v, numpy_engine.v, rtol=1e-9, atol=1e-15)


def test_separate_loss_and_adam_calls_equal_train_step():
    cfg, tcfg = ModelConfig(vocab_size=9), TrainConfig(weight_decay=0.01)
    split, fused = make_engine('fused', cfg, random.Random(7)), make_engine('fused', cfg, random.Random(7))
    batch = [[8, 1, 2, 3, 8], [8, 4, 8]]
    loss = split.loss_and_grads(batch)
    split.adam_update(0.01, tcfg)
    assert fused.train_step(batch, 0.01, tcfg) == loss
    np.testing.assert_array_equal(split.flat, fused.flat)


@pytest.mark.parametrize('batch_size', [1, 3])
def test_train_steps_equal_train_step_calls(batch_size):
    """train_steps (the loop inside one compiled call) gives the same bits as train() calling train_step."""
    cfg = ModelConfig(vocab_size=10, block_size=6)
    tcfg = TrainConfig(steps=30, batch_size=batch_size, warmup=3, lr_schedule='cosine')
    rng = random.Random(8)
    docs = random_batch(rng, cfg, 11, max_len=9)
    stepped, looped = make_engine('fused', cfg, random.Random(9)), make_engine('fused', cfg, random.Random(9))
    want = [report.loss for report in train(stepped, docs, tcfg)]
    got = list(looped.train_steps(docs, 0, 12, tcfg)) + list(looped.train_steps(docs, 12, 30, tcfg))
    assert got == want, (got, want)
    np.testing.assert_array_equal(looped.flat, stepped.flat)
    np.testing.assert_array_equal(looped.v, stepped.v)
    assert looped.adam_steps == stepped.adam_steps == 30
    assert batch_for_step(docs, 29, batch_size) == batch_for_step(docs, 29 + 11, batch_size)  # wrapping around


@pytest.mark.parametrize('switches', [{}, {'n_layer': 2, 'block_size': 6, 'bos': 'first'},
                                      {'norm': 'none', 'mlp_activation': 'relu2', 'tie_lm_head': True},
                                      {'attention': 'self', 'norm': 'esp32', 'n_embd': 12, 'n_head': 3}],
                         ids=config_id)
def test_decoder_logits_equal_numpy_engine(switches):
    cfg = ModelConfig(vocab_size=13, **switches)
    numpy_engine, engine = make_engine('numpy', cfg, random.Random(5)), make_engine('fused', cfg, random.Random(5))
    batch = random_batch(random.Random(1), cfg, 4, max_len=8)
    engine.train_step(batch, 0.01, TrainConfig())  # trained weights, not just the initial ones
    numpy_engine.load_state(EngineState(engine.weights(), None, None, 0))
    want_decoder, got_decoder = numpy_engine.decoder(), engine.decoder()
    for tokens in batch:
        want_decoder.reset()
        got_decoder.reset()
        for pos, token in enumerate(tokens[:cfg.block_size]):
            got = got_decoder.step(token, pos)
            assert isinstance(got, list) and len(got) == cfg.vocab_size
            np.testing.assert_allclose(got, want_decoder.step(token, pos), rtol=1e-10, atol=1e-13)


def test_float32_computes_in_float32_and_close_to_float64():
    cfg = ModelConfig(vocab_size=7, n_layer=2)
    f32, f64 = make_engine('fused', cfg, random.Random(0), 'float32'), make_engine('fused', cfg, random.Random(0))
    batch = random_batch(random.Random(2), cfg, 3, max_len=20)
    loss32, loss64 = f32.loss_and_grads(batch), f64.loss_and_grads(batch)
    assert {f32.flat.dtype, f32.grad_flat.dtype, f32.m.dtype, f32.v.dtype} == {np.dtype('float32')}
    assert abs(loss32 - loss64) <= 1e-5 * loss64, (loss32, loss64)
    assert_arrays_equal(f32.gradients(), f64.gradients(), rtol=1e-3, atol=1e-6, what='float32 gradient')
    assert kernels_are_cached('float32') and kernels_are_cached('float64')
    assert kernels_are_cached('float32', grouped=True) and kernels_are_cached('float64', grouped=True)  # batches of 3


def test_bad_token_ids_raise_instead_of_reading_outside_the_weights():
    engine = make_engine('fused', ModelConfig(vocab_size=5), random.Random(0))
    for batch in ([[4, 1, 5, 4]], [[4, 1, 4], [4, -1, 4]]):
        with pytest.raises(ValueError, match='outside the vocabulary'):
            engine.loss_and_grads(batch)
    with pytest.raises(ValueError, match='no token to predict'):
        engine.loss_and_grads([[4]])
    with pytest.raises(ValueError, match='outside the vocabulary or the block'):
        engine.decoder().step(0, engine.cfg.block_size)


def test_views_and_weight_round_trip():
    cfg = ModelConfig(vocab_size=6, n_layer=2, tie_lm_head=True)
    engine = make_engine('fused', cfg, random.Random(4))
    numpy_engine = make_engine('numpy', cfg, random.Random(4))
    assert engine.name == 'fused' and engine.num_params() == numpy_engine.num_params()
    assert list(engine.params) == list(numpy_engine.params)
    assert_arrays_equal(engine.weights(), numpy_engine.weights(), rtol=0, atol=0, what='initial parameter')
    assert np.shares_memory(engine.params['layer1.mlp_fc2'], engine.flat)
    weights = {name: w + 1.0 for name, w in engine.weights().items()}
    engine.load_state(EngineState(weights, None, None, 0))
    assert_arrays_equal(engine.weights(), weights, rtol=0, atol=0, what='loaded parameter')


# ---- the default seeded job against microgpt.py's recorded output

def test_default_run_reproduces_golden_trajectory_and_samples(names_path, golden_path):
    with open(golden_path, encoding='utf-8') as f:
        golden = f.read().splitlines()
    rng = random.Random(42)
    docs = shuffled(load_documents(names_path), rng)
    vocab = Vocabulary.from_documents(docs)
    cfg = ModelConfig(vocab_size=vocab.size)
    engine = make_engine('fused', cfg, rng)
    tcfg = TrainConfig()
    got_steps = [f"step {r.step:4d} / {r.steps:4d} | loss {r.loss:.4f}"
                 for r in train(engine, [vocab.document_tokens(d) for d in docs], tcfg)]
    want_steps = [line for line in golden if line.startswith('step')]
    assert len(got_steps) == len(want_steps) == 1000
    off_by_one = []
    for got, want in zip(got_steps, want_steps):
        if got != want:
            got_loss, want_loss = float(got.rsplit(' ', 1)[1]), float(want.rsplit(' ', 1)[1])
            assert round(abs(got_loss - want_loss) * 1e4) == 1, (got, want)
            off_by_one.append(got)
    assert len(off_by_one) <= 2, off_by_one
    decoder = engine.decoder()
    got_samples = [f"sample {i + 1:2d}: {vocab.decode(generate(decoder, vocab.bos_id, cfg.block_size, rng, 0.5))}"
                   for i in range(20)]
    assert got_samples == [line for line in golden if line.startswith('sample')]


def test_first_run_says_it_compiles_and_a_cached_run_does_not(tmp_path, monkeypatch):
    """With an empty numba cache the CLI announces the compilation on stderr; the next run loads the cache."""
    from conftest import run_cli_subprocess
    monkeypatch.setenv('NUMBA_CACHE_DIR', str(tmp_path / 'numba-cache'))
    runs = [run_cli_subprocess('train', '--engine', 'fused', '--steps', '3', '--num-samples', '1') for _ in range(2)]
    (code1, out1, err1), (code2, out2, err2) = runs
    assert code1 == code2 == 0, (err1, err2)
    assert b"compiling the fused engine's kernels" in err1 and b'compiling' not in err2, (err1, err2)
    assert out1 == out2


DROPOUT_CONFIGS = [{}, {'n_layer': 2, 'n_embd': 10, 'n_head': 2, 'block_size': 6},  # 10: a part-filled draw
                   {'norm': 'esp32', 'tie_lm_head': True, 'mlp_activation': 'relu2'}, {'norm': 'none', 'n_layer': 2}]


@pytest.mark.parametrize('switches', DROPOUT_CONFIGS, ids=config_id)
@pytest.mark.parametrize('batch_size', [1, 2, 7])
def test_dropout_loss_and_gradients_equal_numpy_engine(switches, batch_size):
    """The fused engine draws each mask element where it needs it (in parallel groups for 2+ documents) and gets
    the numpy engine's masks: dropout.py's elements depend on the document, not on the group."""
    rng = random.Random(f'dropout/{config_id(switches)}/{batch_size}')
    cfg = ModelConfig(vocab_size=rng.randrange(3, 30), **switches).validate()
    numpy_engine, engine = make_engine('numpy', cfg, random.Random(4)), make_engine('fused', cfg, random.Random(4))
    for step in (1, 2):
        batch = random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 3)
        want = numpy_engine.loss_and_grads(batch, 0.3, (5, step))
        got = engine.loss_and_grads(batch, 0.3, (5, step))
        assert got == pytest.approx(want, rel=1e-12) and abs(got - engine.loss_and_grads(batch)) > 1e-6, (got, want)
        engine.loss_and_grads(batch, 0.3, (5, step))
        assert_arrays_equal(engine.gradients(), numpy_engine.gradients(), rtol=1e-10, atol=1e-13, what='gradient')


@pytest.mark.parametrize('batch_size', [1, 4])
def test_dropout_training_tracks_numpy_engine(batch_size):
    """train_steps (keys per step inside the compiled loop) and one train_step call per step (keys set from
    Python) give the numpy engine's run."""
    cfg = ModelConfig(vocab_size=10, n_layer=2, block_size=6)
    tcfg = TrainConfig(steps=12, batch_size=batch_size, dropout=0.2, seed=3, weight_decay=0.1)
    docs = random_batch(random.Random(8), cfg, 9, max_len=9)
    numpy_engine = make_engine('numpy', cfg, random.Random(9))
    looped, stepped = make_engine('fused', cfg, random.Random(9)), make_engine('fused', cfg, random.Random(9))
    want = [report.loss for report in train(numpy_engine, docs, tcfg)]
    got = list(looped.train_steps(docs, 0, 5, tcfg)) + list(looped.train_steps(docs, 5, 12, tcfg))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    stepped_losses = [stepped.train_step(batch_for_step(docs, s, batch_size), learning_rate(tcfg, s), tcfg)
                      for s in range(tcfg.steps)]
    assert stepped_losses == got
    np.testing.assert_array_equal(stepped.flat, looped.flat)
    assert_arrays_equal(looped.weights(), numpy_engine.weights(), rtol=1e-8, atol=1e-11, what='parameter')


@pytest.mark.parametrize('batch_size', [1, 5])
def test_float32_dropout_is_close_to_numpy_engines(batch_size):
    """The recipe's dtype: the same masks in float32, so the same loss and gradients up to float32 rounding."""
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    numpy_engine = make_engine('numpy', cfg, random.Random(3), 'float32')
    engine = make_engine('fused', cfg, random.Random(3), 'float32')
    batch = random_batch(random.Random(4), cfg, batch_size, max_len=9)
    want, got = numpy_engine.loss_and_grads(batch, 0.25, (1, 7)), engine.loss_and_grads(batch, 0.25, (1, 7))
    assert got == pytest.approx(want, rel=1e-5), (got, want)
    assert engine.grad_flat.dtype == np.float32
    np.testing.assert_allclose(engine.grad_flat, numpy_engine.grad_flat, rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_dropout_without_its_seed_and_step_is_an_error(engine_name):
    engine = make_engine(engine_name, ModelConfig(vocab_size=5), random.Random(0))
    with pytest.raises(ValueError, match='dropout needs seed_and_step'):
        engine.loss_and_grads([[4, 1, 4]], 0.1)


def test_an_evaluation_after_dropout_training_has_no_dropout():
    cfg = ModelConfig(vocab_size=10, block_size=6)
    docs = random_batch(random.Random(1), cfg, 4, max_len=9)
    engine, numpy_engine = make_engine('fused', cfg, random.Random(2)), make_engine('numpy', cfg, random.Random(2))
    engine.train_steps(docs, 0, 3, TrainConfig(steps=3, batch_size=2, dropout=0.5))
    numpy_engine.flat[:] = engine.flat
    for batch in (docs[:1], docs):
        assert engine.loss_and_grads(batch) == pytest.approx(numpy_engine.loss_and_grads(batch), rel=1e-12)


def test_dropout_is_refused_by_the_reference_engine():
    from microgpt.errors import MicrogptError
    with pytest.raises(MicrogptError, match='train with --engine fused'):
        TrainConfig(steps=2, dropout=0.1).check_engine('reference')
