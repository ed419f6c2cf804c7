"""A training run as `microgpt train` runs it: the run setup, resume, steps, evaluation, checkpoints and
metrics. Quiet: it yields events, and the CLI prints them.

Randomness: one `random.Random(seed)` drives shuffle, initialisation and sampling in microgpt's order;
the held-out split draws from its own stream, so turning evaluation on changes which documents are
trained on but never the order of the main stream (setup.prepare_run).
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass

from ..errors import MicrogptError
from .loop import evaluate, train, training_threads
from .setup import Holdout, prepare_run

BEST_CHECKPOINT = 'model.safetensors'
RESUME_CHECKPOINT = 'resume.safetensors'
METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'loss.png'
RUN_FILES = (BEST_CHECKPOINT, RESUME_CHECKPOINT, METRICS_FILE)
# A loss above this many nats per token has diverged even where it is still a finite number (--lr 1e30 gave
# 1e92 on the array engines, where the reference engine's log(0) gave NaN): the model puts e^-1000 on the
# characters it is shown. A model that guesses uniformly scores ln(vocabulary size), under 12 for any vocabulary.
DIVERGED_LOSS = 1000.0


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
        if self.cfg.out and not self.cfg.resume and not self.cfg.overwrite:
            existing = [name for name in RUN_FILES if os.path.exists(self.path(name))]
            if existing:
                raise MicrogptError(f"{self.cfg.out} already holds a run ({', '.join(existing)}); continue it with "
                                    f"--resume, replace it with --overwrite, or give another --out DIR")
        self.run = None          # the prepared Run, once events() has read the data
        self.best_val_loss = math.inf
        self.step = 0
        self.saved_step = None   # the step of the last resume state in --out DIR: resumed from, or saved

    def path(self, name):
        return os.path.join(self.cfg.out, name)

    def events(self, should_stop=lambda: False):
        cfg, tcfg = self.cfg, self.tcfg
        holdout = Holdout(cfg.val_fraction, cfg.val_split, tcfg.seed) if cfg.eval_every else None
        self.run = run = prepare_run(cfg.data_path, self.s.model, tcfg, cfg.engine, cfg.dtype, holdout, cfg.device)
        # in a data-parallel run (torchrun) every process trains; the first alone evaluates and writes
        self.writes = run.engine.is_main_process
        if cfg.out:
            try:
                os.makedirs(cfg.out, exist_ok=True)
            except OSError as e:
                raise MicrogptError(f"{cfg.out}: cannot make the output folder ({e.strerror}); "
                                    f"give another --out DIR") from None
        start = self._resume() if cfg.resume else 0
        self._open_metrics(start)
        yield Header(len(run.docs), run.vocab.size, run.engine.num_params(), len(run.val_docs), start)
        try:
            with training_threads():
                yield from self._steps(run.train_tokens, run.val_tokens, start, should_stop)
        finally:
            self._close_metrics()

    def _steps(self, doc_tokens, val_tokens, start, should_stop):
        cfg, tcfg, engine = self.cfg, self.tcfg, self.run.engine
        tokens_since, last_time = 0, time.perf_counter()
        for report in train(engine, doc_tokens, tcfg, start_step=start, sync_every=(cfg.eval_every, cfg.save_every)):
            self.step = report.step
            record = {'step': report.step, 'train_loss': report.loss, 'lr': report.lr}
            tokens_since += report.tokens
            if report.synced:  # throughput over the steps since the last synced one (a chunk, or one step)
                now = time.perf_counter()
                record['tokens_per_s'] = tokens_since / max(now - last_time, 1e-9)
                last_time, tokens_since = now, 0
            if not report.loss <= DIVERGED_LOSS:  # NaN too
                self._diverged(f"the loss became {report.loss:.4g} at step {report.step}")
            yield report
            finished = report.step == tcfg.steps
            if not report.synced:  # mid-chunk: the engine is already further on; nothing to evaluate or save
                self._write_metrics(record)
                continue
            if cfg.eval_every and self.writes and (report.step % cfg.eval_every == 0 or finished):
                val_loss = evaluate(engine, val_tokens)
                if not val_loss <= DIVERGED_LOSS:
                    self._diverged(f"the held-out loss became {val_loss:.4g} at step {report.step}")
                record['val_loss'] = val_loss
                improved = val_loss < self.best_val_loss
                self.best_val_loss = min(self.best_val_loss, val_loss)
                yield EvalReport(report.step, tcfg.steps, val_loss, self.best_val_loss)
                if cfg.out and improved:
                    yield self._save(BEST_CHECKPOINT, {'val_loss': val_loss})
            self._write_metrics(record)
            stopping = engine.any_process(should_stop())
            if cfg.out and self.writes and (finished or stopping or (cfg.save_every and report.step % cfg.save_every == 0)
                            or (cfg.eval_every and report.step % cfg.eval_every == 0)):
                yield self._save(RESUME_CHECKPOINT, {'train_loss': report.loss})
                self.saved_step = report.step
                if not cfg.eval_every:
                    yield self._save(BEST_CHECKPOINT, {'train_loss': report.loss})
            if stopping and not finished:
                return

    def _diverged(self, what):
        """Stop with the one divergence error, saying which checkpoint is kept only where one is."""
        if self.cfg.out is None:
            kept = ""
        elif self.saved_step is None:
            kept = f"; this run saved no checkpoint in {self.cfg.out}"
        else:
            kept = f"; {self.path(RESUME_CHECKPOINT)} keeps step {self.saved_step}, the last finite state"
        raise MicrogptError(f"{what}: training diverged{kept}; lower --lr or set --grad-clip")

    # ---- checkpoints

    def _meta(self):
        cfg = self.cfg
        return {'data_path': os.path.abspath(cfg.data_path), 'eval_every': cfg.eval_every,
                'val_fraction': cfg.val_fraction, 'val_split': cfg.val_split, 'preset': self.s.preset,
                'best_val_loss': self.best_val_loss}

    def _save(self, name, metrics):
        from .checkpoint import save_checkpoint
        if not _finite(self.run.engine.state()):  # the step's loss was finite, its update was not
            self._diverged(f"the weights are no longer finite after step {self.step}")
        path = self.path(name)
        save_checkpoint(path, self.run.engine, self.run.vocab, self.tcfg, self.step, metrics,
                        {k: json.dumps(v) for k, v in self._meta().items()})
        return Saved(path, self.step)

    def _resume(self):
        from .checkpoint import load_checkpoint, restore_engine
        cfg, run = self.cfg, self.run
        path = self.path(RESUME_CHECKPOINT)
        if not os.path.exists(path):
            raise MicrogptError(f"{path}: nothing to resume (no checkpoint there); drop --resume to start fresh")
        ckpt = load_checkpoint(path)
        model, saved_model = run.cfg.to_dict(), ckpt.model_cfg.to_dict()
        differences = [f"{k}: checkpoint {v!r}, now {model[k]!r}" for k, v in saved_model.items() if model[k] != v]
        # --steps may differ: a larger one trains on, with the schedule of the new total
        train_now, train_saved = asdict(self.tcfg), asdict(ckpt.train_cfg)
        differences += [f"{k}: checkpoint {v!r}, now {train_now[k]!r}"
                        for k, v in train_saved.items() if k != 'steps' and train_now[k] != v]
        if ckpt.vocab != run.vocab:
            differences.append("vocabulary (a different --data?)")
        # the state's dtype: a bfloat16 run (autocast) keeps its weights and Adam state in float32
        if ckpt.meta.get('dtype', run.engine.dtype) != run.engine.dtype:
            differences.append(f"dtype: checkpoint {ckpt.meta.get('dtype')}, now {cfg.dtype}")
        # the held-out split decides which documents are trained on: evaluation on or off, and how it splits
        split = {'evaluation': bool(ckpt.meta.get('eval_every')), 'val_fraction': ckpt.meta.get('val_fraction'),
                 'val_split': ckpt.meta.get('val_split', 'name')}
        now = {'evaluation': bool(cfg.eval_every), 'val_fraction': cfg.val_fraction, 'val_split': cfg.val_split}
        if split['evaluation'] or now['evaluation']:
            differences += [f"{k}: checkpoint {split[k]!r}, now {now[k]!r}" for k in split if split[k] != now[k]]
        if differences:
            raise MicrogptError(f"--resume with a different configuration ({'; '.join(differences)}); "
                                f"resume with the original flags, or train into a new --out folder")
        if ckpt.step > self.tcfg.steps:
            raise MicrogptError(f"{path} is at step {ckpt.step}, past --steps {self.tcfg.steps}; give --steps "
                                f"{ckpt.step} or more to continue it")
        restore_engine(ckpt, run.engine)
        best = ckpt.meta.get('best_val_loss')
        self.best_val_loss = json.loads(best) if isinstance(best, str) else (best if best is not None else math.inf)
        self.step = self.saved_step = ckpt.step
        return ckpt.step

    # ---- metrics.jsonl: one JSON object per step

    def _open_metrics(self, start):
        self._metrics = None
        if not self.cfg.out or not self.writes:
            return
        path = self.path(METRICS_FILE)
        try:
            kept = []
            if start and os.path.exists(path):  # drop records of steps after the checkpoint we resume from
                with open(path, encoding='utf-8') as f:
                    kept = [line for line in f if line.strip() and json.loads(line)['step'] <= start]
            self._metrics = open(path, 'w', encoding='utf-8')
            self._metrics.writelines(kept)
        except OSError as e:
            raise MicrogptError(f"{path}: cannot write the metrics ({e.strerror}); give another --out DIR") from None
        except (ValueError, KeyError, TypeError):
            raise MicrogptError(f"{path}: damaged (not one JSON record with a step per line); move it away to "
                                f"resume") from None

    def _write_metrics(self, record):
        if self._metrics:
            try:
                self._metrics.write(json.dumps(record) + '\n')
                self._metrics.flush()
            except OSError as e:
                raise MicrogptError(f"{self.path(METRICS_FILE)}: cannot write the metrics ({e.strerror}); the "
                                    f"checkpoints in {self.cfg.out} are kept") from None

    def _close_metrics(self):
        if self._metrics:
            metrics, self._metrics = self._metrics, None
            try:
                metrics.close()
            except OSError:
                pass  # the write that failed has been reported


def _finite(state):
    """Whether every weight and Adam moment is finite (NumPy is imported only here: checkpoints need it anyway)."""
    import numpy as np
    arrays = (*state.weights.values(), state.adam_m, state.adam_v)
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)
