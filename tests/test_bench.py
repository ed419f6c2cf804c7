"""`microgpt bench`: one table of every engine, PyTorch included, with ratios to the reference engine."""

import random

import pytest

from microgpt.bench.benchmark import cpu_name, time_training
from microgpt.config import ModelConfig, TrainConfig
from microgpt.engines import make_engine
from microgpt.train.loop import train

from helpers import run_cli_in_process as run


def test_the_cpu_is_named_by_its_family_and_model_where_its_name_is_a_line(tmp_path):
    """A cloud machine's "AMD EPYC" is a Zen 3 or a Zen 4: x86's family and model tell them apart."""
    block = 'processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n\n'
    (tmp_path / 'zen3').write_text(block.format(0, 1) + block.format(1, 1))
    (tmp_path / 'arm').write_text('processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\n')
    assert cpu_name(tmp_path / 'zen3') == 'AMD EPYC (family 25, model 1)'
    assert 'family' not in cpu_name(tmp_path / 'arm') and 'family' not in cpu_name(tmp_path / 'missing')


@pytest.mark.slow(seconds=20)  # times every engine, PyTorch's first call and the reference engine included
def test_bench_prints_every_engine_with_its_ratio(names_path, require_torch):
    code, out, err = run('bench', '--data', names_path, '--reference-steps', '2', '--steps', '30',
                         '--engines', 'numpy,torch,reference')
    assert code == 0, err
    assert out.startswith('CPU: '), out
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()[2:] if not line.startswith('wall')}
    assert set(rows) == {('reference', 'float64'), ('numpy', 'float64'), ('numpy', 'float32'),
                         ('torch', 'float64'), ('torch', 'float32')}, out
    for engine, dtype, steps, us_per_step, tokens_per_second, ratio in rows.values():
        assert int(steps) == (2 if engine == 'reference' else 30)
        assert float(us_per_step) > 0 and float(tokens_per_second) > 0 and float(ratio) > 0
    assert float(rows[('numpy', 'float64')][5]) > 10  # hand-derived gradients beat the scalar autograd
    assert 'wall time of `microgpt train --engine numpy --data FILE` (otherwise defaults, best of 3)' in out, out


def test_bench_of_torch_alone_without_pytorch_is_an_error(monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'torch' else real_find_spec(name, *a))
    code, out, err = run('bench', '--engines', 'torch')
    assert code == 2, err
    assert err.startswith('microgpt: error: --engines names only torch, and PyTorch is not installed'), err
    assert out == ''


def test_bench_unknown_engine():
    code, out, err = run('bench', '--engines', 'numpy,tpu')
    assert code == 2 and err.startswith("microgpt: error: unknown engines ['tpu']"), err


def test_an_engine_named_twice_is_timed_once():
    from microgpt.bench.benchmark import BenchConfig
    assert BenchConfig(engines='numpy, fused,numpy').engine_names == ['numpy', 'fused']


@pytest.mark.parametrize('engine, warmup, calls', [
    ('numpy', 5, [(0, 5), (5, 13), (13, 21), (21, 25)]),              # chunks of 8
    ('numpy', 0, [(0, 8), (8, 16), (16, 24), (24, 25)]),
    ('numpy', 12, [(0, 8), (8, 12), (12, 20), (20, 25)]),             # a warm-up longer than a chunk
    ('fused', 5, [(0, 5), (5, 25)]),                                 # 64 a call, then up to 256 for batches of 1
])
def test_timed_steps_run_in_the_engines_own_chunks_with_the_runs_learning_rates(engine, warmup, calls):
    """bench times the steps as `microgpt train` makes them: the warm-up's chunks end at its last step, then
    chunk_steps at a time (a chunk ending at every multiple of the warm-up made the fused default step 13% longer),
    and the learning rates, and so the trained weights, are those of one run of all the steps."""
    docs = [[0, 1 + i % 5, 2, 0] for i in range(7)]
    cfg, tcfg = ModelConfig(vocab_size=6, n_embd=8, n_head=2, block_size=4), TrainConfig(steps=25)
    timed, whole = (make_engine(engine, cfg, random.Random(3)) for _ in range(2))
    made, train_steps = [], timed.train_steps
    timed.train_steps = lambda doc_tokens, start, stop, *rest: made.append((start, stop)) or train_steps(
        doc_tokens, start, stop, *rest)
    seconds, tokens = time_training(timed, docs, tcfg, warmup_steps=warmup)
    assert made == calls
    assert seconds > 0 and tokens == (25 - warmup) * 3
    for _ in train(whole, docs, tcfg):
        pass
    assert (timed.state_buffer == whole.state_buffer).all()  # weights, gradients and Adam's moments, bit for bit


@pytest.mark.slow(seconds=2)  # three timed `microgpt train` processes
def test_a_data_file_named_like_a_flag_is_timed_and_written_as_typed(tmp_path, monkeypatch):
    """`bench --data=-n.txt` passed `--data -n.txt` to the timed `microgpt train`, which took -n.txt for a flag: a
    traceback, exit 1 (and study's RESULTS.md wrote the same words as the command that reproduces it)."""
    from microgpt.config import flag_words, shell_flag
    assert flag_words('--data', '-n.txt') == ['--data=-n.txt'] and flag_words('--out', 'a b') == ['--out', 'a b']
    assert shell_flag('--out', '-my run') == "'--out=-my run'" and shell_flag('--out', 'runs') == '--out runs'
    (tmp_path / '-n.txt').write_text('\n'.join(['emma', 'olivia', 'ava', 'mia'] * 5) + '\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run('bench', '--data=-n.txt', '--engines', 'numpy', '--steps', '3')
    assert code == 0 and 'wall time of `microgpt train --engine numpy --data FILE`' in out, (code, out, err)
    monkeypatch.setattr('sys.executable', '/bin/false')  # a timed run that fails: one line, exit 2
    code, out, err = run('bench', '--data=-n.txt', '--engines', 'numpy', '--steps', '3')
    assert code == 2 and err.splitlines()[-1] == ("microgpt: error: the timed `microgpt train --data=-n.txt --engine "
                                                  "numpy` ended with exit status 1"), (code, err)
