"""The fused engine's per-step cost over a long run, in windows: does a step cost the same at step 100,000 as
at step 2,000?

    python benchmarks/bench_long_run.py [--data names.txt] [--steps 100000] [--window 10000]
        [--makemore-steps 100000] [--parts 5] [--rounds 5] [--compare /work/base/src ...]

Rows: microgpt's default job (batch 1) and the makemore preset (its model and optimiser: batches of 32, AdamW,
a constant learning rate), each in float64 and float32; the default job for --steps steps, the preset for
--makemore-steps. Each row runs in its own process; with --compare, each row also runs against the package at
that path (an older checkout's src/), one after the other, so that both see the same machine.
A window's cost is the CPU time (this process's, all threads: steadier than wall time on a shared machine) of
its last --sample steps (train_steps calls of the engine's chunk size), timed in --parts consecutive parts: a row
gives the mean over the sample and the fastest part's rate. The mean says what a run costs; the fastest part is
what the step costs when the machine's neighbours are quiet, since a burst of noise slows some parts, never
speeds one. The summary compares the window ending near step 2,000 with the last one, and then the two side by
side: a second engine trained to that first window's end and the long run's engine at its end take turns, --rounds
rounds of --sample steps each (which goes first alternates), in the same process, so that the machine's own drift
over a run of minutes (a tenth or more on a shared virtual machine) falls on both alike. The turns run on a
learning-rate schedule --rounds x --sample steps longer than the windows', so that the long run's engine stays
within one. Slow late windows are the mark of subnormal floats (Adam moments of rarely used rows decaying below
2^-1022): the engine runs its kernels with flush-to-zero (fused/floating_point.py) to keep them out.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')


def preset_settings(preset):
    """(model overrides, TrainConfig keyword arguments) of a preset; an older tree without presets.py runs the
    makemore preset's model at batch 32 with microgpt's optimiser, as this benchmark did before."""
    try:
        from microgpt.config import ModelConfig, TrainConfig
        from microgpt.presets import PRESETS, fields_of
    except ImportError:
        return ({'n_layer': 4, 'n_embd': 64}, {'batch_size': 32}) if preset == 'makemore' else ({}, {})
    return fields_of(ModelConfig, PRESETS[preset]), fields_of(TrainConfig, PRESETS[preset])


def run_row(data, preset, dtype, steps, window, sample, parts, rounds):
    """Prints one line per window: `step mean_us fastest_us`, the CPU time per step over the window's last
    `sample` steps and that of the fastest of their `parts` consecutive parts; then, with `rounds`, the line
    `alternating early_step late_step early_us late_us`: the medians of `rounds` turns of `sample` steps each of
    an engine from the first window's end and of this one from the last."""
    from microgpt.config import TrainConfig
    from microgpt.engines import make_engine
    try:
        from microgpt.bench.benchmark import prepared_job
    except ImportError:  # the layout before engines/ and bench/ became packages
        from microgpt.benchmark import prepared_job
    model, optimiser = preset_settings(preset)
    rng, doc_tokens, cfg = prepared_job(data, 42, model)
    engine = make_engine('fused', cfg, rng, dtype)
    tcfg = TrainConfig(**{**optimiser, 'steps': steps})
    chunk = getattr(engine, 'chunk_steps', 64)  # an older tree's engine lacks it: its training.CHUNK_STEPS, 64
    step = 0
    for end in [min(2000, window)] + list(range(window, steps + 1, window)):
        if end <= step:
            continue
        begin = max(end - sample, step, 1)  # the first step compiles or loads the kernels: never timed
        if begin > step:
            _train(engine, doc_tokens, step, begin, tcfg, chunk)
            step = begin
        edges = sorted({step + (end - step) * i // parts for i in range(parts + 1)})
        seconds = [_cpu_seconds(engine, doc_tokens, first, last, tcfg, chunk) for first, last in zip(edges, edges[1:])]
        rates = [part / (last - first) * 1e6 for part, first, last in zip(seconds, edges, edges[1:])]
        print(end, sum(seconds) / (end - step) * 1e6, min(rates), flush=True)
        step = end
    if rounds:
        early_end = min(2000, window)
        early = make_engine('fused', cfg, prepared_job(data, 42, model)[0], dtype)
        _train(early, doc_tokens, 0, early_end, tcfg, chunk)
        turns = TrainConfig(**{**optimiser, 'steps': steps + rounds * sample})  # the long run's engine goes on
        at, costs = {'early': early_end, 'late': step}, {'early': [], 'late': []}
        for turn in range(rounds):
            order = (('early', early), ('late', engine))
            for name, turn_engine in order if turn % 2 == 0 else order[::-1]:
                seconds = _cpu_seconds(turn_engine, doc_tokens, at[name], at[name] + sample, turns, chunk)
                costs[name].append(seconds / sample * 1e6)
                at[name] += sample
        print('alternating', early_end, step, statistics.median(costs['early']), statistics.median(costs['late']),
              flush=True)


def _train(engine, doc_tokens, start, stop, tcfg, chunk):
    """Steps start .. stop - 1 in train_steps calls of `chunk` steps, as training.train makes them."""
    for first in range(start, stop, chunk):
        engine.train_steps(doc_tokens, first, min(stop, first + chunk), tcfg)


def _cpu_seconds(engine, doc_tokens, start, stop, tcfg, chunk):
    """The process's CPU seconds (all threads) for _train's steps start .. stop - 1."""
    began = time.process_time()
    _train(engine, doc_tokens, start, stop, tcfg, chunk)
    return time.process_time() - began


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else None
    parser.add_argument('--data', default=default, required=default is None,
                        help=f'documents to train on (default: {default})')
    parser.add_argument('--steps', type=int, default=100_000, help='steps of the default-model rows (default: 100000)')
    parser.add_argument('--window', type=int, default=10_000, help='steps per reported window (default: 10000)')
    parser.add_argument('--sample', type=int, default=1_000,
                        help='timed steps at the end of each window (default: 1000)')
    parser.add_argument('--makemore-steps', type=int, default=100_000,
                        help='steps of the makemore preset\'s rows (default: 100000; windows of a tenth, the last '
                             '--sample steps of each timed, or fewer if a window is shorter)')
    parser.add_argument('--parts', type=int, default=5,
                        help='consecutive parts each window\'s sample is timed in, for the fastest part\'s rate '
                             '(default: 5)')
    parser.add_argument('--rounds', type=int, default=5,
                        help='turns of --sample steps each for the side-by-side of the first window and the last, '
                             'in one process (default: 5; 0: none)')
    parser.add_argument('--compare', metavar='SRC', action='append', default=[],
                        help='also run each row with PYTHONPATH=SRC (an older checkout\'s src/); may be repeated')
    parser.add_argument('--row', help=argparse.SUPPRESS)  # preset:dtype:steps:window:sample:parts:rounds
    args = parser.parse_args()
    if args.row:
        preset, dtype, *numbers = args.row.split(':')
        return run_row(args.data, preset, dtype, *map(int, numbers))
    if min(args.steps, args.window, args.sample, args.parts) < 1 or args.window < 2 or args.makemore_steps < 20 \
            or args.rounds < 0:
        parser.error("--steps, --sample and --parts must be 1 or more, --window 2 or more, --makemore-steps 20 or more "
                     "and --rounds 0 or more")
    if not args.sample <= args.window <= args.steps:
        parser.error(f"need --sample <= --window <= --steps, got {args.sample}, {args.window} and {args.steps}")
    makemore_window = max(args.makemore_steps // 10, 1)
    # as many steps timed as the default job's: 100 steps of 32 documents varied by 10% from window to window
    makemore_sample = min(args.sample, makemore_window)
    rows = [('microgpt', dtype, args.steps, args.window, args.sample, args.parts, args.rounds)
            for dtype in ('float64', 'float32')]
    rows += [('makemore', dtype, args.makemore_steps, makemore_window, makemore_sample, args.parts, args.rounds)
             for dtype in ('float64', 'float32')]
    trees = [('this tree', None)] + [(src, src) for src in args.compare]
    from microgpt.bench.benchmark import cpu_name  # this tree's; a row imports the package under test
    print(f"fused engine, CPU us per step over a run; data {args.data}; {os.cpu_count()} cores of {cpu_name()}")
    for row in rows:
        preset, dtype, steps, window, sample, parts, rounds = row
        print(f"\n{preset} preset, {dtype}, {steps} steps (us/step over the last {sample} steps of each window: "
              f"their mean, and the fastest of {parts} parts)", flush=True)
        results, side_by_side = {}, {}
        for label, src in trees:
            env = dict(os.environ, **({'PYTHONPATH': src} if src else {}))
            command = [sys.executable, __file__, '--data', args.data, '--row', ':'.join(map(str, row))]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or [f'exit status {done.returncode}'])[-1]
                print(f"   {label}: failed: {last}")
                continue
            lines = [line.split() for line in done.stdout.splitlines()]
            results[label] = [(int(line[0]), float(line[1]), float(line[2])) for line in lines
                              if len(line) == 3 and line[0].isdigit()]
            side_by_side.update({label: [float(value) for value in line[1:]] for line in lines
                                 if len(line) == 5 and line[0] == 'alternating'})
        labels = list(results)
        print(f"   {'step':>8} " + ' '.join(f'{label[-24:]:>24}' for label in labels))
        print(f"   {'':>8} " + ' '.join(f'{"mean":>11}  {"fastest":>11}' for _ in labels))
        for i, (step, *_) in enumerate(results[labels[0]] if labels else []):
            print(f"   {step:>8} " + ' '.join(f'{results[label][i][1]:>11.2f}  {results[label][i][2]:>11.2f}'
                                             for label in labels))
        for label in labels:
            (early_step, *early), (late_step, *late) = results[label][0], results[label][-1]
            print(f"   {label}: step {late_step} costs {late[0] / early[0]:.2f}x step {early_step} by the mean, "
                  f"{late[1] / early[1]:.2f}x by the fastest part")
            if label in side_by_side:
                early_at, late_at, early_us, late_us = side_by_side[label]
                span = rounds * sample - 1
                print(f"   {label}, side by side in one process: steps {late_at:,.0f}-{late_at + span:,.0f} cost "
                      f"{late_us / early_us:.2f}x steps {early_at:,.0f}-{early_at + span:,.0f} ({late_us:,.2f} against "
                      f"{early_us:,.2f} us, medians of {rounds} alternating turns of {sample} steps)")


if __name__ == '__main__':
    main()
