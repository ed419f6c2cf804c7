"""Checkpoints: a save/restore in the middle of training changes no bit; every damaged file is a MicrogptError
with a one-line message that says what to do; the weights load with plain safetensors into NumPy and PyTorch."""

import json
import random
from dataclasses import asdict
from itertools import islice

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from microgpt.train.checkpoint import load_checkpoint, restore_engine, save_checkpoint
from microgpt.config import ModelConfig, TrainConfig, parameter_shapes
from microgpt.data import Vocabulary
from microgpt.engines import make_engine
from microgpt.errors import MicrogptError
from microgpt.train.loop import train

from helpers import flat, rewrite_checkpoint

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail']
VOCAB = Vocabulary.from_documents(NAMES)
DOCS = [VOCAB.document_tokens(name) for name in NAMES]
TCFG = TrainConfig(steps=10, batch_size=2, seed=3)


def small_cfg(engine):
    if engine == 'reference':  # the scalar engine is slow: a smaller model
        return ModelConfig(vocab_size=VOCAB.size, n_embd=8, n_head=2, block_size=8)
    return ModelConfig(vocab_size=VOCAB.size)


def trained(engine, dtype, steps, tcfg=TCFG):
    """An engine after `steps` of tcfg's 10-step schedule, and its losses."""
    e = make_engine(engine, small_cfg(engine), random.Random(0), dtype)
    losses = [report.loss for report in islice(train(e, DOCS, tcfg, sync_every=(steps,)), steps)]  # chunks end there
    return e, losses


def flat_state(e):
    state = e.state()
    return flat(state.weights), np.asarray(state.adam_m, np.float64), np.asarray(state.adam_v, np.float64), \
        state.adam_steps


DROPOUT_TCFG = TrainConfig(steps=10, batch_size=2, seed=3, dropout=0.2)  # masks drawn from (seed, step)


# the quick loop leaves out the scalar reference engine (2 s) and the fused engine's float32 (helpers.QUICK_DTYPES)
@pytest.mark.parametrize('engine, dtype, tcfg', [('numpy', 'float64', TCFG), ('numpy', 'float32', TCFG),
                                                 pytest.param('reference', 'float64', TCFG,
                                                              marks=pytest.mark.slow(seconds=2)),
                                                 ('numpy', 'float64', DROPOUT_TCFG), ('fused', 'float64', DROPOUT_TCFG),
                                                 pytest.param('fused', 'float32', DROPOUT_TCFG,
                                                              marks=pytest.mark.slow(seconds=1))],
                         ids=['numpy-float64', 'numpy-float32', 'reference', 'numpy-dropout', 'fused-dropout',
                              'fused-float32-dropout'])
def test_save_restore_continue_is_bit_identical(tmp_path, engine, dtype, tcfg):
    path = str(tmp_path / 'model.safetensors')
    straight, straight_losses = trained(engine, dtype, 10, tcfg)

    first, first_losses = trained(engine, dtype, 5, tcfg)
    save_checkpoint(path, first, VOCAB, tcfg, 5, {'train_loss': first_losses[-1]}, {'note': json.dumps('hi')})
    ckpt = load_checkpoint(path)
    assert (ckpt.model_cfg, ckpt.train_cfg, ckpt.vocab, ckpt.step, ckpt.adam_steps) == \
        (first.cfg, tcfg, VOCAB, 5, 5), (ckpt.model_cfg, ckpt.train_cfg, ckpt.vocab, ckpt.step, ckpt.adam_steps)
    assert ckpt.metrics == {'train_loss': first_losses[-1]} and ckpt.meta['note'] == 'hi', (ckpt.metrics, ckpt.meta)
    assert ckpt.meta['dtype'] == dtype and ckpt.meta['engine'] == engine, ckpt.meta

    resumed = make_engine(engine, ckpt.model_cfg, random.Random(99), dtype)  # other weights until restored
    restore_engine(ckpt, resumed)
    for got, want in zip(flat_state(resumed), flat_state(first)):
        np.testing.assert_array_equal(got, want)
    resumed_losses = [report.loss for report in train(resumed, DOCS, tcfg, start_step=ckpt.step)]

    assert first_losses + resumed_losses == straight_losses, (first_losses + resumed_losses, straight_losses)
    for got, want in zip(flat_state(resumed), flat_state(straight)):
        np.testing.assert_array_equal(got, want)


def test_file_layout_and_metadata(tmp_path):
    path = str(tmp_path / 'model.safetensors')
    e, _ = trained('numpy', 'float32', 2)
    save_checkpoint(path, e, VOCAB, TCFG, 2, {'train_loss': 3.0})
    with safe_open(path, framework='numpy') as f:
        meta, names = f.metadata(), set(f.keys())
    assert names == set(parameter_shapes(e.cfg)) | {'adam.m', 'adam.v'}, names
    assert meta['format'] == 'microgpt-checkpoint' and meta['format_version'] == '3', meta
    assert json.loads(meta['model_config']) == e.cfg.to_dict(), meta['model_config']
    assert json.loads(meta['train_config']) == asdict(TCFG), meta['train_config']
    assert json.loads(meta['vocab']) == {'chars': VOCAB.chars, 'bos_first': False}, meta['vocab']
    assert (json.loads(meta['step']), json.loads(meta['adam_steps'])) == (2, 2), meta
    assert json.loads(meta['metrics']) == {'train_loss': 3.0} and json.loads(meta['dtype']) == 'float32', meta
    assert not list(tmp_path.glob('.tmp-*')), list(tmp_path.iterdir())  # the atomic write leaves no temporary


