"""The command line's reliability, one test per class of fault, several cases each: non-finite flags, flags
with no effect, an existing run, resuming to more steps, damaged checkpoints, the progress bar's width, bench
and study output, deprecated spellings, BLAS threads. Divergence, interrupts and output failures have modules of
their own (test_divergence.py, test_interrupts.py, test_output_failures.py)."""

import contextlib
import io
import json
import math
import os
import pty
import signal
import stat
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from safetensors import safe_open

from microgpt.bench.study import EXPERIMENTS, format_score, write_report
from microgpt.cli import main
from microgpt.config import ModelConfig, SampleConfig, TrainConfig, flag_name
from microgpt.train.setup import RunConfig

from helpers import (assert_one_line_error, rewrite_checkpoint, run_cli_in_process as run, small_train as small,
                     write_names)


@pytest.fixture
def data(tmp_path):
    return write_names(tmp_path / 'names.txt')


def float_flags():
    return [flag_name(f) for cls in (RunConfig, ModelConfig, TrainConfig, SampleConfig) for f in fields(cls)
            if f.type is float and f.metadata.get('help')]


def test_every_float_flag_is_listed():
    assert {'--lr', '--beta1', '--beta2', '--weight-decay', '--grad-clip', '--dropout', '--val-fraction',
            '--temperature', '--top-p'} <= set(float_flags()), float_flags()


@pytest.mark.parametrize('flag', float_flags())
@pytest.mark.parametrize('value', ['nan', 'inf', '-inf', 'NaN', '1e309'])
def test_non_finite_float_flags_are_one_line_errors(data, flag, value):
    extra = ['--eval-every', '5'] if flag == '--val-fraction' else []
    code, out, err = run(*small(data, *extra), f'{flag}={value}')
    assert_one_line_error(code, out, err, flag)
    assert out == '', out  # refused before the data is read


def test_help_states_the_temperature_s_bound_and_every_engine_with_dropout():
    """The help said "temperature > 0" (1e-301 is refused) and dropout for the "numpy and fused engines" (the torch
    engine has it too: a hostile user's reading)."""
    helps = {}
    for command in ('train', 'sample'):
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
            main([command, '--help'])
        helps[command] = ' '.join(out.getvalue().split())
        assert 'sampling temperature, at least 1e-300;' in helps[command], helps[command]
    assert 'multiple of 1/65536; numpy, fused and torch engines' in helps['train'], helps['train']


@pytest.mark.parametrize('value', ['1e-320', '5e-324', '1e-301'])
def test_a_temperature_whose_inverse_overflows_is_one_line(data, tmp_path, value):
    """Sampling divides by the temperature: a subnormal one overflowed `temperature ** -1` (a traceback after
    training). Refused before the data is read, by train and by sample."""
    code, out, err = run(*small(data), '--temperature', value)
    assert_one_line_error(code, out, err, '--temperature', '1e-300')
    assert out == '', out
    checkpoint = str(tmp_path / 'missing.safetensors')
    assert_one_line_error(*run('sample', '--checkpoint', checkpoint, '--temperature', value), '--temperature')


@pytest.mark.parametrize('flags, fragments', [
    (['--val-fraction', '0.1'], ('--val-fraction', '--eval-every')),
    (['--val-split', 'line'], ('--val-split', '--eval-every')),
    (['--out', ''], ('--out needs a folder name',)),
    (['--plot'], ('--plot needs --out',)),
    (['--save-every', '5'], ('--save-every needs --out',)),
    (['--overwrite'], ('--overwrite needs --out',)),
    (['--resume'], ('--resume needs --out',)),
    (['--out', 'x', '--resume', '--overwrite'], ('--resume', '--overwrite', 'one of them')),
    (['--val-split', 'makemore', '--val-fraction', '0.2', '--eval-every', '5'], ('--val-fraction',)),
    (['--engine', 'reference', '--dtype', 'float32'], ('--dtype float32', 'reference')),
    (['--device', 'cpu'], ('--device cpu', 'numpy engine', '--engine torch')),
    (['--engine', 'fused', '--device', 'cuda'], ('--device cuda', 'fused engine', '--engine torch')),
    (['--num-samples', '0', '--temperature', '2', '--top-k', '3'], ('--temperature, --top-k', '--num-samples 0')),
    (['--out', 'x', '--save-every', '20'], ('--save-every 20', '--steps 20')),
    (['--seed', '-1'], ('--seed must be at least 0, got -1',)),
    # a default typed in changes nothing either (they were taken: RunConfig sees values, not flags)
    (['--device', 'auto'], ('--device auto', 'numpy engine', '--engine torch')),
    (['--val-split', 'name'], ('--val-split', '--eval-every')),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else None)
def test_flags_without_effect_are_errors(data, flags, fragments):
    assert_one_line_error(*run(*small(data), *flags), *fragments)


def test_a_presets_sampling_setting_is_no_flag_without_effect(data):
    """--num-samples 0 refuses a --temperature the user gave, not the esp32 preset's."""
    code, out, err = run('train', '--data', data, '--preset', 'esp32', '--steps', '2', '--num-samples', '0')
    assert code == 0 and 'sample ' not in out, (code, err)


@pytest.mark.parametrize('argv, fragments', [
    (['sample', '--checkpoint', 'missing', '--num-samples', '0', '--temperature', '3', '--prompt', 'ab'],
     ('--temperature, --prompt', '--num-samples 0')),
    (['sample', '--checkpoint', 'missing', '--num-samples', '0', '--data', 'names.txt'], ('--data', '--num-samples 0')),
    (['sample', '--checkpoint', 'missing', '--num-samples', '0', '--seed', '5'], ('--seed', '--num-samples 0')),
    (['sample', '--checkpoint', 'missing', '--num-samples', '0'], ('--num-samples 0 samples nothing', '1 or more')),
    (['sample', '--checkpoint', 'missing', '--seed', '-7'], ('--seed must be at least 0, got -7',)),
    (['export', '--train', '--seed', '-1', '--out', 'ex'], ('--seed must be at least 0, got -1',)),
    (['tune', '--seed', '-1', '--trials', '1'], ('--seed must be at least 0, got -1',)),
    (['bench', '--engines', 'numpy', '--reference-steps', '5'], ('--reference-steps', 'reference engine', '--engines')),
    (['bench', '--engines', 'reference', '--steps', '5'], ('--steps', '--engines')),
    (['bench', '--engines', ''], ('--engines names no engine',)),
    (['bench', '--engines', ' , '], ('--engines names no engine',)),
    (['study', '--experiments', ' , ', '--workers', '1'], ('--experiments names no experiment',)),
    (['study', '--list', '--num-seeds', '3'], ('--list', '--num-seeds')),
    (['study', '--list', '--workers', '1'], ('--list', '--workers')),
    (['study', '--num-seeds', '99999999999', '--experiments', 'baseline', '--workers', '1'],
     ('--num-seeds must be at most 10000',)),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else None)
def test_flags_of_other_commands_without_effect_or_out_of_range_are_errors(tmp_path, monkeypatch, argv, fragments):
    """Refused before any file is read or written (the folders named here are never made)."""
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(*argv), *fragments)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_a_fresh_run_never_replaces_a_saved_one(data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out))[0] == 0
    with open(os.path.join(out, 'model.safetensors'), 'rb') as f:
        saved = f.read()
    for extra in ([], ['--steps', '30'], ['--seed', '3']):
        assert_one_line_error(*run(*small(data, '--out', out), *extra), out, '--resume', '--overwrite')
    with open(os.path.join(out, 'model.safetensors'), 'rb') as f:
        assert f.read() == saved
    # a folder without a checkpoint is no run: it holds nothing to protect or resume
    os.remove(os.path.join(out, 'resume.safetensors'))
    assert_one_line_error(*run(*small(data, '--out', out)), 'model.safetensors', '--overwrite')
    assert '--resume' not in run(*small(data, '--out', out))[2]  # there is no resume state to continue
    assert_one_line_error(*run(*small(data, '--out', out, '--resume')), 'nothing to resume', '--overwrite')
    os.remove(os.path.join(out, 'model.safetensors'))
    assert_one_line_error(*run(*small(data, '--out', out, '--resume')), 'nothing to resume', 'drop --resume')
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert run(*small(data, '--out', str(empty)))[0] == 0
    code, stdout, err = run(*small(data, '--out', out, '--overwrite', '--steps', '25'))
    assert code == 0, err
    records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == list(range(1, 26)), records


