"""Cold and warm start of the fused engine: whole `microgpt train` processes, first with an empty numba cache
(compiling every kernel the run calls), then again with it filled.

    python benchmarks/bench_cold_start.py [--data names.txt] [--steps 50] [--dtypes float64 float32]
                                          [--jobs default makemore] [--old ../before/src]

For the default job (batch 1) and the makemore preset (batches of 32: the parallel kernels), each dtype: the
wall time and the CPU time (user + system of the process) of the cold run and of the warm run, and the CPU
seconds the cold run spent more than the warm one, which is the compilation. Each cold run gets its own empty
NUMBA_CACHE_DIR, so runs never share a cache. Each run must say what it does: the cold one that it compiles, the warm
one nothing (microgpt's notice on standard error); otherwise the script stops with an error, as its figures would not
be a cold and a warm start.

With --old, another checkout's src folder (the issue's filing, 3ef2197, for one) runs each job too, just before this
tree, and a line gives the ratio of their cold wall times: a machine's speed cancels out of it.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from microgpt.bench.benchmark import cpu_name, source_tree

NEW_SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src'))

JOBS = {'default': ('default job', []), 'makemore': ('makemore preset', ['--preset', 'makemore'])}


COMPILE_NOTICE = b"microgpt: compiling the fused engine's kernels"  # what a run says on standard error as it compiles


def timed_run(argv, cache_dir, src):
    """(wall seconds, CPU seconds, whether it said it compiled) of one `python -m microgpt` process of the package in
    the folder `src`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, 'NUMBA_CACHE_DIR': cache_dir,
           'PYTHONPATH': os.pathsep.join(filter(None, [src, os.environ.get('PYTHONPATH')]))}
    run = subprocess.run([sys.executable, '-m', 'microgpt', *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env)
    if run.returncode != 0:  # microgpt's own line (a bad --data, say), not a traceback of this script
        sys.exit(f"bench_cold_start.py: `microgpt {' '.join(argv)}` of {src} failed (exit status {run.returncode}):\n"
                 + run.stderr.decode(errors='replace').strip()[-2000:])
    err = run.stderr
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), COMPILE_NOTICE in err


def main():
    parser = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    parser.add_argument('--data', help='data file (default: the bundled dataset)')
    parser.add_argument('--steps', type=int, default=50, help="each run's steps (default: 50)")
    parser.add_argument('--dtypes', nargs='+', default=['float64', 'float32'], choices=('float64', 'float32'))
    parser.add_argument('--jobs', nargs='+', default=list(JOBS), choices=list(JOBS))
    parser.add_argument('--old', metavar='SRC', help="another checkout's src folder, run before this tree's")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error('--steps takes 1 or more')
    trees = [('new', NEW_SRC)]
    if args.old is not None:
        trees.insert(0, ('old', source_tree(parser, args.old)))
        print(f"old: {trees[0][1]}\nnew: {NEW_SRC}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    side_by_side = args.old is not None
    print(f"| job | dtype |{' tree |' * side_by_side} cold wall s | cold CPU s | warm wall s | warm CPU s "
          f"| compiling, CPU s |")
    print(f"| --- | --- |{' --- |' * side_by_side} ---: | ---: | ---: | ---: | ---: |")
    for job, flags in (JOBS[name] for name in args.jobs):
        for dtype in args.dtypes:
            argv = ['train', '--engine', 'fused', '--dtype', dtype, '--steps', str(args.steps), *flags]
            if args.data:
                argv += ['--data', args.data]
            cold_walls = []
            for label, src in trees:
                with tempfile.TemporaryDirectory() as cache_dir:
                    cold = timed_run(argv, cache_dir, src)
                    warm = timed_run(argv, cache_dir, src)
                cold_walls.append(cold[0])
                print(f"| {job} | {dtype} |{f' {label} |' * side_by_side} {cold[0]:.1f} | {cold[1]:.1f} "
                      f"| {warm[0]:.2f} | {warm[1]:.2f} | {cold[1] - warm[1]:.1f} |", flush=True)
                if not cold[2] or warm[2]:  # the cache was not empty, or not kept: these are not a cold start's
                    sys.exit(f"bench_cold_start.py: the {label} tree's {job} in {dtype} did not say it compiles on "
                             f"its first run and not on its second (said so: {cold[2]}, {warm[2]}); its figures are "
                             f"not a cold and a warm start")
            if side_by_side:
                print(f"|   {job}, {dtype}: cold wall old / new {cold_walls[0] / cold_walls[1]:.2f}x |", flush=True)


if __name__ == '__main__':
    main()
