"""The training loop, engine-agnostic and quiet: it yields one report per step; the CLI prints them.

Documents are taken in order, `batch_size` at a time, wrapping around: with batch size 1 this is
microgpt's `docs[step % len(docs)]`.
"""

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import learning_rate
from ..data import document_lengths


@dataclass(slots=True)  # not frozen: one is made per step, and a frozen dataclass's __init__ is 3x slower
class StepReport:
    step: int        # 1-based, as printed
    steps: int
    loss: float      # mean NLL per predicted token of this step's batch, before the update
    lr: float
    tokens: int      # predicted tokens in this step's batch
    synced: bool = True  # the engine's state is this step's: safe to evaluate, save or stop here


def predicted_tokens(batch, block_size):
    return sum(min(block_size, len(tokens) - 1) for tokens in batch)


def train(engine, doc_tokens, tcfg, start_step=0, sync_every=()):
    """Run steps start_step .. tcfg.steps - 1, yielding a StepReport after each.

    The engine runs up to `engine.chunk_steps` steps per train_steps call; their reports are yielded after
    the chunk, and only the chunk's last is `synced`. Chunks end on every multiple of each `sync_every`, so
    evaluation and checkpoints there see the right state; a stop request waits for the chunk's end.
    """
    B, block_size = tcfg.batch_size, engine.cfg.block_size
    lengths = document_lengths(doc_tokens)  # read once: reading a document per step is on the hot path
    n_docs = len(lengths)
    step = start_step
    while step < tcfg.steps:
        stop = min(tcfg.steps, step + engine.chunk_steps)
        for every in sync_every:
            if every:
                stop = min(stop, (step // every + 1) * every)
        lrs = [learning_rate(tcfg, s) for s in range(step, stop)]
        try:
            losses = engine.train_steps(doc_tokens, step, stop, tcfg, lrs)
        except (ArithmeticError, ValueError) as e:
            if not _left_float_range(e):
                raise
            # the scalar autograd (one step per call) cannot take log(0) or 0 ** -0.5: the loss is not a number
            yield StepReport(step + 1, tcfg.steps, math.nan, lrs[0], 0, True)
            return
        # tokens each step's batch predicts, read in one pass per chunk: this loop is on the hot path
        predicted = [min(block_size, lengths[d % n_docs] - 1) for d in range(step * B, stop * B)]
        if B > 1:
            predicted = [sum(predicted[i:i + B]) for i in range(0, len(predicted), B)]
        if hasattr(losses, 'tolist'):  # an array's Python floats in one call: a step each was 0.1 us
            losses = losses.tolist()
        for s, loss, lr, tokens in zip(range(step + 1, stop + 1), losses, lrs, predicted):
            yield StepReport(s, tcfg.steps, float(loss), lr, tokens, s == stop)
        step = stop


def _left_float_range(error):
    """Python's math raises where NumPy returns inf or NaN: log(0), 0.0 ** -0.5, an overflowing exp."""
    return isinstance(error, ArithmeticError) or str(error) == 'math domain error'


@contextmanager
def training_threads():
    """Train with one BLAS thread and no floating-point warnings. The matrices are small: more BLAS threads
    only contend, with each other and with any other job on the cores. A diverging loss is reported once, as an
    error, not as overflow warnings."""
    from threadpoolctl import threadpool_limits  # it loads no NumPy: the reference engine stays without it
    with threadpool_limits(limits=1, user_api='blas'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        yield


def evaluate(engine, doc_tokens, batch_size=64):
    """Mean negative log-likelihood per predicted token over all documents (nats per character), forward only."""
    total, count = 0.0, 0
    block_size = engine.cfg.block_size
    for start in range(0, len(doc_tokens), batch_size):
        batch = doc_tokens[start:start + batch_size]
        n = predicted_tokens(batch, block_size)
        total += engine.loss(batch) * n
        count += n
    return total / count
