"""What each `microgpt` command does and prints. Parsing lives in cli.py."""

import os
import random
import signal
import time

from .config import TrainConfig
from .data import bundled_dataset_path, holdout_split, load_documents
from .sampling import generate
from .engines import BENCH_ENGINES, ENGINES, make_engine
from .errors import MicrogptError
from .presets import MODEL_KEYS, TRAIN_KEYS, model_settings, resolve, train_settings
from .train.run import EvalReport, Header, RunSettings, Saved, TrainingRun
from .train.loop import StepReport, evaluate

def _check_sampling_flags(args):
    if args.num_samples < 0:
        raise MicrogptError(f"--num-samples must be >= 0, got {args.num_samples}")
    if not args.temperature > 0:
        raise MicrogptError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k < 0:
        raise MicrogptError(f"--top-k must be >= 0 (0 keeps every token), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise MicrogptError(f"--top-p must be in (0, 1], got {args.top_p}")


def _settings_from_args(args):
    explicit = {key: getattr(args, key, None) for key in (*MODEL_KEYS, *TRAIN_KEYS, 'eval_every', 'temperature')}
    settings = resolve(args.preset, explicit)
    args.temperature = settings['temperature']
    _check_sampling_flags(args)
    tcfg = TrainConfig(seed=args.seed, **train_settings(settings))
    if args.plot and not args.out:
        raise MicrogptError("--plot writes DIR/loss.png and needs --out DIR")
    return RunSettings(data_path=bundled_dataset_path() if args.data is None else args.data, engine=args.engine, dtype=args.dtype,
                       model=model_settings(settings), tcfg=tcfg, eval_every=settings['eval_every'],
                       val_fraction=args.val_fraction, val_split=args.val_split,
                       out_dir=args.out, resume=args.resume,
                       save_every=args.save_every, preset=args.preset)


class _StopRequest:
    """First Ctrl-C: finish the step, save, stop. A second one interrupts at once."""

    def __init__(self, err):
        self.requested, self.err = False, err

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nmicrogpt: stopping after this step (Ctrl-C again to abort at once)", file=self.err, flush=True)


def cmd_train(args, out, err):
    settings = _settings_from_args(args)
    if settings.engine == 'fused':
        _notice_compilation(err, settings.dtype, settings.tcfg.batch_size > 1 or settings.eval_every > 0)
    run = TrainingRun(settings)
    stop = _StopRequest(err)
    previous_handler = signal.signal(signal.SIGINT, stop)
    bar = None
    started = time.perf_counter()
    try:
        for event in run.events(should_stop=lambda: stop.requested):
            if isinstance(event, StepReport):
                line = f"step {event.step:4d} / {event.steps:4d} | loss {event.loss:.4f}"
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {event.loss:.4f}", refresh=False)
                _emit(line, out, bar)
            elif isinstance(event, EvalReport):
                _emit(f"step {event.step:4d} / {event.steps:4d} | val loss {event.val_loss:.4f} "
                      f"| best {event.best_val_loss:.4f}", out, bar)
            elif isinstance(event, Saved):
                if err.isatty():
                    _emit(f"saved {event.path} (step {event.step})", err, bar)
            elif isinstance(event, Header):
                print(f"num docs: {event.num_docs}", file=out)
                print(f"vocab size: {event.vocab_size}", file=out)
                print(f"num params: {event.num_params}", file=out)
                if event.resumed_from:
                    print(f"resuming from step {event.resumed_from}", file=err)
                bar = _progress_bar(err, settings.tcfg.steps, event.resumed_from)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if bar is not None:
            bar.close()
        metrics = os.path.join(args.out, 'metrics.jsonl') if args.out else None
        if args.plot and os.path.exists(metrics):  # also after Ctrl-C or an error: plot what was recorded
            from .train.plotting import plot_metrics
            plot_metrics(metrics, os.path.join(args.out, 'loss.png'))
    if stop.requested and run.step < settings.tcfg.steps:
        where = f"; continue with --resume --out {args.out}" if args.out else ""
        print(f"microgpt: stopped at step {run.step}{where}", file=err)
        raise KeyboardInterrupt
    if err.isatty():
        elapsed = time.perf_counter() - started
        print(f"trained in {elapsed:.2f} s", file=err)

    print("\n--- inference (new, hallucinated names) ---", file=out)
    _print_samples(run.engine, run.vocab, run.rng, args, out, prompt_ids=())


def _emit(line, stream, bar):
    if bar is not None:
        bar.write(line, file=stream)
    else:
        print(line, file=stream)


def _progress_bar(err, total, initial):
    if not err.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, file=err, unit='step', dynamic_ncols=True, leave=False)


def _notice_compilation(err, dtype, grouped):
    from .engines.fused.engine import kernels_are_cached
    if not kernels_are_cached(dtype, grouped):
        seconds = '30-60 s' if grouped else '30 s'  # batches of 2+ documents also compile the parallel kernels
        print(f"microgpt: compiling the fused engine's kernels (first run with this dtype only, about {seconds})...",
              file=err, flush=True)


