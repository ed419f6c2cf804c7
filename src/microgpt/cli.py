"""The `microgpt` command line: parsers and `main`. Commands live in commands.py; only these two print.

Standard output of `microgpt train` with default flags is exactly microgpt.py's; everything else
(progress, timings, notices) goes to standard error, and only when it is a terminal.
"""

import argparse
import sys

from . import __version__
from .config import LR_SCHEDULES
from .data import VAL_SPLITS
from .engines import BENCH_ENGINES, DEFAULT_ENGINE, DTYPES, ENGINES
from .errors import MicrogptError
from .presets import PRESETS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `microgpt: error: ...` and exit status 2."""

    def error(self, message):
        raise MicrogptError(f"{message}; see '{self.prog} --help'")


def _add_train_flags(p):
    p.add_argument('--data', default=None,
                   help='UTF-8 text file, one document per line (default: the bundled US baby names list)')
    p.add_argument('--engine', choices=ENGINES, default=DEFAULT_ENGINE,
                   help=f'compute engine: numpy (hand-derived gradients), fused (compiled with numba, fastest), '
                        f'reference (pure-Python scalar autograd, microgpt itself) (default: {DEFAULT_ENGINE})')
    p.add_argument('--dtype', choices=DTYPES, default='float64',
                   help='floating-point type of the numpy and fused engines (default: float64, for exactness)')
    p.add_argument('--seed', type=int, default=42,
                   help='seed of the one random stream: shuffle, init, sampling (default: 42)')
    p.add_argument('--preset', choices=list(PRESETS), default='microgpt',
                   help='a named configuration; flags given explicitly override it (default: microgpt)')

    g = p.add_argument_group('model (defaults: microgpt, or the preset)')
    g.add_argument('--n-embd', type=int, help='embedding width, a multiple of --n-head (default: 16)')
    g.add_argument('--n-head', type=int, help='attention heads per layer (default: 4)')
    g.add_argument('--n-layer', type=int, help='transformer layers (default: 1)')
    g.add_argument('--block-size', type=int, help='context length in tokens; longer documents are truncated '
                                                  '(default: 16)')

    g = p.add_argument_group('optimisation (defaults: microgpt, or the preset)')
    g.add_argument('--steps', type=int, help='training steps (default: 1000)')
    g.add_argument('--lr', type=float, help='peak Adam learning rate (default: 0.01)')
    g.add_argument('--beta1', type=float, help='Adam beta1 (default: 0.85)')
    g.add_argument('--beta2', type=float, help='Adam beta2 (default: 0.99)')
    g.add_argument('--batch-size', type=int, help='documents per step, padded and masked; the loss is the '
                                                  'mean over real tokens (default: 1)')
    g.add_argument('--weight-decay', type=float, help='decoupled (AdamW) weight decay (default: 0)')
    g.add_argument('--grad-clip', type=float, help='clip the global gradient norm to this; 0 = off (default: 0)')
    g.add_argument('--lr-schedule', choices=LR_SCHEDULES, help='decay after warmup (default: linear to 0)')
    g.add_argument('--warmup', type=int, help='linear warmup steps (default: 0)')
    g.add_argument('--dropout', type=float, help='dropout of the embeddings and of each attention and MLP output '
                                                 'while training, rounded to a multiple of 1/65536; numpy and fused '
                                                 'engines (default: 0)')

    g = p.add_argument_group('evaluation and output')
    g.add_argument('--eval-every', type=int,
                   help='hold out a validation split and print its loss every N steps; 0 = off, training on '
                        'every document as microgpt does (default: 0)')
    g.add_argument('--val-fraction', type=float, default=None,
                   help='fraction of distinct documents held out when evaluating '
                        '(default: like makemore, min(1000 documents, 10%%))')
    g.add_argument('--val-split', choices=VAL_SPLITS, default='name',
                   help='hold out distinct names (a name is never on both sides), random lines as makemore '
                        'does (a name on several lines can be on both sides), or makemore\'s own test set (its '
                        'seed 3407); line and makemore are for comparing with makemore\'s figures (default: name)')
    g.add_argument('--out', default=None, metavar='DIR',
                   help='write DIR/model.safetensors (best validation loss, or last step), DIR/resume.safetensors '
                        '(latest state, for --resume) and DIR/metrics.jsonl')
    g.add_argument('--resume', action='store_true', help='continue the run saved in --out DIR')
    g.add_argument('--save-every', type=int, default=0,
                   help='also save the resume state every N steps; 0 = only at evaluations, at the end and '
                        'on Ctrl-C (default: 0)')
    g.add_argument('--plot', action='store_true', help='write DIR/loss.png of train and validation loss (needs --out)')
    _add_sampling_flags(p, temperature_default=None)


def _add_sampling_flags(p, temperature_default):
    g = p.add_argument_group('sampling')
    g.add_argument('--num-samples', type=int, default=20, help='names to sample (default: 20)')
    g.add_argument('--temperature', type=float, default=temperature_default,
                   help='sampling temperature > 0; lower is more conservative (default: 0.5, or the preset\'s)')
    g.add_argument('--top-k', type=int, default=0, help='sample only from the k most likely tokens; 0 = all (default: 0)')
    g.add_argument('--top-p', type=float, default=1.0,
                   help='sample from the smallest set of tokens whose probability reaches p (default: 1.0 = all)')


def _add_checkpoint_flag(p):
    p.add_argument('--checkpoint', required=True, help='a model.safetensors written by `microgpt train --out`')


def build_parser():
    from . import commands
    parser = _Parser(prog='microgpt', description='Train and sample tiny GPT language models on a text file '
                                                  'with one item (name, word, place) per line.')
    parser.add_argument('--version', action='version', version=f'microgpt {__version__}')
    sub = sub_parsers = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    sub_parsers.required = True

    p = sub.add_parser('train', help='train a model and print samples',
                       description='Train a GPT on a text file (one document per line), then sample from it.')
    _add_train_flags(p)
    p.set_defaults(run=commands.cmd_train)

    p = sub.add_parser('sample', help='sample names from a checkpoint',
                       description='Sample from a saved model; names already in its training data are marked *.')
    _add_checkpoint_flag(p)
    p.add_argument('--prompt', default='', help='start every sample with this prefix')
    p.add_argument('--seed', type=int, default=42, help='sampling seed (default: 42)')
    p.add_argument('--data', default=None, help='training data for the novelty check (default: the path '
                                                'recorded in the checkpoint, if it still exists)')
    _add_sampling_flags(p, temperature_default=None)
    p.set_defaults(run=commands.cmd_sample)

    p = sub.add_parser('eval', help='held-out loss of a checkpoint',
                       description='Mean negative log-likelihood per character (nats) of a checkpoint on its '
                                   'held-out split, or on every line of --data.')
    _add_checkpoint_flag(p)
    p.add_argument('--data', default=None, help='evaluate on every document of this file instead')
    p.set_defaults(run=commands.cmd_eval)

    p = sub.add_parser('bench', help='time the engines side by side on the default job',
                       description='Time each engine (and PyTorch, when installed) on the same seeded job, side by '
                                   'side in one process, and print per-step times and their ratio to the reference '
                                   'engine, plus the wall time of `microgpt train`.')
    p.add_argument('--data', default=None, help='dataset (default: the bundled names)')
    p.add_argument('--reference-steps', type=int, default=30,
                   help='steps to time the slow reference engine on (default: 30)')
    p.add_argument('--steps', type=int, default=1000, help='steps to time the fast engines on (default: 1000)')
    p.add_argument('--engines', default=','.join(BENCH_ENGINES),
                   help=f'engines to time; torch is the same model in PyTorch autograd, when installed '
                        f'(default: {",".join(BENCH_ENGINES)})')
    p.set_defaults(run=commands.cmd_bench)

    p = sub.add_parser('export', help='write a checkpoint as a self-contained C99 program (microcontrollers)',
                       description='Write DIR/weights.h (weights as static const float arrays) and '
                                   'DIR/microgpt_names.c (inference, no malloc), and print the memory budget.')
    p.add_argument('--checkpoint', default=None,
                   help='a model.safetensors written by `microgpt train --out` (required, except with --train)')
    p.add_argument('--c', required=True, metavar='DIR', help='folder for weights.h and microgpt_names.c')
    p.add_argument('--web', action='store_true',
                   help='write DIR/index.html instead: one self-contained web page that runs the model in the browser')
    p.add_argument('--force', action='store_true', help='with --web, write into DIR even if it is not empty')
    g = p.add_argument_group('--train: a C program that trains on the device')
    g.add_argument('--train', action='store_true',
                   help='write DIR/train_data.h and DIR/microgpt_train.c instead: training on the device (from the '
                        'checkpoint\'s weights, or from a seed without --checkpoint), then sampling')
    g.add_argument('--data', default=None, metavar='FILE',
                   help='the documents to train on (default: the checkpoint\'s data, or the bundled names)')
    g.add_argument('--low-memory', action='store_true',
                   help='keep no gradient buffer and recompute attention: 64 KB of RAM for the default model')
    g.add_argument('--ram', type=int, default=None, metavar='BYTES',
                   help='the most RAM training may take (default: 98304, or 65536 with --low-memory)')
    g.add_argument('--seed', type=int, default=42, help='seed of the document shuffle, as microgpt\'s (default: 42)')
    p.set_defaults(run=commands.cmd_export)

    p = sub.add_parser('info', help='describe a checkpoint and its memory budget',
                       description='Configuration, step, metrics, and the memory budget of a checkpoint: flash for '
                                   'weights, RAM for inference, and what on-device training would need (float32).')
    _add_checkpoint_flag(p)
    p.set_defaults(run=commands.cmd_info)

    p = sub.add_parser('study', help='run the ablation study over several seeds',
                       description='Train each named experiment over several seeds, score each run by held-out '
                                   'loss, and write RESULTS.md and results.png. Resumes where it stopped.')
    p.add_argument('--data', default=None, help='dataset (default: the bundled names)')
    p.add_argument('--out', default='results', metavar='DIR', help='results folder (default: results)')
    p.add_argument('--seeds', type=int, default=5, help='seeds per experiment, 1..N (default: 5)')
    p.add_argument('--experiments', default=None, help='comma-separated experiment names (default: all)')
    p.add_argument('--workers', type=int, default=2, help='parallel training processes (default: 2)')
    p.add_argument('--list', action='store_true', help='list the experiments and exit')
    p.set_defaults(run=commands.cmd_study)
    return parser


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
    except OSError as e:  # a file or folder that cannot be written or read: a full disk, --out naming a file
        where = f"{e.filename}: " if e.filename else ""
        print(f"microgpt: error: {where}{e.strerror or e}", file=err)
        return 2
    return 0


def _entry():
    sys.exit(main())
