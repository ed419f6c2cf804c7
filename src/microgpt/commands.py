"""What the `microgpt` commands that train do and print: `train`, `bench`, `study`, `tune` (those that read a
saved model are in model_commands.py). Parsing lives in cli.py; a command reads its flags from the parsed
namespace into config dataclasses (a flag left out takes the dataclass's default, or the preset's) and never
changes the namespace."""

import contextlib
import os
import shlex
import signal
import time
from itertools import chain

from .bars import DataBar, step_bar
from .config import ModelConfig, SampleConfig, TrainConfig, flag_words, shell_flag
from .data import bundled_dataset_path, load_documents
from .tempfiles import remove_quietly
from .engines import ENGINES
from .errors import MicrogptError, Terminated
from .fetch import local_path
from .model_commands import given, print_samples
from .presets import DEFAULT_PRESET, fields_of, model_settings, resolve
from .train.recorded import resume_settings
from .train.run import PLOT_FILE, METRICS_FILE, EvalReport, Header, Saved, TrainingRun
from .train.setup import RunConfig, RunSettings
from .train.loop import Steps


class _StopRequest:
    """Ctrl-C while steps run: the first finishes the steps under way (one call of the engine: up to its
    chunk_steps), saves, stops; a second one interrupts at once. SIGTERM, which schedulers and torchrun send to end
    a process (torchrun after a second Ctrl-C of its own), stops and saves alike and never aborts: SIGKILL is
    theirs for that."""

    def __init__(self, err, what='stopping after the steps under way'):
        self.requested, self.err, self.what = False, err, what
        self.terminated = False  # the first request was SIGTERM's: exit status 143
        self.bar = None  # a progress bar on the line: the notice starts on a line of its own

    def __call__(self, signum, frame):
        if self.requested:
            if signum == signal.SIGTERM:
                return
            raise KeyboardInterrupt
        self.requested, self.terminated = True, signum == signal.SIGTERM
        below_bar = '\n' if self.bar is not None else ''
        why = 'terminated: ' if self.terminated else ''
        print(f"{below_bar}microgpt: {why}{self.what} (Ctrl-C again to abort at once)", file=self.err, flush=True)


def _handlers_to_take(*signums):
    """{signal: its handler now} of `signums` but those ignored when the command started (a script's `cmd &` starts
    it with SIGINT ignored, so that the terminal's Ctrl-C spares it): a command's stop request takes these only, as
    Python leaves an ignored SIGINT ignored, and puts them back after."""
    handlers = {signum: signal.getsignal(signum) for signum in signums}
    return {signum: handler for signum, handler in handlers.items() if handler != signal.SIG_IGN}


