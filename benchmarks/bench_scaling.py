"""Training tokens per second of the fused engine and the torch engine across model sizes, in one run.

    python benchmarks/bench_scaling.py                              # the table, 5-10 minutes on a busy 2-core machine
    python benchmarks/bench_scaling.py --plot docs/scaling.png      # and its plot
    python benchmarks/bench_scaling.py --n-embd 16,64 --n-layer 1   # a smaller grid
    python benchmarks/bench_scaling.py --threads 1,2                # both engines at 1 and at 2 threads

The makemore-like setup (the makemore preset's model and optimiser: block 16, batch 32, n_head 4, AdamW) in
float32 at every n_embd x n_layer of the grid, through train.loop.train as `microgpt train` runs it. Each engine
runs in its own process, because two thread pools in one process (the fused engine's and torch's) slow each
other down; the parent alternates between the two processes (fused, torch, fused, torch at each size), so a
ratio is taken under the same machine load, and keeps each engine's best of --repeats. Both engines get the same
number of threads (--threads): the fused engine's (parallel.py), and PyTorch's intra-op threads (the torch engine uses its
CPU_THREADS on a CPU, one, which this benchmark sets to --threads). Several thread counts (--threads 1,2) run
a process per engine and count, all alternating. On a busy machine give --threads 1: with more, every parallel
region waits for its threads to be scheduled, and both engines slow down several times (docs/PERFORMANCE.md).

Per measurement: the engine is built at that size (the fused kernels are compiled, or loaded from numba's disk
cache, once per process: numba compiles per dtype, not per size), two untimed warm-up steps, then steps in
chunks of about --chunk-seconds until --seconds have passed. Tokens are predicted characters (padding
excluded).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import fields

from microgpt.config import ModelConfig, TrainConfig, num_parameters
from microgpt.presets import PRESETS

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')
ENGINES = ('fused', 'torch')
WARMUP_STEPS = 2
MAKEMORE = PRESETS['makemore']
MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def makemore_model(n_embd, n_layer):
    """ModelConfig fields (but vocab_size) of the makemore preset at this size."""
    return {k: v for k, v in MAKEMORE.items() if k in MODEL_FIELDS} | {'n_embd': n_embd, 'n_layer': n_layer}


class Job:
    """One engine at one size, built and warmed up in this process; each time() trains on from where the last
    stopped, so the repeats of a size pay for building the engine once."""

    def __init__(self, engine_name, n_embd, n_layer, data, dtype):
        from microgpt.train.setup import prepare_run
        self.size = (n_embd, n_layer)
        # a run far longer than the measurement: its learning rate stays at the peak
        self.tcfg = TrainConfig(**{k: v for k, v in MAKEMORE.items() if k in TRAIN_FIELDS and k != 'steps'},
                                steps=10**9)
        run = prepare_run(data, makemore_model(n_embd, n_layer), self.tcfg, engine_name, dtype)
        self.engine, self.doc_tokens = run.engine, run.train_tokens
        self.step = 0
        self.step_seconds = None
        for _ in range(WARMUP_STEPS):  # the last warm-up step's wall time sets the chunk length
            start = time.perf_counter()
            for _ in self._reports(chunk=1, stop=lambda: True):
                pass
            self.step_seconds = time.perf_counter() - start

    def _reports(self, chunk, stop):
        """StepReports of train() from self.step, `chunk` steps per train_steps call, until `stop` returns True
        at the end of a chunk."""
        from microgpt.train.loop import train
        for report in train(self.engine, self.doc_tokens, self.tcfg, start_step=self.step, sync_every=(chunk,)):
            yield report
            if report.synced:
                self.step = report.step
                if stop():
                    return

    def time(self, seconds, chunk_seconds):
        """{'tokens', 'seconds', 'cpu_seconds', 'steps'} of chunks of about `chunk_seconds` until `seconds` have
        passed (cpu_seconds: the process's CPU time, all its threads)."""
        chunk = max(1, min(self.engine.chunk_steps, round(chunk_seconds / self.step_seconds)))
        tokens, steps = 0, 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for report in self._reports(chunk, stop=lambda: time.perf_counter() - start >= seconds):
            tokens += report.tokens
            steps += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        return {'tokens': tokens, 'seconds': elapsed, 'cpu_seconds': cpu, 'steps': steps}


def threads_in_use(engine_name):
    if engine_name == 'torch':
        from microgpt.engines.torch.engine import CPU_THREADS
        return CPU_THREADS
    from microgpt.engines.fused.threads import thread_count
    return thread_count()


class Worker:
    """One engine's own process with `threads` threads, measuring a size per request. The parent alternates
    between the workers, so all see the same machine load; the idle ones wait on their input."""

    def __init__(self, engine_name, threads, args):
        env = {**os.environ, 'NUMBA_NUM_THREADS': str(threads), 'OMP_NUM_THREADS': str(threads)}
        command = [sys.executable, __file__, '--worker', engine_name, '--data', args.data, '--dtype', args.dtype,
                   '--threads', str(threads), '--seconds', str(args.seconds),
                   '--chunk-seconds', str(args.chunk_seconds)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def measure(self, n_embd, n_layer):
        """Job.time()'s result at this size and the threads used, or {'error': ...} if the engine failed."""
        self.process.stdin.write(f'{n_embd} {n_layer}\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f'the worker stopped (exit status {self.process.wait()}); see its error above')
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def serve(engine_name, args):
    """The worker's loop: `n_embd n_layer` lines in, one JSON line out per line."""
    from microgpt.train.loop import training_threads
    threads, = args.threads  # the Worker gives one
    if engine_name == 'torch':
        from microgpt.engines.torch import engine as torch_engine
        torch_engine.CPU_THREADS = threads  # the engine sets PyTorch's intra-op threads to this in each call
    job = None
    with training_threads():
        for line in sys.stdin:
            n_embd, n_layer = (int(v) for v in line.split())
            try:
                if job is None or job.size != (n_embd, n_layer):
                    job = None  # the last size's engine freed before the next is built
                    job = Job(engine_name, n_embd, n_layer, args.data, args.dtype)
                result = job.time(args.seconds, args.chunk_seconds) | {'threads': threads_in_use(engine_name)}
            except Exception as e:  # reported in the table's cell; the other sizes go on
                result = {'error': f'{type(e).__name__}: {e}'.splitlines()[0]}
            print(json.dumps(result), flush=True)


def parameters(n_embd, n_layer, vocab_size=27):
    """Parameters of the model at this size (names: 26 letters and BOS)."""
    return num_parameters(ModelConfig(vocab_size=vocab_size, **makemore_model(n_embd, n_layer)))


def grid(text):
    return [int(v) for v in text.split(',') if v.strip()]


CLOCKS = {'cpu': 'cpu_seconds', 'wall': 'seconds'}
OTHER_CLOCK = {'cpu': 'wall', 'wall': 'cpu'}


def tokens_per_second(result, clock):
    """Predicted tokens per second of the process's CPU time ('cpu') or of wall-clock time ('wall')."""
    return result['tokens'] / result[CLOCKS[clock]]


def best(results, clock):
    """The fastest of the repeats (the one least slowed by other jobs), or the first error."""
    ok = [r for r in results if 'error' not in r]
    return max(ok, key=lambda r: tokens_per_second(r, clock)) if ok else results[0]


def ratio(row, clock):
    """fused tokens/s over torch tokens/s, each engine's best; None if one failed."""
    fused, torch = best(row['fused'], clock), best(row['torch'], clock)
    if 'error' in fused or 'error' in torch:
        return None
    return tokens_per_second(fused, clock) / tokens_per_second(torch, clock)


def main():
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else None
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=default, help=f'names, one a line (default: {default or "the bundled names"})')
    p.add_argument('--n-embd', type=grid, default=[16, 64, 128, 256], help='channel counts (default: 16,64,128,256)')
    p.add_argument('--n-layer', type=grid, default=[1, 4, 8], help='layer counts (default: 1,4,8)')
    p.add_argument('--dtype', choices=('float32', 'float64'), default='float32',
                   help='floating-point type of both engines (default: float32)')
    p.add_argument('--threads', type=grid, default=[2],
                   help='threads of each engine; several (1,2) measure each engine at each (default: 2)')
    p.add_argument('--clock', choices=list(CLOCKS), default=None,
                   help='tokens per second of CPU time or of wall-clock time (default: cpu with one thread, where '
                        'it is the steadier figure on a shared machine; wall otherwise, as idle threads spin)')
    p.add_argument('--seconds', type=float, default=2.0, help='timed seconds per measurement (default: 2)')
    p.add_argument('--repeats', type=int, default=2,
                   help='measurements per engine and size, alternating engines; the best is kept (default: 2)')
    p.add_argument('--chunk-seconds', type=float, default=0.5,
                   help="about this long per train_steps call, at most the engine's own chunk (default: 0.5)")
    p.add_argument('--plot', default=None, metavar='PNG', help='also plot tokens/s against n_embd, per n_layer')
    p.add_argument('--json', default=None, metavar='FILE', help='also write every measurement as JSON')
    p.add_argument('--from-json', default=None, metavar='FILE',
                   help="measure nothing: print the table (and --plot) of an earlier run's --json FILE")
    p.add_argument('--worker', choices=ENGINES, help=argparse.SUPPRESS)  # the engine of a child process
    args = p.parse_args()
    if args.data is None:
        from microgpt.data import bundled_dataset_path
        args.data = bundled_dataset_path()
    if args.worker:
        serve(args.worker, args)
        return
    if args.from_json:
        with open(args.from_json, encoding='utf-8') as f:
            run = json.load(f)
        clock = args.clock or run['clock']
        print(table_header(clock))
        for row in run['rows']:
            print(table_row(row, clock))
        if args.plot:
            plot(run['rows'], args.plot, clock, run['dtype'])
        return
    clock = args.clock or ('cpu' if args.threads == [1] else 'wall')

    print(f"{args.dtype}, {' and '.join(map(str, args.threads))} thread(s) per engine, block 16, batch 32, "
          f"n_head 4; best of {args.repeats} x {args.seconds:g} s per engine and size, all alternating, each in "
          f"its own process; tokens per second of {clock} time", flush=True)
    print(table_header(clock), flush=True)
    started = time.perf_counter()
    workers = {(engine_name, threads): Worker(engine_name, threads, args)
               for threads in args.threads for engine_name in ENGINES}
    rows = []
    try:
        for n_layer in args.n_layer:
            for n_embd in args.n_embd:
                size_rows = {threads: {'n_layer': n_layer, 'n_embd': n_embd, 'threads': threads,
                                       'parameters': parameters(n_embd, n_layer),
                                       **{engine_name: [] for engine_name in ENGINES}} for threads in args.threads}
                for _ in range(args.repeats):
                    for (engine_name, threads), worker in workers.items():
                        size_rows[threads][engine_name].append(worker.measure(n_embd, n_layer))
                        time.sleep(0.2)  # the idle worker's threads stop spinning before the next starts
                for row in size_rows.values():
                    rows.append(row)
                    print(table_row(row, clock), flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump({'dtype': args.dtype, 'clock': clock, 'seconds': args.seconds, 'rows': rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot, clock, args.dtype)


def table_header(clock):
    return (f"| n_layer | n_embd | parameters | threads | {' | '.join(f'{e} tokens/s' for e in ENGINES)} "
            f"| fused / torch | by {OTHER_CLOCK[clock]} time |\n" + '| ---: ' * (6 + len(ENGINES)) + '|')


def table_row(row, clock):
    """A Markdown row: each engine's best tokens/s and their ratio, by `clock` time and by the other clock."""
    other = OTHER_CLOCK[clock]
    cells = []
    for engine_name in ENGINES:
        result = best(row[engine_name], clock)
        cells.append(f"failed: {result['error']}" if 'error' in result else f"{tokens_per_second(result, clock):,.0f}")
    for c in (clock, other):
        cells.append('' if ratio(row, c) is None else f'{ratio(row, c):.2f}x')
    return f"| {row['n_layer']} | {row['n_embd']} | {row['parameters']:,} | {row['threads']} | {' | '.join(cells)} |"


def plot(rows, path, clock, dtype):
    """tokens/s against n_embd (log-log), one line per engine and n_layer; the ratio fused/torch beside it. Of the
    fewest threads measured."""
    import matplotlib
    matplotlib.use('Agg')  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    threads = min(r['threads'] for r in rows)
    rows = [r for r in rows if r['threads'] == threads]
    setting = f"{dtype}, {threads} thread{'s' if threads > 1 else ''} each"
    fig, (speed, ratios) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {'fused': '-', 'torch': '--'}
    sizes = sorted({r['n_embd'] for r in rows})
    for i, n_layer in enumerate(sorted({r['n_layer'] for r in rows})):
        color, label = f'C{i}', f'{n_layer} layer{"s" if n_layer > 1 else ""}'
        layer_rows = [r for r in rows if r['n_layer'] == n_layer]
        for engine_name in ENGINES:
            points = [(r['n_embd'], tokens_per_second(best(r[engine_name], clock), clock))
                      for r in layer_rows if 'error' not in best(r[engine_name], clock)]
            if points:
                speed.plot(*zip(*points), styles[engine_name], marker='o', color=color, label=f'{engine_name}, {label}')
        points = [(r['n_embd'], ratio(r, clock)) for r in layer_rows if ratio(r, clock) is not None]
        if points:
            ratios.plot(*zip(*points), marker='o', color=color, label=label)
    for ax in (speed, ratios):
        ax.set_xscale('log', base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel('n_embd (block 16, batch 32, 4 heads)')
        ax.grid(alpha=0.3, which='both')
    speed.set_yscale('log')
    speed.set_ylabel(f"training tokens per {'CPU' if clock == 'cpu' else 'wall-clock'} second")
    speed.set_title(f'fused (solid) and torch (dashed), {setting}')
    speed.legend(fontsize=8)
    ratios.axhline(1.0, color='black', linewidth=0.8)
    ratios.set_yscale('log', base=2)
    ratios.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f'{y:g}x'))
    ratios.set_ylabel('fused tokens/s / torch tokens/s')
    ratios.set_title('above 1: the fused engine is faster')
    ratios.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
