"""The training loop, engine-agnostic and quiet: `train_chunks` yields the reports of each engine call's steps
together (the CLI prints them a call at a time), `train` one report per step.

Documents are taken in order, `batch_size` at a time, wrapping around: with batch size 1 this is
microgpt's `docs[step % len(docs)]`.
"""

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import learning_rates
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


@dataclass(slots=True)
class Steps:
    """Steps first .. last (1-based, as printed) of a run of `steps`, trained in one engine call: the loss of each
    (mean NLL per predicted token of its batch, before the update), its learning rate and its predicted tokens.
    The engine's state is the last step's (that one is `synced`)."""
    first: int
    steps: int
    losses: list
    lrs: list
    tokens: list

    @property
    def last(self):
        return self.first + len(self.losses) - 1

    def head(self, n):
        """The first n steps."""
        return Steps(self.first, self.steps, self.losses[:n], self.lrs[:n], self.tokens[:n])

    def reports(self):
        last = self.last
        return [StepReport(step, self.steps, loss, lr, tokens, step == last)
                for step, loss, lr, tokens in zip(range(self.first, last + 1), self.losses, self.lrs, self.tokens)]


def train(engine, doc_tokens, tcfg, start_step=0, sync_every=()):
    """Run steps start_step .. tcfg.steps - 1, yielding a StepReport after each (train_chunks' steps one by one)."""
    for chunk in train_chunks(engine, doc_tokens, tcfg, start_step, sync_every):
        yield from chunk.reports()


def train_chunks(engine, doc_tokens, tcfg, start_step=0, sync_every=()):
    """Run steps start_step .. tcfg.steps - 1, yielding Steps after each engine call.

    The engine runs up to `engine.chunk_steps` steps per train_steps call. Chunks end on every multiple of each
    `sync_every`, so evaluation and checkpoints there see the right state; a stop request waits for the chunk's
    end. Reported a chunk at a time, a step of `microgpt train` costs 0.8 us of Python, against 1.6 when it
    was a StepReport each, through three generators (the default job, with an engine that does nothing).
    """
    B, block_size = tcfg.batch_size, engine.cfg.block_size
    lengths = document_lengths(doc_tokens)  # read once: reading a document per step is on the hot path
    step = start_step
    while step < tcfg.steps:
        stop = min(tcfg.steps, step + engine.chunk_steps)
        for every in sync_every:
            if every:
                stop = min(stop, (step // every + 1) * every)
        lrs = learning_rates(tcfg, step, stop)
        try:
            losses = engine.train_steps(doc_tokens, step, stop, tcfg, lrs)
        except (ArithmeticError, ValueError) as e:
            if not _left_float_range(e):
                raise
            # the scalar autograd (one step per call) cannot take log(0) or 0 ** -0.5: the loss is not a number
            yield Steps(step + 1, tcfg.steps, [math.nan], lrs[:1], [0])
            return
        predicted = _predicted_tokens(lengths, step * B, stop * B, block_size)
        if B > 1:
            predicted = [sum(predicted[i:i + B]) for i in range(0, len(predicted), B)]
        # an array's Python floats in one call: a step each was 0.1 us
        losses = losses.tolist() if hasattr(losses, 'tolist') else [float(loss) for loss in losses]
        yield Steps(step + 1, tcfg.steps, losses, lrs, predicted)
        step = stop


def _predicted_tokens(lengths, first, stop, block_size):
    """The tokens each of documents first .. stop - 1 (wrapping around) predicts, min(block_size, length - 1), read a
    slice of `lengths` at a time: this is on the hot path (an index and a min() a document: 0.4 us, against 0.05)."""
    n, predicted = len(lengths), []
    while first < stop:
        i = first % n
        take = min(stop - first, n - i)
        predicted += [length - 1 if length <= block_size else block_size for length in lengths[i:i + take]]
        first += take
    return predicted


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
    if not len(doc_tokens):
        raise ValueError("no documents to evaluate")
    total, count = 0.0, 0
    block_size = engine.cfg.block_size
    for start in range(0, len(doc_tokens), batch_size):
        batch = doc_tokens[start:start + batch_size]
        n = predicted_tokens(batch, block_size)
        total += engine.loss(batch) * n
        count += n
    return total / count
