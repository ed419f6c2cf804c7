"""Checkpoint integrity: the same state gives the same bytes (also in another process); a flipped byte anywhere
in the file, tensor data or metadata, is caught by the recorded SHA-256; every metadata value is strict JSON and
a damaged one is a one-line error naming it; format-1 and format-2 files still load; interrupted saves leave
nothing a later run could take, and the next save removes their temporaries."""

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from itertools import islice

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import Vocabulary
from microgpt.engines import make_engine
from microgpt.errors import MicrogptError
from microgpt.train import checkpoint
from microgpt.train.checkpoint import load_checkpoint, save_checkpoint
from microgpt.train.loop import train

from helpers import assert_one_line_error, rewrite_checkpoint, run_cli_in_process as run, write_names

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail']
VOCAB = Vocabulary.from_documents(NAMES)
TCFG = TrainConfig(steps=4, batch_size=2, seed=3)
META = {'best_val_loss': json.dumps(math.inf), 'val_loss': json.dumps(float('nan')), 'note': json.dumps('zoë')}

# run in a fresh interpreter: the safetensors library's metadata order changes from process to process
SAVE_SCRIPT = textwrap.dedent('''
    import json, math, random, sys
    from itertools import islice
    from microgpt.config import ModelConfig, TrainConfig
    from microgpt.data import Vocabulary
    from microgpt.engines import make_engine
    from microgpt.train.checkpoint import save_checkpoint
    from microgpt.train.loop import train
    names = {names!r}
    vocab = Vocabulary.from_documents(names)
    tcfg = TrainConfig(steps=4, batch_size=2, seed=3)
    engine = make_engine('numpy', ModelConfig(vocab_size=vocab.size), random.Random(0), 'float64')
    losses = [r.loss for r in islice(train(engine, [vocab.document_tokens(d) for d in names], tcfg), 3)]
    save_checkpoint(sys.argv[1], engine, vocab, tcfg, 3, {{'train_loss': losses[-1]}}, {meta!r})
''').format(names=NAMES, meta=META)


def trained(steps=3, dtype='float64'):
    engine = make_engine('numpy', ModelConfig(vocab_size=VOCAB.size), random.Random(0), dtype)
    losses = [r.loss for r in islice(train(engine, [VOCAB.document_tokens(d) for d in NAMES], TCFG), steps)]
    return engine, losses


def saved_bytes(path, dtype='float64'):
    engine, losses = trained(dtype=dtype)
    save_checkpoint(str(path), engine, VOCAB, TCFG, 3, {'train_loss': losses[-1]}, META)
    return path.read_bytes()


def test_same_state_gives_the_same_bytes_in_this_and_another_process(tmp_path):
    first, second = saved_bytes(tmp_path / 'a.safetensors'), saved_bytes(tmp_path / 'b.safetensors')
    assert first == second, 'two saves of the same state differ'
    subprocess.run([sys.executable, '-c', SAVE_SCRIPT, str(tmp_path / 'c.safetensors')], check=True)
    other = (tmp_path / 'c.safetensors').read_bytes()
    assert other == first, (len(other), len(first), next(i for i, (x, y) in enumerate(zip(other, first)) if x != y))


def test_every_metadata_value_is_strict_json(tmp_path):
    saved_bytes(tmp_path / 'model.safetensors')
    with safe_open(str(tmp_path / 'model.safetensors'), framework='numpy') as f:
        meta = f.metadata()

    def refuse(word):
        raise AssertionError(f"{word} is not JSON")
    decoded = {k: json.loads(v, parse_constant=refuse) for k, v in meta.items() if k not in ('format', 'format_version')}
    assert decoded['best_val_loss'] is None and decoded['val_loss'] is None, decoded
    assert decoded['note'] == 'zoë', decoded['note']
    assert load_checkpoint(str(tmp_path / 'model.safetensors')).meta['best_val_loss'] is None


