"""The practical trainer: held-out split, checkpoints, resume, sampling, evaluation, presets, and their errors."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from microgpt.config import ModelConfig, TrainConfig, learning_rate, learning_rates, num_parameters
from microgpt.data import holdout_split
from microgpt.presets import PRESETS, model_settings, resolve
from microgpt.train.checkpoint import load_checkpoint

from helpers import NAMES, rewrite_checkpoint, run_cli_in_process as run, write_names
from helpers import assert_one_line_error as assert_error


@pytest.fixture
def small_data(tmp_path):
    return write_names(tmp_path / 'names.txt')  # each name twice: duplicates, as in names.txt


def test_holdout_split_is_by_distinct_document_and_seeded():
    docs = NAMES * 3
    train, val = holdout_split(docs, 0.2, seed=1)
    assert not set(train) & set(val), set(train) & set(val)
    assert len(val) == 6 and len(train) == 3 * 24, (len(val), len(train))
    assert holdout_split(docs, 0.2, seed=1) == (train, val)
    assert holdout_split(docs, 0.2, seed=2)[1] != val


def test_default_split_size_is_makemores(names_path):
    from microgpt.data import load_documents
    train, val = holdout_split(load_documents(names_path))
    assert len(val) == 1000 and not set(train) & set(val), len(val)


def test_line_split_is_makemores_random_lines(names_path):
    """--val-split line: random lines, so a name on several lines can be on both sides, as in makemore."""
    from microgpt.data import load_documents
    docs = load_documents(names_path)
    train, val = holdout_split(docs, by='line')
    assert len(val) == 1000 and len(train) + len(val) == len(docs)
    assert sorted(train + val) == sorted(docs)
    assert set(train) & set(val), "names.txt repeats 2,539 names: some held-out lines are also trained on"
    assert holdout_split(docs, by='line') == (train, val) and holdout_split(docs, seed=7, by='line')[1] != val


def test_eval_restores_the_runs_line_split(small_data, tmp_path):
    out = str(tmp_path / 'run')
    code, stdout, err = run(*train_args(small_data, out), '--val-split', 'line', '--val-fraction', '0.25')
    assert code == 0, err
    best_val = [line for line in stdout.splitlines() if 'val loss' in line][-1].split('best ')[1]  # model.safetensors'
    code, stdout, err = run('eval', '--checkpoint', os.path.join(out, 'model.safetensors'))
    assert code == 0 and stdout.startswith(f'loss {best_val} ') and f'on {len(NAMES) * 2 // 4} documents' in stdout, \
        (best_val, stdout, err)


def test_preset_parameter_counts():
    counts = {}
    for name in PRESETS:
        s = resolve(name, {})
        counts[name] = num_parameters(ModelConfig(vocab_size=27, **model_settings(s)))
    assert counts == {'microgpt': 4192, 'zeroclaw': 3632, 'esp32': 4192, 'makemore': 201088}, counts


def test_explicit_flag_overrides_preset():
    assert resolve('zeroclaw', {'block_size': 12, 'steps': None})['block_size'] == 12
    assert resolve('zeroclaw', {'steps': None})['steps'] == 5000


def train_args(data, out, *extra):
    return ['train', '--data', data, '--steps', '40', '--eval-every', '20', '--val-fraction', '0.2',
            '--out', out, '--num-samples', '4', *extra]


def test_checkpoint_metadata_and_files(small_data, tmp_path):
    out = str(tmp_path / 'run')
    code, stdout, err = run(*train_args(small_data, out, '--plot'))
    assert code == 0, err
    assert 'val loss' in stdout
    for name in ('model.safetensors', 'resume.safetensors', 'metrics.jsonl', 'loss.png'):
        assert os.path.exists(os.path.join(out, name)), name
    with safe_open(os.path.join(out, 'model.safetensors'), framework='numpy') as f:
        meta = f.metadata()
    assert meta['format'] == 'microgpt-checkpoint' and meta['format_version'] == '3', meta
    assert json.loads(meta['vocab'])['chars'] == ''.join(sorted(set(''.join(NAMES))))
    assert json.loads(meta['model_config'])['n_embd'] == 16
    records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == list(range(1, 41))
    assert {'train_loss', 'lr'} <= records[0].keys() and 'val_loss' in records[19], records[:2]
    assert 'tokens_per_s' in records[-1], records[-1]  # throughput is measured where a chunk of steps ends


@pytest.mark.parametrize('flags', [[], ['--save-every', '7']])
def test_fused_chunks_give_the_same_run_as_numpy(small_data, tmp_path, flags):
    """Chunked compiled steps evaluate and save at exactly the steps the numpy engine does, with the same numbers."""
    outputs = {}
    for engine in ('numpy', 'fused'):
        out = str(tmp_path / engine)
        code, stdout, err = run(*train_args(small_data, out, '--engine', engine, *flags))
        assert code == 0, err
        records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
        outputs[engine] = (stdout, [(r['step'], r.get('val_loss')) for r in records],
                           load_file(os.path.join(out, 'resume.safetensors')))
    assert outputs['fused'][0] == outputs['numpy'][0]
    (fused_records, _), (numpy_records, _) = outputs['fused'][1:], outputs['numpy'][1:]
    assert [step for step, _ in fused_records] == [step for step, _ in numpy_records] == list(range(1, 41))
    for (step, got), (_, want) in zip(fused_records, numpy_records):  # evaluated at the same steps, same losses
        assert (got is None) == (want is None) and (got is None or abs(got - want) <= 1e-12 * want), (step, got, want)
    assert sum(val is not None for _, val in numpy_records) == 2, numpy_records  # --eval-every 20 of 40 steps
    for name, want in outputs['numpy'][2].items():
        np.testing.assert_allclose(outputs['fused'][2][name], want, rtol=1e-9, atol=1e-12, err_msg=name)
    vocab_size = len(set(''.join(NAMES))) + 1
    for engine in ('numpy', 'fused'):
        weights = load_file(os.path.join(tmp_path, engine, 'model.safetensors'))
        assert weights['wte'].shape == (vocab_size, 16), (engine, weights['wte'].shape, vocab_size)


def test_weights_load_into_torch(small_data, tmp_path, require_torch):
    from safetensors.torch import load_file as load_torch
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    tensors = load_torch(os.path.join(out, 'model.safetensors'))
    assert tensors['layer0.mlp_fc1'].shape == (64, 16), tensors['layer0.mlp_fc1'].shape


@pytest.mark.slow  # two 3000-step runs and a resumed one, in fresh interpreters
@pytest.mark.parametrize('engine', ['numpy', 'fused'])
def test_ctrl_c_then_resume_is_identical(small_data, tmp_path, engine):
    """SIGINT a real process mid-run; --resume must print the same samples and save the same weights.

    The fused engine runs chunks of steps per compiled call, so this also checks it stops on a chunk's end."""
    straight = str(tmp_path / 'straight')
    args = ['--data', small_data, '--steps', '3000', '--engine', engine, '--out']
    full = subprocess.run([sys.executable, '-m', 'microgpt', 'train', *args, straight], capture_output=True,
                          text=True, check=True)
    interrupted = str(tmp_path / 'interrupted')
    proc = subprocess.Popen([sys.executable, '-m', 'microgpt', 'train', *args, interrupted],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith('step  200 '):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert 'continue with --resume' in err and 'Traceback' not in err, err
    resumed = subprocess.run([sys.executable, '-m', 'microgpt', 'train', *args, interrupted, '--resume'],
                             capture_output=True, text=True, check=True)
    assert 'resuming from step' in resumed.stderr
    assert resumed.stdout.count('\nstep ') + 1 < full.stdout.count('\nstep '), 'the interrupted run did not stop early'
    assert resumed.stdout.split('--- inference')[1] == full.stdout.split('--- inference')[1]
    want = load_file(os.path.join(straight, 'model.safetensors'))
    got = load_file(os.path.join(interrupted, 'model.safetensors'))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_sample_and_eval_commands(small_data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    ckpt = os.path.join(out, 'model.safetensors')
    code, stdout, err = run('sample', '--checkpoint', ckpt, '--prompt', 'em', '--top-p', '0.9', '--top-k', '5',
                            '--num-samples', '5')
    assert code == 0, err
    samples = [line.split(': ', 1)[1] for line in stdout.splitlines() if line.startswith('sample')]
    assert len(samples) == 5 and all(s.startswith('em') for s in samples), samples
    assert stdout.splitlines()[-1].startswith('novel: '), stdout
    code, stdout, err = run('eval', '--checkpoint', ckpt)
    assert code == 0 and stdout.startswith('loss '), (stdout, err)
    code, stdout, err = run('eval', '--checkpoint', ckpt, '--data', small_data)
    assert code == 0 and f'on {len(NAMES) * 2} documents' in stdout, stdout


def test_sampling_is_seeded(small_data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    ckpt = os.path.join(out, 'model.safetensors')
    first, again, other = (run('sample', '--checkpoint', ckpt, '--seed', seed)[1] for seed in ('3', '3', '4'))
    assert first == again and 'sample' in first, (first, again)
    assert other != first, other  # the seed is used, not only repeatable


# ---- bad input

def test_prompt_with_unknown_characters(small_data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    assert_error(*run('sample', '--checkpoint', os.path.join(out, 'model.safetensors'), '--prompt', 'eQ!'),
                 "'!'", "'Q'", 'vocabulary')


@pytest.fixture
def checkpoint(small_data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    return os.path.join(out, 'model.safetensors')


@pytest.mark.parametrize('command', ['sample', 'eval'])
def test_missing_checkpoint(tmp_path, command):
    assert_error(*run(command, '--checkpoint', str(tmp_path / 'nope.safetensors')), 'no such checkpoint')
    assert_error(*run(command, '--checkpoint', str(tmp_path)), 'is a directory')


def test_truncated_checkpoint(checkpoint):
    data = open(checkpoint, 'rb').read()
    open(checkpoint, 'wb').write(data[:len(data) // 2])
    assert_error(*run('sample', '--checkpoint', checkpoint), 'corrupted')


def test_corrupted_checkpoint(checkpoint):
    data = bytearray(open(checkpoint, 'rb').read())
    data[8:40] = b'\xff' * 32
    open(checkpoint, 'wb').write(bytes(data))
    assert_error(*run('eval', '--checkpoint', checkpoint), 'corrupted')
    open(checkpoint, 'wb').write(b'not a checkpoint at all')
    assert_error(*run('eval', '--checkpoint', checkpoint), 'corrupted')


def test_checkpoint_of_another_format_version(checkpoint):
    rewrite_checkpoint(checkpoint, {'format_version': '4'})
    assert_error(*run('sample', '--checkpoint', checkpoint), 'format version 4', 'reads versions 1, 2 and 3')


def test_safetensors_file_that_is_not_a_checkpoint(checkpoint):
    save_file({'x': np.zeros(3)}, checkpoint)
    assert_error(*run('sample', '--checkpoint', checkpoint), 'not a microgpt checkpoint')


def test_checkpoint_missing_a_tensor(checkpoint):
    rewrite_checkpoint(checkpoint, drop='layer0.attn_wq')
    assert_error(*run('sample', '--checkpoint', checkpoint), 'layer0.attn_wq is missing')


def test_resume_with_mismatched_config(small_data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    assert_error(*run(*train_args(small_data, out, '--n-embd', '8', '--resume')), 'n_embd: checkpoint 16, now 8')
    # another held-out split would train on other documents and compare losses measured on other names
    assert_error(*run(*train_args(small_data, out, '--val-split', 'line', '--resume')),
                 "val_split: checkpoint 'name', now 'line'")
    assert_error(*run(*train_args(small_data, out, '--val-fraction', '0.3', '--resume')),
                 'val_fraction: checkpoint 0.2, now 0.3')
    assert_error(*run(*train_args(small_data, out, '--eval-every', '0', '--resume')), 'eval_every: checkpoint 20, now 0')
    # a run on the default fraction records None: it said 'checkpoint None'
    default = str(tmp_path / 'default')
    assert run('train', '--data', small_data, '--steps', '4', '--eval-every', '2', '--out', default)[0] == 0
    assert_error(*run('train', '--out', default, '--resume', '--val-fraction', '0.2'),
                 'val_fraction: checkpoint the default (like makemore, min(1000 documents, 10%)), now 0.2')


def test_a_damaged_resume_state_gets_advice_for_resume(small_data, tmp_path):
    """It said 'give a model.safetensors written by microgpt train --out DIR', which --resume cannot be given."""
    out = tmp_path / 'run'
    assert run(*train_args(small_data, str(out)))[0] == 0
    state = out / 'resume.safetensors'
    state.write_bytes(state.read_bytes()[:-100])
    code, stdout, err = run('train', '--out', str(out), '--resume')
    assert_error(code, stdout, err, 'resume.safetensors: not a readable safetensors file',
                 '; --resume needs this file whole: put back a copy of it, or start the run again with --overwrite')
    assert 'give a model.safetensors' not in err, err
    state.unlink()
    state.mkdir()
    assert_error(*run('train', '--out', str(out), '--resume'), 'resume.safetensors: is a directory; --resume needs')
    # a newer microgpt's file is whole: its advice is to upgrade, never to --overwrite it
    state.rmdir()
    assert run(*train_args(small_data, str(out), '--overwrite'))[0] == 0
    state.write_bytes(state.read_bytes().replace(b'"format_version":"3"', b'"format_version":"9"', 1))
    code, stdout, err = run('train', '--out', str(out), '--resume')
    assert_error(code, stdout, err, 'checkpoint format version 9', 'upgrade microgpt to read it')
    assert '--overwrite' not in err, err


def test_resume_advice_for_a_checkpoint_given_as_out_and_for_moved_data(small_data, tmp_path):
    """--out naming resume.safetensors said 'nothing to resume; drop --resume to start fresh', which then failed on
    the file; a run whose data file moved said only 'no such file', not that --data can name its new place."""
    out = tmp_path / 'run'
    data = tmp_path / 'names.txt'
    data.write_text(open(small_data).read())
    assert run('train', '--data', data, '--steps', '5', '--num-samples', '0', '--out', out)[0] == 0
    assert_error(*run('train', '--resume', '--out', out / 'resume.safetensors'),
                 f"--out {out / 'resume.safetensors'} is a file: --resume takes the run's folder")
    data.rename(tmp_path / 'moved.txt')
    assert_error(*run('train', '--resume', '--out', out, '--steps', '10'),
                 f"the run's data file {data} is no longer there; give its new place with --data")
    code, _, err = run('train', '--resume', '--out', out, '--steps', '10', '--data', tmp_path / 'moved.txt',
                       '--num-samples', '0')
    assert code == 0, err


def test_resume_without_a_checkpoint(small_data, tmp_path):
    assert_error(*run(*train_args(small_data, str(tmp_path / 'empty'), '--resume')), 'nothing to resume')


def test_empty_validation_split(tmp_path):
    path = tmp_path / 'tiny.txt'
    path.write_text('ab\ncd\nef\n')
    assert_error(*run('train', '--data', str(path), '--eval-every', '5'), 'validation split is empty')


def test_batch_larger_than_data(small_data):
    assert_error(*run('train', '--data', small_data, '--batch-size', '1000'), 'larger than the', 'training documents')


def test_a_data_file_of_any_name_is_recorded_and_resumed(tmp_path):
    """A name that is not UTF-8 (or any non-ASCII name under LC_ALL=C) went into the checkpoint's JSON
    metadata as it was and failed the save with UnicodeEncodeError after training."""
    data = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b'bad\xffname.txt'))
    write_names(Path(data))
    out = str(tmp_path / 'run')
    code, _, err = run('train', '--data', data, '--steps', '3', '--out', out, '--num-samples', '0')
    assert code == 0, err
    recorded = load_checkpoint(os.path.join(out, 'resume.safetensors')).meta['data_path']
    assert recorded.endswith('/bad\\xffname.txt'), recorded
    code, _, err = run('train', '--resume', '--out', out, '--steps', '5', '--num-samples', '0')  # reads it back
    assert code == 0, err
    assert run('train', '--resume', '--out', out, '--steps', '6', '--num-samples', '0', '--data', data)[0] == 0


@pytest.mark.parametrize('flags, fragment', [
    (['--top-p', '0'], '--top-p'), (['--top-p', '1.5'], '--top-p'), (['--top-k', '-1'], '--top-k'),
    (['--val-fraction', '1.5', '--eval-every', '5'], '--val-fraction'), (['--plot'], 'needs --out'),
    (['--resume'], 'needs --out'), (['--weight-decay', '-1'], '--weight-decay'), (['--warmup', '5000'], '--warmup'),
    (['--dropout', '1'], '--dropout must be 0 or in [1/65536'), (['--dropout', '0.999999'], 'rounded to a multiple'),
    (['--dropout', '1e-6'], '--dropout must be 0 or in [1/65536'),
    (['--dropout', '0.1', '--engine', 'reference'], 'not in the reference engine: train with --engine fused'),
    (['--preset', 'nope'], 'invalid choice'),
])
def test_bad_trainer_flags(small_data, flags, fragment):
    assert_error(*run('train', '--data', small_data, *flags), fragment)


def test_plot_after_an_error_keeps_the_one_line_error(tmp_path):
    path = tmp_path / 'empty.txt'
    path.write_text('\n\n')
    assert_error(*run('train', '--data', str(path), '--out', str(tmp_path / 'run'), '--plot'), 'no non-blank lines')


def test_resume_refuses_a_flag_without_effect_as_a_fresh_run_does(small_data, tmp_path):
    """`--resume --num-samples 0 --temperature 0.3` resumed; on a fresh run it is an error."""
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    assert_error(*run('train', '--out', out, '--resume', '--steps', '30', '--num-samples', '0', '--temperature', '0.3'),
                 'nothing is sampled')


def test_resume_continues_from_the_data_moved_or_behind_a_link_exactly(small_data, tmp_path):
    """The same data at another path (moved, or reached through a link) continues the run: the path was compared
    as text, and a moved file could not be resumed at all."""
    kept, out = str(tmp_path / 'kept'), str(tmp_path / 'run')
    for folder in (kept, out):
        assert run(*train_args(small_data, folder, '--steps', '20'))[0] == 0
    assert run('train', '--out', kept, '--resume', '--steps', '30')[0] == 0
    expected = run('train', '--out', kept, '--resume', '--steps', '40')[1]
    link = str(tmp_path / 'link.txt')
    os.symlink(small_data, link)
    assert run('train', '--out', out, '--resume', '--steps', '30', '--data', link)[0] == 0
    moved = str(tmp_path / 'moved.txt')
    os.rename(small_data, moved)
    code, stdout, err = run('train', '--out', out, '--resume', '--steps', '40', '--data', moved)
    assert code == 0, err
    assert stdout == expected
    assert load_checkpoint(os.path.join(out, 'resume.safetensors')).meta['data_path'] == moved


def test_a_resume_from_moved_data_records_the_new_path_in_every_checkpoint(small_data, tmp_path, monkeypatch):
    """The best checkpoint, which a later save replaces only when the held-out loss improves, kept the old
    path: eval and export then found no data. Here the resume stops before it saves anything."""
    from microgpt.engines.numpy.engine import NumpyEngine
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out, '--steps', '20'))[0] == 0
    moved = str(tmp_path / 'moved.txt')
    os.rename(small_data, moved)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(NumpyEngine, 'train_steps', interrupted)
    assert run('train', '--out', out, '--resume', '--steps', '40', '--data', moved)[0] == 130
    monkeypatch.undo()
    for name in ('resume.safetensors', 'model.safetensors'):
        ckpt = load_checkpoint(os.path.join(out, name))
        assert ckpt.meta['data_path'] == moved and ckpt.step == 20, (name, ckpt.meta['data_path'], ckpt.step)
    code, stdout, err = run('eval', '--checkpoint', os.path.join(out, 'model.safetensors'))
    assert code == 0 and f'(the held-out split of {moved})' in stdout, err


def test_resume_after_the_data_file_moved_refuses_other_data(small_data, tmp_path):
    """The advice was 'resume with --resume --out DIR alone', the command that had just failed."""
    out = str(tmp_path / 'run')
    assert run(*train_args(small_data, out))[0] == 0
    moved = str(tmp_path / 'moved.txt')
    os.rename(small_data, moved)
    with open(moved, 'a') as f:
        f.write('zed\n')
    assert_error(*run('train', '--out', out, '--resume', '--steps', '50', '--data', moved),
                 "data file is no longer there, and --data holds other data")
    for given, what in ((str(tmp_path), 'is not a file'), (str(tmp_path / 'nothing.txt'), 'is not there'),
                        ('http://127.0.0.1:1/names.txt', 'is a web address, not the file it trained on')):
        assert_error(*run('train', '--out', out, '--resume', '--steps', '50', '--data', given),
                     f"data file is no longer there, and --data {what}: give the file it trained on")


def test_resume_drops_a_metrics_line_cut_off_by_a_kill(small_data, tmp_path):
    """A run killed while it wrote metrics.jsonl leaves its last line cut off: --resume said the file was damaged
    and to move it away (losing every record); the cut line is dropped. A damaged whole line is still refused."""
    out = tmp_path / 'run'
    assert run(*train_args(small_data, str(out), '--steps', '20'))[0] == 0
    metrics = out / 'metrics.jsonl'
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 21, "train_lo')
    code, _, err = run('train', '--out', str(out), '--resume', '--steps', '30')
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r['step'] for r in records] == list(range(1, 31)), [r['step'] for r in records]
    damaged = 'metrics.jsonl: damaged (not one JSON record with a step and a training loss per line: '
    metrics.write_text(whole.replace('"step": 5,', '"step": 5', 1))
    assert_error(*run('train', '--out', str(out), '--resume', '--steps', '40'), damaged, '); move it away to resume')
    # a record without its loss (or not JSON), resumed with --plot: all steps trained, then a traceback from the plot
    for line in ('{"step": 5}', 'not json', '{"step": 5, "train_loss": 1' + '0' * 400 + '}', '[' * 100_000):
        metrics.write_text(re.sub(r'^\{"step": 5,.*$', line, whole, count=1, flags=re.M))
        assert_error(*run('train', '--out', str(out), '--resume', '--steps', '40', '--plot'), damaged,
                     '); move it away to resume')
        assert load_checkpoint(str(out / 'model.safetensors')).step == 30


@settings(max_examples=300, deadline=None)
@given(schedule=st.sampled_from(['linear', 'cosine', 'constant']), steps=st.integers(1, 5000),
       warmup=st.integers(0, 60), lr=st.floats(1e-6, 1.0), start=st.integers(0, 5000), count=st.integers(0, 300))
def test_a_chunks_learning_rates_are_each_steps_to_the_bit(schedule, steps, warmup, lr, start, count):
    """The training loop takes an engine call's learning rates in one list (learning_rates); each is learning_rate's
    float for its step, which microgpt's output depends on."""
    tcfg = TrainConfig(steps=steps + warmup, warmup=warmup, lr=lr, lr_schedule=schedule)
    stop = min(start + count, tcfg.steps)
    got = learning_rates(tcfg, start, stop)
    assert [x.hex() for x in got] == [learning_rate(tcfg, step).hex() for step in range(start, stop)]


@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=50), first=st.integers(0, 200),
       count=st.integers(0, 200), block_size=st.integers(1, 32))
def test_the_tokens_each_document_predicts_are_read_a_slice_at_a_time(lengths, first, count, block_size):
    """_predicted_tokens reads slices of the lengths, wrapping around: what an index and a min() a document read."""
    from microgpt.data import document_lengths
    from microgpt.train.loop import _predicted_tokens
    docs = [[0] * n for n in lengths]
    want = [min(block_size, lengths[d % len(lengths)] - 1) for d in range(first, first + count)]
    assert _predicted_tokens(document_lengths(docs), first, first + count, block_size) == want
    array = np.array(lengths, np.int64)
    assert _predicted_tokens(memoryview(array), first, first + count, block_size) == want
