"""A training run as `microgpt train` runs it: the run setup, resume (its settings: recorded.py), steps,
evaluation, checkpoints and metrics. Quiet: it yields events, and the CLI prints them.

Randomness: one `random.Random(seed)` drives shuffle, initialisation and sampling in microgpt's order;
the held-out split draws from its own stream, so turning evaluation on changes which documents are
trained on but never the order of the main stream (setup.prepare_run).
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass

from ..data import file_identity
from ..errors import MicrogptError
from ..fetch import is_url, local_path
from ..tempfiles import folder_problem, lock_folder, make_folders, remove_folders, remove_quietly
from .loop import evaluate, train_chunks, training_threads
from .recorded import BEST_CHECKPOINT, RESUME_CHECKPOINT, recorded_path
from .setup import Holdout, prepare_run

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'loss.png'
MAX_STEP = 2**53 - 1  # a metrics record's step, at most: the web page's numbers are JavaScript's, exact up to here
CHECKPOINTS = (BEST_CHECKPOINT, RESUME_CHECKPOINT)  # what makes a folder a run: metrics alone keep nothing
RUN_FILES = (*CHECKPOINTS, METRICS_FILE, PLOT_FILE)
# A loss above this many nats per token has diverged even where it is still a finite number (--lr 1e30 gave
# 1e92 on the array engines, where the reference engine's log(0) gave NaN): the model puts e^-1000 on the
# characters it is shown. A model that guesses uniformly scores ln(vocabulary size), under 12 for any vocabulary.
DIVERGED_LOSS = 1000.0


# ---- metrics.jsonl, read back (resume, the plot, the web page)

def metrics_record(line):
    """(step, train_loss, val_loss or None) of one line of metrics.jsonl; ValueError naming what is wrong."""
    try:
        record = json.loads(line)
        step, train_loss = record['step'], float(record['train_loss'])
        val_loss = float(record['val_loss']) if 'val_loss' in record else None
    except (KeyError, TypeError, OverflowError, RecursionError) as e:  # a key missing, not an object of numbers, a
        raise ValueError(f"{type(e).__name__}: {e}") from None      # 400-digit integer, arrays nested 100,000 deep
    if type(step) is not int or not 0 <= step <= MAX_STEP:  # 1e400 was an OverflowError's traceback
        raise ValueError(f"step {step!r} is not a step number")
    return step, train_loss, val_loss


def read_metrics_records(path, advice):
    """[(step, train_loss, val_loss or None)] of a metrics.jsonl, leaving out a last line cut off (a killed
    run's last write); MicrogptError naming a damaged line, with `advice`."""
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.readlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(metrics_record(line))
        except ValueError as e:
            if number == len(lines) and not line.endswith('\n'):
                continue
            raise MicrogptError(f"{path}: line {number} is not a metrics record ({e}); {advice}") from None
    return records


# ---- events

@dataclass(frozen=True)
class Header:
    num_docs: int
    vocab_size: int
    num_params: int
    num_val_docs: int
    resumed_from: int        # 0 for a fresh run


@dataclass(frozen=True)
class EvalReport:
    step: int
    steps: int
    val_loss: float
    best_val_loss: float


@dataclass(frozen=True)
class Saved:
    path: str
    step: int


class TrainingRun:
    def __init__(self, settings):
        self.s, self.cfg, self.tcfg = settings, settings.run, settings.train
        self._refuse_a_saved_run()
        self.run = None          # the prepared Run, once events() has read the data
        self.best_val_loss = math.inf
        self.step = 0
        self.saved_step = None   # the step of the last resume state in --out DIR: resumed from, or saved
        self.stopped = False     # a stop that every process of the run agreed on (_steps)

    def path(self, name):
        return os.path.join(self.cfg.out, name)

    def _refuse_a_saved_run(self):
        if self.cfg.out and not self.cfg.resume and not self.cfg.overwrite:
            existing = [name for name in CHECKPOINTS if os.path.exists(self.path(name))]
            if existing:
                resume = "continue it with --resume, " if RESUME_CHECKPOINT in existing else ""
                raise MicrogptError(f"{self.cfg.out} already holds a run ({', '.join(existing)}); {resume}replace it "
                                    f"with --overwrite, or give another --out DIR")

    def _lock_folder(self):
        """Hold --out DIR's lock while the run writes there: a second run into the same folder at the same time is
        refused (both wrote its checkpoints and metrics, and one run's were lost). None where there is no lock to
        take (tempfiles.lock_folder): the run goes unlocked, as before."""
        try:
            return lock_folder(self.cfg.out, wait=False)
        except BlockingIOError:
            raise MicrogptError(f"{self.cfg.out}: another microgpt run is writing here; wait for it to end, or give "
                                f"another --out DIR") from None

    def events(self, should_stop=lambda: False, progress=None):
        """The run's Header, Steps (loop.py's, an engine call's steps), EvalReports and Saved events;
        `progress(bytes, total or None)` follows the data's download or first tokenisation (prepare_run's)."""
        cfg, tcfg = self.cfg, self.tcfg
        holdout = Holdout(cfg.val_fraction, cfg.val_split, tcfg.seed) if cfg.eval_every else None
        # the identity of the bytes read: taken before reading (a URL's download is its own, made by the read), and
        # again after it, the engine built: the file edited meanwhile would be recorded as the data trained on
        before = None if is_url(cfg.data_path) else file_identity(cfg.data_path)
        resumed = None
        if cfg.resume:  # read once; its data checked first (an edited file would fail in the reading, in other words)
            from .checkpoint import load_checkpoint
            resumed = load_checkpoint(self.path(RESUME_CHECKPOINT))
            self._refuse_other_data(resumed.meta.get('data_identity'), before)
        self.run = run = prepare_run(cfg.data_path, self.s.model, tcfg, cfg.engine, cfg.dtype, holdout, cfg.device,
                                     progress)
        if self.s.sample is not None:  # before any step: the samples come after the last
            self.s.sample.check_vocabulary(run.vocab.size)
        self.data_identity = file_identity(local_path(cfg.data_path))  # a URL's download is fetched by now
        if before is not None and self.data_identity != before:
            raise MicrogptError(f"{cfg.data_path} changed while this run read it (its length or its first or last "
                                f"64 KiB); run again once it is written whole")
        self.data_unchecked = None  # why a resumed run's data cannot be checked against the run's (_resume)
        # in a data-parallel run (torchrun) every process trains; the first alone evaluates and writes
        self.writes = run.engine.is_main_process
        made = []  # the folders this run made for --out (the writing process's, in a data-parallel run)
        if cfg.out:
            try:
                made = make_folders(cfg.out)
            except OSError as e:
                raise MicrogptError(f"{cfg.out}: cannot make the output folder ({folder_problem(cfg.out, e)}); "
                                    f"give another --out DIR") from None
        lock = self._folder_lock = self._lock_folder() if cfg.out and self.writes else None
        try:
            self._refuse_a_saved_run()  # again, under the lock: a run into this folder may have ended since
            if cfg.out and self.writes and not cfg.resume:
                self._remove_previous_run()
            start = self._resume(resumed) if cfg.resume else 0
            self._open_metrics(start)
            yield Header(len(run.docs), run.vocab.size, run.engine.num_params(), len(run.val_docs), start)
            try:
                with training_threads():
                    yield from self._steps(run.train_tokens, run.val_tokens, start, should_stop)
            finally:
                self._close_metrics()
                if self.writes and self._metrics_end == 0 and not start:  # stopped before its first step
                    self._remove_empty_run(made)
        finally:
            if lock is not None:
                self._folder_lock = None
                os.close(lock)  # closing the folder's descriptor releases its lock

    def _remove_empty_run(self, made):
        """Remove the empty metrics file of a fresh run that stopped before its first step (Ctrl-C while compiling,
        a loss that was not finite at step 1), and the folders it made for --out if they are empty now."""
        path = self.path(METRICS_FILE)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            remove_quietly(path)
        remove_folders(made)

    def _steps(self, doc_tokens, val_tokens, start, should_stop):
        cfg, tcfg, engine = self.cfg, self.tcfg, self.run.engine
        last_time = time.perf_counter()
        for chunk in train_chunks(engine, doc_tokens, tcfg, start_step=start,
                                  sync_every=(cfg.eval_every, cfg.save_every)):
            bad = next((i for i, loss in enumerate(chunk.losses) if not loss <= DIVERGED_LOSS), None)  # NaN too
            if bad is not None:
                if bad:  # the steps before it are reported and recorded
                    self.step = chunk.first + bad - 1
                    yield chunk.head(bad)
                    self._write_metrics(*self._records(chunk.head(bad)))
                self.step = chunk.first + bad
                self._diverged(f"the loss became {chunk.losses[bad]:.4g} at step {self.step}")
            self.step = step = chunk.last
            loss = chunk.losses[-1]
            # the last step is the engine's state: evaluations and saves are there
            record = {'step': step, 'train_loss': loss, 'lr': chunk.lrs[-1]}
            now = time.perf_counter()  # throughput over the chunk's steps
            record['tokens_per_s'] = sum(chunk.tokens) / max(now - last_time, 1e-9)
            last_time = now
            yield chunk
            if self._metrics and len(chunk.losses) > 1:  # the steps before it, recorded before it is evaluated
                self._write_metrics(*self._records(chunk.head(len(chunk.losses) - 1)))
            finished, improved = step == tcfg.steps, False
            if cfg.eval_every and self.writes and (step % cfg.eval_every == 0 or finished):
                val_loss = evaluate(engine, val_tokens)
                if not val_loss <= DIVERGED_LOSS:
                    self._diverged(f"the held-out loss became {val_loss:.4g} at step {step}")
                record['val_loss'] = val_loss
                improved = val_loss < self.best_val_loss
                self.best_val_loss = min(self.best_val_loss, val_loss)
                yield EvalReport(step, tcfg.steps, val_loss, self.best_val_loss)
            self._write_metrics(record)  # before the saves: a save that fails keeps the record of a step shown
            if cfg.out and improved:
                yield self._save(BEST_CHECKPOINT, {'val_loss': record['val_loss']})
            stopping = engine.any_process(should_stop())
            self.stopped = self.stopped or stopping  # asked here, or in another process of a data-parallel run
            if cfg.out and self.writes and (finished or stopping or (cfg.save_every and step % cfg.save_every == 0)
                            or (cfg.eval_every and step % cfg.eval_every == 0)):
                # without evaluation the model is the last step's: saved before the resume state, so that a run
                # killed between the two saves resumes from the step before and saves both again (in the other
                # order, a resume found nothing left to train and left model.safetensors an earlier step's)
                if not cfg.eval_every:
                    yield self._save(BEST_CHECKPOINT, {'train_loss': loss})
                yield self._save(RESUME_CHECKPOINT, {'train_loss': loss})
                self.saved_step = step
            if stopping and not finished:
                return

    @staticmethod
    def _records(chunk):
        """The metrics records of a chunk's steps."""
        return [{'step': step, 'train_loss': loss, 'lr': lr}
                for step, loss, lr in zip(range(chunk.first, chunk.last + 1), chunk.losses, chunk.lrs)]

    def kept(self):
        """What the run keeps in --out DIR, for a message that stops it: '; ...', or '' without --out."""
        if self.cfg.out is None:
            return ""
        if self.saved_step is None:
            return f"; this run saved no checkpoint in {self.cfg.out}"
        return f"; {self.path(RESUME_CHECKPOINT)} keeps step {self.saved_step}"

    def _diverged(self, what):
        """Stop with the one divergence error, saying which checkpoint is kept only where one is."""
        kept = f"{self.kept()}, the last finite state" if self.saved_step is not None else self.kept()
        remedies = ['lower --lr'] + ([] if self.tcfg.grad_clip else ['set --grad-clip']) \
            + (['lower --weight-decay'] if self.tcfg.weight_decay else [])  # what the run has not tried
        raise MicrogptError(f"{what}: training diverged{kept}; {' or '.join(remedies)}")

    def _remove_previous_run(self):
        """A fresh run starts from an empty record: the files of the run it replaces (--overwrite), or the
        metrics of one that saved nothing, never stay beside its own."""
        for name in RUN_FILES:
            if not os.path.lexists(self.path(name)):  # on a read-only file system, removing nothing fails too
                continue
            try:
                os.remove(self.path(name))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise MicrogptError(f"{self.path(name)}: cannot remove the previous run's file ({e.strerror}); "
                                    f"give another --out DIR") from None

    # ---- checkpoints

    def _meta(self):
        cfg = self.cfg
        return {'data_path': recorded_path(cfg.data_path), 'eval_every': cfg.eval_every, 'save_every': cfg.save_every,
                'val_fraction': cfg.val_fraction, 'val_split': cfg.val_split, 'preset': self.s.preset,
                'compute_dtype': cfg.dtype, 'best_val_loss': self.best_val_loss, 'data_identity': self.data_identity,
                **({'sampling': asdict(self.s.sample)} if self.s.sample is not None else {})}

    def _save(self, name, metrics):
        from .checkpoint import save_checkpoint
        if not _finite(self.run.engine.state()):  # the step's loss was finite, its update was not
            self._diverged(f"the weights are no longer finite after step {self.step}")
        self._check_the_folder_is_the_run_s()
        path = self.path(name)
        save_checkpoint(path, self.run.engine, self.run.vocab, self.tcfg, self.step, metrics,
                        {k: json.dumps(v) for k, v in self._meta().items()})
        return Saved(path, self.step)

    _folder_lock = None  # the descriptor of --out DIR that holds its lock (_lock_folder)

    def _check_the_folder_is_the_run_s(self):
        """Stop where --out DIR is no longer the folder the run locked (moved, or replaced): metrics.jsonl, opened
        there, follows the folder, but a checkpoint is written by its path, and went into the new folder, which a
        second run could then lock and write in too."""
        if self._folder_lock is None:
            return
        locked = os.fstat(self._folder_lock)
        try:
            now = os.stat(self.cfg.out)
            same = (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino)
        except OSError:
            same = False
        if not same:
            raise MicrogptError(f"{self.cfg.out}: the folder was moved or replaced while this run wrote in it; the "
                                f"run stops here, its metrics.jsonl and earlier checkpoints are in the folder it "
                                f"started in, wherever that is now")

    def _resume(self, ckpt):
        """Restore the saved state of `ckpt`, the resume checkpoint; resume_settings has already refused settings
        that differ from it."""
        from .checkpoint import restore_engine
        run = self.run
        saved = ckpt.meta.get('data_identity')  # a run that read a stream, and checkpoints before it was kept: none
        self._refuse_other_data(saved, self.data_identity)  # (a URL's download, which exists only now)
        if ckpt.vocab != run.vocab:
            raise MicrogptError(f"--resume with a different configuration (vocabulary: the data now holds other "
                                f"characters); resume with the original --data, or train into a new --out folder")
        self.data_unchecked = 'stream' if self.data_identity is None else 'unrecorded' if saved is None else None
        self.data_identity = saved  # what the run started on: a stream now does not erase it, a file now does not vouch
        restore_engine(ckpt, run.engine)
        self._record_moved_data(ckpt)
        best = ckpt.meta.get('best_val_loss')
        self.best_val_loss = math.inf if best is None else best
        self.step = self.saved_step = ckpt.step
        return ckpt.step

    def _refuse_other_data(self, saved, now):
        """Refuse to resume on data whose identity differs from the one the run saved (None: nothing to compare)."""
        if saved is not None and now is not None and saved != now:
            raise MicrogptError(f"--resume with other data: {self.cfg.data_path} changed since the run saved (its "
                                f"length or its first or last 64 KiB); resume with the original data, or train into "
                                f"a new --out folder")

    def _record_moved_data(self, ckpt):
        """The run's data found at another path (resume_settings took it for the same data): its checkpoints
        record the new path now, the best one too, which a later save may not replace (eval, export and sample
        read the data from it)."""
        from .checkpoint import load_checkpoint, rewrite_metadata
        moved = recorded_path(self.cfg.data_path)
        if not self.writes or ckpt.meta.get('data_path') in (None, moved):
            return
        for name in (BEST_CHECKPOINT, RESUME_CHECKPOINT):
            path = self.path(name)
            if os.path.exists(path) and load_checkpoint(path).meta.get('data_identity') == self.data_identity:
                rewrite_metadata(path, {'data_path': json.dumps(moved)})

    # ---- metrics.jsonl: one JSON object per step, written whole or not at all

    def _open_metrics(self, start):
        self._metrics, self._metrics_end = None, None
        if not self.cfg.out or not self.writes:
            return
        path = self.path(METRICS_FILE)
        try:
            kept = 0  # bytes of the records up to the step we resume from; those of later steps are dropped
            if start and os.path.exists(path):
                with open(path, 'rb') as f:
                    for line in f:
                        if not line.endswith(b'\n'):  # the last write of a killed run, cut off: dropped
                            break
                        if line.strip() and metrics_record(line)[0] > start:
                            break
                        kept += len(line)
                os.truncate(path, kept)
            self._metrics = open(path, 'ab' if kept else 'wb', buffering=0)
            self._metrics_end = kept  # where the last whole record ends
        except OSError as e:
            raise MicrogptError(f"{path}: cannot write the metrics ({e.strerror}); give another --out DIR") from None
        except ValueError as e:  # a bad line would stop the plot, or the web export, later
            raise MicrogptError(f"{path}: damaged (not one JSON record with a step and a training loss per line: "
                                f"{e}); move it away to resume") from None

    def _write_metrics(self, *records):
        """Append the records, a line each, in one write."""
        if not self._metrics:
            return
        lines = ''.join([json.dumps(record) + '\n' for record in records]).encode('utf-8')
        written = 0
        try:
            while written < len(lines):  # an unbuffered write may take part of the lines, then fail
                written += self._metrics.write(lines[written:])
        except OSError as e:
            try:  # no half record: the file ends at the last whole line
                self._metrics.truncate(self._metrics_end + lines.rfind(b'\n', 0, written) + 1)
            except OSError:
                pass
            raise MicrogptError(f"{self.path(METRICS_FILE)}: cannot write the metrics ({e.strerror})"
                                f"{self.kept()}") from None
        self._metrics_end += len(lines)

    def _close_metrics(self):
        if self._metrics:
            metrics, self._metrics = self._metrics, None
            metrics.close()  # unbuffered: nothing is left to write


def _finite(state):
    """Whether every weight and Adam moment is finite (NumPy is imported only here: checkpoints need it anyway)."""
    import numpy as np
    arrays = (*state.weights.values(), state.adam_m, state.adam_v)
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)
