"""The default job's step through `microgpt train` itself, in two source trees side by side.

    python benchmarks/bench_cli_step.py --old ../before/src [--new src] [--rounds 6] [--steps 41000] [--repeats 3]
                                        [--dtype float32] [--python-only]

Each round runs one process of each tree (PYTHONPATH=its src), taking turns to go first, so that both see the same
machine load. A process calls `microgpt train --engine fused` through the package's own `cli.main`, output to
/dev/null: once untimed (compiling or loading the kernels), then --steps steps and 1,000 steps, best of --repeats
each; the difference per step between the two is the step (reading the data, building the model and sampling the
names cancel out). It prints each tree's median and their ratio, in wall time and in the process's CPU time (the
step runs on one thread; on a shared or virtual machine its CPU time leaves out the time others took the core).
A process imports nothing but `microgpt.cli`, so the old tree may be any commit with `cli.main(argv, out, err)`,
the issue's filing (3ef2197) included.
"""

import argparse
import io
import os
import statistics
import subprocess
import sys
import time

NEW_SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))


def step_microseconds(steps, repeats, dtype, python_only=False):
    """(wall, CPU): the marginal microseconds a step of `microgpt train --engine fused --dtype <dtype>` in this
    process's package; with `python_only`, its engine's train_steps returns a constant loss at once: the Python of the
    training loop and the CLI around the compiled steps."""
    from microgpt.cli import main as cli
    if python_only:
        import numpy as np
        from microgpt.engines.fused.engine import FusedEngine
        FusedEngine.train_steps = lambda self, doc_tokens, start, stop, tcfg, lrs=None: np.full(stop - start, 2.5)

    def run(n):
        with open(os.devnull, 'w') as out:
            wall, cpu = time.perf_counter(), time.process_time()
            cli(['train', '--engine', 'fused', '--dtype', dtype, '--steps', str(n)], out=out, err=io.StringIO())
            return time.perf_counter() - wall, time.process_time() - cpu

    run(300)  # compile or load the kernels, and warm the caches: untimed
    long, short = [[run(n) for _ in range(repeats)] for n in (steps, 1000)]
    return tuple((min(t[i] for t in long) - min(t[i] for t in short)) / (steps - 1000) * 1e6 for i in (0, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--old', metavar='SRC', required=True, help="the other checkout's src folder")
    parser.add_argument('--new', metavar='SRC', default=NEW_SRC, help=f'(default: {NEW_SRC})')
    parser.add_argument('--rounds', type=int, default=6, help='processes of each tree (default: 6)')
    parser.add_argument('--steps', type=int, default=41000, help='steps of the long run (default: 41000)')
    parser.add_argument('--repeats', type=int, default=3, help='runs of each length in a process (default: 3)')
    parser.add_argument('--dtype', choices=('float64', 'float32'), default='float64',
                        help='the engine\'s dtype (default: float64, the default job\'s)')
    parser.add_argument('--python-only', action='store_true',
                        help="time only the Python around the compiled steps (the engine's train_steps does nothing)")
    parser.add_argument('--row', action='store_true', help=argparse.SUPPRESS)  # one process's figure
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1 or args.steps <= 1000:
        parser.error('--rounds and --repeats take 1 or more, --steps more than 1000')
    if args.row:
        return print(*step_microseconds(args.steps, args.repeats, args.dtype, args.python_only))
    from microgpt.bench.benchmark import cpu_name, source_tree  # the controller's package; a row imports only cli
    trees = [('old', source_tree(parser, args.old)), ('new', source_tree(parser, args.new))]
    what = " (its Python only: the engine's train_steps does nothing)" if args.python_only else ""
    print(f"the default job's step through `microgpt train --engine fused --dtype {args.dtype}`{what}, {args.rounds} "
          f"rounds taking turns; each process the best of {args.repeats} x {args.steps} steps less the best of "
          f"{args.repeats} x 1000; CPU: {cpu_name()}")
    for label, src in trees:
        print(f"   {label}: {src}")
    times = {'old': [], 'new': []}  # (wall, CPU) of each round
    for round_ in range(args.rounds):
        for label, src in trees[::-1] if round_ % 2 else trees:
            command = [sys.executable, __file__, '--row', '--old', src, '--steps', str(args.steps),
                       '--repeats', str(args.repeats), '--dtype', args.dtype] + ['--python-only'] * args.python_only
            result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=src))
            if result.returncode != 0:
                sys.exit(f"the {label} tree ({src}) failed:\n" + '\n'.join(result.stderr.splitlines()[-8:]))
            times[label].append(tuple(map(float, result.stdout.split())))
    for i, clock in enumerate(('wall time', 'CPU time')):
        olds, news = [t[i] for t in times['old']], [t[i] for t in times['new']]
        old, new = statistics.median(olds), statistics.median(news)
        each = ' '.join(f'{o:.2f}/{n:.2f}' for o, n in zip(olds, news))
        print(f"   {clock}: old {old:.2f} us a step, new {new:.2f} (medians); old / new {old / new:.3f}   ({each})")


if __name__ == '__main__':
    main()
