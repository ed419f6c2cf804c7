"""The `microgpt` command line: parsers and `main`. Commands live in commands.py and model_commands.py; only these
print.

The flags of every setting, their defaults and their help text come from the config dataclasses (config.py,
train/setup.py, bench/): a field with help text is a flag. Standard output of `microgpt train` with default
flags is exactly microgpt.py's; everything else goes to standard error: notices (compilation, resuming, a
deprecated flag) always, the progress bar, save lines and timings only on a terminal.

Every error ends here, in `main`: one line `microgpt: error: ...` and exit status 2.
"""

import argparse
import os
import signal
import sys
from dataclasses import MISSING, fields

from . import __version__
from .bench.benchmark import BenchConfig
from .bench.study import StudyConfig
from .config import SAMPLE_SEED, ModelConfig, SampleConfig, SettingError, TrainConfig, flag_name
from .errors import MicrogptError, OwnDataError, PeersLost, Terminated, TerminatedAtOnce
from .presets import DEFAULT_PRESET, PRESETS
from .train.setup import RunConfig
from .tune.search import TuneConfig


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `microgpt: error: ...` and exit status 2."""

    def error(self, message):
        raise MicrogptError(f"{message}; see '{self.prog} --help'")

    def _print_message(self, message, file=None):
        """--help and --version: argparse ignores a failed write (exit 0 with the text lost in `> /dev/full`);
        here it is the error every other output failure is."""
        if message:
            stream = _Output(file or sys.stdout)
            stream.write(message)
            stream.flush()


class _Deprecated(argparse.Action):
    """An old spelling of a flag: it still works, and main says the new one on standard error. Left out, it
    sets nothing (the new flag's default applies)."""

    def __init__(self, option_strings, dest, new, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notices = getattr(namespace, 'notices', ())
        setattr(namespace, 'notices', notices + (f"{option_string} is deprecated; write {self.new}",))


class _OneCheckpoint(argparse.Action):
    """--checkpoint of a command that reads one model: given twice, an error, not the last one silently (sample's
    and eval's `--checkpoint A --checkpoint B` is an ensemble)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: {parser.prog.split()[-1]} reads one checkpoint (sample and "
                         f"eval take several, as an ensemble)")
        setattr(namespace, self.dest, values)


def _shown(value):
    return 'off' if value is False else ('on' if value is True else value)


def _help(f, presets):
    """A field's help text with its default, and the presets that change it."""
    meta = f.metadata
    default = meta['shown_default'] or _shown(f.default)
    changed = [f"{name} {_shown(overrides[f.name])}" for name, overrides in presets.items() if f.name in overrides]
    text = f"{meta['help']} (default: {default}" + (f"; preset {', '.join(changed)}" if changed else '') + ')'
    return text.replace('%', '%%')  # argparse formats help with %


def _add_settings(parser, config_class, title=None, presets=None):
    """A flag for each field of `config_class` that has help text. A flag left out is absent from the parsed
    namespace, so the dataclass's default (or the preset's) applies: defaults live in the dataclass only."""
    group = parser.add_argument_group(title) if title else parser
    for f in fields(config_class):
        meta = f.metadata
        if not meta.get('help'):
            continue  # a switch of the presets and the study, not of the command line
        assert f.default is not MISSING, f.name
        kwargs = {'dest': f.name, 'default': argparse.SUPPRESS, 'help': _help(f, presets or {})}
        if f.type is bool:
            kwargs['action'] = 'store_true'
        else:
            metavar = meta['metavar'] or (None if meta['choices'] else {int: 'N', float: 'X', str: 'TEXT'}[f.type])
            kwargs.update(type=f.type, choices=meta['choices'], metavar=metavar)
        group.add_argument(flag_name(f), **kwargs)
        parser.flag_fields.add(f.name)


def _add_checkpoint_flag(p, several=False):
    if several:
        p.add_argument('--checkpoint', required=True, nargs='+', action='extend', metavar='CHECKPOINT',
                       help='a model.safetensors written by `microgpt train --out`; several (with one vocabulary '
                            'and block size; after one flag or each after its own) make an ensemble that averages '
                            'their next-character probabilities')
    else:
        p.add_argument('--checkpoint', required=True, action=_OneCheckpoint,
                       help='a model.safetensors written by `microgpt train --out`')


def build_parser():
    from . import commands, model_commands
    parser = _Parser(prog='microgpt', description='Train and sample tiny GPT language models on a text file '
                                                  'with one item (name, word, place) per line.')
    parser.flag_fields = set()  # fields that are flags: errors about them name the flag
    parser.add_argument('--version', action='version', version=f'microgpt {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    sub.required = True

    def command(name, run, **kwargs):
        p = sub.add_parser(name, **kwargs)
        p.flag_fields = parser.flag_fields
        p.set_defaults(run=run)
        return p

    p = command('train', commands.cmd_train, help='train a model and print samples',
                description='Train a GPT on a text file (one document per line), then sample from it.')
    p.add_argument('--preset', choices=list(PRESETS), default=argparse.SUPPRESS,
                   help=f'a named configuration; flags given explicitly override it (default: {DEFAULT_PRESET}; '
                        f'with --resume, the saved run\'s)')
    _add_settings(p, RunConfig, 'data, engine, evaluation and output', PRESETS)
    _add_settings(p, ModelConfig, 'model', PRESETS)
    _add_settings(p, TrainConfig, 'optimisation', PRESETS)
    _add_settings(p, SampleConfig, 'sampling', PRESETS)

    p = command('sample', model_commands.cmd_sample, help='sample names from a checkpoint',
                description='Sample from a saved model (or an ensemble of several); names already in its training '
                            'data are marked *.')
    _add_checkpoint_flag(p, several=True)
    p.add_argument('--prompt', default='', help='start every sample with this prefix')
    p.add_argument('--seed', type=int, default=None, help=f'sampling seed (default: {SAMPLE_SEED})')
    p.add_argument('--data', default=None, metavar='FILE',
                   help='training data for the novelty check (default: the path recorded in the checkpoint, if '
                        'it still exists)')
    _add_settings(p, SampleConfig, 'sampling')

    p = command('eval', model_commands.cmd_eval, help='held-out loss of a checkpoint',
                description='Mean negative log-likelihood per character (nats) of a checkpoint on its held-out '
                            'split, or on every line of --data; several checkpoints are scored each and as an ensemble '
                            'averaging their probabilities.')
    _add_checkpoint_flag(p, several=True)
    p.add_argument('--data', default=None, metavar='FILE', help='evaluate on every document of this file instead')

    p = command('bench', commands.cmd_bench, help='time the engines side by side on the default job',
                description='Time each engine (and PyTorch, when installed) on the same seeded job, side by side '
                            'in one process, and print per-step times (and their ratio to the reference engine '
                            'when it is timed), plus the wall time of `microgpt train`.')
    _add_settings(p, BenchConfig)

    p = command('export', model_commands.cmd_export,
                help='write a checkpoint as a C99 program (microcontrollers), a web page (--web), or a C program '
                     'that trains on the device (--train)',
                description='Write DIR/weights.h (weights as static const float arrays), DIR/microgpt_names.c '
                            '(inference, no malloc) and DIR/microgpt_common.h (the code it shares with --train\'s '
                            'program), and print the memory budget; or, with --web, one web page that runs the model '
                            'in the browser; or, with --train, a C program that trains a model on the device.')
    p.add_argument('--checkpoint', default=None, action=_OneCheckpoint,
                   help='a model.safetensors written by `microgpt train --out` (required, except with --train)')
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument('--out', metavar='DIR',
                     help='folder for the C program (with --web, for index.html)')
    out.add_argument('--c', dest='out', metavar='DIR', action=_Deprecated, new='--out DIR')
    p.add_argument('--web', action='store_true',
                   help='write DIR/index.html instead: one self-contained web page that runs the model in the browser')
    p.add_argument('--force', action='store_true', help='with --web, write into DIR even if it is not empty')
    g = p.add_argument_group('--train: a C program that trains on the device')
    g.add_argument('--train', action='store_true',
                   help='write DIR/train_data.h and DIR/microgpt_train.c (with microgpt_common.h) instead: training '
                        'on the device (from the '
                        'checkpoint\'s weights, or from a seed without --checkpoint), then sampling')
    g.add_argument('--data', default=None, metavar='FILE',
                   help='the documents to train on (default: the checkpoint\'s training documents, or the '
                        'bundled names)')
    g.add_argument('--low-memory', action='store_true',
                   help='keep no gradient buffer and recompute attention: 64 KB of RAM for the default model')
    g.add_argument('--ram', type=int, default=None, metavar='BYTES',
                   help='the most RAM training may take (default: 98304, or 65536 with --low-memory)')
    g.add_argument('--seed', type=int, default=None,
                   help='seed of the document shuffle, as microgpt\'s (default: 42)')

    p = command('info', model_commands.cmd_info, help='describe a checkpoint and its memory budget',
                description='Configuration, step, metrics, and the memory budget of a checkpoint: flash for '
                            'weights, RAM for inference, and what on-device training would need (float32).')
    _add_checkpoint_flag(p)

    p = command('study', commands.cmd_study, help='run the ablation study over several seeds',
                description='Train each named experiment over several seeds, score each run by held-out loss, '
                            'and write RESULTS.md and results.png. Resumes where it stopped.')
    _add_settings(p, StudyConfig)
    p.add_argument('--seeds', dest='num_seeds', type=int, action=_Deprecated, new='--num-seeds N')

    p = command('tune', commands.cmd_tune, help='search the best settings for your data (Optuna)',
                description='Search learning rate, schedule, warmup, weight decay, dropout, training length, width, '
                            'depth and batch size with Optuna: each trial trains the fused engine in float32 and is '
                            'pruned when its held-out loss falls clearly behind. The study lives in a database, so '
                            'the same command continues it and workers on several machines can share it; at the end '
                            'the best run is in DIR/best with the command that trains it again.')
    _add_settings(p, TuneConfig)
    return parser


def _flag_namer(parser):
    """Names a field by its flag where it has one, else by itself."""
    by_field = {f.name: flag_name(f) for cls in (RunConfig, ModelConfig, TrainConfig, SampleConfig, BenchConfig,
                                                 StudyConfig, TuneConfig) for f in fields(cls)}
    return lambda field: by_field[field] if field in parser.flag_fields else field


class _OutputError(MicrogptError):
    """Standard output cannot be written."""


class _Output:
    """Standard output, where a failed write (a full disk, a character its encoding cannot write) is an error."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            buffer = getattr(self.stream, 'buffer', None)
            if buffer is None or os.linesep != '\n':
                return self.stream.write(text)
            # the bytes, through the stream's buffer until all are written: a signal (Ctrl-C, whose handler lets the
            # step finish) that interrupts a write to a full pipe makes it return short, and the text stream above
            # it drops the rest (a chunk of step lines was lost that way)
            data = memoryview(text.encode(self.stream.encoding, self.stream.errors or 'strict'))
            self.stream.flush()
            while data:
                data = data[buffer.write(data):]
            if getattr(self.stream, 'line_buffering', False) and '\n' in text:  # a terminal: a line shows at once
                buffer.flush()
            return len(text)
        except UnicodeEncodeError as e:
            raise _OutputError(f"cannot print {e.object[e.start:e.end]!r} in standard output's encoding "
                                f"{e.encoding}; set PYTHONIOENCODING=utf-8") from None
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputError(f"cannot write standard output: {e.strerror or e}") from None

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputError(f"cannot write standard output: {e.strerror or e}") from None

    def isatty(self):
        return self.stream.isatty()


def _discard_pending(stream):
    """Point a failed stream at /dev/null, so the interpreter's flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a file (a test's buffer): nothing is flushed at exit


def main(argv=None, out=None, err=None):
    """Run one command line; its exit status."""
    return _run(argv, out, err)[0]


def _run(argv=None, out=None, err=None, take_sigterm=False):
    """(exit status, the MicrogptError that ended the command or None); with `take_sigterm` (a process of its own),
    SIGTERM ends the command as Ctrl-C does (_interrupt_on_sigterm)."""
    stdout = out or sys.stdout
    err = own_err = err or sys.stderr or open(os.devnull, 'w', encoding='utf-8')  # `2>&-`: errors lost, as on /dev/full
    rank = _torchrun_rank()
    if rank:  # a process of a torchrun launch but the first, which speaks for all but a lost peer and its own data
        stdout = err = open(os.devnull, 'w', encoding='utf-8')
    if stdout is None:  # started with standard output closed (`>&-`): Python has no stream to give
        _say("microgpt: error: standard output is closed; give it a file (> FILE, or > /dev/null)", err)
        return 2, None
    out = _Output(stdout)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if take_sigterm:
            _interrupt_on_sigterm(args.command, rank)
        _check_numba_threads()
        for notice in getattr(args, 'notices', ()):
            print(f"microgpt: {notice}", file=err)
        args.run(args, out, err)
        out.flush()
    except SettingError as e:
        _error(e.words(_flag_namer(parser)), err)
        return 2, None
    except _OutputError as e:
        _discard_pending(stdout)
        _error(e, err)
        return 2, None
    except MicrogptError as e:  # a lost peer is said by every process that sees it: the first may be the one lost
        if isinstance(e, PeersLost) or not rank:
            _error(e, own_err)
        elif isinstance(e, OwnDataError):  # another machine's file, say: said by the process that met it
            _error(f"process {rank}: {e}", own_err)
        return 2, e
    except TerminatedAtOnce:
        _say("microgpt: terminated", err)
        return 143, None
    except KeyboardInterrupt:
        _say("microgpt: interrupted", err)
        return 130, None
    except Terminated:  # stopped and saved on SIGTERM; the stop line said where
        return 143, None
    except MemoryError as e:  # the memory check reads the machine's free memory, not a ulimit or a container's
        _error(f"out of memory ({e or 'an allocation failed'}); give a smaller model, --batch-size or --block-size, "
               f"or raise the process's memory limit", err)
        return 2, None
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        _discard_pending(stdout)
        return 1, None
    except OSError as e:  # a file or folder that cannot be written or read: a full disk, --out naming a file
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}", err)
        return 2, None
    return 0, None


def _torchrun_rank():
    """engines.torchrun_rank, or None where WORLD_SIZE or RANK is not a number (make_engine then says so)."""
    from .engines import torchrun_rank
    try:
        return torchrun_rank()
    except MicrogptError:
        return None


def _check_numba_threads():
    """numba reads NUMBA_NUM_THREADS when it is first imported (by the fused engine, or to shuffle a big file): 0 or
    less stopped it with a traceback, and text it ignored with a warning. Refused here, in one line, by every
    command."""
    value = os.environ.get('NUMBA_NUM_THREADS', '').strip()
    if value and not (value.removeprefix('+').isdecimal() and int(value) > 0):  # isdigit takes '²', int does not
        raise MicrogptError(f"NUMBA_NUM_THREADS={value!r}: give the threads as a whole number, 1 or more, or leave "
                            f"it unset (one per core)")


def _error(message, err):
    """The one line of an error: a newline in a path (a folder named so) is written as \\n, never as a break."""
    text = str(message).replace('\r', '\\r').replace('\n', '\\n')
    _say(f"microgpt: error: {text}", err)


def _say(line, err):
    """A line on standard error, where it can be written: one that cannot (2>/dev/full, a closed descriptor) is lost,
    and the exit status still says what happened (the OSError escaped before: every error exited 1)."""
    try:
        print(line, file=err, flush=True)
    except (OSError, ValueError):
        pass


def _interrupt_on_sigterm(command, torchrun_rank):
    """SIGTERM (a scheduler's, `timeout`'s) ended the process at once with no clean-up: a download's temporary stayed
    in the cache, a progress bar on the terminal. It now raises TerminatedAtOnce, which unwinds as Ctrl-C does;
    `train` takes it as a stop request once its steps run (commands._StopRequest). Not for `tune` and `study`, whose
    worker processes take their signals by their own rules; nor in a process of a torchrun launch, which torchrun
    ends with SIGTERM when another stops, and which may then wait inside PyTorch's process group, where Python runs
    no handler, until torchrun kills it 30 s later; nor where SIGTERM was ignored or handled when the process
    started."""
    if command not in ('tune', 'study') and torchrun_rank is None and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_at_once)


def _terminate_at_once(signum, frame):
    """Once: a second SIGTERM while the first's clean-up runs would interrupt it (a traceback, exit status 1)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise TerminatedAtOnce


def _entry():
    code, error = _run(take_sigterm=True)
    if isinstance(error, PeersLost):  # gloo's threads may abort the teardown of this process: end it now
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(code)
    sys.exit(code)
