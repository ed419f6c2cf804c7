"""The training loop, engine-agnostic and quiet: it yields one report per step; the CLI prints them.

Documents are taken in order, `batch_size` at a time, wrapping around: with batch size 1 this is
microgpt's `docs[step % len(docs)]`.
"""

from dataclasses import dataclass

from ..config import learning_rate


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
    block_size, n_docs, B = engine.cfg.block_size, len(doc_tokens), tcfg.batch_size
    step = start_step
    while step < tcfg.steps:
        stop = min(tcfg.steps, step + engine.chunk_steps)
        for every in sync_every:
            if every:
                stop = min(stop, (step // every + 1) * every)
        lrs = [learning_rate(tcfg, s) for s in range(step, stop)]
        losses = engine.train_steps(doc_tokens, step, stop, tcfg, lrs)
        for s, loss, lr in zip(range(step, stop), losses, lrs):
            # predicted_tokens(batch_for_step(...)) without building the batch: this loop is on the hot path
            if B == 1:
                tokens = min(block_size, len(doc_tokens[s % n_docs]) - 1)
            else:
                tokens = sum(min(block_size, len(doc_tokens[d % n_docs]) - 1) for d in range(s * B, s * B + B))
            yield StepReport(s + 1, tcfg.steps, float(loss), lr, tokens, s + 1 == stop)
        step = stop


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
