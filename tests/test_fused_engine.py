"""What only the fused engine has: parallel groups that give the same bits on any number of threads, compiled
kernels cached per dtype (and the CLI's notice when it compiles them), and token ids checked before the kernels
read the weights. Its agreement with the other engines is in test_engines_agree.py."""

import dataclasses
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, learning_rate
from microgpt.engines import make_engine
from microgpt.engines.fused.engine import kernels_are_cached

from helpers import QUICK_DTYPES, flat, random_batch


@pytest.mark.parametrize('dropout', [0.0, 0.2])
def test_split_batches_give_the_same_bits_on_any_number_of_threads(dropout):
    """Batches of 2+ documents run in groups on threads (parallel.py); the split depends on the batch size alone,
    and a dropout mask on the document alone, so one thread, two and three (4 groups: unevenly shared) give the
    same losses, evaluations and parameters, bit for bit. A thread runs its groups one after another in the
    workspace of its first group, and the other groups' workspaces are never written (half the memory a step
    touches on two threads: faster, docs/PERFORMANCE.md)."""
    from microgpt.engines.fused import threads as fused_threads
    cfg = ModelConfig(vocab_size=12, n_layer=2, block_size=7)
    tcfg = TrainConfig(steps=20, batch_size=9, weight_decay=0.1, grad_clip=1.0, dropout=dropout)
    docs = random_batch(random.Random(10), cfg, 23, max_len=10)
    lrs = [learning_rate(tcfg, s) for s in range(tcfg.steps)]
    results = []
    try:
        for n in (1, 2, 3):
            fused_threads.set_threads(n)
            engine = make_engine('fused', cfg, random.Random(11))
            losses = list(engine.train_steps(docs, 0, tcfg.steps, tcfg, lrs))
            results.append((losses + [engine.loss(docs), engine.loss_and_grads(docs[:5])], flat(engine.weights())))
            written = [bool(engine._wss[g].any()) for g in range(engine._wss.shape[0])]
            assert written == {1: [True, False, False, False], 2: [True, False, True, False],
                               3: [True, True, True, False]}[n], (n, written)
    finally:
        fused_threads.set_threads(None)
    (want_losses, want_weights), *others = results
    for got_losses, got_weights in others:
        assert got_losses == want_losses, (got_losses, want_losses)
        np.testing.assert_array_equal(got_weights, want_weights)


def test_set_threads_takes_a_whole_number_of_at_least_one():
    from microgpt.engines.fused.threads import set_threads
    for bad in (0, -1, 2.5, '3', True):
        with pytest.raises((ValueError, TypeError), match='threads must be|integer'):
            set_threads(bad)
    set_threads(None)


def test_runs_from_two_python_threads_take_turns(monkeypatch):
    """The threads of a run wait for each other at barriers, so they must all run at once. Two runs sharing the
    pool whose submissions interleave (forced here by a pause after each) would each hold workers the other
    waits for: with compiled barriers both spun for ever (seen with two engines on two Python threads). Runs now
    take turns. Here the entry point is Python, with a barrier that times out instead of spinning."""
    from concurrent.futures import ThreadPoolExecutor
    from microgpt.engines.fused import threads as fused_threads
    submit = ThreadPoolExecutor.submit

    def slow_submit(pool, *args, **kwargs):
        future = submit(pool, *args, **kwargs)
        time.sleep(0.02)
        return future

    monkeypatch.setattr(ThreadPoolExecutor, 'submit', slow_submit)
    monkeypatch.setattr(fused_threads, '_pool', None)  # a new pool: 3 workers for runs of 4 threads
    results = [None, None]

    def run(i):
        meeting = threading.Barrier(4, timeout=5)

        def entry_point(thread, threads, cells):
            meeting.wait()
            return thread

        try:
            results[i] = fused_threads.run_on_threads(entry_point, 4)
        except threading.BrokenBarrierError:
            results[i] = 'its threads never met'

    runs = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    assert results == [0, 0], results


def test_an_error_on_one_thread_alone_abandons_the_run():
    """A thread other than 0 that raises where the others do not (out of memory, say) would leave them waiting
    for it at a barrier for ever: the run is abandoned, thread 0 leaves its barrier, and the error reaches the
    caller. Here the entry point is Python, and thread 0's barrier a loop on the run's cells."""
    from microgpt.engines.fused import threads as fused_threads
    left = []

    def entry_point(thread, threads, cells):
        if thread == 1:
            raise MemoryError("no memory on thread 1")
        deadline = time.monotonic() + 10
        while not cells[fused_threads._ABANDONED] and time.monotonic() < deadline:
            time.sleep(0.001)
        left.append('abandoned' if cells[fused_threads._ABANDONED] else 'waited in vain')

    with pytest.raises(MemoryError, match='thread 1'):
        fused_threads.run_on_threads(entry_point, 2)
    assert left == ['abandoned'], left


