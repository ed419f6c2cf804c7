"""The Python API refuses what it cannot use, alike on every engine: token ids outside the vocabulary (or not
integers), a state of another model's shape, empty document lists, sampling knobs out of SampleConfig's bounds, an
Adam eps the fused engine would flush to zero. Every engine takes the contract's keywords, and what save_checkpoint
writes, load_checkpoint reads."""

import inspect
import os
import random

import numpy as np
import pytest

from microgpt.config import ModelConfig, SettingError, TrainConfig, num_parameters
from microgpt.data import Vocabulary
from microgpt.engines import Decoder, Engine, EngineState, make_engine
from microgpt.errors import MicrogptError
from microgpt.sampling import generate, token_probabilities
from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.train.loop import evaluate, train

from helpers import flat

CFG = ModelConfig(vocab_size=5, n_embd=8, n_head=2, block_size=4)
DOC = [4, 0, 1, 2, 4]


@pytest.fixture(params=('reference', 'numpy', 'fused', 'torch'))
def engine(request):
    if request.param == 'torch':
        request.getfixturevalue('require_torch')
    return make_engine(request.param, CFG, random.Random(0))


def _methods(protocol):
    return [name for name, member in vars(protocol).items() if callable(member) and not name.startswith('_')]


def _parameters(function):
    return list(inspect.signature(function).parameters)


def test_every_engine_takes_the_contract_s_keywords(engine):
    for protocol, implementation in ((Engine, type(engine)), (Decoder, type(engine.decoder()))):
        for name in _methods(protocol):
            got, want = _parameters(getattr(implementation, name)), _parameters(getattr(protocol, name))
            assert got == want, (engine.name, name, got, want)
    assert engine.loss_and_grads([DOC], dropout=0.0, seed_and_step=None) > 0


@pytest.mark.parametrize('doc', [[4, -1, 4], [4, 5, 4], [4, 0, 1.7, 4], [4, True, 4], [4, '1', 4]])
def test_a_token_id_outside_the_vocabulary_is_refused(engine, doc):
    before = flat(engine.weights())
    for call in (lambda: engine.loss([DOC, doc]), lambda: engine.loss_and_grads([doc]),
                 lambda: engine.train_step([doc], 0.01, TrainConfig())):
        with pytest.raises(ValueError, match=r'holds .*, not a token id from 0 to 4'):
            call()
    np.testing.assert_array_equal(flat(engine.weights()), before)


@pytest.mark.parametrize('token_id, pos_id', [(4, -1), (-1, 0), (5, 0), (4, 4), (1.5, 0), (4, 0.0)])
def test_a_decoder_refuses_ids_outside_the_vocabulary_and_the_block(engine, token_id, pos_id):
    with pytest.raises(ValueError, match='outside the vocabulary or the block'):
        engine.decoder().step(token_id, pos_id)


def test_a_state_of_another_model_is_refused_before_anything_changes(engine):
    before, state, P = flat(engine.weights()), engine.state(), num_parameters(CFG)
    wider = make_engine('numpy', ModelConfig(vocab_size=5, n_embd=16, n_head=2, block_size=4), random.Random(1))
    lacking = EngineState({k: v for k, v in state.weights.items() if k != 'lm_head'}, None, None, 0)
    short_moments = EngineState(state.weights, list(state.adam_m)[:-1], list(state.adam_v), 0)
    for bad, words in ((wider.state(), r'wte is \(5, 16\), the model\'s is \(5, 8\)'),
                       (lacking, 'it lacks lm_head'),
                       (short_moments, f'adam_m holds {P - 1} values for its {P} parameters'),
                       (EngineState(state.weights, None, None, -1), 'adam_steps must be a count')):
        with pytest.raises(MicrogptError, match=f'^the state does not fit this model: {words}'):
            engine.load_state(bad)
        np.testing.assert_array_equal(flat(engine.weights()), before)


def test_no_documents_is_a_clear_error(engine):
    tcfg = TrainConfig(steps=2)
    for call in (lambda: list(train(engine, [], tcfg)), lambda: engine.train_steps([], 0, 2, tcfg, [0.01, 0.01])):
        with pytest.raises(ValueError, match='no documents to train on'):
            call()
    with pytest.raises(ValueError, match='no documents to evaluate'):
        evaluate(engine, [])


def test_documents_may_be_tuples_and_arrays(engine):
    want = engine.loss([DOC])
    assert engine.loss([np.array(DOC)]) == engine.loss([tuple(DOC)]) == want, (engine.loss([np.array(DOC)]), want)
    reports = list(train(engine, (np.array(DOC), tuple(DOC)), TrainConfig(steps=2)))
    assert [r.step for r in reports] == [1, 2], reports


@pytest.mark.parametrize('knobs', [dict(temperature=-1.0), dict(temperature=0.0), dict(temperature=float('nan')),
                                   dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=-1.0),
                                   dict(top_p=float('nan')), dict(top_p=1.5)])