def cmd_train(args, out, err):
    flags, preset = given(args, RunConfig, ModelConfig, TrainConfig, SampleConfig), getattr(args, 'preset', None)
    if flags.get('resume') and flags.get('out') and not flags.get('overwrite'):  # (both: RunConfig refuses it)
        # the saved run's settings, with the flags given on top
        settings, preset = resume_settings(flags['out'], flags, preset)
    else:
        settings = resolve(preset or DEFAULT_PRESET, flags)
    run_cfg, tcfg = RunConfig(**fields_of(RunConfig, settings)), TrainConfig(**fields_of(TrainConfig, settings))
    run_cfg.check_flags_given(flags)  # a default typed in (--device auto with the numpy engine) changes nothing too
    sample_cfg = SampleConfig(**fields_of(SampleConfig, settings))
    run = TrainingRun(RunSettings(run_cfg, model_settings(settings), tcfg, preset or DEFAULT_PRESET, sample_cfg))
    if run_cfg.engine == 'fused' and run_cfg.dtype in ('float64', 'float32'):  # (others: the engine refuses them)
        _notice_compilation(err, run_cfg.dtype, tcfg.batch_size, run_cfg.eval_every > 0)
    # Ctrl-C before the first step's report (reading, compiling: the fused kernels compile inside the first
    # step) interrupts at once, as nothing would be saved; from then on, it stops after the step under way, so
    # that the run is saved
    stop = _StopRequest(err)
    previous_handlers = _handlers_to_take(signal.SIGINT, signal.SIGTERM)
    bar, stop_installed = None, False  # a flag, not getsignal(): that builds an enum, 3 us a step
    data_bar = DataBar(err) if err.isatty() else None
    started = time.perf_counter()
    try:
        for event in run.events(should_stop=lambda: stop.requested, progress=data_bar):
            if isinstance(event, Steps):
                if not stop_installed:
                    for signum in previous_handlers:
                        signal.signal(signum, stop)
                    stop_installed = True
                if event.last == event.steps:  # no step left to finish: a Ctrl-C now waits for the final saves
                    stop.what = 'finishing the final evaluation and save'
                # one % for the chunk's lines, not one a line (bench_cli_step.py --python-only)
                line = "step %4d / " + "%4d" % event.steps + " | loss %.4f\n"
                lines = (line * len(event.losses)) % tuple(chain.from_iterable(zip(range(event.first, event.last + 1),
                                                                                   event.losses)))
                if bar is not None:
                    bar.update(len(event.losses))
                    bar.set_postfix_str(f"loss {event.losses[-1]:.4f}", refresh=False)
                    _emit(lines[:-1], out, bar)
                else:
                    out.write(lines)
            elif isinstance(event, EvalReport):
                _emit(f"step {event.step:4d} / {event.steps:4d} | val loss {event.val_loss:.4f} "
                      f"| best {event.best_val_loss:.4f}", out, bar)
            elif isinstance(event, Saved):
                if err.isatty():
                    _emit(f"saved {event.path} (step {event.step})", err, bar)
            elif isinstance(event, Header):
                if data_bar is not None:
                    data_bar.close()
                print(f"num docs: {event.num_docs}", file=out)
                print(f"vocab size: {event.vocab_size}", file=out)
                print(f"num params: {event.num_params}", file=out)
                if run.run.notice:  # the token cache could not be written: the data was read into memory
                    print(f"microgpt: {run.run.notice}", file=err)
                if event.resumed_from:
                    why = {None: None,
                           'stream': "the data is a stream (a pipe or a device), which cannot be checked against the "
                                     "run's",
                           'unrecorded': "the run recorded no identity of its data (it read a stream, or an older "
                                         "microgpt saved it), so this data cannot be checked against it",
                           }[run.data_unchecked]
                    unchecked = f"; {why}: it continues the run only if it gives the same documents" if why else ""
                    print(f"microgpt: resuming from step {event.resumed_from}{unchecked}", file=err)
                bar = stop.bar = step_bar(err, tcfg.steps, event.resumed_from)
    except BaseException:
        if run_cfg.plot:  # also after Ctrl-C or an error: plot what was recorded; the first failure is reported
            with contextlib.suppress(MicrogptError):
                _plot(run)
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if data_bar is not None:
            data_bar.close()
        if bar is not None:
            bar.close()
    if run_cfg.plot:
        _plot(run)
    if stop.requested or run.stopped:  # (run.stopped: a Ctrl-C that reached another process of a torchrun launch)
        if run.step < tcfg.steps:
            where = f"; continue with --resume {shell_flag('--out', run_cfg.out)}" if run_cfg.out else ""
            print(f"microgpt: stopped at step {run.step}{where}", file=err)
        else:
            saved = f", saved in {run_cfg.out}" if run_cfg.out else ""
            print(f"microgpt: trained all {run.step} steps{saved}; stopped before sampling", file=err)
        raise Terminated if stop.terminated else KeyboardInterrupt
    if err.isatty():
        elapsed = time.perf_counter() - started
        print(f"trained in {elapsed:.2f} s", file=err)

    print("\n--- inference (new, hallucinated names) ---", file=out)
    engine = run.run.engine
    print_samples(engine.decoder(), engine.cfg.block_size, run.run.vocab, run.run.rng, sample_cfg, out, prompt_ids=())


def _plot(run):
    """DIR/loss.png of what DIR/metrics.jsonl holds; a plot that cannot be written names its path and what is kept."""
    from .train.plotting import plot_metrics
    metrics, png = run.path(METRICS_FILE), run.path(PLOT_FILE)
    if not os.path.exists(metrics):
        return
    try:
        plot_metrics(metrics, png)
    except OSError as e:
        remove_quietly(png)
        raise MicrogptError(f"{png}: cannot write the plot ({e.strerror or e}){run.kept()}") from None


def _emit(line, stream, bar):
    """A line for `stream`; on a terminal with the progress bar, the bar cleared first and drawn again after (tqdm's
    write clears it only for sys.stdout and sys.stderr themselves, and standard output here is the CLI's _Output:
    the step lines were written after the bar, on its line)."""
    if bar is not None:
        with bar.external_write_mode(file=bar.fp):
            stream.write(line + '\n')
            stream.flush()
    else:
        stream.write(line + '\n')  # one write: print makes two, 0.2 us more a step


def _notice_compilation(err, dtype, batch_size, evaluates):
    from .engines.fused.engine import kernels_are_cached
    if not kernels_are_cached(dtype, batch_size, evaluates):
        # benchmarks/bench_cold_start.py, float64: 10-12 s cold on a 2-core Zen 4 (2026-11-29) for batches of one
        # document and of 2+, 11.6-13.1 s for a batch of one with evaluation (its two entry points); 22-31 s on a
        # 2-core Zen 3 (2026-12-01, two days); longer when other jobs share the cores
        wait = '15-35 s' if evaluates and batch_size == 1 else '10-30 s'
        print(f"microgpt: compiling the fused engine's kernels (once for this dtype and kind of run: one document a "
              f"step, with or without evaluation, or batches of several; {wait})...", file=err, flush=True)


