"""A training run as `microgpt train` runs it: data, held-out split, engine, resume, steps, evaluation,
checkpoints and metrics. Quiet: it yields events, and the CLI prints them.

Randomness: one `random.Random(seed)` drives shuffle, initialisation and sampling in microgpt's order;
the held-out split draws from its own stream, so turning evaluation on changes which documents are
trained on but never the order of the main stream.
"""

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..config import ModelConfig
from ..data import Vocabulary, holdout_split, load_documents, shuffled
from ..engines import make_engine
from ..errors import MicrogptError
from .loop import evaluate, train

BEST_CHECKPOINT = 'model.safetensors'
RESUME_CHECKPOINT = 'resume.safetensors'
METRICS_FILE = 'metrics.jsonl'


@dataclass(frozen=True)
class RunSettings:
    data_path: str
    engine: str
    dtype: str
    model: dict              # ModelConfig fields except vocab_size
    tcfg: object             # TrainConfig
    eval_every: int = 0      # 0: no held-out split, no evaluation (microgpt's behaviour)
    val_fraction: float = None
    val_split: str = 'name'  # data.holdout_split's `by`
    out_dir: str = None
    resume: bool = False
    save_every: int = 0
    preset: str = 'microgpt'


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
        if settings.resume and not settings.out_dir:
            raise MicrogptError("--resume needs --out DIR, the folder of the run to continue")
        if settings.eval_every < 0 or settings.save_every < 0:
            raise MicrogptError("--eval-every and --save-every must be >= 0")
        self.s = settings
        self.tcfg = settings.tcfg.validate()
        self.tcfg.check_engine(settings.engine)
        ModelConfig(vocab_size=1, **settings.model).validate()  # flag errors before any file is read
        self.rng = random.Random(self.tcfg.seed)
        self.engine = self.vocab = None
        self.best_val_loss = math.inf
        self.step = 0

    def path(self, name):
        return os.path.join(self.s.out_dir, name)

    def events(self, should_stop=lambda: False):
        s, tcfg = self.s, self.tcfg
        docs = load_documents(s.data_path)
        val_docs = []
        if s.eval_every:
            docs, val_docs = holdout_split(docs, s.val_fraction, tcfg.seed, s.val_split)
        docs = shuffled(docs, self.rng)
        if tcfg.batch_size > len(docs):
            raise MicrogptError(f"--batch-size {tcfg.batch_size} is larger than the {len(docs)} training documents; "
                                f"give a smaller batch or more data")
        self.vocab = Vocabulary.from_documents(docs + val_docs, bos_first=s.model.get('bos') == 'first')
        cfg = ModelConfig(vocab_size=self.vocab.size, **s.model).validate()
        self.engine = make_engine(s.engine, cfg, self.rng, s.dtype)
        if s.out_dir:
            os.makedirs(s.out_dir, exist_ok=True)
        start = self._resume(cfg) if s.resume else 0
        self._open_metrics(start)
        yield Header(len(docs), self.vocab.size, self.engine.num_params(), len(val_docs), start)

        doc_tokens = [self.vocab.document_tokens(d) for d in docs]
        val_tokens = [self.vocab.document_tokens(d) for d in val_docs]
        last_time = time.perf_counter()
        # overflow or NaN inside a step is reported once, as a diverged loss, not as NumPy warnings
        with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
            yield from self._steps(doc_tokens, val_tokens, start, last_time, should_stop)
        self._close_metrics()

    def _steps(self, doc_tokens, val_tokens, start, last_time, should_stop):
        s, tcfg = self.s, self.tcfg
        tokens_since = 0
        for report in train(self.engine, doc_tokens, tcfg, start_step=start,
                            sync_every=(s.eval_every, s.save_every)):
            self.step = report.step
            record = {'step': report.step, 'train_loss': report.loss, 'lr': report.lr}
            tokens_since += report.tokens
            if report.synced:  # throughput over the steps since the last synced one (a chunk, or one step)
                now = time.perf_counter()
                record['tokens_per_s'] = tokens_since / max(now - last_time, 1e-9)
                last_time, tokens_since = now, 0
            if not math.isfinite(report.loss):
                kept = f"; the last good checkpoint is kept in {s.out_dir}" if s.out_dir else ""
                raise MicrogptError(f"the loss became {report.loss} at step {report.step}: training diverged{kept}; "
                                    f"lower --lr or set --grad-clip")
            yield report
            finished = report.step == tcfg.steps
            if not report.synced:  # mid-chunk: the engine is already further on; nothing to evaluate or save
                self._write_metrics(record)
                continue
            if s.eval_every and (report.step % s.eval_every == 0 or finished):
                val_loss = evaluate(self.engine, val_tokens)
                record['val_loss'] = val_loss
                improved = val_loss < self.best_val_loss
                self.best_val_loss = min(self.best_val_loss, val_loss)
                yield EvalReport(report.step, tcfg.steps, val_loss, self.best_val_loss)
                if s.out_dir and improved:
                    yield self._save(BEST_CHECKPOINT, {'val_loss': val_loss})
            self._write_metrics(record)
            stopping = should_stop()
            if s.out_dir and (finished or stopping or (s.save_every and report.step % s.save_every == 0)
                              or (s.eval_every and report.step % s.eval_every == 0)):
                yield self._save(RESUME_CHECKPOINT, {'train_loss': report.loss})
                if not s.eval_every:
                    yield self._save(BEST_CHECKPOINT, {'train_loss': report.loss})
            if stopping and not finished:
                return

    # ---- checkpoints

    def _meta(self):
        s = self.s
        return {'data_path': os.path.abspath(s.data_path), 'eval_every': s.eval_every,
                'val_fraction': s.val_fraction, 'val_split': s.val_split, 'preset': s.preset,
                'best_val_loss': self.best_val_loss}

    def _save(self, name, metrics):
        from .checkpoint import save_checkpoint
        path = self.path(name)
        save_checkpoint(path, self.engine, self.vocab, self.tcfg, self.step, metrics,
                        {k: json.dumps(v) for k, v in self._meta().items()})
        return Saved(path, self.step)

    def _resume(self, cfg):
        from .checkpoint import load_checkpoint, restore_engine
        path = self.path(RESUME_CHECKPOINT)
        if not os.path.exists(path):
            raise MicrogptError(f"{path}: nothing to resume (no checkpoint there); drop --resume to start fresh")
        ckpt = load_checkpoint(path)
        differences = [f"{k}: checkpoint {v!r}, now {cfg.to_dict()[k]!r}"
                       for k, v in ckpt.model_cfg.to_dict().items() if cfg.to_dict()[k] != v]
        differences += [f"{k}: checkpoint {v!r}, now {asdict(self.tcfg)[k]!r}"
                        for k, v in asdict(ckpt.train_cfg).items() if asdict(self.tcfg)[k] != v]
        if ckpt.vocab != self.vocab:
            differences.append("vocabulary (a different --data?)")
        if ckpt.meta.get('dtype', self.s.dtype) != self.s.dtype:
            differences.append(f"dtype: checkpoint {ckpt.meta.get('dtype')}, now {self.s.dtype}")
        # the held-out split decides which documents are trained on: evaluation on or off, and how it splits
        split = {'evaluation': bool(ckpt.meta.get('eval_every')), 'val_fraction': ckpt.meta.get('val_fraction'),
                 'val_split': ckpt.meta.get('val_split', 'name')}
        now = {'evaluation': bool(self.s.eval_every), 'val_fraction': self.s.val_fraction, 'val_split': self.s.val_split}
        if split['evaluation'] or now['evaluation']:
            differences += [f"{k}: checkpoint {split[k]!r}, now {now[k]!r}" for k in split if split[k] != now[k]]
        if differences:
            raise MicrogptError(f"--resume with a different configuration ({'; '.join(differences)}); "
                                f"resume with the original flags, or train into a new --out folder")
        restore_engine(ckpt, self.engine)
        best = ckpt.meta.get('best_val_loss')
        self.best_val_loss = json.loads(best) if isinstance(best, str) else (best if best is not None else math.inf)
        self.step = ckpt.step
        return ckpt.step

    # ---- metrics.jsonl: one JSON object per step

    def _open_metrics(self, start):
        self._metrics = None
        if not self.s.out_dir:
            return
        path = self.path(METRICS_FILE)
        kept = []
        if start and os.path.exists(path):  # drop records of steps after the checkpoint we resume from
            with open(path, encoding='utf-8') as f:
                kept = [line for line in f if line.strip() and json.loads(line)['step'] <= start]
        self._metrics = open(path, 'w', encoding='utf-8')
        self._metrics.writelines(kept)

    def _write_metrics(self, record):
        if self._metrics:
            self._metrics.write(json.dumps(record) + '\n')
            self._metrics.flush()

    def _close_metrics(self):
        if self._metrics:
            self._metrics.close()
            self._metrics = None
