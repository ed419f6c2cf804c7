"""Old against new engine (numpy, or fused with --engine fused), side by side: the default `microgpt train` job
(float64, batch 1, 1000 steps on the bundled names) through the training loop, alternating between two worker
processes.

One worker imports microgpt from another source tree (default /work/base/src, the code before the redesign),
the other from this repository's src/. Each run builds a fresh engine from seed 42, as `microgpt train` does
(through train.setup.prepare_run where the code has it, so the documents are what `microgpt train` reads;
--lists: token lists for both), and times only the loop over train()'s reports. The workers take turns, run after
run, so that both see the same machine load. A process keeps its memory layout and core for good, which moved one
tree against the other by up to 4% (the same tree against itself: 0.96 to 1.04 per pair); --rounds N starts N
pairs, one after the other, and a difference of a few percent needs 20 of them. The script prints us/step (median
and best) of each, their ratio (over all runs, and per round), and the CPU's name, and compares their 1000 losses
and final weights: bit for bit, or, since Adam's two bias corrections became multiplications (which moves results
by an ulp), within 1e-9 per loss.

With --cli it times the whole command instead, as a user runs it: `python -m microgpt train --steps N` of each
tree (a new process each run, start-up, data loading and printing included), taking turns, and prints the wall
and CPU seconds (user + system of the process) of each, and their ratio.

With --engine fused, the same for the fused engine (its kernels compiled, or loaded from numba's cache, in each
worker's untimed first run; with --cli, in each tree's untimed first command).

    python benchmarks/bench_numpy.py [--old /work/base/src] [--new src] [--rounds 5] [--repeats 3] [--steps 1000]
                                     [--lists] [--engine numpy|fused]
    python benchmarks/bench_numpy.py --cli [--old /work/base/src] [--new src] [--repeats 7] [--steps 1000]
                                     [--engine numpy|fused]
"""

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW_SRC = Path(__file__).resolve().parent.parent / 'src'
LOSS_TOLERANCE = 1e-9  # an ulp in Adam's update, carried through 1000 steps


def worker(steps, lists, engine_name):
    """Answer each line on stdin with one timed run of the default job, as a JSON line on stdout."""
    import random

    from microgpt.config import ModelConfig, TrainConfig
    from microgpt.data import Vocabulary, bundled_dataset_path, load_documents, shuffled
    from microgpt.engines import make_engine
    try:
        from microgpt.train.loop import train
    except ImportError:  # the layout before the redesign
        from microgpt.training import train
    try:
        from microgpt.train.setup import prepare_run
    except ImportError:  # the code before the one run setup
        prepare_run = None

    documents = load_documents(bundled_dataset_path())
    for _ in sys.stdin:
        if prepare_run is not None and not lists:
            run = prepare_run(bundled_dataset_path(), {}, TrainConfig(steps=steps), engine=engine_name)
            engine, doc_tokens = run.engine, run.train_tokens
        else:
            rng = random.Random(42)
            docs = shuffled(documents, rng)
            vocab = Vocabulary.from_documents(docs)
            cfg = ModelConfig(vocab_size=vocab.size).validate()
            doc_tokens = [vocab.document_tokens(d) for d in docs]
            engine = make_engine(engine_name, cfg, rng, 'float64')
        losses = []
        start, start_cpu = time.perf_counter(), time.process_time()
        for report in train(engine, doc_tokens, TrainConfig(steps=steps)):
            losses.append(report.loss)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        result = {'seconds': seconds, 'cpu_seconds': cpu_seconds, 'losses': losses,
                  'weights': hashlib.sha256(engine.flat.tobytes()).hexdigest(), 'last_loss': losses[-1]}
        print(json.dumps(result), flush=True)


def start_worker(src, steps, lists, engine):
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED='0')
    return subprocess.Popen([sys.executable, __file__, '--worker', '--steps', str(steps), '--engine', engine]
                            + ['--lists'] * lists,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_once(proc):
    proc.stdin.write('run\n')
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"a worker ended without answering (exit code {proc.wait()})")
    return json.loads(line)


