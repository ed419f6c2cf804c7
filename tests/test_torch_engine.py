"""The torch engine (the one PyTorch model, engines/torch) equals the numpy engine on the CPU in float64: loss,
gradients, Adam with dropout, sampling, the golden run; its data-parallel run over 2 processes equals one
process; its checkpoints resume in the numpy and fused engines and theirs in it; bad devices and precisions
are one-line errors. Tests that need a GPU say so in their name and skip without one."""

import os
import random
import sys

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, learning_rate
from microgpt.engines import make_engine
from microgpt.errors import MicrogptError, OwnDataError, PeersLost

from helpers import assert_named_arrays_close, random_batch, switches_id

SWITCHES = [
    {},
    {'n_layer': 2, 'n_embd': 8, 'n_head': 2, 'block_size': 5},
    {'norm': 'esp32', 'bos': 'first', 'init_std': 0.1},
    {'norm': 'none'},
    {'tie_lm_head': True, 'mlp_activation': 'relu2', 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02},
    {'attention': 'self'},
]


@pytest.fixture(autouse=True)
def torch(require_torch):
    return require_torch


def pair(cfg, seed, dtype='float64'):
    return make_engine('numpy', cfg, random.Random(seed), dtype), make_engine('torch', cfg, random.Random(seed), dtype)


# ---- exact where exactness is possible: CPU, float64

@pytest.mark.parametrize('switches', SWITCHES, ids=switches_id)
@pytest.mark.parametrize('batch_size', [1, 3])
def test_loss_and_gradients_equal_numpy_engine(switches, batch_size):
    rng = random.Random(batch_size * 100 + SWITCHES.index(switches))
    cfg = ModelConfig(vocab_size=rng.randrange(3, 30), **switches).validate()
    numpy_engine, torch_engine = pair(cfg, rng.randrange(1000))
    batch = random_batch(rng, cfg, batch_size, max_len=cfg.block_size + 4)
    want, got = numpy_engine.loss_and_grads(batch), torch_engine.loss_and_grads(batch)
    assert abs(got - want) <= 1e-12 * want, (got, want)
    assert_named_arrays_close(torch_engine.gradients(), numpy_engine.gradients(), 1e-10, 1e-13, 'gradient')
    assert_named_arrays_close(torch_engine.weights(), numpy_engine.weights(), 0, 0, 'initial weight')


def test_loss_is_forward_only():
    cfg = ModelConfig(vocab_size=9, n_layer=2).validate()
    numpy_engine, torch_engine = pair(cfg, 2)
    rng = random.Random(3)
    first, second = random_batch(rng, cfg, 2, 20), random_batch(rng, cfg, 4, 20)
    torch_engine.loss_and_grads(first)
    before = torch_engine.gradients()
    got, want = torch_engine.loss(second), numpy_engine.loss_and_grads(second)
    assert abs(got - want) <= 1e-12 * want, (got, want)
    assert_named_arrays_close(torch_engine.gradients(), before, 0, 0, 'gradient after loss()')


