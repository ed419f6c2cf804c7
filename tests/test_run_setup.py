"""One run setup (train.setup.prepare_run) for train, study and bench; flags, defaults and help generated from
the config dataclasses; presets as overrides; the parsed namespace never changed; the reference engine without
NumPy."""

import argparse
import copy
import random
import re
import subprocess
import sys
from dataclasses import MISSING, fields

import pytest

import microgpt.bench.benchmark as benchmark
import microgpt.bench.study as study
import microgpt.train.run as run_module
from microgpt.cli import build_parser
from microgpt.config import ModelConfig, SampleConfig, TrainConfig, flag_name, init_parameters
from microgpt.data import Vocabulary, load_documents
from microgpt.presets import PRESETS, fields_of, model_settings
from microgpt.train.setup import Holdout, RunConfig, prepare_run

from helpers import NAMES, REPO_ROOT, run_cli_in_process as run, write_names

TRAIN_CONFIGS = (RunConfig, ModelConfig, TrainConfig, SampleConfig)


@pytest.fixture
def data(tmp_path):
    return write_names(tmp_path / 'names.txt')


def test_prepare_run_is_microgpts_order(data):
    """Random(seed): shuffle, then the parameters in the table's order; the held-out split on its own stream."""
    rng = random.Random(7)
    docs = load_documents(data)
    rng.shuffle(docs)
    vocab = Vocabulary.from_documents(docs)
    want = init_parameters(ModelConfig(vocab_size=vocab.size, n_embd=8, n_head=2), rng)
    run = prepare_run(data, {'n_embd': 8, 'n_head': 2}, TrainConfig(seed=7), 'reference')
    assert run.docs == docs and run.val_docs == [] and run.vocab == vocab
    assert run.engine.weights() == want
    assert run.rng.random() == rng.random()  # sampling continues the same stream
    held = prepare_run(data, {}, TrainConfig(seed=7), None, holdout=Holdout(0.2, 'name', 7))
    assert len(held.val_docs) == 6 and not set(held.docs.texts()) & set(held.val_docs.texts()), held.val_docs
    assert held.engine is None


def test_prepare_run_keeps_every_model_switch(data):
    """The benchmark's copy of the setup once dropped `bos`: now every caller passes the model's fields through."""
    run = prepare_run(data, {'bos': 'first', 'n_layer': 2}, TrainConfig(), None)
    assert run.vocab.bos_first and run.cfg.bos_id == 0 and run.cfg.n_layer == 2
    rng, tokens, cfg = benchmark.prepared_job(data, 42, {'bos': 'first'})
    assert cfg.bos_id == 0 and all(t[0] == 0 == t[-1] for t in tokens)


