"""The training loop, engine-agnostic and quiet: it yields one report per step; the CLI prints them.

Documents are taken in order, `batch_size` at a time, wrapping around: with batch size 1 this is
microgpt's `docs[step % len(docs)]`.
"""

from dataclasses import dataclass

from .config import learning_rate


@dataclass(frozen=True)
class StepReport:
    step: int        # 1-based, as printed
    steps: int
    loss: float      # mean NLL per predicted token of this step's batch, before the update
    lr: float
    tokens: int      # predicted tokens in this step's batch


def batch_for_step(doc_tokens, step, batch_size):
    """The token sequences of 0-based `step`: documents step*B ... step*B + B - 1, wrapping around."""
    n = len(doc_tokens)
    start = step * batch_size
    return [doc_tokens[(start + b) % n] for b in range(batch_size)]


def predicted_tokens(batch, block_size):
    return sum(min(block_size, len(tokens) - 1) for tokens in batch)


def train(engine, doc_tokens, tcfg, start_step=0):
    """Run steps start_step .. tcfg.steps - 1, yielding a StepReport after each."""
    block_size = engine.cfg.block_size
    for step in range(start_step, tcfg.steps):
        batch = batch_for_step(doc_tokens, step, tcfg.batch_size)
        lr_t = learning_rate(tcfg, step)
        loss = engine.train_step(batch, lr_t, tcfg)
        yield StepReport(step + 1, tcfg.steps, loss, lr_t, predicted_tokens(batch, block_size))


def evaluate(engine, doc_tokens, batch_size=64):
    """Mean negative log-likelihood per predicted token over all documents (nats per character).

    Uses the engine's loss_and_grads (the gradients it leaves are overwritten by the next step).
    """
    total, count = 0.0, 0
    block_size = engine.cfg.block_size
    for start in range(0, len(doc_tokens), batch_size):
        batch = doc_tokens[start:start + batch_size]
        n = predicted_tokens(batch, block_size)
        total += engine.loss_and_grads(batch) * n
        count += n
    return total / count
