"""Side-by-side timing of the engines on the same seeded job. Quiet: returns numbers; the CLI prints them."""

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from ..config import ModelConfig, TrainConfig
from ..data import Vocabulary, load_documents, shuffled
from ..engines import make_engine
from ..train.loop import train


@dataclass(frozen=True)
class EngineTiming:
    engine: str
    dtype: str
    steps: int
    seconds: float           # training only: start-up, data loading and (for fused) compilation excluded
    tokens: int

    @property
    def us_per_step(self):
        return 1e6 * self.seconds / self.steps

    @property
    def tokens_per_second(self):
        return self.tokens / self.seconds


def prepared_job(data_path, seed, model_overrides=None):
    """The seeded job microgpt runs: shuffled documents, vocabulary, config, and the rng to init from."""
    rng = random.Random(seed)
    docs = shuffled(load_documents(data_path), rng)
    vocab = Vocabulary.from_documents(docs)
    cfg = ModelConfig(vocab_size=vocab.size, **(model_overrides or {})).validate()
    return rng, [vocab.document_tokens(d) for d in docs], cfg


def time_engine(engine_name, data_path, steps, dtype='float64', seed=42, model_overrides=None,
                batch_size=1, warmup_steps=0):
    """Time `steps` training steps of the seeded job; `warmup_steps` untimed steps first (JIT, caches)."""
    rng, doc_tokens, cfg = prepared_job(data_path, seed, model_overrides)
    engine = make_engine(engine_name, cfg, rng, dtype)
    total_steps = warmup_steps + steps
    tcfg = TrainConfig(steps=total_steps, batch_size=batch_size, seed=seed)
    reports = train(engine, doc_tokens, tcfg, sync_every=(warmup_steps,))  # chunks end after the warm-up
    for _ in range(warmup_steps):
        next(reports)
    tokens = 0
    start = time.perf_counter()
    for report in reports:
        tokens += report.tokens
    seconds = time.perf_counter() - start
    return EngineTiming(engine_name, dtype, steps, seconds, tokens)


def time_torch(data_path, steps, dtype='float64', seed=42, warmup_steps=20):
    """time_engine's timing of the same job on the PyTorch baseline (torch_baseline; needs torch)."""
    from .torch_gpt import time_torch as run
    rng, doc_tokens, cfg = prepared_job(data_path, seed)
    seconds, tokens = run(doc_tokens, cfg, rng, steps, dtype=dtype, warmup=warmup_steps)
    return EngineTiming('torch', dtype, steps, seconds, tokens)


def time_cli_train(extra_args=(), repeats=3):
    """Best whole-process wall time of `python -m microgpt train` (start-up and sampling included)."""
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, '-m', 'microgpt', 'train', *extra_args], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, 'PYTHONHASHSEED': '0'})
        best = min(best, time.perf_counter() - start)
    return best