INTERRUPTED_BEFORE_THREAD_ZERO = """
import random, time
import numpy as np
from microgpt.config import ModelConfig
from microgpt.engines import make_engine
from microgpt.engines.fused import parallel, threads
threads.set_threads(2)
engine = make_engine('fused', ModelConfig(vocab_size=7), random.Random(1))
batch = [[6, 1, 2, 6], [6, 3, 6], [6, 4, 5, 1, 6], [6, 2, 6]]
want = engine.loss_and_grads(batch)  # compiles parallel.steps
def interrupted_on_thread_zero(entry_point, *args):
    def entry(thread, *rest):
        if thread == 0:
            time.sleep(0.2)  # the other thread is at its first barrier by now
            raise KeyboardInterrupt
        return entry_point(thread, *rest)
    return threads.run_on_threads(entry, *args)
parallel.run_on_threads = interrupted_on_thread_zero
try:
    engine.loss_and_grads(batch)
except KeyboardInterrupt:
    print('interrupted')
parallel.run_on_threads = threads.run_on_threads
assert engine.loss_and_grads(batch) == want
print('ok')
"""


@pytest.mark.slow(seconds=3)  # a new interpreter
def test_a_run_interrupted_before_thread_zero_starts_lets_the_other_threads_go():
    """Ctrl-C between starting the other threads and thread 0's own call: the others wait for thread 0 at a
    barrier, and used to spin there for ever (the next run hung, or the exit did). The run is abandoned: they
    return, and the next run works."""
    result = subprocess.run([sys.executable, '-c', INTERRUPTED_BEFORE_THREAD_ZERO], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ['interrupted', 'ok'], result.stderr[-2000:]


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_kernels_are_compiled_and_cached_per_dtype(dtype):
    """Training on batches of one document runs the single kernels, on batches of 3 the grouped ones, and
    evaluation the grouped loss, in each dtype; each is compiled when first called, then cached."""
    cfg, tcfg = ModelConfig(vocab_size=7, n_layer=2), TrainConfig(steps=2)
    docs = random_batch(random.Random(2), cfg, 6, max_len=20)
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


@pytest.mark.slow(seconds=3)  # fresh interpreters, one compiling
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
        with pytest.raises(ValueError, match='not a token id'):
            engine.loss_and_grads(batch)
    with pytest.raises(ValueError, match='outside the vocabulary or the block'):
        engine.decoder().step(0, engine.cfg.block_size)


def test_chunks_grow_for_one_document_a_step_and_change_no_bits(monkeypatch):
    """The default model (4,192 parameters) trains 250 steps per compiled call once its batches are of one document
    (64 before the first call, and for batches of 2+); chunks of any length give the same losses and weights."""
    from microgpt.train.loop import train
    cfg = ModelConfig(vocab_size=27)
    docs = random_batch(random.Random(3), cfg, 40, max_len=12)
    tcfg = TrainConfig(steps=300)
    engine = make_engine('fused', cfg, random.Random(1))
    assert engine.chunk_steps == 64, engine.chunk_steps
    reports = list(train(engine, docs, tcfg))
    assert engine.chunk_steps == 250, engine.chunk_steps
    assert [r.step for r in reports if r.synced] == [64, 300], [r.step for r in reports if r.synced]
    batched = make_engine('fused', cfg, random.Random(1))
    list(train(batched, docs, TrainConfig(steps=2, batch_size=2)))
    assert batched.chunk_steps == 64, batched.chunk_steps
    chunked = make_engine('fused', cfg, random.Random(1))
    monkeypatch.setattr(type(chunked), 'chunk_steps', 7)
    assert [r.loss for r in train(chunked, docs, tcfg)] == [r.loss for r in reports]
    assert np.array_equal(chunked.flat, engine.flat)


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_the_workspace_starts_on_a_cache_line_and_its_rows_are_an_odd_number_of_lines_apart(dtype):
    """The fused engine's workspace starts on a 64-byte boundary whatever numpy's allocator gives (16 bytes is all
    it promises), and so does every row: the matrix products' 512-bit loads then never straddle two cache lines.
    Its rows are an odd number of cache lines long, so that a product's column block, read row after row, spreads
    over every set of the L1 cache (engine.row_length: rows of 128 float32 columns fit 8 of its 64 sets).
    aligned_zeros keeps np.zeros' shape, dtype and zeros."""
    from microgpt.engines.fused.engine import aligned_zeros, row_length
    from microgpt.engines.fused.matmul import VECTOR_BYTES
    for shape in ((1,), (3, 5), (2, 7, 9)):
        for _ in range(4):  # allocations at several addresses
            z = aligned_zeros(shape, dtype)
            assert z.ctypes.data % VECTOR_BYTES == 0 and z.shape == shape and z.dtype == dtype and not z.any()
    itemsize = np.dtype(dtype).itemsize
    for columns in range(1, 300):
        length = row_length(columns, itemsize)
        assert length >= columns and length * itemsize % 128 == 64, (columns, length)
        assert (length - 2 * 64 // itemsize < columns), (columns, length)  # the next odd number of lines, no more
    assert (row_length(128, 4), row_length(128, 8), row_length(16, 4), row_length(16, 8)) == (144, 136, 16, 24)
    cfg = ModelConfig(vocab_size=12, n_layer=1, block_size=16)
    tcfg = TrainConfig(steps=2, batch_size=8)  # groups of 2 documents: rows of 32 columns, 2 float32 lines, then 3
    for lengths in ((16,) * 8, (3, 5, 2, 9, 4, 1, 7, 6)):  # positions a document
        docs = [[cfg.bos_id] + [1 + i % 10] * (n - 1) + [cfg.bos_id] for i, n in enumerate(lengths)]
        engine = make_engine('fused', cfg, random.Random(4), dtype=dtype)
        list(engine.train_steps(docs, 0, tcfg.steps, tcfg, [0.01] * tcfg.steps))
        wss = engine._wss  # (groups, rows, columns)
        assert wss.shape[2] == row_length(32, itemsize) == {'float32': 48, 'float64': 40}[dtype], wss.shape
        assert wss.ctypes.data % VECTOR_BYTES == 0 and wss.shape[2] * wss.itemsize % 128 == 64, wss.shape
        assert all(wss[g, r].ctypes.data % VECTOR_BYTES == 0 for g in range(wss.shape[0]) for r in range(wss.shape[1]))


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_the_workspace_is_scratch_its_columns_past_a_batch_read_by_no_kernel(dtype):
    """Every value a step reads from the workspace it wrote in the same step: filled with NaN between two calls, the
    loss and gradients of a batch are the same bits. So the columns past a group's own may hold anything, which
    lets float32's activation products run over them (matmul.product_columns: 56 columns as two blocks of 32, where
    the CPU takes that block, and only 24 past a multiple of 32; here groups of 8 documents of 2 to 9 positions, in
    rows of 144 float32 or 136 float64 columns)."""
    from numba import njit
    from microgpt.engines.fused import lanes, matmul
    cfg = ModelConfig(vocab_size=27, n_layer=2, n_embd=32, n_head=4, block_size=16)
    rng = random.Random(6)
    batch = [[26] + [rng.randrange(26) for _ in range(rng.randrange(1, 9))] + [26] for _ in range(31)]
    batch.append([26] + list(range(15)) + [26])  # 16 positions: rows of 8 x 16 columns
    group_columns = [sum(len(doc) - 1 for doc in batch[g:g + 8]) for g in range(0, 32, 8)]
    assert [-(-n // 8) * 8 % 32 for n in group_columns] == [24, 8, 16, 0], group_columns  # widened: the first
    engine = make_engine('fused', cfg, random.Random(3), dtype=dtype)
    want, want_grads = engine.loss_and_grads(batch), engine.gradients()
    assert engine._wss.shape[2] == {'float32': 144, 'float64': 136}[dtype], engine._wss.shape
    engine._wss[...] = np.nan
    assert engine.loss_and_grads(batch) == want
    for name, grad in engine.gradients().items():
        assert np.array_equal(grad, want_grads[name]), name
    widens = matmul.WIDE_FLOAT32 and lanes.PREFERS_256_BIT_VECTORS and dtype == 'float32'
    columns = njit(lambda out, nb, room: matmul.product_columns(out, nb, room))
    ws = engine._wss[0]
    cases = ((56, 128), (56, 56), (24, 32), (64, 128), (40, 128), (48, 128), (8, 16))
    assert [columns(ws, nb, room) for nb, room in cases] == \
        ([64, 56, 32, 64, 40, 48, 8] if widens else [56, 56, 24, 64, 40, 48, 8])