@pytest.mark.parametrize('dropout', [0.0, 0.25])
def test_adam_steps_with_decay_clipping_and_dropout_track_numpy(dropout):
    """Five steps of AdamW with clipping and the shared dropout masks, batches of 3 padded documents."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, n_embd=8, n_head=2, block_size=6).validate()
    tcfg = TrainConfig(steps=5, weight_decay=0.1, grad_clip=0.5, dropout=dropout, seed=11)
    numpy_engine, torch_engine = pair(cfg, 3)
    rng = random.Random(4)
    for step in range(5):
        batch = random_batch(rng, cfg, 3, max_len=8)
        lr = learning_rate(tcfg, step)
        want, got = numpy_engine.train_step(batch, lr, tcfg), torch_engine.train_step(batch, lr, tcfg)
        assert abs(got - want) <= 1e-12 * want, (step, got, want)
    assert_named_arrays_close(torch_engine.weights(), numpy_engine.weights(), 1e-10, 1e-13, 'weight')
    want_state, got_state = numpy_engine.state(), torch_engine.state()
    assert got_state.adam_steps == want_state.adam_steps == 5, (got_state.adam_steps, want_state.adam_steps)
    np.testing.assert_allclose(got_state.adam_v, want_state.adam_v, rtol=1e-9, atol=1e-16)


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('C, lo, hi, T', [(16, 0, 3, 5), (6, 2, 5, 7), (9, 1, 2, 1)])
def test_dropout_masks_drawn_by_torch_equal_dropouts(dtype, C, lo, hi, T, torch):
    """The device's masks (int64 arithmetic) are dropout.masks's, element for element, for a share lo .. hi - 1."""
    from microgpt import dropout
    from microgpt.engines.torch import dropout_masks
    S, block_size = 5, 8
    want = dropout.masks(0.3, 123, 45, hi, T, block_size, S, C, dtype).reshape(S, hi, T, C)[:, lo:]
    got = dropout_masks.masks(0.3, 123, 45, lo, hi, T, block_size, S, C, getattr(torch, dtype), 'cpu')
    assert got.dtype == getattr(torch, dtype), got.dtype
    np.testing.assert_array_equal(got.numpy(), want)
    assert 0.2 < (want == 0).mean() < 0.4, (want == 0).mean()  # the comparison is of real masks


def test_train_steps_equal_one_train_step_per_step():
    cfg = ModelConfig(vocab_size=9).validate()
    docs = random_batch(random.Random(5), cfg, 7, max_len=20)
    tcfg = TrainConfig(steps=40, batch_size=2, dropout=0.1)
    lrs = [learning_rate(tcfg, s) for s in range(40)]
    chunked, stepped = (make_engine('torch', cfg, random.Random(6)) for _ in range(2))
    got = chunked.train_steps(docs, 0, 40, tcfg, lrs)
    want = [stepped.train_step([docs[(2 * s + b) % 7] for b in range(2)], lrs[s], tcfg) for s in range(40)]
    assert got == want, (got[:3], want[:3])
    assert_named_arrays_close(chunked.weights(), stepped.weights(), 0, 0, 'weight')


def test_decoder_logits_equal_numpy_decoder():
    cfg = ModelConfig(vocab_size=13, n_layer=2, block_size=6).validate()
    numpy_engine, torch_engine = pair(cfg, 5)
    want_decoder, got_decoder = numpy_engine.decoder(), torch_engine.decoder()
    for tokens in ([12, 3, 4, 5], [12, 0, 0, 1, 2, 3]):
        want_decoder.reset()
        got_decoder.reset()
        for pos, token in enumerate(tokens):
            np.testing.assert_allclose(got_decoder.step(token, pos), want_decoder.step(token, pos),
                                       rtol=1e-12, atol=1e-13)


def test_float32_state_is_float32_and_close_to_float64():
    cfg = ModelConfig(vocab_size=11).validate()
    batch = random_batch(random.Random(8), cfg, 3, max_len=20)
    f64, f32 = (make_engine('torch', cfg, random.Random(9), dtype) for dtype in ('float64', 'float32'))
    assert f32.dtype == 'float32' and f32.state().adam_m.dtype == np.float32, (f32.dtype, f32.state().adam_m.dtype)
    assert all(w.dtype == np.float32 for w in f32.weights().values())
    want, got = f64.loss_and_grads(batch), f32.loss_and_grads(batch)
    assert abs(got - want) <= 1e-5 * want, (got, want)


def assert_matches_golden(got, golden):
    """Same header and samples; step lines equal except at most 2 differing by one unit in the last digit (the
    fast engines' tolerance: their float64 sums run in another order than the reference's)."""
    got_lines, want_lines = got.splitlines(), golden.splitlines()
    assert len(got_lines) == len(want_lines), (len(got_lines), len(want_lines))
    off_by_one = []
    for got_line, want_line in zip(got_lines, want_lines):
        if got_line != want_line:
            assert got_line.startswith('step') and want_line.startswith('step'), (got_line, want_line)
            got_loss, want_loss = float(got_line.rsplit(' ', 1)[1]), float(want_line.rsplit(' ', 1)[1])
            assert round(abs(got_loss - want_loss) * 1e4) == 1, (got_line, want_line)
            off_by_one.append(got_line)
    assert len(off_by_one) <= 2, off_by_one


@pytest.mark.slow
def test_default_run_reproduces_golden_trajectory(names_path, golden_path, run_cli):
    with open(golden_path, encoding='utf-8') as f:
        golden = f.read()
    code, out, err = run_cli('train', '--data', names_path, '--engine', 'torch', '--device', 'cpu')
    assert code == 0, err
    assert_matches_golden(out, golden)


# ---- data parallel: 2 processes (gloo) equal one process on the same global batch

def _train_rank(rank, world_size, store, cfg, docs, tcfg, out_dir):
    """One process of the data-parallel run: joins the group, trains, saves its weights and losses."""
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world_size)
    try:
        engine = make_engine('torch', cfg, random.Random(tcfg.seed), 'float64', 'cpu')
        lrs = [learning_rate(tcfg, s) for s in range(tcfg.steps)]
        losses = engine.train_steps(docs, 0, 12, tcfg, lrs[:12])
        losses += [engine.train_step([docs[(s * tcfg.batch_size + b) % len(docs)] for b in range(tcfg.batch_size)],
                                     lrs[s], tcfg) for s in range(12, tcfg.steps)]
        np.savez(os.path.join(out_dir, f'rank{rank}.npz'), losses=np.array(losses), main=engine.is_main_process,
                 **engine.weights())
        dist.barrier()  # both done before either tears gloo down: once, under a loaded CI, rank 0 aborted in it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path, torch):
    """20 steps, a global batch of 5 documents split 2 + 3, with dropout: the same weights as one process."""
    import torch.multiprocessing as mp
    cfg = ModelConfig(vocab_size=11, n_layer=2, n_embd=8, n_head=2, block_size=8).validate()
    docs = random_batch(random.Random(12), cfg, 23, max_len=12)
    tcfg = TrainConfig(steps=20, batch_size=5, dropout=0.1, seed=13, grad_clip=1.0)
    mp.spawn(_train_rank, args=(2, str(tmp_path / 'store'), cfg, docs, tcfg, str(tmp_path)), nprocs=2)

    single = make_engine('torch', cfg, random.Random(tcfg.seed), 'float64', 'cpu')
    want_losses = single.train_steps(docs, 0, 20, tcfg, [learning_rate(tcfg, s) for s in range(20)])
    want = single.weights()
    for rank in range(2):
        saved = np.load(tmp_path / f'rank{rank}.npz')
        assert bool(saved['main']) == (rank == 0), (rank, saved['main'])
        np.testing.assert_allclose(saved['losses'], want_losses, rtol=1e-12, atol=0, err_msg=f'losses of rank {rank}')
        got = {name: saved[name] for name in want}
        assert_named_arrays_close(got, want, 0, 1e-12, f'rank {rank} weight')
    changed = max(np.abs(want[name] - w).max() for name, w in make_engine(
        'torch', cfg, random.Random(tcfg.seed)).weights().items())
    assert changed > 1e-3, changed  # training moved the weights: the comparison is not of initial weights


@pytest.mark.slow(seconds=30)
def test_torchrun_train_and_resume_print_and_save_what_one_process_does(tmp_path, torch):
    """`torchrun --nproc-per-node 2 -m microgpt train --engine torch`, 20 steps then --resume to 40, prints what one
    process prints over 40 steps (only the first process speaks), evaluates, and saves the same weights."""
    import subprocess
    import sys
    from safetensors.numpy import load_file
    data = tmp_path / 'names.txt'
    data.write_text('\n'.join(['anna', 'bob', 'carla', 'dmitri', 'eve', 'fanny', 'gus', 'hal', 'ida', 'jo'] * 3) + '\n')
    common = ['train', '--engine', 'torch', '--device', 'cpu', '--data', data, '--batch-size', '5', '--dropout', '0.1',
              '--lr-schedule', 'constant', '--eval-every', '10', '--num-samples', '3']
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                '-m', 'microgpt']

    def run(launcher, *args):
        proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    first = run(torchrun, *common, '--steps', '20', '--out', tmp_path / 'two')
    resumed = run(torchrun, *common, '--steps', '40', '--out', tmp_path / 'two', '--resume')
    alone = run([sys.executable, '-m', 'microgpt'], *common, '--steps', '40', '--out', tmp_path / 'one')
    steps = [line for line in alone.splitlines() if line.startswith('step')]
    assert len(steps) == 44, alone  # 40 steps and 4 evaluations
    got = [line.replace('/   20', '/   40') for line in first.splitlines() if line.startswith('step')]
    got += [line for line in resumed.splitlines() if line.startswith('step')]
    assert got == steps, (got, steps)
    assert resumed.split('--- inference')[1] == alone.split('--- inference')[1], (resumed, alone)
    want, saved = load_file(tmp_path / 'one' / 'resume.safetensors'), load_file(tmp_path / 'two' / 'resume.safetensors')
    assert_named_arrays_close(saved, want, 0, 1e-12, 'checkpoint tensor')
    lines = (tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()
    assert len(lines) == 40, lines[-3:]  # written by one process only


def _stop_at(rank, world_size, store, stop_step, out_dir):
    """A data-parallel process; rank 1 dies at `stop_step`, rank 0 asks for a stop there and reports what it got.

    Rank 1 dies a second after reaching the step, when rank 0 waits for it in the step's gradient exchange: a
    peer lost between two exchanges is seen by gloo's own network thread, which aborts the process (gloo's
    IoException, 1 run in 5 when rank 1 died at once); a peer lost during one is an error the engine reports.
    Rank 0 then ends as the command line does after that error (cli._entry): at once, since gloo's threads may
    abort the teardown of a process whose peer is gone."""
    import time
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world_size)
    cfg = ModelConfig(vocab_size=9).validate()
    engine = make_engine('torch', cfg, random.Random(0), 'float64', 'cpu')
    tcfg = TrainConfig(steps=100, batch_size=2)
    docs = [[8, 1, 2, 3, 8], [8, 4, 8]]
    for step in range(100):
        if rank == 1 and step == stop_step:
            time.sleep(1)
            os._exit(3)  # dies without a word, as a killed process does
        try:
            engine.train_step(docs, 0.01, tcfg)
        except PeersLost as e:
            with open(os.path.join(out_dir, 'error.txt'), 'w') as f:
                f.write(f'{step} {e}')
            os._exit(0)


@pytest.mark.slow
def test_a_process_that_dies_is_a_one_line_error_in_the_others(tmp_path, torch):
    import torch.multiprocessing as mp
    context = mp.get_context('spawn')
    processes = [context.Process(target=_stop_at, args=(rank, 2, str(tmp_path / 'store'), 5, str(tmp_path)))
                 for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 3], [p.exitcode for p in processes]
    step, error = (tmp_path / 'error.txt').read_text().split(' ', 1)
    assert step == '5', step
    assert error.startswith('another process of the data-parallel run stopped (') and '\n' not in error, error
    assert error.endswith('the checkpoints already written are intact: continue with --resume'), error


def test_the_command_line_ends_at_once_when_the_peers_are_lost(monkeypatch):
    """After a lost peer, a normal exit can abort in gloo's teardown (status -6 instead of the error's 2): the
    entry point ends the process with os._exit after the one-line message."""
    from microgpt import cli
    ended = []
    lost = PeersLost('another process of the data-parallel run stopped')
    monkeypatch.setattr(cli, '_run', lambda take_sigterm: (2, lost))
    monkeypatch.setattr(cli.os, '_exit', lambda code: ended.append(code))
    with pytest.raises(SystemExit):  # sys.exit follows only because the fake _exit returns
        cli._entry()
    assert ended == [2], ended


def test_a_lost_peer_is_said_by_every_process_and_its_own_errors_with_its_rank(monkeypatch):
    """A process of a torchrun launch but the first writes nothing else, the first speaking for all: when the first
    was the one that died, the others ended with status 2 and no word, and an error of their own (another
    machine's missing data file) went unsaid. A lost peer is said by each that sees it, and an error reading its
    own data with the process's rank; an error that every process meets alike is the first's to say."""
    import io
    from microgpt import cli, commands
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    for error, said in ((PeersLost('another process of the data-parallel run stopped (Connection closed by peer)'),
                         'another process of the data-parallel run stopped (Connection closed by peer)'),
                        (OwnDataError('names.txt: no such file'), 'process 1: names.txt: no such file'),
                        (MicrogptError('an error every process meets'), None)):
        def train(args, out, err, error=error):
            print('step    1 / 1000 | loss 3.3', file=out)
            raise error
        monkeypatch.setattr(commands, 'cmd_train', train)
        out, err = io.StringIO(), io.StringIO()
        assert cli._run(['train'], out, err) == (2, error)
        assert out.getvalue() == '' and err.getvalue() == (f"microgpt: error: {said}\n" if said else ''), \
            err.getvalue()


def test_a_rank_without_a_world_is_not_torchrun(monkeypatch):
    """RANK alone (a cluster's environment, a script that torchrun started calling microgpt) silenced every command;
    torchrun sets WORLD_SIZE too. Values that are not numbers are one line, not a traceback."""
    import io
    from microgpt import cli, commands
    from microgpt.engines import torchrun_rank
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setattr(commands, 'cmd_train', lambda args, out, err: print('trained', file=out))
    out, err = io.StringIO(), io.StringIO()
    assert cli._run(['train'], out, err) == (0, None) and out.getvalue() == 'trained\n', err.getvalue()
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('RANK', 'node-a')  # read only in a world of several
    assert torchrun_rank() is None
    for world, rank, bad in (('2', 'abc', 'RANK'), ('x', '1', 'WORLD_SIZE')):
        monkeypatch.setenv('WORLD_SIZE', world)
        monkeypatch.setenv('RANK', rank)
        with pytest.raises(MicrogptError, match=rf"{bad}='{world if bad == 'WORLD_SIZE' else rank}' in the "
                                                rf"environment.*unset {bad}"):
            make_engine('numpy', ModelConfig(vocab_size=5), random.Random(0))


# each process of the launch runs in a folder of its own, rank0/ or rank1/, as on two machines: their --data
# names.txt is each machine's own file
_IN_ITS_OWN_FOLDER = """import os, runpy, sys
os.chdir('rank' + os.environ['RANK'])
sys.argv[0] = 'microgpt'
runpy.run_module('microgpt', run_name='__main__')
"""


@pytest.mark.slow
@pytest.mark.parametrize('second_machine', ['no file', 'other lines'])  # other characters: as other lines
def test_torchrun_processes_whose_data_differ_stop_at_once_and_say_why(tmp_path, torch, second_machine):
    """A process that could not read --data stopped before joining the process group: the first waited for it
    (PyTorch's 30 minutes) and printed nothing, the failed one nothing either. Data that differ between machines
    trained one model on different documents (other lines), or crashed in DDP's shape check with tracebacks
    (other characters). Now each process joins first, and they compare what they read."""
    import subprocess
    import sys
    names = ['anna', 'bob', 'carla', 'dmitri', 'eve', 'fanny', 'gus', 'hal', 'ida', 'jo'] * 3
    for rank, lines in ((0, names), (1, {'no file': None, 'other lines': names[1:]}[second_machine])):
        (tmp_path / f'rank{rank}').mkdir()
        if lines is not None:
            (tmp_path / f'rank{rank}' / 'names.txt').write_text('\n'.join(lines) + '\n')
    (tmp_path / 'in_its_own_folder.py').write_text(_IN_ITS_OWN_FOLDER)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                           str(tmp_path / 'in_its_own_folder.py'), 'train', '--engine', 'torch', '--device', 'cpu',
                           '--data', 'names.txt', '--batch-size', '2', '--steps', '5'],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    errors = sorted(line for line in proc.stderr.splitlines() if line.startswith('microgpt: error:'))
    assert proc.returncode != 0 and 'step' not in proc.stdout, proc
    if second_machine == 'no file':
        assert errors[0].startswith('microgpt: error: another process of the data-parallel run stopped'), errors
        assert errors[1].startswith('microgpt: error: process 1: ') and 'names.txt' in errors[1], errors
    else:  # every process finds it: the first says it
        assert len(errors) == 1 and "read different data: process 1's --data is not process 0's" in errors[0], errors


def test_any_process_in_one_process_is_the_flag_itself():
    engine = make_engine('torch', ModelConfig(vocab_size=5), random.Random(0))
    assert engine.is_main_process and engine.any_process(True) and not engine.any_process(False)


# ---- checkpoints are interchangeable with the other engines

@pytest.mark.parametrize('writer, reader', [('torch', 'numpy'), ('numpy', 'torch'),
                                            pytest.param('torch', 'fused', marks=pytest.mark.slow),
                                            pytest.param('fused', 'torch', marks=pytest.mark.slow)])
def test_checkpoint_resumes_in_another_engine(writer, reader, tmp_path):
    """5 steps in one engine, its checkpoint, 5 more in another: the weights of 10 steps in the reader alone."""
    from microgpt.data import Vocabulary
    from microgpt.train.checkpoint import load_checkpoint, restore_engine, save_checkpoint
    from microgpt.train.loop import evaluate, train
    vocab = Vocabulary.from_documents(['anna', 'bob', 'carla', 'dmitri', 'eve', 'fanny'])
    docs = [vocab.document_tokens(d) for d in ['anna', 'bob', 'carla', 'dmitri', 'eve', 'fanny']]
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=2).validate()
    tcfg = TrainConfig(steps=10, batch_size=2, dropout=0.1, weight_decay=0.01)
    first = make_engine(writer, cfg, random.Random(1))
    for report in train(first, docs, tcfg, sync_every=(5,)):
        if report.step == 5:
            break
    path = str(tmp_path / 'ckpt.safetensors')
    save_checkpoint(path, first, vocab, tcfg, 5, {})
    ckpt = load_checkpoint(path)
    assert ckpt.meta['engine'] == writer and ckpt.adam_steps == 5, ckpt.meta

    resumed = restore_engine(ckpt, make_engine(reader, ckpt.model_cfg, random.Random(0)))
    got, want = evaluate(resumed, docs), evaluate(first, docs)
    assert abs(got - want) <= 1e-12, (got, want)
    losses = [r.loss for r in train(resumed, docs, tcfg, start_step=5)]
    alone = make_engine(reader, cfg, random.Random(1))
    want = [r.loss for r in train(alone, docs, tcfg)][5:]
    np.testing.assert_allclose(losses, want, rtol=1e-10)
    assert_named_arrays_close(resumed.weights(), alone.weights(), 1e-9, 1e-12, 'weight')


@pytest.mark.slow
def test_a_torch_run_resumes_samples_and_evaluates_with_the_numpy_engine(tmp_path, run_cli):
    """On the command line: 10 steps with --engine torch, --resume to 20 with numpy prints what numpy prints alone;
    `sample` and `eval` read the torch engine's checkpoint."""
    data = tmp_path / 'names.txt'
    data.write_text('\n'.join(['anna', 'bob', 'carla', 'dmitri', 'eve', 'fanny', 'gus', 'hal', 'ida', 'jo'] * 3) + '\n')
    common = ('train', '--data', data, '--batch-size', '3', '--dropout', '0.1', '--lr-schedule', 'constant',
              '--num-samples', '3')
    code, first, err = run_cli(*common, '--engine', 'torch', '--device', 'cpu', '--steps', '10',
                               '--out', tmp_path / 'run')
    assert code == 0, err
    code, resumed, err = run_cli(*common, '--engine', 'numpy', '--steps', '20', '--out', tmp_path / 'run', '--resume')
    assert code == 0, err
    code, alone, err = run_cli(*common, '--engine', 'numpy', '--steps', '20')
    assert code == 0, err
    got = [line.replace('/   10', '/   20') for line in first.splitlines() if line.startswith('step')]
    got += [line for line in resumed.splitlines() if line.startswith('step')]
    assert got == [line for line in alone.splitlines() if line.startswith('step')], (got, alone)
    assert resumed.split('--- inference')[1] == alone.split('--- inference')[1], (resumed, alone)
    checkpoint = tmp_path / 'run' / 'model.safetensors'
    code, out, err = run_cli('sample', '--checkpoint', checkpoint, '--num-samples', '2')
    assert code == 0 and out.count('sample ') == 2, (code, out, err)
    code, out, err = run_cli('eval', '--checkpoint', checkpoint, '--data', data)
    assert code == 0 and out.startswith('loss ') and 'step 20' in out, (code, out, err)


# ---- bad input: one-line errors saying what to do

def test_cuda_without_a_gpu_is_a_one_line_error(torch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MicrogptError, match=r'--device cuda, but PyTorch sees no CUDA GPU here.*use --device cpu'):
        make_engine('torch', ModelConfig(vocab_size=5), random.Random(0), 'float64', 'cuda')


def test_bfloat16_on_the_cpu_is_a_one_line_error():
    with pytest.raises(MicrogptError, match=r'bfloat16 is autocast on a CUDA GPU.*use --dtype float32'):
        make_engine('torch', ModelConfig(vocab_size=5), random.Random(0), 'bfloat16', 'cpu')
    with pytest.raises(MicrogptError, match=r'bfloat16 is autocast in the torch engine'):
        make_engine('numpy', ModelConfig(vocab_size=5), random.Random(0), 'bfloat16')


@pytest.mark.parametrize('device', ['cuda', 'cpu'])
def test_a_device_for_another_engine_is_a_one_line_error(device):
    """--device is the torch engine's, cpu included: with another engine it would change nothing."""
    from microgpt.train.setup import RunConfig
    with pytest.raises(MicrogptError, match=rf"device {device} is the torch engine's.*engine torch"):
        RunConfig(engine='numpy', device=device)


def test_torchrun_without_the_torch_engine_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    with pytest.raises(MicrogptError, match=r'started by torchrun.*add --engine torch'):
        make_engine('numpy', ModelConfig(vocab_size=5), random.Random(0))


def test_without_torch_installed_the_engine_says_how_to_install_it(monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'torch' else find_spec(name, *a))
    with pytest.raises(MicrogptError, match=r'pip install "\.\[torch\]" in microgpt.s folder'):
        make_engine('torch', ModelConfig(vocab_size=5), random.Random(0))


def test_a_batch_smaller_than_the_processes_is_a_one_line_error():
    from microgpt.engines.torch.devices import share
    assert [share(5, rank, 2) for rank in range(2)] == [(0, 2), (2, 5)]
    # a run resumed keeps its batch: the advice also names the processes it could take (it said only 'fewer')
    with pytest.raises(MicrogptError, match=r'--batch-size 1 gives some of the 2 processes no document; use a batch '
                                            r'of at least 2, or at most 1 processes \(a run resumed keeps its batch'):
        share(1, 1, 2)


# ---- benchmarks/gpu.sh

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')


@pytest.mark.slow  # starts a process that imports torch
def test_gpu_benchmark_without_a_gpu_says_so(torch):
    import subprocess
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(['bash', os.path.join(BENCHMARKS, 'gpu.sh')], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHON': sys.executable})  # this interpreter, not PATH's python
    assert proc.returncode == 2 and 'PyTorch sees no CUDA GPU here' in proc.stderr, (proc.returncode, proc.stderr)
    assert proc.stdout == '', proc.stdout


@pytest.mark.slow
def test_throughput_row_of_the_gpu_benchmark_runs_on_the_cpu(names_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, 'torch_throughput.py'), '--data', names_path,
                           '--model', 'makemore', '--device', 'cpu', '--steps', '2', '--warmup', '1',
                           '--batch-size', '4'], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, processes, device, dtype, batch, tokens_per_s, ms_per_step = proc.stdout.split()
    assert (model, processes, device, dtype, batch) == ('makemore', '1', 'cpu', 'float32', '4'), proc.stdout
    assert float(tokens_per_s) > 0 and float(ms_per_step) > 0, proc.stdout


# ---- on a GPU

def test_bfloat16_autocast_trains_on_a_cuda_gpu(torch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = ModelConfig(vocab_size=11, n_layer=2).validate()
    batch = random_batch(random.Random(8), cfg, 8, max_len=20)
    f64 = make_engine('torch', cfg, random.Random(9), 'float64', 'cpu')
    bf16 = make_engine('torch', cfg, random.Random(9), 'bfloat16', 'cuda')
    assert bf16.dtype == 'float32' and bf16.device.type == 'cuda', (bf16.dtype, bf16.device)
    want, got = f64.loss_and_grads(batch), bf16.loss_and_grads(batch)
    assert abs(got - want) <= 2e-2 * want, (got, want)
    tcfg = TrainConfig(steps=30, batch_size=8)
    losses = [bf16.train_step(batch, 0.01, tcfg) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0], losses