def _print_samples(engine, vocab, rng, args, out, prompt_ids, known=None):
    decoder = engine.decoder()
    novel = 0
    for sample_idx in range(args.num_samples):
        ids = generate(decoder, vocab.bos_id, engine.cfg.block_size, rng, args.temperature, args.top_k, args.top_p,
                       prompt_ids)
        name = vocab.decode(ids)
        mark = ''
        if known is not None:
            mark = ' *' if name in known else ''
            novel += name not in known
        print(f"sample {sample_idx + 1:2d}: {name}{mark}", file=out)
    if known is not None and args.num_samples:
        print(f"novel: {novel} / {args.num_samples} (* = already in the training data)", file=out)


def _engine_from_checkpoint(path):
    from .train.checkpoint import load_checkpoint, restore_engine
    ckpt = load_checkpoint(path)
    engine = make_engine('numpy', ckpt.model_cfg, random.Random(0), ckpt.meta.get('dtype', 'float64'))
    restore_engine(ckpt, engine)
    return ckpt, engine


def cmd_sample(args, out, err):
    if args.temperature is None:
        args.temperature = 0.5
    _check_sampling_flags(args)
    ckpt, engine = _engine_from_checkpoint(args.checkpoint)
    prompt_ids = ckpt.vocab.encode(args.prompt)
    if len(prompt_ids) >= engine.cfg.block_size:
        raise MicrogptError(f"--prompt has {len(prompt_ids)} characters; the model's context holds "
                            f"{engine.cfg.block_size} tokens with BOS, so give at most {engine.cfg.block_size - 1}")
    data_path = args.data or ckpt.meta.get('data_path')
    known = set(load_documents(data_path)) if data_path and os.path.exists(data_path) else None
    _print_samples(engine, ckpt.vocab, random.Random(args.seed), args, out, prompt_ids, known)


def cmd_eval(args, out, err):
    ckpt, engine = _engine_from_checkpoint(args.checkpoint)
    if args.data:
        docs, what = load_documents(args.data), args.data
    else:
        data_path = ckpt.meta.get('data_path')
        if not data_path or not os.path.exists(data_path):
            raise MicrogptError(f"the checkpoint's training data {data_path!r} is not there; give --data FILE")
        eval_every = ckpt.meta.get('eval_every', 0)
        if not eval_every:
            raise MicrogptError("this checkpoint was trained without a held-out split (no --eval-every); "
                                "give --data FILE to evaluate on")
        _, docs = holdout_split(load_documents(data_path), ckpt.meta.get('val_fraction'), ckpt.train_cfg.seed,
                                ckpt.meta.get('val_split', 'name'))
        what = f"the held-out split of {data_path}"
    tokens = [ckpt.vocab.document_tokens(doc) for doc in docs]
    loss = evaluate(engine, tokens)
    print(f"loss {loss:.4f} nats per character on {len(docs)} documents ({what}), step {ckpt.step}", file=out)


def cmd_bench(args, out, err):
    from importlib.util import find_spec

    from .bench.benchmark import time_cli_train, time_engine, time_torch
    data = args.data or bundled_dataset_path()
    names = [name.strip() for name in args.engines.split(',') if name.strip()]
    unknown = set(names) - set(BENCH_ENGINES)
    if unknown:
        raise MicrogptError(f"unknown engines {sorted(unknown)}; choose from {', '.join(BENCH_ENGINES)}")
    if args.steps < 1 or args.reference_steps < 1:
        raise MicrogptError("--steps and --reference-steps must be at least 1")
    if 'torch' in names and find_spec('torch') is None:
        print("PyTorch is not installed: no torch row (pip install torch)", file=err)
        names.remove('torch')
    rows = []
    for name in ['reference'] + [n for n in names if n != 'reference']:
        for dtype in (['float64'] if name == 'reference' else ['float64', 'float32']):
            steps = args.reference_steps if name == 'reference' else args.steps
            print(f"timing {name} {dtype} ({steps} steps)...", file=err, flush=True)
            if name == 'torch':
                rows.append(time_torch(data, steps, dtype))
            else:
                rows.append(time_engine(name, data, steps, dtype, warmup_steps=0 if name == 'reference' else 20))
    reference_us = rows[0].us_per_step
    print(f"{'engine':<10} {'dtype':<8} {'steps':>6} {'us/step':>11} {'tokens/s':>11} {'x reference':>12}", file=out)
    for row in rows:
        print(f"{row.engine:<10} {row.dtype:<8} {row.steps:>6} {row.us_per_step:>11.1f} "
              f"{row.tokens_per_second:>11.0f} {reference_us / row.us_per_step:>12.0f}", file=out)
    wall_args = ['--data', args.data] if args.data else []
    for name in names:
        if name in ENGINES and name != 'reference':
            wall = time_cli_train(wall_args + ['--engine', name])
            print(f"wall time of `microgpt train --engine {name}` (defaults, best of 3): {wall:.3f} s", file=out)