@pytest.mark.parametrize('engine', ['numpy', pytest.param('reference', marks=pytest.mark.slow(seconds=3))])
def test_resume_with_more_steps_trains_a_finished_run_on(data, tmp_path, engine):
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--engine', engine, '--steps', '10'))[0] == 0
    code, stdout, err = run(*small(data, '--out', out, '--engine', engine, '--steps', '15', '--resume'))
    assert code == 0, err
    steps = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith('step')]
    assert steps == list(range(11, 16)), stdout
    records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == list(range(1, 16))
    # the schedule is the new total's: linear decay from step 10 of 15 steps
    assert records[10]['lr'] == pytest.approx(0.01 * (1 - 10 / 15), rel=1e-15), records[10]
    with safe_open(os.path.join(out, 'resume.safetensors'), framework='numpy') as f:
        assert json.loads(f.metadata()['step']) == 15
    # the same steps again: nothing to train, the samples are printed; fewer: an error naming the step
    code, stdout, err = run(*small(data, '--out', out, '--engine', engine, '--steps', '15', '--resume'))
    assert code == 0 and 'step' not in stdout.split('--- inference')[0].split('num params')[1], stdout
    assert_one_line_error(*run(*small(data, '--out', out, '--engine', engine, '--steps', '12', '--resume')),
                          'at step 15', '--steps 15')


def test_a_folder_whose_run_saved_nothing_takes_a_fresh_run(data, tmp_path):
    """A run stopped before its first save (diverged at step 2 here; also Ctrl-C, a closed pipe, a full disk)
    leaves only metrics: a plain rerun was refused as 'already holds a run' and --resume as 'nothing to resume'."""
    out = str(tmp_path / 'run')
    assert_one_line_error(*run(*small(data, '--out', out, '--lr', '1e30')), 'diverged', 'saved no checkpoint')
    assert os.listdir(out) == ['metrics.jsonl'], os.listdir(out)
    assert_one_line_error(*run(*small(data, '--out', out, '--resume')), 'nothing to resume', 'drop --resume')
    code, stdout, err = run(*small(data, '--out', out, '--steps', '5'))
    assert code == 0, err
    records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [r['step'] for r in records] == [1, 2, 3, 4, 5], records


