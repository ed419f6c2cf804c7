"""Timings of the fused engine against the NumPy engine (and PyTorch) on two jobs, with a profile of a step.

    python benchmarks/bench_fused.py [--data names.txt] [--repeats 3]

1. microgpt's default job (1000 steps, batch 1, the default model): microseconds per step, through
   training.train (one train_step call per step) and through FusedEngine.train_steps (one call in all).
2. Where a fused step's time goes: the compiled step alone, numba's call overhead, the Python wrapper,
   and training.train's own loop.
3. makemore's size (n_layer 4, n_embd 64, n_head 4, block 16, batch 32): tokens per second for the NumPy
   engine (float64, float32), the fused engine (float64, float32; its batch split in groups on every core,
   parallel.py) and the torch engine (float32, float64; one thread, as it computes on a CPU), each in its
   own process, numpy and fused with one thread per core; then numpy and fused (float32) with --dropout 0.1, whose
   masks the fused engine draws inside its kernels (dropout.py).
Compilation is excluded (the fused engine is built, and so compiled or loaded from the cache, before timing).

    python benchmarks/bench_fused.py --old ../before/src [--new src] [--rounds 5] [--threads 1] [--dtypes float32,float64]

4. With --old, instead: the fused engine's makemore-size rows of another checkout's package (a commit since
   2c93167, whose package has what this script imports) and of this one's (--new), each round one process of each,
   taking turns to go first, so that both see the same machine load; the median tokens/s of each and their
   ratio. On a shared machine one thread (--threads 1) gives the steadiest ratio.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from itertools import islice

import numpy as np

from microgpt.bench.benchmark import prepared_job
from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import bundled_dataset_path
from microgpt.engines import make_engine
from microgpt.engines.fused.compile import compile_kernels
from microgpt.engines.fused.threads import thread_count
from microgpt.data import batch_for_step
from microgpt.train.loop import predicted_tokens, train

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')
MAKEMORE = {'n_layer': 4, 'n_embd': 64, 'n_head': 4, 'block_size': 16}
NEW_SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))


def time_train(engine_name, data, steps, dtype='float64', model=None, batch_size=1, mode='train'):
    """(seconds, predicted tokens) of `steps` steps of the seeded job, after building the engine."""
    rng, doc_tokens, cfg = prepared_job(data, 42, model)
    engine = make_engine(engine_name, cfg, rng, dtype)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size)
    tokens = sum(predicted_tokens(batch_for_step(doc_tokens, s, batch_size), cfg.block_size) for s in range(steps))
    start = time.perf_counter()
    if mode == 'train_steps':
        engine.train_steps(doc_tokens, 0, steps, tcfg)
    else:
        for _ in train(engine, doc_tokens, tcfg):
            pass
    return time.perf_counter() - start, tokens


def repeated(fn, repeats):
    """min and median seconds of `repeats` calls of fn() -> (seconds, tokens), and the tokens."""
    runs = [fn() for _ in range(repeats)]
    seconds = [s for s, _ in runs]
    return min(seconds), statistics.median(seconds), runs[0][1]


def default_job(data, repeats):
    print("1. default job: 1000 steps, batch 1, n_embd 16, n_head 4, n_layer 1, block 16 (float64)")
    print(f"   {'engine':<28} {'best us/step':>13} {'median':>9}")
    for label, engine, mode in (('numpy  (training.train)', 'numpy', 'train'),
                                ('fused  (training.train)', 'fused', 'train'),
                                ('fused  (train_steps)', 'fused', 'train_steps')):
        best, median, _ = repeated(lambda: time_train(engine, data, 1000, mode=mode), repeats)
        print(f"   {label:<28} {best * 1e3:>13.2f} {median * 1e3:>9.2f}")


def profile_step(data, repeats):
    """Per-step cost of each part of the fused path, on the default job's first document."""
    from numba import njit
    from microgpt.engines.fused import gpt
    from microgpt.engines.fused.compile import slp_vectorizer
    from microgpt.engines.fused.lanes import borrowed
    from microgpt.engines.fused.plan import pack_columns
    rng, doc_tokens, cfg = prepared_job(data, 42)
    engine = make_engine('fused', cfg, rng)
    tcfg, batch = TrainConfig(), [doc_tokens[0]]
    engine.train_steps(doc_tokens, 0, 1, tcfg, [1e-9])  # a run's first call: its chunks are the default job's from here
    n = 1000
    docs, doc_starts = engine._documents(batch)
    _, wss, plans = engine._group_buffers(1, doc_starts)                 # the workspace is sized by the first batch
    state, ws, plan, adam = engine.state_buffer, wss[0], plans[0], engine._adam_settings(tcfg)
    run_docs, run_starts = engine._documents(batch * n)                  # the document n times: n steps
    lrs, keys, losses = np.full(n, 1e-9), np.zeros(n, np.int64), np.empty(n)

    @njit
    def noop(a, b, c, d, e, f):
        return 0.0

    @njit
    def loss_in_one_call(state, ws, plan, docs, doc_starts, k, backward):
        """k of gpt.train_steps's steps without Adam; without `backward`, their forward alone (one function, so that
        the model compiles once for both). The kernels take borrowed arrays, as the entry points give them."""
        state, ws, plan, docs, doc_starts = borrowed(state), borrowed(ws), borrowed(plan), borrowed(docs), \
            borrowed(doc_starts)
        total = 0.0
        for _ in range(k):
            n = pack_columns(plan, docs, doc_starts, 0, 0, 1)
            if backward:
                total += gpt.group_loss_and_grads(state[0], state[1], ws, plan, n, n)
            else:
                total += gpt.group_loss(state[0], ws, plan, n, n)
        return total

    class NoEngine:  # training.train's own loop: batch selection, learning rate, StepReport, generator
        def __init__(self):
            self.cfg = cfg
            self.chunk_steps = engine.chunk_steps  # the default model's

        def train_steps(self, doc_tokens, start, stop, tcfg, lrs):
            return [0.0] * (stop - start)

    with slp_vectorizer():  # these loops compile the kernels into themselves, so as FusedEngine does
        noop(state, ws, plan, adam, 0.0, 1)
        loss_in_one_call(state, ws, plan, docs, doc_starts, 1, True)
    rows = [
        ('compiled steps (loss, grads, Adam), n in one call',
         lambda: gpt.train_steps(state, ws, plan, adam, run_docs, run_starts, 1, lrs, keys, 1, losses)),
        ('  of which loss and gradients', lambda: loss_in_one_call(state, ws, plan, docs, doc_starts, n, True)),
        ('  of which the forward', lambda: loss_in_one_call(state, ws, plan, docs, doc_starts, n, False)),
        ('numba call of a no-op with 6 arguments', lambda: [noop(state, ws, plan, adam, 0.0, 1) for _ in range(n)]),
        ('FusedEngine.train_step (wrapper + call + step)',
         lambda: [engine.train_step(batch, 1e-9, tcfg) for _ in range(n)]),
        ('training.train loop with a do-nothing engine',
         lambda: [r for r in train(NoEngine(), doc_tokens, TrainConfig(steps=n))]),
    ]
    print("2. profile of one default step (doc of", len(batch[0]) - 1, "predicted tokens); best of", repeats)
    fresh = state.copy()
    for label, fn in rows:
        best = float('inf')
        for _ in range(repeats):
            state[...] = fresh  # from the same state each time
            best = min(best, _seconds(fn))
        print(f"   {label:<58} {best / n * 1e6:>7.2f} us")


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def makemore_job(data, repeats, steps, with_torch):
    print(f"3. makemore size: n_layer 4, n_embd 64, n_head 4, block 16, batch 32; {steps} steps after 5 warm-up")
    print("   each row in a fresh process: two thread pools (the fused engine's and torch's OpenMP) in one")
    print("   process slow each other down")
    print(f"   {'engine':<28} {'tokens/s':>10} {'ms/step':>9}")
    runs = [('numpy', 'float64', 0), ('numpy', 'float32', 0), ('fused', 'float64', 0), ('fused', 'float32', 0)]
    if with_torch:
        runs += [('torch', 'float32', 0), ('torch', 'float64', 0)]
    runs += [('numpy', 'float32', 0.1), ('fused', 'float32', 0.1)]
    for engine, dtype, dropout in runs:
        command = [sys.executable, __file__, '--makemore-row', f'{engine}:{dtype}:{dropout}', '--data', data,
                   '--repeats', str(repeats), '--makemore-steps', str(steps)]
        result = subprocess.run(command, capture_output=True, text=True)
        label = f"{engine} {dtype}" + (f" dropout {dropout}" if dropout else "")
        if result.returncode != 0:
            print(f"   {label:<28} failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        tokens, best, threads = result.stdout.split()
        tokens, best = int(tokens), float(best)
        print(f"   {label:<28} {tokens / best:>10.0f} {best / steps * 1e3:>9.2f}   ({threads} threads)")


def makemore_row(row, data, repeats, steps):
    """Prints `tokens best_seconds threads` of one engine:dtype:dropout on the makemore-size job (run in its own
    process)."""
    engine, dtype, dropout = row.split(':')
    if engine == 'fused':
        compile_kernels(dtype)  # or load them; untimed
    best, _, tokens = repeated(lambda: time_makemore(engine, dtype, data, steps, float(dropout)), repeats)
    if engine == 'torch':
        from microgpt.engines.torch.engine import CPU_THREADS as threads  # more processes, not threads: torchrun
    else:
        threads = _blas_threads() if engine == 'numpy' else thread_count()
    print(tokens, best, threads)


def time_makemore(engine_name, dtype, data, steps, dropout=0.0, warmup=5):
    rng, doc_tokens, cfg = prepared_job(data, 42, MAKEMORE)
    engine = make_engine(engine_name, cfg, rng, dtype)
    tcfg = TrainConfig(steps=warmup + steps, batch_size=32, dropout=dropout)
    for _ in islice(train(engine, doc_tokens, tcfg, sync_every=(warmup,)), warmup):  # a chunk ends after the warm-up
        pass
    start, tokens = time.perf_counter(), 0
    for report in train(engine, doc_tokens, tcfg, start_step=warmup):  # in the engine's own chunks, as a run
        tokens += report.tokens
    return time.perf_counter() - start, tokens


def makemore_old_and_new(old_src, new_src, data, repeats, steps, rounds, threads, dtypes):
    from microgpt.bench.benchmark import cpu_name  # here: the rows run this script on an older package too
    print(f"4. makemore size, fused engine: {old_src} (old) and {new_src} (new) taking turns, {rounds} rounds of "
          f"best-of-{repeats} x {steps} steps; {threads or 'default'} threads; CPU: {cpu_name()}")
    print(f"   {'dtype':<8} {'old tokens/s':>13} {'new tokens/s':>13} {'new / old':>10}   (medians; each round's)")
    env = dict(os.environ, **({'NUMBA_NUM_THREADS': str(threads)} if threads else {}))
    for dtype in dtypes:
        rates = {'old': [], 'new': []}
        for round_ in range(rounds):
            trees = [('old', old_src), ('new', new_src)]
            for label, src in trees[::-1] if round_ % 2 else trees:  # each goes first every other round
                command = [sys.executable, __file__, '--makemore-row', f'fused:{dtype}:0', '--data', data,
                           '--repeats', str(repeats), '--makemore-steps', str(steps)]
                result = subprocess.run(command, capture_output=True, text=True, env=dict(env, PYTHONPATH=src))
                if result.returncode != 0:
                    sys.exit(f"the {label} tree ({src}) failed:\n" + '\n'.join(result.stderr.splitlines()[-8:]))
                tokens, best, _ = result.stdout.split()
                rates[label].append(int(tokens) / float(best))
        old, new = statistics.median(rates['old']), statistics.median(rates['new'])
        each = ' '.join(f'{o:.0f}/{n:.0f}' for o, n in zip(rates['old'], rates['new']))
        print(f"   {dtype:<8} {old:>13.0f} {new:>13.0f} {new / old:>10.3f}   ({each})")


def _blas_threads():
    """Threads NumPy's OpenBLAS uses: its environment variable, else one per core."""
    for name in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS'):
        if os.environ.get(name):
            return int(os.environ[name])
    return os.cpu_count()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else bundled_dataset_path()
    parser.add_argument('--data', default=default, help=f'documents to train on (default: {default})')
    parser.add_argument('--repeats', type=int, default=3, help='runs of each timing; the best is reported (default: 3)')
    parser.add_argument('--makemore-steps', type=int, default=50,
                        help='timed steps of the makemore-size job (default: 50)')
    parser.add_argument('--no-torch', action='store_true', help='skip the PyTorch timings')
    parser.add_argument('--only', choices=('default', 'profile', 'makemore'), help='run one part only')
    parser.add_argument('--old', metavar='SRC', help="another checkout's src folder: part 4 only")
    parser.add_argument('--new', metavar='SRC', default=NEW_SRC, help=f'with --old: the other (default: {NEW_SRC})')
    parser.add_argument('--rounds', type=int, default=5, help='with --old: processes of each tree (default: 5)')
    parser.add_argument('--threads', type=int, help='with --old: NUMBA_NUM_THREADS of each process')
    parser.add_argument('--dtypes', default='float32,float64', help='with --old: comma-separated (default: both)')
    parser.add_argument('--makemore-row', metavar='ENGINE:DTYPE', help=argparse.SUPPRESS)  # one row, in a subprocess
    args = parser.parse_args()
    if args.makemore_row:
        return makemore_row(args.makemore_row, args.data, args.repeats, args.makemore_steps)
    if args.old:
        if args.rounds < 1 or args.only or args.no_torch:
            parser.error('--old takes --rounds 1 or more, and neither --only nor --no-torch')
        from microgpt.bench.benchmark import source_tree  # here: the rows run this script on an older package too
        return makemore_old_and_new(source_tree(parser, args.old), source_tree(parser, args.new), args.data,
                                    args.repeats, args.makemore_steps, args.rounds, args.threads, args.dtypes.split(','))
    make_engine('fused', ModelConfig(vocab_size=3), random.Random(0))             # compile or load, untimed
    make_engine('fused', ModelConfig(vocab_size=3), random.Random(0), 'float32')
    print(f"data: {args.data}; numpy {np.__version__}; {os.cpu_count()} cores\n")
    if args.only in (None, 'default'):
        default_job(args.data, args.repeats)
    if args.only in (None, 'profile'):
        profile_step(args.data, args.repeats)
    if args.only in (None, 'makemore'):
        makemore_job(args.data, args.repeats, args.makemore_steps, not args.no_torch)


if __name__ == '__main__':
    main()
