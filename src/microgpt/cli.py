"""The `microgpt` command line. The only module that prints.

Standard output of `microgpt train` with default flags is exactly microgpt.py's; everything else
(progress, timings) goes to standard error, and only when it is a terminal.
"""

import argparse
import random
import sys
import time

from . import __version__
from .config import ModelConfig, TrainConfig
from .data import Vocabulary, bundled_dataset_path, load_documents, shuffled
from .decoding import generate
from .engines import DEFAULT_ENGINE, DTYPES, ENGINES, make_engine
from .errors import MicrogptError
from .training import train


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `microgpt: error: ...` and exit status 2."""

    def error(self, message):
        raise MicrogptError(f"{message}; see '{self.prog} --help'")


def _add_model_flags(p):
    g = p.add_argument_group('model')
    g.add_argument('--n-embd', type=int, default=16, help='embedding width, a multiple of --n-head (default: 16)')
    g.add_argument('--n-head', type=int, default=4, help='attention heads per layer (default: 4)')
    g.add_argument('--n-layer', type=int, default=1, help='transformer layers (default: 1)')
    g.add_argument('--block-size', type=int, default=16,
                   help='context length in tokens; longer documents are truncated (default: 16)')


def _add_optim_flags(p):
    g = p.add_argument_group('optimisation')
    g.add_argument('--steps', type=int, default=1000, help='training steps (default: 1000)')
    g.add_argument('--lr', type=float, default=0.01, help='Adam learning rate, decayed linearly to 0 (default: 0.01)')
    g.add_argument('--beta1', type=float, default=0.85, help='Adam beta1 (default: 0.85)')
    g.add_argument('--beta2', type=float, default=0.99, help='Adam beta2 (default: 0.99)')


def _add_sampling_flags(p):
    g = p.add_argument_group('sampling')
    g.add_argument('--num-samples', type=int, default=20, help='names to sample after training (default: 20)')
    g.add_argument('--temperature', type=float, default=0.5,
                   help='sampling temperature > 0; lower is more conservative (default: 0.5)')


def build_parser():
    parser = _Parser(prog='microgpt', description='Train and sample tiny GPT language models on a text file '
                                                  'with one item (name, word, place) per line.')
    parser.add_argument('--version', action='version', version=f'microgpt {__version__}')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    commands.required = True

    p = commands.add_parser('train', help='train a model and print samples',
                            description='Train a GPT on a text file (one document per line), then sample from it.')
    p.add_argument('--data', default=None,
                   help='UTF-8 text file, one document per line (default: the bundled US baby names list)')
    p.add_argument('--engine', choices=ENGINES, default=DEFAULT_ENGINE,
                   help=f'compute engine: numpy (fast, hand-derived gradients) or reference (pure-Python '
                        f'scalar autograd, microgpt itself) (default: {DEFAULT_ENGINE})')
    p.add_argument('--dtype', choices=DTYPES, default='float64',
                   help='floating-point type of the numpy engine (default: float64, for exactness)')
    p.add_argument('--seed', type=int, default=42, help='seed of the one random stream: shuffle, init, sampling '
                                                        '(default: 42)')
    _add_model_flags(p)
    _add_optim_flags(p)
    _add_sampling_flags(p)
    p.set_defaults(run=cmd_train)

    p = commands.add_parser('bench', help='time the engines side by side on the default job',
                            description='Time each engine on the same seeded job and print per-step times and '
                                        'their ratio to the reference engine, plus the wall time of `microgpt train`.')
    p.add_argument('--data', default=None, help='dataset (default: the bundled names)')
    p.add_argument('--reference-steps', type=int, default=30,
                   help='steps to time the slow reference engine on (default: 30)')
    p.add_argument('--steps', type=int, default=1000, help='steps to time the fast engines on (default: 1000)')
    p.add_argument('--engines', default=','.join(ENGINES), help=f'engines to time (default: {",".join(ENGINES)})')
    p.set_defaults(run=cmd_bench)
    return parser


def _check_sampling_flags(args):
    if args.num_samples < 0:
        raise MicrogptError(f"--num-samples must be >= 0, got {args.num_samples}")
    if not args.temperature > 0:
        raise MicrogptError(f"--temperature must be > 0, got {args.temperature}")


def cmd_train(args, out, err):
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, beta1=args.beta1, beta2=args.beta2, seed=args.seed).validate()
    model_flags = dict(n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer, block_size=args.block_size)
    ModelConfig(vocab_size=1, **model_flags).validate()  # flag errors before any file is read
    _check_sampling_flags(args)

    rng = random.Random(tcfg.seed)
    docs = shuffled(load_documents(args.data or bundled_dataset_path()), rng)
    print(f"num docs: {len(docs)}", file=out)
    vocab = Vocabulary.from_documents(docs)
    print(f"vocab size: {vocab.size}", file=out)
    cfg = ModelConfig(vocab_size=vocab.size, **model_flags).validate()
    engine = make_engine(args.engine, cfg, rng, args.dtype)
    print(f"num params: {engine.num_params()}", file=out)

    doc_tokens = [vocab.document_tokens(doc) for doc in docs]
    started = time.perf_counter()
    for report in train(engine, doc_tokens, tcfg):
        print(f"step {report.step:4d} / {report.steps:4d} | loss {report.loss:.4f}", file=out)
    if err.isatty():
        elapsed = time.perf_counter() - started
        print(f"trained {tcfg.steps} steps in {elapsed:.2f} s ({1e3 * elapsed / tcfg.steps:.3f} ms/step)", file=err)

    print("\n--- inference (new, hallucinated names) ---", file=out)
    decoder = engine.decoder()
    for sample_idx in range(args.num_samples):
        ids = generate(decoder, vocab.bos_id, cfg.block_size, rng, args.temperature)
        print(f"sample {sample_idx + 1:2d}: {vocab.decode(ids)}", file=out)


def cmd_bench(args, out, err):
    from .benchmark import time_cli_train, time_engine
    data = args.data or bundled_dataset_path()
    names = [name.strip() for name in args.engines.split(',') if name.strip()]
    unknown = set(names) - set(ENGINES)
    if unknown:
        raise MicrogptError(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    if args.steps < 1 or args.reference_steps < 1:
        raise MicrogptError("--steps and --reference-steps must be at least 1")
    rows = []
    for name in ['reference'] + [n for n in names if n != 'reference']:
        for dtype in (['float64'] if name == 'reference' else ['float64', 'float32']):
            steps = args.reference_steps if name == 'reference' else args.steps
            warmup = 0 if name == 'reference' else 20
            print(f"timing {name} {dtype} ({steps} steps)...", file=err, flush=True)
            rows.append(time_engine(name, data, steps, dtype, warmup_steps=warmup))
    reference_us = rows[0].us_per_step
    print(f"{'engine':<10} {'dtype':<8} {'steps':>6} {'us/step':>11} {'tokens/s':>11} {'x reference':>12}", file=out)
    for row in rows:
        print(f"{row.engine:<10} {row.dtype:<8} {row.steps:>6} {row.us_per_step:>11.1f} "
              f"{row.tokens_per_second:>11.0f} {reference_us / row.us_per_step:>12.0f}", file=out)
    wall_args = ['--data', args.data] if args.data else []
    for name in names:
        if name != 'reference':
            wall = time_cli_train(wall_args + ['--engine', name])
            print(f"wall time of `microgpt train --engine {name}` (defaults, best of 3): {wall:.3f} s", file=out)


def main(argv=None, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        args.run(args, out, err)
    except MicrogptError as e:
        print(f"microgpt: error: {e}", file=err)
        return 2
    except KeyboardInterrupt:
        print("microgpt: interrupted", file=err)
        return 130
    except BrokenPipeError:
        return 1
    return 0


def _entry():
    sys.exit(main())