def test_train_study_and_bench_all_use_prepare_run(data, tmp_path, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return prepare_run(*args, **kwargs)

    for module in (run_module, study, benchmark):
        monkeypatch.setattr(module, 'prepare_run', spy)
    assert run('train', '--data', data, '--steps', '3', '--num-samples', '1')[0] == 0
    experiment = study.Experiment('tiny', 'a test', {'steps': 3, 'n_layer': 2})
    study.run_one(experiment, 1, data, 'numpy')
    benchmark.time_engine('numpy', data, 2)
    callers = [(args[3], args[2].steps, kwargs.get('holdout')) for args, kwargs in calls]
    assert callers == [('numpy', 3, None), ('numpy', 3, Holdout(seed=study.SPLIT_SEED)), ('numpy', 2, None)], callers
    assert calls[1][0][1] == {'n_layer': 2}


def parse_train(*argv):
    return build_parser().parse_args(['train', *argv])


def test_a_flag_for_every_documented_field_and_its_default_in_the_help():
    parser = build_parser()
    train_help = parser._subparsers._group_actions[0].choices['train'].format_help()
    flagged = [f for cls in TRAIN_CONFIGS for f in fields(cls) if f.metadata.get('help')]
    assert len(flagged) >= 30, [f.name for f in flagged]
    text = ' '.join(train_help.split())
    for f in flagged:
        assert flag_name(f) in train_help, f.name
        assert f.default is not MISSING, f.name
        shown = f.metadata['shown_default'] or ('off' if f.default is False else 'on' if f.default is True else f.default)
        assert f'(default: {shown}' in text, (f.name, shown)


def test_no_flags_give_the_dataclass_defaults():
    args = parse_train()
    given = {name for name in vars(args) if name not in ('command', 'run', 'preset')}
    assert given == set(), given  # a flag left out is absent: the dataclass's default applies
    assert RunConfig() == RunConfig(**fields_of(RunConfig, {}))


def test_presets_only_override_fields_and_never_repeat_a_default():
    defaults = {f.name: f.default for cls in TRAIN_CONFIGS for f in fields(cls) if f.default is not MISSING}
    for name, overrides in PRESETS.items():
        for key, value in overrides.items():
            assert key in defaults, (name, key)
            assert value != defaults[key], f"preset {name} repeats the default {key}={value!r}"
        ModelConfig(vocab_size=27, **model_settings(overrides))
        TrainConfig(**fields_of(TrainConfig, overrides))


@pytest.mark.parametrize('argv', [
    ['--steps', '3', '--num-samples', '2'],
    ['--preset', 'esp32', '--steps', '3', '--num-samples', '2'],
    ['--steps', '3', '--temperature', '0.9', '--num-samples', '1', '--eval-every', '2', '--val-fraction', '0.2'],
], ids=['defaults', 'esp32', 'sampling-and-evaluation'])
def test_the_parsed_namespace_is_never_changed(data, argv, monkeypatch):
    seen = {}
    original_parse = argparse.ArgumentParser.parse_args

    def keep(self, *args, **kwargs):
        namespace = original_parse(self, *args, **kwargs)
        seen['namespace'], seen['before'] = namespace, copy.copy(vars(namespace))
        return namespace

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', keep)
    code, out, err = run('train', '--data', data, *argv)
    assert code == 0, err
    assert vars(seen['namespace']) == seen['before']


def test_a_preset_is_overridden_by_a_flag_and_fills_the_rest(data):
    code, out, err = run('train', '--data', data, '--preset', 'zeroclaw', '--steps', '4', '--num-samples', '0')
    assert code == 0 and 'num params: ' in out, err
    params = int(out.split('num params: ')[1].split()[0])
    cfg = ModelConfig(vocab_size=len(set(''.join(NAMES))) + 1, **model_settings(PRESETS['zeroclaw']))
    from microgpt.config import num_parameters
    assert params == num_parameters(cfg), (params, cfg)
    assert out.count('\nstep ') == 4, out


def readme_defaults():
    """Flag -> the default its row of the README's flag table shows."""
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    shown = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.split(' | ')]
        if not line.startswith('| `--') or len(cells) < 3:
            continue
        flags = re.findall(r'`(--[a-z0-9-]+)', cells[0])
        defaults = cells[1].split(', ') if len(flags) > 1 else [cells[1]]
        if len(defaults) == len(flags):
            shown.update(zip(flags, (d.strip('`').split(' (')[0] for d in defaults)))
    return shown


def test_readme_shows_each_train_flag_with_the_dataclass_default():
    shown = readme_defaults()
    for f in (f for cls in TRAIN_CONFIGS for f in fields(cls) if f.metadata.get('help')):
        flag = flag_name(f)
        assert flag in shown, f"README's flag table has no row for {flag}"
        if f.default is None:
            continue  # described in words
        if isinstance(f.default, bool):
            assert shown[flag] == ('on' if f.default else 'off'), (flag, shown[flag])
        elif isinstance(f.default, (int, float)):
            assert float(shown[flag]) == f.default, (flag, shown[flag], f.default)
        else:
            assert shown[flag] == f.default, (flag, shown[flag], f.default)


REFERENCE_WITHOUT_NUMPY = """
import runpy, sys
sys.argv = ['microgpt', 'train', '--engine', 'reference', '--steps', '2', '--num-samples', '1', '--data', sys.argv[1]]
try:
    runpy.run_module('microgpt', run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'numba', 'safetensors', 'torch'))
assert not loaded, loaded
print('no numpy')
"""


def test_the_reference_engine_loads_no_numpy(data):
    proc = subprocess.run([sys.executable, '-c', REFERENCE_WITHOUT_NUMPY, data], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith('no numpy\n') and re.search(r'step    2 /    2 \| loss \d\.\d{4}', proc.stdout), \
        proc.stdout
