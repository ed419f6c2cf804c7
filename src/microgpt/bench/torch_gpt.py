"""The PyTorch row of `microgpt bench` and benchmarks/: the torch engine (engines/torch: the project's one
PyTorch model, autograd, Adam on flat buffers) timed on the benchmark's job, on the CPU. PyTorch is optional:
the engine imports it when made.

The job is benchmark.prepared_job's: the same initial weights (drawn from its rng), the same batches
(data.batch_for_step), learning rates and Adam settings as every other engine's row.
"""

import time

from ..config import TrainConfig
from ..engines import make_engine
from ..train.loop import train


def time_torch(doc_tokens, cfg, rng, steps, batch_size=1, dtype='float64', warmup=5):
    """(seconds, predicted tokens) of `steps` training steps after `warmup` untimed ones."""
    engine = make_engine('torch', cfg, rng, dtype, 'cpu')
    tcfg = TrainConfig(steps=warmup + steps, batch_size=batch_size)
    reports = train(engine, doc_tokens, tcfg, sync_every=(warmup,))  # the first chunk ends after the warm-up
    for _ in range(warmup):
        next(reports)
    start, tokens = time.perf_counter(), 0
    for report in reports:
        tokens += report.tokens
    return time.perf_counter() - start, tokens