def test_weights_load_with_plain_safetensors_into_numpy_and_torch(tmp_path, require_torch):
    from safetensors.torch import load_file as load_torch
    path = str(tmp_path / 'model.safetensors')
    for dtype in ('float32', 'float64'):
        e, _ = trained('numpy', dtype, 2)
        save_checkpoint(path, e, VOCAB, TCFG, 2, {})
        arrays, tensors = load_file(path), load_torch(path)
        for name, want in e.weights().items():
            assert arrays[name].dtype == np.dtype(dtype), (name, arrays[name].dtype)
            np.testing.assert_array_equal(arrays[name], want)
            assert tensors[name].dtype == getattr(require_torch, dtype), (name, tensors[name].dtype)
            np.testing.assert_array_equal(tensors[name].numpy(), want)
        np.testing.assert_array_equal(tensors['adam.m'].numpy(), e.state().adam_m)
        np.testing.assert_array_equal(arrays['adam.v'], e.state().adam_v)


# ---- every damaged file is a one-line MicrogptError saying what to do

@pytest.fixture
def saved(tmp_path):
    path = str(tmp_path / 'model.safetensors')
    e, _ = trained('numpy', 'float32', 1)
    save_checkpoint(path, e, VOCAB, TCFG, 1, {})
    return path


def assert_load_fails(path, *fragments):
    with pytest.raises(MicrogptError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_missing_file_and_directory(tmp_path):
    assert_load_fails(str(tmp_path / 'nope.safetensors'), 'no such checkpoint', 'microgpt train --out')
    assert_load_fails(str(tmp_path), 'is a directory', 'model.safetensors')


def test_truncated_file(saved):
    data = open(saved, 'rb').read()
    header_end = 8 + int.from_bytes(data[:8], 'little')
    for cut in (0, 5, 8, header_end // 2, header_end, len(data) // 2, len(data) - 1):
        open(saved, 'wb').write(data[:cut])
        assert_load_fails(saved, 'truncated or corrupted', 'microgpt train --out')


def test_flipped_header_bytes(saved):
    data = open(saved, 'rb').read()
    header_end = 8 + int.from_bytes(data[:8], 'little')
    for position in (0, 3, 7, 8, 9, header_end // 2, header_end - 1):
        damaged = bytearray(data)
        damaged[position] ^= 0xff  # in the length: absurd sizes; in the JSON: invalid UTF-8
        open(saved, 'wb').write(bytes(damaged))
        assert_load_fails(saved, 'truncated or corrupted')


@pytest.mark.parametrize('garbage', [b'', b'not a checkpoint at all', bytes(range(256)) * 8,
                                     (2**40).to_bytes(8, 'little') + b'{}'])
def test_garbage(saved, garbage):
    open(saved, 'wb').write(garbage)
    assert_load_fails(saved, 'truncated or corrupted')


def test_safetensors_that_is_not_a_microgpt_checkpoint(saved):
    rewrite_checkpoint(saved, {'format': 'something-else'})
    assert_load_fails(saved, 'not a microgpt checkpoint')
    save_file({'x': np.zeros(3, np.float32)}, saved)  # no metadata at all
    assert_load_fails(saved, 'not a microgpt checkpoint')


def test_other_format_version(saved):
    rewrite_checkpoint(saved, {'format_version': '4'})
    assert_load_fails(saved, 'format version 4', 'reads versions 1, 2 and 3', 'upgrade microgpt')


def test_damaged_metadata(saved):
    rewrite_checkpoint(saved, {'model_config': '{"vocab_size": '})
    assert_load_fails(saved, 'metadata')


def test_missing_tensor(saved):
    rewrite_checkpoint(saved, drop='layer0.mlp_fc1')
    assert_load_fails(saved, 'layer0.mlp_fc1 is missing')


def test_wrong_shape(saved):
    rewrite_checkpoint(saved, change_tensor={'wpe': np.zeros((8, 16), np.float32)})
    assert_load_fails(saved, 'wpe', '(8, 16)', '(16, 16)')


def test_non_finite_weights(saved):
    wte = load_file(saved)['wte']
    wte[3, 4] = np.nan
    rewrite_checkpoint(saved, change_tensor={'wte': wte})
    assert_load_fails(saved, 'wte', 'NaN')


def test_adam_state_of_the_wrong_length(saved):
    m = load_file(saved)['adam.m']
    rewrite_checkpoint(saved, change_tensor={'adam.m': m[:-1]})
    assert_load_fails(saved, 'adam.m')