def test_sampling_knobs_out_of_bounds_are_refused(knobs):
    settings = dict(temperature=1.0, top_k=0, top_p=1.0) | knobs
    with pytest.raises(SettingError, match=next(iter(knobs))):
        token_probabilities([1.0, 2.0, 3.0], **settings)
    decoder = make_engine('numpy', CFG, random.Random(0)).decoder()
    with pytest.raises(SettingError, match=next(iter(knobs))):
        generate(decoder, CFG.bos_id, CFG.block_size, random.Random(0), **settings)


def test_sampling_within_bounds_and_a_prompt_that_fits():
    assert token_probabilities([1.0, 2.0, 3.0], 1e-300, 1, 1.0) == [0.0, 0.0, 1.0]
    decoder = make_engine('numpy', CFG, random.Random(0)).decoder()
    sample = generate(decoder, CFG.bos_id, CFG.block_size, random.Random(0), 0.5, prompt_ids=[0, 1, 2])
    assert sample[:3] == [0, 1, 2], sample
    with pytest.raises(ValueError, match='a prompt of 4 tokens leaves no room in a block of 4'):
        generate(decoder, CFG.bos_id, CFG.block_size, random.Random(0), 0.5, prompt_ids=[0, 1, 2, 3])


def test_save_checkpoint_refuses_what_load_checkpoint_would_call_damaged(tmp_path):
    vocab, tcfg = Vocabulary('abcd'), TrainConfig(steps=10)
    engine = make_engine('numpy', CFG, random.Random(0))
    path = str(tmp_path / 'model.safetensors')
    save_checkpoint(path, engine, vocab, tcfg, 5, {'val_loss': 1.5})
    assert load_checkpoint(path).step == 5
    os.remove(path)
    for args, words in (((Vocabulary('ab'), tcfg, 5, {}), 'a vocabulary of 3 tokens for a model of 5'),
                        ((vocab, tcfg, 11, {}), r'step must be an integer from 0 to .* \(10\), got 11'),
                        ((vocab, tcfg, -3, {}), 'got -3'), ((vocab, tcfg, 5, {'val_loss': 'low'}), 'metrics')):
        with pytest.raises(ValueError, match=words):
            save_checkpoint(path, engine, *args)
    engine.params['wte'][0, 0] = np.inf
    with pytest.raises(ValueError, match='wte holds NaN or infinite values'):
        save_checkpoint(path, engine, vocab, tcfg, 5, {})
    assert not os.listdir(tmp_path), os.listdir(tmp_path)


@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_an_eps_the_fused_engine_would_flush_to_zero_is_refused(engine_name):
    with pytest.raises(SettingError, match="eps must be at least 1.175e-38"):
        TrainConfig(eps=1e-310)
    tcfg = TrainConfig(eps=2.0 ** -126)  # float32's smallest normal number
    losses = []
    for dtype in ('float64', 'float32'):
        engine = make_engine(engine_name, CFG, random.Random(0), dtype)
        engine.train_step([DOC], 0.01, tcfg)  # the unused token's rows: a zero gradient, divided by eps
        losses.append(engine.loss([DOC]))
        assert np.all(np.isfinite(flat(engine.weights()))), (engine_name, dtype)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses


def test_zero_init_may_be_a_list():
    cfg = ModelConfig(vocab_size=3, zero_init=['attn_wo'])
    assert cfg.zero_init == ('attn_wo',) and hash(cfg) == hash(ModelConfig(vocab_size=3, zero_init=('attn_wo',)))


def test_decode_refuses_ids_outside_the_vocabulary():
    vocab = Vocabulary('abc')
    assert vocab.decode([0, 1, 3]) == 'ab'
    for ids in ([-1, 0], [4]):
        with pytest.raises(ValueError, match=f'token id {ids[0]} is outside the vocabulary'):
            vocab.decode(ids)


@pytest.mark.parametrize('engine_name', ['numpy', 'reference', 'torch'])
def test_batches_read_from_a_documents_are_not_checked_again(engine_name, tmp_path, monkeypatch, request):
    """Reading a document from a documents.Documents checks it: the training loop's batches skip check_batch's pass
    over every token (1-2% of a numpy-engine step), and lists of documents still get it."""
    import microgpt.engines as engines
    from microgpt.documents import file_documents
    if engine_name == 'torch':
        request.getfixturevalue('require_torch')
    data = tmp_path / 'names.txt'
    data.write_text('ab\nba\naab\n')
    docs = file_documents(str(data))
    engine = make_engine(engine_name, ModelConfig(vocab_size=docs.vocabulary().size, n_embd=8, n_head=2),
                         random.Random(0))

    def no_token_checked(value, bound):
        raise AssertionError('a token checked again')
    monkeypatch.setattr(engines, '_is_index', no_token_checked)
    assert len(engine.train_steps(docs, 0, 3, TrainConfig(steps=3), [0.01] * 3)) == 3
    with pytest.raises(AssertionError, match='a token checked again'):
        engine.train_steps(docs[:], 0, 3, TrainConfig(steps=3), [0.01] * 3)
