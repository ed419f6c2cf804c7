"""What only the fused engine has: parallel groups that give the same bits on any number of threads, compiled
kernels cached per dtype (and the CLI's notice when it compiles them), and token ids checked before the kernels
read the weights. Its agreement with the other engines is in test_engines_agree.py."""

import dataclasses
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, learning_rate
from microgpt.engines import make_engine
from microgpt.engines.fused.engine import kernels_are_cached

from helpers import flat, random_batch, run_cli_subprocess


@pytest.mark.parametrize('dropout', [0.0, 0.2])
def test_split_batches_give_the_same_bits_on_any_number_of_threads(dropout):
    """Batches of 2+ documents run in groups on every core; the split depends on the batch size alone, and a
    dropout mask on the document alone, so one thread and two give the same parameters, bit for bit."""
    from microgpt.engines.fused import threads as fused_threads
    threads = fused_threads.thread_count()
    if threads == 1:
        pytest.skip("one numba thread: nothing to compare with")
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    tcfg = TrainConfig(steps=20, batch_size=9, weight_decay=0.1, grad_clip=1.0, dropout=dropout)
    docs = random_batch(random.Random(10), cfg, 23, max_len=10)
    lrs = [learning_rate(tcfg, s) for s in range(tcfg.steps)]
    results = []
    try:
        for n in (1, threads):
            fused_threads.set_threads(n)
            engine = make_engine('fused', cfg, random.Random(11))
            losses = engine.train_steps(docs, 0, tcfg.steps, tcfg, lrs)
            results.append((list(losses), flat(engine.weights())))
    finally:
        fused_threads.set_threads(None)
    (want_losses, want_weights), (got_losses, got_weights) = results
    assert got_losses == want_losses, (got_losses, want_losses)
    np.testing.assert_array_equal(got_weights, want_weights)


def test_kernels_are_compiled_and_cached_per_dtype():
    """Training on batches of one document runs the single kernels, on batches of 3 the grouped ones, and
    evaluation the grouped loss, in each dtype; each is compiled when first called, then cached."""
    cfg, tcfg = ModelConfig(vocab_size=7, n_layer=2), TrainConfig(steps=2)
    docs = random_batch(random.Random(2), cfg, 6, max_len=20)
    for dtype in ('float32', 'float64'):
        engine = make_engine('fused', cfg, random.Random(0), dtype)
        engine.train_steps(docs, 0, 2, dataclasses.replace(tcfg, batch_size=1))
        engine.train_steps(docs, 0, 2, dataclasses.replace(tcfg, batch_size=3))
        engine.loss(docs)
        assert kernels_are_cached(dtype, 1) and kernels_are_cached(dtype, 3, evaluates=True), dtype


HOLD_LOCK = """
import sys, time
from microgpt.engines.fused import compile, floating_point
with compile._compiling_alone(floating_point.start_flushing_here):
    print('locked', flush=True)
    sys.stdin.readline()
    print(time.monotonic(), flush=True)  # releases it after this
"""
COMPILE = """
import time
from microgpt.engines.fused import compile, floating_point
print('compiling', flush=True)
compile.compiled(floating_point.start_flushing_here, 'float64')
print(time.monotonic(), flush=True)
"""


def test_a_process_waits_while_another_compiles_the_same_entry_point(tmp_path):
    """Processes starting together on a cold cache compile an entry point once: the second waits for the lock
    the first holds while compiling, then loads what it cached (on systems with fcntl's file locks)."""
    pytest.importorskip('fcntl', reason="no fcntl file locks here: each process compiles for itself")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / 'numba-cache'))
    python = [sys.executable, '-c']
    pipes = dict(env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with subprocess.Popen(python + [HOLD_LOCK], **pipes) as first:
        assert first.stdout.readline() == 'locked\n'
        with subprocess.Popen(python + [COMPILE], **pipes) as second:
            assert second.stdout.readline() == 'compiling\n'
            time.sleep(2)  # the small function compiles in well under that when nothing holds the lock
            first.stdin.write('\n')
            first.stdin.flush()
            released = float(first.stdout.readline())
            compiled = float(second.stdout.readline())
    assert first.returncode == second.returncode == 0
    assert compiled > released, (compiled, released)


def test_bad_token_ids_raise_instead_of_reading_outside_the_weights():
    engine = make_engine('fused', ModelConfig(vocab_size=5), random.Random(0))
    for batch in ([[4, 1, 5, 4]], [[4, 1, 4], [4, -1, 4]]):
        with pytest.raises(ValueError, match='outside the vocabulary'):
            engine.loss_and_grads(batch)
    with pytest.raises(ValueError, match='outside the vocabulary or the block'):
        engine.decoder().step(0, engine.cfg.block_size)


@pytest.mark.slow
def test_first_run_says_it_compiles_and_a_cached_run_does_not(tmp_path, monkeypatch):
    """With an empty numba cache the CLI announces the compilation on stderr; the next run loads the cache."""
    monkeypatch.setenv('NUMBA_CACHE_DIR', str(tmp_path / 'numba-cache'))
    runs = [run_cli_subprocess('train', '--engine', 'fused', '--steps', '3', '--num-samples', '1') for _ in range(2)]
    (code1, out1, err1), (code2, out2, err2) = runs
    assert code1 == code2 == 0, (err1, err2)
    assert b"compiling the fused engine's kernels" in err1 and b'compiling' not in err2, (err1, err2)
    assert out1 == out2