@pytest.mark.slow(seconds=1)
def test_a_failed_overwrite_leaves_nothing_of_the_old_run(data, tmp_path):
    """--overwrite removes the old run's files when the new run starts: its checkpoints stayed beside the
    metrics of a new run that diverged before saving."""
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--plot'))[0] == 0
    assert_one_line_error(*run(*small(data, '--out', out, '--overwrite', '--lr', '1e30')), 'saved no checkpoint')
    assert os.listdir(out) == ['metrics.jsonl'], os.listdir(out)
    steps = [json.loads(line)['step'] for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 20, steps  # the new run's records only


def ctrl_c_at_step_3(monkeypatch):
    """The numpy engine's run gets a SIGINT as it starts step 3 (with --save-every 1: a step per chunk); undone
    by monkeypatch.undo()."""
    from microgpt.engines.numpy.engine import NumpyEngine
    first_call = NumpyEngine.train_steps

    def interrupted(self, doc_tokens, start, stop, *args):
        if start == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return first_call(self, doc_tokens, start, stop, *args)
    monkeypatch.setattr(NumpyEngine, 'train_steps', interrupted)


def test_resume_keeps_saving_every_n_steps(data, tmp_path, monkeypatch):
    """--save-every was not recorded: a run resumed as the stop line says saved only at its end, so a crash after
    the resume lost every step since. It is kept, and a --save-every given on resume replaces it."""
    from microgpt.engines.numpy.engine import NumpyEngine
    from microgpt.train.run import TrainingRun
    out, first_call = str(tmp_path / 'run'), NumpyEngine.train_steps

    def interrupted(self, doc_tokens, start, stop, *args):
        if start >= 4 and not self.__dict__.get('interrupted'):  # the first chunk from step 5 on, once a run
            self.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)
        return first_call(self, doc_tokens, start, stop, *args)
    monkeypatch.setattr(NumpyEngine, 'train_steps', interrupted)
    code, _, err = run(*small(data, '--out', out, '--steps', '40', '--save-every', '4'))
    assert code == 130 and 'stopped at step 8' in err, err
    monkeypatch.undo()
    saved, save = [], TrainingRun._save
    monkeypatch.setattr(TrainingRun, '_save', lambda self, name, metrics: saved.append(self.step) or save(self, name,
                                                                                                         metrics))
    assert run('train', '--resume', '--out', out, '--steps', '20', '--num-samples', '0')[0] == 0
    assert sorted(set(saved)) == [12, 16, 20], saved
    saved.clear()
    assert run('train', '--resume', '--out', out, '--steps', '40', '--save-every', '7', '--num-samples', '0')[0] == 0
    assert sorted(set(saved)) == [21, 28, 35, 40], saved
    # a recorded interval at or past fewer --steps than the run's saves nothing the end does not: left out, as the
    # user did not give it (a fresh run's --save-every 30 --steps 20 is an error)
    monkeypatch.setattr(NumpyEngine, 'train_steps', interrupted)
    code, _, err = run(*small(data, '--out', tmp_path / 'late', '--steps', '40', '--save-every', '30'))
    assert code == 130 and 'stopped at step 16' in err, err
    monkeypatch.setattr(NumpyEngine, 'train_steps', first_call)
    code, _, err = run('train', '--resume', '--out', tmp_path / 'late', '--steps', '20', '--num-samples', '0')
    assert code == 0, err


def test_resume_alone_continues_the_run_as_saved(data, tmp_path, monkeypatch):
    """The advice printed after Ctrl-C (`--resume --out DIR`) failed on its own with 'different configuration',
    and `--resume --preset P` trained on to the preset's steps with its evaluation interval."""
    out = str(tmp_path / 'run')
    plan = ['--preset', 'esp32', '--steps', '10', '--eval-every', '5', '--lr', '0.02']
    ctrl_c_at_step_3(monkeypatch)
    code, _, err = run(*small(data, '--out', out, *plan, '--save-every', '1'))  # one step per chunk
    assert code == 130 and f'stopped at step 3; continue with --resume --out {out}' in err, (code, err)
    monkeypatch.undo()
    code, stdout, err = run('train', '--resume', '--out', out, '--num-samples', '1')
    assert code == 0, err
    assert 'step   10 /   10 | val loss' in stdout and 'step    5 /   10 | val loss' in stdout, stdout
    records = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [r['step'] for r in records if 'val_loss' in r] == [5, 10], records
    assert records[5]['lr'] == pytest.approx(0.02 * (1 - 5 / 10), rel=1e-15), records[5]
    for flags in (['--preset', 'esp32'], plan, ['--eval-every', '5', '--data', data]):  # the same, given again
        assert run('train', '--resume', '--out', out, '--num-samples', '0', *flags)[0] == 0, flags
    assert_one_line_error(*run('train', '--resume', '--out', out, '--preset', 'makemore'),
                          "preset: checkpoint 'esp32', now 'makemore'")


def test_resume_refuses_other_data_of_the_same_characters(data, tmp_path):
    out, other = str(tmp_path / 'run'), tmp_path / 'other.txt'
    assert run(*small(data, '--out', out, '--steps', '10'))[0] == 0
    other.write_text(''.join(reversed(open(data).readlines())))
    assert_one_line_error(*run(*small(str(other), '--out', out, '--steps', '15', '--resume')),
                          f"data: checkpoint {os.path.abspath(data)!r}, now {str(other)!r}")


def test_a_second_run_into_a_folder_being_written_is_refused(data, tmp_path):
    """Two runs into one --out DIR at once both wrote its checkpoints and metrics: the second is refused while the
    first holds the folder's lock, and runs once it is released."""
    fcntl = pytest.importorskip('fcntl')
    out = tmp_path / 'run'
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # as a run in progress holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_line_error(*run(*small(data, '--out', out)), f"{out}: another microgpt run is writing here")
        assert os.listdir(out) == [], os.listdir(out)
    finally:
        os.close(fd)
    assert run(*small(data, '--out', out))[0] == 0


@pytest.mark.parametrize('edit', ['append', 'replace', 'uppercase', 'two lines'])
def test_resume_refuses_its_data_file_edited_since(data, tmp_path, edit):
    """The same path with other contents of the same characters: the run would go on on other documents, no longer
    the uninterrupted run's; the checkpoint keeps the file's length and a hash of its ends. Other characters, or too
    few lines to hold some out, were refused in other words (the vocabulary, an empty held-out split): the data is
    checked before it is read."""
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--steps', '10', '--eval-every', '5'))[0] == 0
    text = open(data).read()
    with open(data, 'w') as f:
        f.write({'append': text + 'emma\n', 'replace': text.replace('emma', 'amme'), 'uppercase': text.upper(),
                 'two lines': 'emma\nolivia\n'}[edit])
    assert_one_line_error(*run(*small(data, '--out', out, '--steps', '15', '--resume')),
                          f"--resume with other data: {data} changed since the run saved")
    with open(data, 'w') as f:
        f.write(text)  # the original again: the run goes on
    assert run(*small(data, '--out', out, '--steps', '15', '--resume'))[0] == 0


@pytest.mark.parametrize('first, then, fragment', [
    (['--eval-every', '10'], ['--eval-every', '0'], 'eval_every: checkpoint 10, now 0'),
    ([], ['--eval-every', '10'], 'eval_every: checkpoint 0, now 10'),
    (['--eval-every', '5'], ['--eval-every', '10'], 'eval_every: checkpoint 5, now 10'),
    ([], ['--lr', '0.02'], 'lr: checkpoint 0.01, now 0.02'),
    ([], ['--engine', 'numpy', '--dtype', 'float32'], "dtype: checkpoint 'float64', now 'float32'"),
    ([], ['--preset', 'esp32'], "preset: checkpoint 'microgpt', now 'esp32'"),
], ids=['evaluation-off', 'evaluation-on', 'eval-every', 'lr', 'dtype', 'preset'])
def test_resume_refuses_another_configuration_but_steps(data, tmp_path, first, then, fragment):
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--steps', '10', *first))[0] == 0
    assert_one_line_error(*run(*small(data, '--out', out, '--steps', '15', '--resume', *then)), fragment)