def test_a_save_landing_while_the_checkpoint_is_read_is_not_called_damage(tmp_path, monkeypatch):
    """A run renames each new checkpoint over the old one; one that lands while `info`, `sample` or `eval` reads the
    path gave them the tensors of one file and the checksum of the next: "damaged after it was written; use an
    earlier copy" of a healthy checkpoint (1-2 in 50 reads of a run saving every step). The file is read once."""
    path, newer = tmp_path / 'resume.safetensors', tmp_path / 'newer.safetensors'
    saved_bytes(path)
    engine, losses = trained(steps=4)
    save_checkpoint(str(newer), engine, VOCAB, TCFG, 4, {'train_loss': losses[-1]})
    opened = []

    def open_after_a_save_lands(file, *args, **kwargs):  # the save lands between two opens of the path, if any
        if file in (path, str(path)) and not opened:
            os.replace(newer, path)
        opened.append(file)
        return open(file, *args, **kwargs)
    monkeypatch.setattr(checkpoint, 'open', open_after_a_save_lands, raising=False)
    assert load_checkpoint(str(path)).step == 4


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_a_flipped_byte_in_the_tensor_data_is_caught(tmp_path, dtype):
    path = tmp_path / 'model.safetensors'
    data = saved_bytes(path, dtype)
    header_end = 8 + int.from_bytes(data[:8], 'little')
    itemsize = np.dtype(dtype).itemsize
    load_checkpoint(str(path))  # the intact file loads
    n_floats = (len(data) - header_end) // itemsize
    for index in (0, 1, n_floats // 3, n_floats // 2, n_floats - 1):  # weights, and the Adam moments at the end
        damaged = bytearray(data)
        damaged[header_end + index * itemsize] ^= 0x01  # the lowest mantissa bit: still a finite number
        path.write_bytes(bytes(damaged))
        with pytest.raises(MicrogptError) as info:
            load_checkpoint(str(path))
        message = str(info.value)
        assert 'checksum' in message and str(path) in message and '\n' not in message, (index, message)


@pytest.mark.parametrize('old, new', [(b'"step":"3"', b'"step":"2"'), (b'"note"', b'"nOte"'),
                                      (b'"format_version":"3"', b'"format_version":"1"')],
                         ids=['value', 'entry name', 'version'])
def test_a_flipped_byte_in_the_metadata_is_caught(tmp_path, old, new):
    path = tmp_path / 'model.safetensors'
    data = saved_bytes(path)
    assert data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))
    with pytest.raises(MicrogptError, match='checksum'):
        load_checkpoint(str(path))


def as_version_2(path):
    """Rewrite a saved checkpoint as format version 2 wrote it: tensors_sha256, of the tensor bytes only."""
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], 'little')
    header, payload = json.loads(data[8:header_end]), data[header_end:]
    del header['__metadata__']['sha256']
    header['__metadata__'].update(format_version='2', tensors_sha256=json.dumps(hashlib.sha256(payload).hexdigest()))
    encoded = json.dumps(header).encode('utf-8')
    path.write_bytes(len(encoded).to_bytes(8, 'little') + encoded + payload)
    return 8 + len(encoded)  # where the tensor data starts


def test_format_version_2_still_loads_with_its_tensor_checksum(tmp_path):
    path = tmp_path / 'model.safetensors'
    saved_bytes(path)
    data_start = as_version_2(path)
    assert load_checkpoint(str(path)).step == 3
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"step": "3"', b'"step": "2"'))  # version 2's metadata is not covered
    assert load_checkpoint(str(path)).step == 2
    damaged = bytearray(data)
    damaged[data_start] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(MicrogptError, match='tensors_sha256'):
        load_checkpoint(str(path))


def test_format_version_1_still_loads(tmp_path):
    path = tmp_path / 'model.safetensors'
    engine, _ = trained()
    saved_bytes(path)
    with safe_open(str(path), framework='numpy') as f:
        meta = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    del meta['sha256']
    meta['format_version'] = '1'
    meta['best_val_loss'] = 'Infinity'  # what version 1 wrote
    save_file(tensors, str(path), metadata=meta)
    ckpt = load_checkpoint(str(path))
    assert ckpt.meta['best_val_loss'] == math.inf and ckpt.step == 3, (ckpt.meta['best_val_loss'], ckpt.step)
    for name, want in engine.weights().items():
        np.testing.assert_array_equal(ckpt.weights[name], want)


@pytest.mark.parametrize('version', ['2', '3'])
def test_a_file_without_its_checksum_is_refused(tmp_path, version):
    path = tmp_path / 'model.safetensors'
    saved_bytes(path)
    if version == '2':
        as_version_2(path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework='numpy') as f:
        meta = dict(f.metadata())
    del meta['sha256' if version == '3' else 'tensors_sha256']
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(MicrogptError, match='checksum'):
        load_checkpoint(str(path))


# ---- a damaged value, with a checksum that matches (the file was edited): one line naming the entry