def cmd_bench(args, out, err):
    from importlib.util import find_spec

    from .bench.benchmark import BenchConfig, cpu_name, time_cli_train, time_engine
    bench = BenchConfig(**given(args, BenchConfig))
    data = bundled_dataset_path() if bench.data is None else local_path(bench.data)
    load_documents(data)  # bad data is reported before any timing
    names = bench.engine_names
    if 'torch' in names and find_spec('torch') is None:
        if names == ['torch']:
            raise MicrogptError('--engines names only torch, and PyTorch is not installed: '
                                'pip install ".[torch]" in microgpt\'s folder')
        print('microgpt: PyTorch is not installed: no torch row (pip install ".[torch]" in microgpt\'s folder)',
              file=err)
        names.remove('torch')
    rows = []
    for name in sorted(names, key=lambda n: n != 'reference'):  # the reference first: the others' ratios use it
        for dtype in (['float64'] if name == 'reference' else ['float64', 'float32']):
            steps = bench.reference_steps if name == 'reference' else bench.steps
            print(f"microgpt: timing {name} {dtype} ({steps} steps)...", file=err, flush=True)
            rows.append(time_engine(name, data, steps, dtype, warmup_steps=0 if name == 'reference' else 20))
    reference_us = rows[0].us_per_step if rows and rows[0].engine == 'reference' else None
    ratio = f" {'x reference':>12}" if reference_us else ''
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores (times compare only on one CPU)", file=out)
    print(f"{'engine':<10} {'dtype':<8} {'steps':>6} {'us/step':>11} {'tokens/s':>11}{ratio}", file=out)
    for row in rows:
        ratio = f" {reference_us / row.us_per_step:>12.0f}" if reference_us else ''
        print(f"{row.engine:<10} {row.dtype:<8} {row.steps:>6} {row.us_per_step:>11.1f} "
              f"{row.tokens_per_second:>11.0f}{ratio}", file=out)
    wall_args = flag_words('--data', bench.data) if bench.data is not None else []
    for name in names:
        if name in ENGINES and name != 'reference':
            wall = time_cli_train(wall_args + ['--engine', name])
            command, settings = (f"--engine {name} --data FILE", 'otherwise') if wall_args else (f"--engine {name}", '')
            print(f"wall time of `microgpt train {command}` ({settings + ' ' if settings else ''}defaults, best of 3): "
                  f"{wall:.3f} s", file=out)


def cmd_study(args, out, err):
    from .bench.study import (EXPERIMENTS, StudyConfig, format_score, held_out_count, measure_speed, run_study,
                              summarize, write_report)
    study = StudyConfig(**given(args, StudyConfig))
    if study.list_experiments:
        for e in EXPERIMENTS:
            print(f"{e.name:<28} {e.claim}", file=out)
        return
    chosen = study.chosen
    data = bundled_dataset_path() if study.data is None else local_path(study.data)
    held_out = held_out_count(load_documents(data))  # bad data is reported before any worker starts
    if os.path.exists(study.out) and not os.path.isdir(study.out):
        raise MicrogptError(f"{study.out}: is a file, not a folder; give another --out DIR")
    for result in run_study(chosen, study.seeds, data, study.out, study.workers):
        print(f"{result['experiment']:<28} seed {result['seed']}: held-out loss {result['val_loss']:.4f}", file=err)
    rows = summarize(chosen, study.seeds, study.out)
    command = shlex.join(['microgpt', 'study', *(flag_words('--data', study.data) if study.data is not None else []),
                          '--num-seeds', str(study.num_seeds), *flag_words('--out', study.out),
                          *(flag_words('--experiments', study.experiments) if study.experiments else [])])
    write_report(rows, study.out, command, measure_speed(data), held_out)
    print(f"{'experiment':<28} {'held-out loss':>20} seeds", file=out)
    for e, mean, std, n in rows:
        print(f"{e.name:<28} {format_score(mean, std):>20} {n:>5}", file=out)
    print(f"wrote {os.path.join(study.out, 'RESULTS.md')} and {os.path.join(study.out, 'results.png')}", file=out)


def cmd_tune(args, out, err):
    from .tune.report import shown_counts, summarize
    from .tune.search import TuneConfig, tune
    config = TuneConfig(**given(args, TuneConfig))
    stop = _StopRequest(err, what='the running trials finish their step, save and are recorded')
    previous_handlers = _handlers_to_take(signal.SIGINT)
    for signum in previous_handlers:
        signal.signal(signum, stop)
    try:
        study = tune(config, on_trial=lambda trial, state, value: print(
            f"trial {trial.number:4d} {state:<11}" + (f" held-out loss {value:.4f}" if value is not None else ''),
            file=err, flush=True), stop_requested=lambda: stop.requested)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if stop.requested and not any(t.state.name == 'COMPLETE' for t in study.get_trials(deepcopy=False)):
        print("microgpt: stopped before any trial of the study completed; the same command continues it", file=err)
        raise KeyboardInterrupt
    summary = summarize(study, config.out)
    print(f"trials: {shown_counts(summary.counts)}", file=out)
    print(f"best: trial {summary.best_number}, held-out loss {summary.best_value:.4f} nats per character", file=out)
    print(f"its run: {summary.best_dir or 'not in this folder (it ran into another --out, or on another machine)'}",
          file=out)
    print(f"train it again: {summary.command}", file=out)
    for path in summary.files:
        print(f"wrote {path}", file=out)
    if stop.requested:
        raise KeyboardInterrupt