@pytest.fixture
def checkpoint(data, tmp_path):
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out))[0] == 0
    return os.path.join(out, 'model.safetensors')


def test_eval_says_how_many_documents_are_longer_than_the_context(checkpoint, tmp_path):
    """A document longer than the model's context is scored on its first block_size characters, as training reads it:
    eval said nothing, and a 40-character line scored as its first 16."""
    files = {}
    for name, characters in (('long', 40), ('cut', 16), ('whole', 15)):  # 15 and the end: 16 positions
        files[name] = tmp_path / f'{name}.txt'
        files[name].write_text(('emma' * 10)[:characters] + '\nava\n', encoding='utf-8')
    said = ("microgpt: 1 of 2 documents are longer than the model's context of 16 tokens: as in training, only their "
            "first 16 characters are scored, not their end\n")
    (code, out, err), (_, cut, cut_err) = (run('eval', '--checkpoint', checkpoint, '--data', files[name])
                                           for name in ('long', 'cut'))
    assert code == 0 and err == said and cut_err == said, (err, cut_err)
    assert out.split(' nats')[0] == cut.split(' nats')[0], (out, cut)  # the same 16 characters scored
    assert run('eval', '--checkpoint', checkpoint, '--data', files['whole'])[2] == ''


def test_eval_names_the_checkpoint_without_a_held_out_split(checkpoint, data, tmp_path):
    """eval scores the first checkpoint's held-out split: one trained without a split was 'this checkpoint', which
    of several it did not say."""
    split = str(tmp_path / 'split')
    assert run(*small(data, '--eval-every', '10', '--val-split', 'line', '--out', split))[0] == 0
    split = os.path.join(split, 'model.safetensors')
    assert_one_line_error(*run('eval', '--checkpoint', checkpoint),
                          f"{checkpoint} was trained without a held-out split (no --eval-every); give --data FILE to "
                          f"evaluate on")
    assert_one_line_error(*run('eval', '--checkpoint', checkpoint, split),
                          f"{checkpoint} was trained without a held-out split (no --eval-every) (of several "
                          f"checkpoints, the first one's split is scored: put one trained with a split first); give "
                          f"--data FILE to evaluate on")
    assert run('eval', '--checkpoint', split, checkpoint)[0] == 0


def test_a_top_k_of_the_whole_vocabulary_is_an_error(checkpoint, data, tmp_path):
    """--top-k at or above the model's vocabulary keeps every token: it was taken, and changed nothing (a flag that
    changes nothing is an error). train refuses it before its first step, leaving no run behind."""
    from microgpt.train.checkpoint import load_checkpoint
    vocab = load_checkpoint(checkpoint).vocab.size
    said = f"--top-k {vocab} keeps all of the model's {vocab} tokens, which changes nothing; give at most {vocab - 1}"
    assert_one_line_error(*run('sample', '--checkpoint', checkpoint, '--top-k', vocab), said)
    assert run('sample', '--checkpoint', checkpoint, '--top-k', vocab - 1)[0] == 0
    out = tmp_path / 'refused'
    assert_one_line_error(*run(*small(data, '--top-k', vocab, '--out', out)), said)
    assert not out.exists()


def test_eval_of_a_checkpoint_that_records_no_data_is_one_line(tmp_path):
    """A checkpoint saved through the API with a held-out split but no data path: eval's advice read the path itself
    (a KeyError's traceback)."""
    import random
    from microgpt.data import Vocabulary
    from microgpt.engines.numpy.engine import NumpyEngine
    from microgpt.train.checkpoint import save_checkpoint
    vocab = Vocabulary.from_documents(['emma', 'ava'])
    engine = NumpyEngine(ModelConfig(vocab_size=vocab.size), random.Random(0))
    path = str(tmp_path / 'model.safetensors')
    save_checkpoint(path, engine, vocab, TrainConfig(steps=1), 1, {}, {'eval_every': '1'})
    assert_one_line_error(*run('eval', '--checkpoint', path), 'the checkpoint records no training data')


def test_a_command_of_one_checkpoint_given_two_refuses_them(checkpoint, tmp_path):
    """export and info took the last --checkpoint of two silently, where sample's and eval's two are an ensemble."""
    for command in (['info'], ['export', '--out', tmp_path / 'c'], ['export', '--web', '--out', tmp_path / 'w'],
                    ['export', '--train', '--out', tmp_path / 't']):
        assert_one_line_error(*run(*command, '--checkpoint', checkpoint, '--checkpoint', checkpoint),
                              f"--checkpoint given twice: {command[0]} reads one checkpoint (sample and eval take "
                              f"several, as an ensemble)")
    assert not any(tmp_path.glob('[cwt]')), sorted(tmp_path.iterdir())


def test_sample_says_why_the_recorded_training_data_gives_no_novelty_check(data, checkpoint):
    """The recorded data path gone, or a folder there now: samples without the novelty check, and a true notice."""
    os.remove(data)
    for what, then in (('is not there', os.mkdir), ('is not a file', os.rmdir)):
        code, out, err = run('sample', '--checkpoint', checkpoint, '--num-samples', '2')
        assert code == 0 and out.count('sample ') == 2 and 'novel:' not in out, (code, out, err)
        assert err == f"microgpt: the training data {data!r} {what}: no novelty check (give --data FILE)\n", err
        then(data)