DAMAGED_VALUES = [  # (entry, its new JSON, or a dict of fields merged into its object), the words of the error
    ('step', '1e400', 'step'), ('step', '-5', 'step'), ('step', '5.5', 'step'), ('step', '5', 'step'),
    ('step', 'true', 'step'), ('adam_steps', '99999999999999999999', 'adam_steps'),
    ('model_config', {'block_size': 16.0}, 'model_config.block_size'),
    ('model_config', {'block_size': True}, 'model_config.block_size'),
    ('model_config', {'n_embd': '16'}, 'model_config.n_embd'),
    ('model_config', {'n_head': 3}, 'model_config.n_embd'),
    ('model_config', {'n_layer': 10**12}, 'model_config.n_layer'),
    ('model_config', {'zero_init': 'attn_wo'}, 'model_config.zero_init'),
    ('model_config', '[1, 2, 3]', 'model_config'),
    ('train_config', {'batch_size': 2.0}, 'train_config.batch_size'),
    ('train_config', {'steps': 0}, 'train_config.steps'),
    ('vocab', {'chars': VOCAB.chars[0] + VOCAB.chars[:-1]}, 'vocab.chars'),
    ('vocab', {'bos_first': 'yes'}, 'vocab.bos_first'),
    ('val_split', '"bogus"', 'val_split'), ('val_fraction', '2', 'val_fraction'),
    ('eval_every', '1.5', 'eval_every'), ('engine', '"cuda"', 'engine'), ('dtype', '"float16"', 'dtype'), ('dtype', '"float32"', 'dtype'),
    ('data_path', '5', 'data_path'), ('preset', '"bogus"', 'preset'),
    ('data_path', '"/tmp/x\\ud800y"', 'data_path'), ('vocab', {'chars': 'ab\udc80'}, 'vocab'),  # a traceback
    ('metrics', '{"train_loss": NaN}', 'metrics'), ('metrics', '[1, 2]', 'metrics'),
    ('best_val_loss', '-1', 'best_val_loss'), ('best_val_loss', 'Infinity', 'best_val_loss'),
    ('save_every', '-1', 'save_every'), ('save_every', 'true', 'save_every'), ('save_every', '2.5', 'save_every'),
]
MISSING_VALUES = [('model_config', 'n_embd'), ('train_config', 'steps'), ('vocab', 'bos_first'), ('metrics', None),
                  ('step', None)]


def edited(tmp_path, entry, change):
    """A saved checkpoint with one metadata entry changed and its checksum recomputed."""
    path = tmp_path / 'model.safetensors'
    saved_bytes(path)
    with safe_open(str(path), framework='numpy') as f:
        meta = dict(f.metadata())
    text = change if isinstance(change, str) else json.dumps({**json.loads(meta[entry]), **change})
    rewrite_checkpoint(path, {entry: text})
    return str(path)


def assert_refused(path, *fragments):
    for command in ('info', 'sample'):
        code, out, err = run(command, '--checkpoint', path)
        assert_one_line_error(code, out, err, path, *fragments)


@pytest.mark.parametrize('entry, change, named', DAMAGED_VALUES,
                         ids=[f"{entry}-{change}"[:40] for entry, change, _ in DAMAGED_VALUES])
def test_a_damaged_value_is_one_line_naming_the_entry(tmp_path, entry, change, named):
    assert_refused(edited(tmp_path, entry, change), f"metadata: {named} ")


@pytest.mark.parametrize('entry, field', MISSING_VALUES)
def test_a_missing_value_is_one_line_naming_it(tmp_path, entry, field):
    path = tmp_path / 'model.safetensors'
    saved_bytes(path)
    with safe_open(str(path), framework='numpy') as f:
        meta = dict(f.metadata())
    if field is None:
        del meta[entry]
    else:
        meta[entry] = json.dumps({k: v for k, v in json.loads(meta[entry]).items() if k != field})
    path.write_bytes(checkpoint.safetensors_bytes(load_file(str(path)), meta))
    assert_refused(str(path), f"{entry}.{field} is missing" if field else f"{entry} is missing")


def test_resume_from_a_step_outside_the_run_is_one_line(tmp_path):
    code, out, err = run('train', '--data', write_names(tmp_path / 'names.txt'), '--steps', '3', '--out',
                         tmp_path / 'run', '--num-samples', '0')
    assert code == 0, err
    rewrite_checkpoint(tmp_path / 'run' / 'resume.safetensors', {'step': '-5'})
    code, out, err = run('train', '--data', tmp_path / 'names.txt', '--steps', '6', '--out', tmp_path / 'run',
                         '--resume', '--num-samples', '0')
    assert_one_line_error(code, out, err, 'resume.safetensors', 'metadata: step ')