def command_run(src, steps, cwd, engine):
    """(wall seconds, CPU seconds) of one `python -m microgpt train --steps N --engine E` process importing microgpt
    from src."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED='0')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, '-m', 'microgpt', 'train', '--steps', str(steps), '--engine', engine],
                          env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:  # the fused engine's notices go to stderr: shown only when the run fails
        raise SystemExit(f"`microgpt train` of {src} failed (exit code {done.returncode}):\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def compare_commands(trees, steps, repeats, engine):
    """The whole default command of each tree, taking turns after one untimed run each (which fills any cache)."""
    times = {(name, clock): [] for name in trees for clock in ('wall', 'cpu')}
    with tempfile.TemporaryDirectory() as cwd:  # each tree writes its run's files here, not into the repository
        for name, src in trees.items():
            command_run(src, steps, cwd, engine)
        for _ in range(repeats):
            for name, src in trees.items():
                wall, cpu = command_run(src, steps, cwd, engine)
                times[name, 'wall'].append(wall)
                times[name, 'cpu'].append(cpu)
    from microgpt.bench.benchmark import cpu_name  # here, not at the top: the workers import older packages
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); `python -m microgpt train --steps {steps} --engine "
          f"{engine}` (float64, batch 1), {repeats} processes each, taking turns")
    print(f"old = {trees['old']}, new = {trees['new']}")
    for clock, title in (('wall', 'wall clock'), ('cpu', 'CPU time of the process (user + system)')):
        print(f"{title}:")
        for name in trees:
            median, best = statistics.median(times[name, clock]), min(times[name, clock])
            print(f"  {name}: median {median:6.3f} s, best {best:6.3f} s")
        median_ratio = statistics.median(times['new', clock]) / statistics.median(times['old', clock])
        print(f"  new / old: median {median_ratio:.3f}, best {min(times['new', clock]) / min(times['old', clock]):.3f}")


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--old', default='/work/base/src', help="source tree of the old code (default: %(default)s)")
    parser.add_argument('--new', default=str(NEW_SRC), help="source tree of the new code (default: %(default)s)")
    parser.add_argument('--repeats', type=positive,
                        help="timed runs of each, alternating: per round (default: 3), or with --cli in all (default: 7)")
    parser.add_argument('--rounds', type=positive, default=5,
                        help="new pairs of processes, each running --repeats runs; not with --cli, which starts a "
                             "process per run (default: %(default)s; a difference of a few percent needs 20)")
    parser.add_argument('--steps', type=int, default=1000, help="training steps per run (default: %(default)s)")
    parser.add_argument('--engine', choices=('numpy', 'fused'), default='numpy',
                        help="the engine of both (default: %(default)s; fused: its kernels compiled or loaded in the "
                             "untimed first run)")
    parser.add_argument('--lists', action='store_true',
                        help="both read the documents as token lists, not through the new code's run setup")
    parser.add_argument('--cli', action='store_true',
                        help="time whole `microgpt train` processes of each tree instead of the training loop alone")
    parser.add_argument('--worker', action='store_true', help="internal: be a worker on stdin/stdout")
    args = parser.parse_args()
    if args.cli and args.rounds != parser.get_default('rounds'):
        parser.error("--rounds is for the training loop's worker pairs; --cli starts a new process for every run")
    if args.worker:
        worker(args.steps, args.lists, args.engine)
        return
    from microgpt.bench.benchmark import source_tree  # here, not at the top: the workers import older packages
    args.old, args.new = source_tree(parser, args.old), source_tree(parser, args.new)
    repeats = args.repeats or (7 if args.cli else 3)
    if args.cli:  # absolute: the processes run in a temporary folder
        compare_commands({'old': args.old, 'new': args.new}, args.steps, repeats, args.engine)
        return
    times = {(name, clock): [] for name in ('old', 'new') for clock in ('seconds', 'cpu_seconds')}
    round_ratios = {'seconds': [], 'cpu_seconds': []}
    results = {}
    for round_ in range(args.rounds):
        # a new pair of processes each round: a process keeps its memory layout and core for all its runs, which
        # biased one tree's runs against the other's by up to 4% (the same code against itself: 0.96 to 1.04)
        order = ('old', 'new') if round_ % 2 == 0 else ('new', 'old')
        workers = {name: start_worker(getattr(args, name), args.steps, args.lists, args.engine) for name in order}
        round_times = {(name, clock): [] for name in workers for clock in ('seconds', 'cpu_seconds')}
        try:
            for name, proc in workers.items():  # untimed warm-up: imports, caches, first allocations
                results[name] = run_once(proc)
            for _ in range(repeats):
                for name, proc in workers.items():
                    result = run_once(proc)
                    for clock in ('seconds', 'cpu_seconds'):
                        round_times[name, clock].append(1e6 * result[clock] / args.steps)
                    results[name] = result
        finally:
            for proc in workers.values():
                proc.stdin.close()
                proc.wait()
        for key, values in round_times.items():
            times[key] += values
        for clock in round_ratios:
            round_ratios[clock].append(statistics.median(round_times['new', clock]) /
                                       statistics.median(round_times['old', clock]))
    from microgpt.bench.benchmark import cpu_name
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); {args.engine} engine, float64, batch 1, "
          f"{args.steps} steps, "
          f"{args.rounds} rounds (a new pair of processes each) of {repeats} alternating runs of each"
          + (", token lists" if args.lists else ", new: run setup's documents"))
    print(f"old = {args.old}, new = {args.new}")
    for clock, title in (('seconds', 'wall clock'), ('cpu_seconds', 'CPU time (less disturbed by other load)')):
        print(f"{title}:")
        for name in ('old', 'new'):
            print(f"  {name}: median {statistics.median(times[name, clock]):7.1f} us/step, "
                  f"best {min(times[name, clock]):7.1f} us/step")
        median_ratio = statistics.median(times['new', clock]) / statistics.median(times['old', clock])
        ratios = sorted(round_ratios[clock])
        print(f"  new / old: median {median_ratio:.3f}, best {min(times['new', clock]) / min(times['old', clock]):.3f}; "
              f"per round {statistics.median(ratios):.3f} (median), {ratios[0]:.3f} to {ratios[-1]:.3f}")
    print(f"last loss: old {results['old']['last_loss']:.6f}, new {results['new']['last_loss']:.6f}")
    if all(results['new'][key] == results['old'][key] for key in ('losses', 'weights')):
        print("losses and final weights: bit-identical")
        return
    largest = max(abs(a - b) for a, b in zip(results['new']['losses'], results['old']['losses']))
    print(f"losses: largest difference {largest:.2e} (final weights differ)")
    if largest > LOSS_TOLERANCE:
        raise SystemExit(f"the losses differ by more than {LOSS_TOLERANCE}")


if __name__ == '__main__':
    main()