def test_eval_sample_and_export_refuse_training_data_edited_since(data, tmp_path):
    """The same path with other documents: eval scored documents the run had trained on as held out; now the
    checkpoint's data_identity is checked, as by --resume (sample still samples, without the novelty check)."""
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--eval-every', '10'))[0] == 0
    checkpoint = os.path.join(out, 'model.safetensors')
    assert run('eval', '--checkpoint', checkpoint)[0] == 0
    with open(data, 'a') as f:
        f.write('aaab\n')
    changed = f"the training data {data!r} changed since the run saved"
    assert_one_line_error(*run('eval', '--checkpoint', checkpoint), changed,
                          "(put the run's own data back there to score its held-out split); give --data FILE to "
                          "score every document of a file")  # it said 'give --data FILE', which scores another set
    assert_one_line_error(*run('export', '--train', '--checkpoint', checkpoint, '--out', tmp_path / 'c'), changed)
    code, stdout, err = run('sample', '--checkpoint', checkpoint, '--num-samples', '2')
    assert code == 0 and stdout.count('sample ') == 2 and 'novel:' not in stdout, (code, stdout, err)
    assert err == f"microgpt: {changed} (its length or its first or last 64 KiB): no novelty check (give --data " \
                  f"FILE)\n", err


@pytest.mark.slow(seconds=2)  # fresh interpreters reading a pipe
def test_a_run_trained_from_a_pipe_is_evaluated_from_one(data, tmp_path):
    """A pipe has no identity to check: eval and export --train read the recorded /dev/stdin again, as before the
    check (sample, which must not wait on a terminal, does without the novelty check)."""
    import subprocess
    names, out = open(data, 'rb').read(), str(tmp_path / 'run')

    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'microgpt', *args], input=names, capture_output=True, timeout=120)
    trained = cli(*small('/dev/stdin', '--out', out, '--eval-every', '10'))
    assert trained.returncode == 0, trained.stderr
    checkpoint = os.path.join(out, 'model.safetensors')
    # each says so before it reads (it said nothing, and on a terminal waited for lines typed in)
    notice = b"microgpt: the training data '/dev/stdin' is a stream (a pipe or a device): it is read again now, " \
             b"and cannot be checked against the run's (the documents are the run's only if it gives the same lines)\n"
    evaluated = cli('eval', '--checkpoint', checkpoint)
    assert evaluated.returncode == 0 and b'(the held-out split of /dev/stdin)' in evaluated.stdout, evaluated.stderr
    assert evaluated.stderr == notice, evaluated.stderr
    exported = cli('export', '--train', '--checkpoint', checkpoint, '--out', str(tmp_path / 'c'))
    assert exported.returncode == 0 and exported.stderr == notice, exported.stderr
    emptied = subprocess.run([sys.executable, '-m', 'microgpt', 'export', '--train', '--checkpoint', checkpoint,
                              '--out', str(tmp_path / 'c2')], stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=120)
    assert emptied.returncode == 2 and emptied.stderr == notice + b"microgpt: error: /dev/stdin: no non-blank lines; " \
        b"give a UTF-8 text file with one item (a name, a word) per line, or give --data FILE\n", emptied.stderr
    resumed = cli('train', '--resume', '--out', out, '--steps', '25')  # said nothing of the unchecked data
    assert resumed.returncode == 0 and b"microgpt: resuming from step 20; the data is a stream (a pipe or a device), " \
        b"which cannot be checked against the run's: it continues the run only if it gives the same documents\n" \
        in resumed.stderr, resumed.stderr


@pytest.mark.slow(seconds=4)  # fresh interpreters reading their standard input
def test_a_run_with_no_identity_of_its_data_says_so_whatever_it_reads_now(data, tmp_path):
    """A run trained from a pipe records no identity of its data. Resumed or evaluated from a file (`< FILE`, where
    /dev/stdin is that file), nothing was checked and nothing said; and a resume from a pipe erased the identity a
    run had recorded (`--data /dev/stdin < FILE`), so that a later resume from other data was taken silently."""
    import subprocess
    names, other = open(data, 'rb').read(), tmp_path / 'other.txt'
    other.write_bytes(names * 2)

    def cli(*args, stdin):
        with open(stdin, 'rb') if isinstance(stdin, Path) else contextlib.nullcontext() as f:
            return subprocess.run([sys.executable, '-m', 'microgpt', *map(str, args)], stdin=f,
                                  input=stdin if f is None else None, capture_output=True, timeout=120)
    piped, out = str(tmp_path / 'piped'), str(tmp_path / 'redirected')
    assert cli(*small('/dev/stdin', '--out', piped, '--eval-every', '10'), stdin=names).returncode == 0
    resumed = cli('train', '--resume', '--out', piped, '--steps', '25', stdin=other)
    assert resumed.returncode == 0 and b"microgpt: resuming from step 20; the run recorded no identity of its data " \
        b"(it read a stream, or an older microgpt saved it), so this data cannot be checked against it: it continues " \
        b"the run only if it gives the same documents\n" in resumed.stderr, resumed.stderr
    evaluated = cli('eval', '--checkpoint', os.path.join(piped, 'model.safetensors'), stdin=other)
    assert evaluated.returncode == 0 and evaluated.stderr.startswith(
        b"microgpt: the training data '/dev/stdin' has no recorded identity (the run read a stream, or an older "
        b"microgpt saved it): it is read again now, and cannot be checked"), evaluated.stderr
    # a run that recorded its data's identity keeps it through a resume from a pipe
    assert cli(*small('/dev/stdin', '--out', out), stdin=Path(data)).returncode == 0
    through_a_pipe = cli('train', '--resume', '--out', out, '--steps', '25', stdin=names)
    assert through_a_pipe.returncode == 0 and b'the data is a stream' in through_a_pipe.stderr, through_a_pipe.stderr
    refused = cli('train', '--resume', '--out', out, '--steps', '30', stdin=other)
    assert refused.returncode == 2 and b"/dev/stdin changed since the run saved" in refused.stderr, refused.stderr


def test_a_data_file_edited_while_the_run_reads_it_is_refused(data, tmp_path, monkeypatch):
    """The run took its data's identity once it had read and split the file and built the engine (PyTorch's import,
    a large file's tokenising): a file edited meanwhile was recorded as the data trained on, and --resume then took
    the edited file."""
    from microgpt.train import run as run_module
    prepare_run = run_module.prepare_run

    def edited_while_read(*args, **kwargs):
        prepared = prepare_run(*args, **kwargs)
        with open(data, 'a') as f:
            f.write('zzzzqq\n')
        return prepared
    monkeypatch.setattr(run_module, 'prepare_run', edited_while_read)
    assert_one_line_error(*run(*small(data, '--out', tmp_path / 'run')),
                          f"{data} changed while this run read it (its length or its first or last 64 KiB); run again "
                          f"once it is written whole")
    assert not (tmp_path / 'run' / 'model.safetensors').exists()