def test_huge_weights_sample_and_evaluate_without_warnings(tmp_path):
    """1e308 is finite, so it loads; its square overflows in RMSNorm, which gives inf quietly, as in training."""
    engine, losses = trained()
    state = engine.state()
    state.weights['wte'][:, 0] = 1e308
    engine.load_state(state)
    path = str(tmp_path / 'model.safetensors')
    save_checkpoint(path, engine, VOCAB, TCFG, 3, {'train_loss': losses[-1]})
    data = tmp_path / 'names.txt'
    data.write_text('\n'.join(NAMES) + '\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for args in (('sample', '--checkpoint', path, '--data', data, '--num-samples', '3'),
                     ('eval', '--checkpoint', path, '--data', data)):
            code, out, err = run(*args)
            assert code == 0 and err == '', (args, code, err)
    assert not caught, [str(w.message) for w in caught]


def test_the_next_save_removes_what_interrupted_saves_left(tmp_path):
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        leftovers = {name: True for name in ('.tmp-abc123.safetensors', '.tmp-999999999-x.safetensors',
                                             f'.tmp-{os.getpid()}-old.safetensors')}
        leftovers[f'.tmp-{alive.pid}-saving.safetensors'] = False  # another live process is saving there
        for name in leftovers:
            (tmp_path / name).write_bytes(b'partial')
        (tmp_path / 'notes.tmp').write_bytes(b'not ours')
        saved_bytes(tmp_path / 'model.safetensors')
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {'model.safetensors', 'notes.tmp', f'.tmp-{alive.pid}-saving.safetensors'}, sorted(left)
    finally:
        alive.kill()
        alive.wait()


KILLED_SAVE = textwrap.dedent('''
    import os, sys, time
    from microgpt.train import checkpoint
    def stall(fd):  # the payload is written but not yet renamed: the process is killed here
        print('writing', flush=True)
        time.sleep(60)
    checkpoint.os.fsync = stall
    checkpoint._atomic_write(sys.argv[1], b'x' * 100000)
''')


def test_a_killed_save_leaves_the_old_checkpoint_and_a_temporary_the_next_save_removes(tmp_path):
    path = tmp_path / 'model.safetensors'
    before = saved_bytes(path)
    proc = subprocess.Popen([sys.executable, '-c', KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == 'writing\n'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temporaries = [p.name for p in tmp_path.glob('.tmp-*')]
    assert len(temporaries) == 1 and path.read_bytes() == before, temporaries
    load_checkpoint(str(path))
    saved_bytes(tmp_path / 'resume.safetensors')
    assert not list(tmp_path.glob('.tmp-*')), sorted(p.name for p in tmp_path.iterdir())


def test_ctrl_c_during_a_save_leaves_no_temporary_and_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'model.safetensors'
    before = saved_bytes(path)

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.os, 'fsync', interrupted)
    with pytest.raises(KeyboardInterrupt):
        saved_bytes(path)
    assert path.read_bytes() == before and not list(tmp_path.glob('.tmp-*')), sorted(p.name for p in tmp_path.iterdir())


def test_an_endless_file_is_refused_without_reading_it_all(tmp_path):
    """load_checkpoint read a whole file into memory: /dev/zero until memory ran out. It reads what the header says."""
    if not os.path.exists('/dev/zero'):
        pytest.skip('no /dev/zero on this system')
    with pytest.raises(MicrogptError, match=r'/dev/zero: not a readable safetensors file.*\(a header of 0 bytes\)'):
        load_checkpoint('/dev/zero')
    huge = tmp_path / 'huge.safetensors'
    huge.write_bytes((2**60).to_bytes(8, 'little') + b'{}')
    with pytest.raises(MicrogptError, match=r'a header of 1152921504606846976 bytes'):
        load_checkpoint(str(huge))
    path = tmp_path / 'model.safetensors'
    saved_bytes(path)
    path.write_bytes(path.read_bytes() + b'tail')  # a tail past the tensors is still refused
    with pytest.raises(MicrogptError, match='not a readable safetensors file'):
        load_checkpoint(str(path))


def test_a_header_that_claims_a_petabyte_is_one_line(tmp_path):
    """A damaged header's tensor offsets sized the read: Python allocates what it is asked to read first."""
    header = json.dumps({'wte': {'dtype': 'F64', 'shape': [1], 'data_offsets': [0, 10**15]}}).encode()
    path = tmp_path / 'claims.safetensors'
    path.write_bytes(len(header).to_bytes(8, 'little') + header + bytes(8))
    with pytest.raises(MicrogptError, match='not a readable safetensors file') as error:
        load_checkpoint(str(path))
    assert 'MemoryError' not in str(error.value), error.value
