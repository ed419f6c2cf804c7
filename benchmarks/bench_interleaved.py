"""Two trees' fused engines in one process, taking turns on the same batches: the makemore size's training step of
the new tree against the old one's, paired round by round.

    python benchmarks/bench_interleaved.py --old ../before/src [--new src] [--rounds 100] [--steps 32]
        [--dtypes float32,float64] [--threads 2]

bench_fused.py --old runs each tree in processes of its own, taking turns. On a shared machine whose speed drifts by
tens of percent within minutes, the medians of its 6-8 rounds move by 5% or more, and a change worth 3% goes unseen.
Here both packages are imported into one process, copied under the names microgpt_old and microgpt_new (the
package imports itself relatively, so a copy is a package of its own, with its own numba functions and threads).
Each builds its engine (compiling, or loading numba's cache the copy carries: untimed), then every round trains both
on the same `--steps` batches of 32 documents, one after the other, taking turns to go first. A round's two times
see the same machine within a fraction of a second: the median of their ratios, and its middle half, are what it
prints. One tree as both gives the noise floor (an Ice Lake server, 2026-12-03: medians 0.987-1.033 over 100 rounds
in four such runs).
"""

import argparse
import importlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')
NEW_SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))
MAKEMORE = {'n_layer': 4, 'n_embd': 64, 'n_head': 4, 'block_size': 16}
BATCH = 32


def imported_as(src, name, folder):
    """The microgpt package of `src` (a checkout's src folder), copied into `folder` as package `name` and imported."""
    shutil.copytree(os.path.join(src, 'microgpt'), os.path.join(folder, name), symlinks=True)
    return importlib.import_module(name)


def engine_of(package, dtype, cfg_fields, steps):
    """A fused engine of the makemore size from `package`, with its TrainConfig and `steps` learning rates."""
    config = importlib.import_module(package.__name__ + '.config')
    engines = importlib.import_module(package.__name__ + '.engines')
    engine = engines.make_engine('fused', config.ModelConfig(**cfg_fields), random.Random(42), dtype)
    tcfg = config.TrainConfig(steps=10**6, batch_size=BATCH)
    return engine, tcfg, [config.learning_rate(tcfg, step) for step in range(steps)]


def interleaved(runs, documents, rounds, steps):
    """Each round, both runs train on the round's batches, first in turn: (old seconds, new seconds) per round."""
    per_round, chunk = [], BATCH * steps
    for round_ in range(rounds + 1):  # round 0 warms both up (the engines size their workspaces): not kept
        start = round_ * chunk % (len(documents) - chunk + 1)
        batches, seconds = documents[start:start + chunk], [0.0, 0.0]
        for k in ((0, 1) if round_ % 2 else (1, 0)):
            engine, tcfg, lrs = runs[k]
            begin = time.perf_counter()
            for _ in engine.train_steps(batches, 0, steps, tcfg, lrs):
                pass
            seconds[k] = time.perf_counter() - begin
        if round_:
            per_round.append(tuple(seconds))
    return per_round


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else None
    parser.add_argument('--old', metavar='SRC', required=True, help="another checkout's src folder")
    parser.add_argument('--new', metavar='SRC', default=NEW_SRC, help=f'the other (default: {NEW_SRC})')
    parser.add_argument('--data', default=default, help=f'documents to train on (default: {default}, else the '
                                                        'bundled dataset)')
    parser.add_argument('--rounds', type=int, default=100, help='rounds of both trees (default: 100)')
    parser.add_argument('--steps', type=int, default=32, help='steps of each tree a round (default: 32)')
    parser.add_argument('--dtypes', default='float32,float64', help='comma-separated (default: both)')
    parser.add_argument('--threads', type=int, help='NUMBA_NUM_THREADS (default: one per core)')
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1 or (args.threads is not None and args.threads < 1):
        parser.error('--rounds, --steps and --threads take 1 or more')
    if args.threads:
        os.environ['NUMBA_NUM_THREADS'] = str(args.threads)  # before numba is imported
    from microgpt.bench.benchmark import cpu_name, prepared_job, source_tree
    from microgpt.data import bundled_dataset_path
    old_src, new_src = source_tree(parser, args.old), source_tree(parser, args.new)
    _, documents, cfg = prepared_job(args.data or bundled_dataset_path(), 42, MAKEMORE)
    documents = [list(document) for document in documents]
    if len(documents) < BATCH * args.steps:
        parser.error(f"{len(documents)} documents: a round takes {BATCH} a step, {BATCH * args.steps} in all")
    cfg_fields = {field: getattr(cfg, field) for field in ('vocab_size', *MAKEMORE)}
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, folder)
        old, new = imported_as(old_src, 'microgpt_old', folder), imported_as(new_src, 'microgpt_new', folder)
        print(f"makemore size, fused engine, batch {BATCH}: {old_src} (old) and {new_src} (new) in one process, "
              f"{args.rounds} rounds of {args.steps} steps each, taking turns; NUMBA_NUM_THREADS "
              f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}; CPU: {cpu_name()}")
        print(f"   {'dtype':<8} {'old ms/step':>12} {'new ms/step':>12} {'new speed / old':>16}   (median of the "
              f"rounds' ratios; their middle half)")
        for dtype in args.dtypes.split(','):
            runs = [engine_of(package, dtype, cfg_fields, args.steps) for package in (old, new)]
            per_round = interleaved(runs, documents, args.rounds, args.steps)
            ratios = sorted(old_seconds / new_seconds for old_seconds, new_seconds in per_round)
            quarter = len(ratios) // 4
            old_ms, new_ms = (statistics.median(times) / args.steps * 1e3 for times in zip(*per_round))
            print(f"   {dtype:<8} {old_ms:>12.3f} {new_ms:>12.3f} {statistics.median(ratios):>16.3f}   "
                  f"({ratios[quarter]:.3f}-{ratios[-1 - quarter]:.3f})")


if __name__ == '__main__':
    main()