def test_a_run_on_a_path_that_is_not_utf8_is_evaluated(tmp_path):
    """The recorded path is written with its non-UTF-8 bytes escaped (recorded_path): read back unescaped."""
    data = os.fsdecode(bytes(tmp_path) + b'/n\xffames.txt')
    write_names(Path(data))
    out = str(tmp_path / 'run')
    assert run(*small(data, '--out', out, '--eval-every', '10'))[0] == 0
    code, stdout, err = run('eval', '--checkpoint', os.path.join(out, 'model.safetensors'))
    assert code == 0 and 'nats per character on' in stdout, (code, stdout, err)


def rewrite_config(path, key, changes):
    """The checkpoint with its `key` metadata (model_config, train_config) changed and its checksum recomputed."""
    with safe_open(path, framework='numpy') as f:
        config = json.loads(f.metadata()[key])
    rewrite_checkpoint(path, {key: json.dumps({**config, **changes})})


@pytest.mark.parametrize('key, changes, field', [
    ('model_config', {'vocab_size': 0}, 'vocab_size'), ('model_config', {'n_head': 0}, 'n_head'),
    ('model_config', {'n_embd': 10}, 'n_embd'), ('model_config', {'block_size': -1}, 'block_size'),
    ('model_config', {'init_std': -1.0}, 'init_std'), ('model_config', {'norm': 'layer'}, 'norm'),
    ('train_config', {'steps': 0}, 'steps'), ('train_config', {'lr': -1.0}, 'lr'),
    ('train_config', {'warmup': 5000}, 'warmup'),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
@pytest.mark.parametrize('command', ['sample', 'eval', 'info'])
def test_damaged_checkpoint_errors_name_its_fields_not_flags(checkpoint, key, changes, field, command):
    rewrite_config(checkpoint, key, changes)
    code, out, err = run(command, '--checkpoint', checkpoint)
    assert_one_line_error(code, out, err, checkpoint, field)
    assert '--' + field.replace('_', '-') not in err, err


@pytest.mark.parametrize('argv', [['export', '--out', ''], ['export', '--train', '--out', ''],
                                  ['export', '--web', '--checkpoint', 'x.safetensors', '--out', '']], ids=' '.join)
def test_export_out_empty_is_one_line_naming_the_flag(argv):
    """train, study and tune said '--out needs a folder name'; export said ': cannot write the C program'."""
    code, out, err = run(*argv)
    assert_one_line_error(code, out, err, '--out needs a folder name')


@pytest.mark.parametrize('argv', [
    ['sample', '--data', 'MISSING'],
    ['sample', '--data', 'DIR'],
    ['eval', '--data', 'MISSING'],
], ids=lambda v: ' '.join(v))
def test_a_data_file_given_for_a_checkpoint_must_be_readable(checkpoint, tmp_path, argv):
    argv = [{'MISSING': str(tmp_path / 'missing.txt'), 'DIR': str(tmp_path)}.get(a, a) for a in argv]
    assert_one_line_error(*run(*argv, '--checkpoint', checkpoint), argv[2])


@pytest.mark.parametrize('rows, cols', [(0, 0), (24, 0), (24, 5), (24, 12), (0, 80), (1, 80)])
def test_progress_bar_on_a_terminal_without_a_width(rows, cols, monkeypatch):
    """0 columns gave a bar of zero width; 0 rows (tqdm read -1 and hid the bar) no bar at all: the bar takes a
    fallback size. A narrow terminal's bar is as wide as the terminal (an 80-column one wrapped there, leaving
    rows behind). tqdm reads the terminal's size itself only for sys.stderr, which the terminal stands for."""
    from microgpt.bars import FALLBACK_BAR_COLUMNS, step_bar
    import fcntl
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
    with open(follower, 'w', closefd=True) as terminal:
        assert terminal.isatty() and os.get_terminal_size(terminal.fileno()).columns == cols
        monkeypatch.setattr(sys, 'stderr', terminal)
        bar = step_bar(sys.stderr, 100, 0)
        try:
            bar.refresh()
            if cols < 20:
                want = cols or FALLBACK_BAR_COLUMNS
                assert bar.ncols == want and not bar.dynamic_ncols, (bar.ncols, bar.dynamic_ncols)
                assert len(bar.__str__()) <= want, str(bar)  # tqdm cuts the line to the width
            assert bar.pos < (bar.nrows or 20) - 1, (bar.pos, bar.nrows)  # on screen: tqdm's own test
        finally:
            bar.close()
    os.close(leader)


def test_step_lines_clear_the_progress_bar_first(monkeypatch):
    """tqdm clears its bar before a write only to sys.stdout or sys.stderr themselves; standard output here is the
    CLI's wrapper, so on a terminal the step lines were written after the bar, on its line."""
    from microgpt.cli import _Output
    from microgpt.bars import step_bar
    from microgpt.commands import _emit
    leader, follower = pty.openpty()
    written = []

    class Screen:
        def write(self, text):
            written.append(('line', text))

        def flush(self):
            pass
    with open(follower, 'w', closefd=True) as terminal:
        bar = step_bar(terminal, 100, 0)
        bar.update(3)
        clear = bar.clear
        monkeypatch.setattr(bar, 'clear', lambda *args, **kwargs: (written.append('clear'), clear(*args, **kwargs)))
        _emit('step    3 /  100 | loss 3.3000', _Output(Screen()), bar)
        bar.close()
    os.close(leader)
    assert written[:2] == ['clear', ('line', 'step    3 /  100 | loss 3.3000\n')], written


def test_an_error_with_standard_error_unwritable_still_exits_2():
    """2>/dev/full: the error's line could not be written, and that OSError escaped (exit status 1)."""
    import errno
    from microgpt.cli import main

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert main(['train', '--steps', '5', '--lr', '-1'], out=open(os.devnull, 'w'), err=Full()) == 2


def test_progress_bar_follows_a_terminal_with_a_width():
    from microgpt.bars import step_bar
    import fcntl
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 120, 0, 0))
    with open(follower, 'w', closefd=True) as terminal:
        bar = step_bar(terminal, 100, 0)
        assert bar.dynamic_ncols, bar.ncols
        bar.close()
    os.close(leader)