def cmd_study(args, out, err):
    from .bench.study import EXPERIMENTS, measure_speed, run_study, summarize, write_report
    if args.list:
        for e in EXPERIMENTS:
            print(f"{e.name:<28} {e.claim}", file=out)
        return
    chosen = EXPERIMENTS
    if args.experiments:
        names = [n.strip() for n in args.experiments.split(',') if n.strip()]
        unknown = set(names) - {e.name for e in EXPERIMENTS}
        if unknown:
            raise MicrogptError(f"unknown experiments {sorted(unknown)}; see `microgpt study --list`")
        chosen = [e for e in EXPERIMENTS if e.name in names]
    if args.seeds < 1 or args.workers < 1:
        raise MicrogptError("--seeds and --workers must be at least 1")
    data = bundled_dataset_path() if args.data is None else args.data
    load_documents(data)  # bad data is reported before any worker starts
    seeds = list(range(1, args.seeds + 1))
    for result in run_study(chosen, seeds, data, args.out, args.workers):
        print(f"{result['experiment']:<28} seed {result['seed']}: held-out loss {result['val_loss']:.4f}", file=err)
    rows = summarize(chosen, seeds, args.out)
    command = f"microgpt study --data {args.data or '(bundled)'} --seeds {args.seeds} --out {args.out}"
    write_report(rows, args.out, command, measure_speed(data))
    print(f"{'experiment':<28} {'held-out loss':>20} seeds", file=out)
    for e, mean, std, n in rows:
        print(f"{e.name:<28} {mean:>10.4f} +/- {std:.4f} {n:>5}", file=out)
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')} and {os.path.join(args.out, 'results.png')}", file=out)


def _print_memory(rows, out):
    for item, size in rows:
        print(f"{item:<62} {size:>9,} bytes", file=out)


def cmd_export(args, out, err):
    if args.train:
        _export_training_program(args, out)
        return
    if args.checkpoint is None:
        raise MicrogptError("export needs --checkpoint PATH; only --train can start without one")
    if args.low_memory or args.ram is not None or args.data is not None:
        raise MicrogptError("--data, --low-memory and --ram go with --train")
    if args.web:
        from .export.web import export_web
        info = export_web(args.checkpoint, args.c, force=args.force)
        print(f"wrote {info.page}: open it in a browser (no server needed)", file=out)
        return
    from .train.checkpoint import load_checkpoint
    from .export.c import export_c
    info = export_c(load_checkpoint(args.checkpoint), args.c)
    for path in info.files:
        print(f"wrote {path}", file=out)
    print(f"build: cd {info.out_dir} && {info.build_command}", file=out)
    print("run:   ./microgpt_names 20 0.5 42   (names, temperature, seed)", file=out)
    _print_memory(info.memory, out)


def _export_training_program(args, out):
    from .export.c_train import export_training_program
    info = export_training_program(args.c, args.checkpoint, args.data, args.low_memory, args.ram, args.seed)
    for path in info.files:
        print(f"wrote {path}", file=out)
    print(f"build: cd {info.out_dir} && {info.build_command}", file=out)
    print("run:   ./microgpt_train 1000 42 20   (steps, seed, names)", file=out)
    _print_memory([(f"training RAM: {item}", size) for item, size in info.memory], out)


def cmd_info(args, out, err):
    from dataclasses import asdict
    from .train.checkpoint import load_checkpoint
    from .config import num_parameters
    from .export.c import memory_budget
    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.meta
    print(f"checkpoint: {args.checkpoint} (format {meta['format_version']}, engine {meta.get('engine')}, "
          f"dtype {meta.get('dtype')})", file=out)
    print(f"step: {ckpt.step} / {ckpt.train_cfg.steps} (Adam steps {ckpt.adam_steps})", file=out)
    print("model: " + ' '.join(f"{k}={v}" for k, v in ckpt.model_cfg.to_dict().items()), file=out)
    print(f"num params: {num_parameters(ckpt.model_cfg)}", file=out)
    print(f"vocab: {ckpt.vocab.size} tokens: {ckpt.vocab.chars!r} + BOS ({ckpt.model_cfg.bos})", file=out)
    print("train: " + ' '.join(f"{k}={v}" for k, v in asdict(ckpt.train_cfg).items()), file=out)
    print(f"metrics: {ckpt.metrics}", file=out)
    for key in ('data_path', 'best_val_loss'):
        if key in meta:
            print(f"{key}: {meta[key]}", file=out)
    print("memory budget (float32):", file=out)
    _print_memory(memory_budget(ckpt.model_cfg), out)
    from .export.c_train import training_memory_budget
    for low_memory, what in ((False, 'training RAM'), (True, 'training RAM, low memory')):
        _print_memory([(f"{what}: {item}", size) for item, size in training_memory_budget(ckpt.model_cfg, low_memory)],
                      out)