@pytest.mark.slow(seconds=3)
def test_bench_times_only_the_engines_asked_for(data):
    code, out, err = run('bench', '--data', data, '--engines', 'numpy', '--steps', '5')
    assert code == 0, err
    assert 'reference' not in err and 'reference' not in out, (out, err)
    cpu, header, *rows = [line for line in out.splitlines() if not line.startswith('wall')]
    assert cpu.startswith('CPU: ') and 'logical cores' in cpu, cpu  # figures compare only on one CPU
    assert header.split() == ['engine', 'dtype', 'steps', 'us/step', 'tokens/s'], header
    assert [row.split()[:3] for row in rows] == [['numpy', 'float64', '5'], ['numpy', 'float32', '5']], rows


@pytest.mark.parametrize('losses, want', [  # each draws results.png (0.8 s): the quick loop, the last
    pytest.param([2.5], '2.5000', marks=pytest.mark.slow(seconds=1)),
    pytest.param([2.5, 2.5], '2.5000 +/- 0.0000', marks=pytest.mark.slow(seconds=1)),
    ([2.0, 3.0], '2.5000 +/- 0.7071')])
def test_study_shows_a_spread_only_over_several_seeds(tmp_path, losses, want):
    mean = sum(losses) / len(losses)
    std = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) if len(losses) > 1 else None
    assert format_score(mean, std) == want
    write_report([(EXPERIMENTS[0], mean, std, len(losses))], str(tmp_path), 'microgpt study --num-seeds 1')
    report = (tmp_path / 'RESULTS.md').read_text(encoding='utf-8')
    assert f'| {want} |' in report, report


@pytest.mark.parametrize('argv, notice, check', [
    (['study', '--seeds', '3', '--list'], '--seeds is deprecated; write --num-seeds N',
     'microgpt: error: --list lists the experiments and exits; leave out --num-seeds\n'),
    (['export', '--checkpoint', 'CKPT', '--c', 'DIR'], '--c is deprecated; write --out DIR', ''),
], ids=['study --seeds', 'export --c'])
def test_old_flag_spellings_work_with_a_notice(checkpoint, tmp_path, argv, notice, check):
    """The old spelling means the new one (study's --seeds is --num-seeds, which --list refuses), with a notice."""
    argv = [{'CKPT': checkpoint, 'DIR': str(tmp_path / 'c')}.get(a, a) for a in argv]
    code, out, err = run(*argv)
    assert code == (2 if check else 0) and err == f'microgpt: {notice}\n{check}', (code, err)
    assert check or 'weights.h' in out, out


def test_study_lists_its_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run('study', '--list')
    assert code == 0 and err == '' and out.split()[0] == 'baseline', (code, out, err)


def test_export_takes_out(checkpoint, tmp_path):
    code, out, err = run('export', '--checkpoint', checkpoint, '--out', str(tmp_path / 'c'))
    assert code == 0 and err == '' and (tmp_path / 'c' / 'weights.h').exists(), err
    assert_one_line_error(*run('export', '--checkpoint', checkpoint), '--out')


def test_training_runs_with_one_blas_thread():
    """Inside training_threads every BLAS library NumPy loaded runs one thread; outside, its own count again."""
    import numpy  # noqa: F401 (loads the BLAS library that threadpoolctl then sees)
    from threadpoolctl import threadpool_info
    from microgpt.train.loop import training_threads
    before = [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']
    assert before, threadpool_info()
    with training_threads():
        inside = [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']
    after = [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']
    assert inside == [1] * len(before) and after == before, (before, inside, after)


@pytest.mark.parametrize('argv', [
    ['--num-seeds', '1', '--experiments', 'baseline'],
    ['--data', 'DATA', '--num-seeds', '1', '--experiments', 'baseline,no-rmsnorm'],
], ids=['bundled-data', 'data-file'])
def test_the_reproduce_line_of_results_md_runs_as_written(data, tmp_path, monkeypatch, argv):
    """The study's runs are stubbed (tests/test_study.py trains for real): this checks the report's command."""
    import shlex
    import microgpt.bench.study as study
    from microgpt.cli import build_parser
    out = tmp_path / 'the results'  # a space: the command must quote it
    out.mkdir()  # run_study, stubbed here, makes it
    argv = [data if a == 'DATA' else a for a in argv]
    monkeypatch.setattr(study, 'run_study', lambda *args: iter(()))
    monkeypatch.setattr(study, 'summarize', lambda chosen, seeds, folder: [(chosen[0], 2.1, None, 1)])
    monkeypatch.setattr(study, 'measure_speed', lambda data_path: (74_000.0, 12.5))
    code, stdout, err = run('study', '--out', out, *argv)
    assert code == 0, err
    assert stdout.splitlines()[1].split() == ['baseline', '2.1000', '1'], stdout  # one seed: no spread
    report = (out / 'RESULTS.md').read_text(encoding='utf-8')
    command = report.split('Reproduce: `')[1].split('`')[0]
    words = shlex.split(command)
    assert words[:2] == ['microgpt', 'study'], command
    args = build_parser().parse_args(words[1:])
    assert (args.out, args.num_seeds, args.experiments) == (str(out), 1, argv[argv.index('--experiments') + 1])
    assert getattr(args, 'data', None) == (data if '--data' in argv else None), command


@pytest.mark.parametrize('logits, temperature', [([1e300, 0.0], 1e-10), ([math.inf, 0.0], 1.0), ([math.nan, 1.0], 0.5),
                                                 ([-math.inf, -math.inf], 1.0)],
                         ids=['overflowing', 'infinite', 'nan', 'all-minus-infinite'])
def test_probabilities_beyond_a_float_are_one_line(logits, temperature):
    """The checkpoint a diverging run keeps (its last finite state, weights near 1e300) sampled into
    random.choices' 'Total of weights must be finite' traceback; every command samples through here."""
    from microgpt.errors import MicrogptError
    from microgpt.sampling import token_probabilities
    with pytest.raises(MicrogptError, match='--lr'):
        token_probabilities(logits, temperature)
    assert token_probabilities([1e300, 0.0], 1.0) == [1.0, 0.0]


@pytest.mark.parametrize('value', ['0', '-1', 'abc', '1.5', '\u00b2'])  # '²' is a digit to isdigit, not to int
def test_a_bad_numba_thread_count_is_a_one_line_error(data, value):
    """numba reads NUMBA_NUM_THREADS when first imported: 0 stopped it with a traceback (exit 1) and text was ignored
    with a warning. A fresh interpreter, as numba reads it once."""
    import subprocess
    result = subprocess.run([sys.executable, '-m', 'microgpt', *small(data, '--engine', 'fused')], capture_output=True,
                            text=True, env={**os.environ, 'NUMBA_NUM_THREADS': value}, timeout=120)
    assert result.returncode == 2 and result.stderr == (
        f"microgpt: error: NUMBA_NUM_THREADS={value!r}: give the threads as a whole number, 1 or more, or leave it "
        f"unset (one per core)\n"), result.stderr


@pytest.mark.parametrize('value', ['', ' 2 ', '+1'])
def test_numba_thread_counts_numba_reads_are_taken(data, monkeypatch, value):
    monkeypatch.setenv('NUMBA_NUM_THREADS', value)
    assert run(*small(data, '--steps', '2'))[0] == 0


def test_resume_samples_as_the_uninterrupted_run_does(data, tmp_path, monkeypatch):
    """The sampling flags were not recorded: a resumed run printed the preset's 20 names at temperature 0.5, not
    the run's own. Now it prints the uninterrupted run's names; sampling flags given to --resume still apply."""
    flags = ['--steps', '6', '--temperature', '1.5', '--top-k', '5', '--num-samples', '4', '--save-every', '1']
    code, straight, err = run('train', '--data', data, *flags, '--out', tmp_path / 'straight')
    assert code == 0, err
    ctrl_c_at_step_3(monkeypatch)
    out = tmp_path / 'interrupted'
    assert run('train', '--data', data, *flags, '--out', out)[0] == 130
    monkeypatch.undo()
    code, resumed, err = run('train', '--resume', '--out', out)
    assert code == 0 and 'resuming from step 3' in err, err
    samples = straight.split('--- inference')[1]
    assert resumed.split('--- inference')[1] == samples and samples.count('sample ') == 4, (resumed, straight)
    code, again, err = run('train', '--resume', '--out', out, '--steps', '7', '--num-samples', '1')
    assert code == 0 and again.split('--- inference')[1].count('sample ') == 1, (again, err)
    zero = tmp_path / 'zero'  # a run that samples nothing refuses a sampling flag at resume, as a fresh run does
    assert run('train', '--data', data, '--steps', '3', '--num-samples', '0', '--out', zero)[0] == 0
    assert_one_line_error(*run('train', '--resume', '--out', zero, '--steps', '4', '--temperature', '0.8'),
                          'nothing is sampled with --num-samples 0')
    assert run('train', '--resume', '--out', zero, '--steps', '4', '--temperature', '0.8', '--num-samples', '1')[0] == 0
    for damaged in ({'temperature': -1.0}, {'colour': 'blue'}, [4]):  # one line naming the checkpoint's field
        rewrite_checkpoint(str(out / 'resume.safetensors'), {'sampling': json.dumps(damaged)})
        assert_one_line_error(*run('train', '--resume', '--out', out, '--steps', '8'),
                              f"resume.safetensors: damaged checkpoint metadata: sampling {damaged!r}")


@pytest.mark.parametrize('umask', [0o022, 0o077], ids=['umask-022', 'umask-077'])
def test_a_runs_files_get_the_permissions_of_any_new_file(data, tmp_path, umask):
    """Checkpoints were written 0600 whatever the umask (a temporary file's mode), beside metrics readable by the
    group: a colleague or a web server could read the run's metrics but not its model."""
    out = tmp_path / 'run'
    saved = os.umask(umask)
    try:
        assert run(*small(data, '--out', str(out), '--steps', '3', '--plot'))[0] == 0
    finally:
        os.umask(saved)
    modes = {name: stat.S_IMODE(os.stat(out / name).st_mode) for name in sorted(os.listdir(out))
             if not name.startswith('.')}
    assert {'model.safetensors', 'resume.safetensors', 'metrics.jsonl', 'loss.png'} <= set(modes), modes
    assert set(modes.values()) == {0o666 & ~umask}, {name: oct(mode) for name, mode in modes.items()}


def test_samples_are_printed_as_they_are_drawn_in_doubling_chunks(monkeypatch):
    """`sample --num-samples 100000` printed nothing until every name was drawn (minutes): now 16, then 32, ...,
    each chunk's names marked against the training data in one search, and the same names in the same order."""
    import random
    from microgpt import model_commands
    from microgpt.data import Vocabulary
    from microgpt.engines import make_engine
    vocab = Vocabulary('abc')
    decoder = make_engine('numpy', ModelConfig(vocab_size=vocab.size, n_embd=8, n_head=2), random.Random(0)).decoder()
    out, lines_at_each_draw = io.StringIO(), []
    real = model_commands.generate

    def generate(*args):
        lines_at_each_draw.append(out.getvalue().count('\n'))
        return real(*args)
    monkeypatch.setattr(model_commands, 'generate', generate)
    model_commands.print_samples(decoder, 16, vocab, random.Random(1), SampleConfig(num_samples=100), out, ())
    assert [lines_at_each_draw[i] for i in (0, 15, 16, 47, 48, 99)] == [0, 0, 16, 16, 48, 48], lines_at_each_draw
    rng, want = random.Random(1), []
    for i in range(100):
        want.append(f"sample {i + 1:2d}: {vocab.decode(real(decoder, vocab.bos_id, 16, rng, 0.5, 0, 1.0, ()))}")
    assert out.getvalue().splitlines() == want
