"""The fused engine on every core: a batch of B >= 2 documents split into groups that run in parallel.

Group g has documents g * B // G .. (g + 1) * B // G - 1 of the batch, G = min(B, GROUPS): each packs them into
its own plan and workspace and writes its own gradients (numba prange over the groups); the groups'
gradients are then summed in group order, and Adam runs in parallel over the parameters (each parameter's
update is independent of the others'). The split depends on B alone, never on the number of threads, so a
run gives the same numbers on any machine; they differ from a one-group computation only by rounding,
since each weight gradient's sum over positions is cut into G partial sums.

Under parallel=True numba also turns array expressions (np.zeros, slice copies, .sum()) into parallel
regions of their own, each a thread wake-up, and a sum into a thread-dependent reduction: the parallel
entry points hold only their prange loops, and everything else is in plain kernels.
"""

import numpy as np
from numba import njit, prange

from ...config import NOTHING_TO_PREDICT
from .adam import adam_parameter, adam_settings, clip_gradients
from .floating_point import start_flushing, stop_flushing
from .gpt import group_loss, group_loss_and_grads
from .lanes import kernel, runtime
from .plan import SLOT_DROP_KEY, pack_columns

GROUPS = 4  # at most; enough for 4 cores, and a group of a 32-document batch still fills the kernels' lanes
CHUNKS = 64  # the parameters are cut into this many ranges for the loops over them (a range per iteration)

parallel_entry_point = njit(cache=True, error_model='numpy', parallel=True)
entry_point = njit(cache=True, error_model='numpy')  # one that only calls the parallel ones


def group_bounds(batch_size):
    """G + 1 document indices: group g has documents bounds[g] .. bounds[g + 1] - 1 of the batch."""
    groups = min(batch_size, GROUPS)
    return [g * batch_size // groups for g in range(groups + 1)]


@parallel_entry_point
def loss(state, wss, plans, docs, doc_starts):
    """Mean loss of the batch (docs, doc_starts as gpt.loss's), forward only, its groups in parallel: the
    evaluation of runs that train on one document a step. A run that trains in groups evaluates with
    loss_and_grads(with_grads=False) instead, the same arithmetic, already compiled (numba compiles each `prange`
    body as functions of their own, three levels deep, each optimising the layers again: as long again as
    training's)."""
    positions, total = pack_groups(plans, docs, doc_starts, 0, doc_starts.size - 1)  # (G,) and their sum
    losses = np.empty(plans.shape[0])                              # (G,) each group's share of the loss
    for g in prange(plans.shape[0]):
        saved = start_flushing()  # each parallel iteration on its own thread: see floating_point.py
        losses[g] = group_loss(state[0], wss[g], plans[g], positions[g], total) if positions[g] else 0.0
        stop_flushing(saved)
    return sum_in_order(losses)


@parallel_entry_point
def loss_and_grads(state, group_grads, wss, plans, docs, doc_starts, batch_first, batch_size, with_grads):
    """Mean loss of documents batch_first .. batch_first + batch_size - 1 of docs; with `with_grads`, fills
    state[1] with its gradient, else runs the forward alone (the evaluation of a run that trains in groups, see
    loss) and leaves the gradients as they are.

    group_grads (G - 1, P): gradients of groups 1 .. G - 1 (group 0 writes state[1])."""
    positions, total = pack_groups(plans, docs, doc_starts, batch_first, batch_size)
    losses = np.empty(plans.shape[0])
    for g in prange(plans.shape[0]):
        saved = start_flushing()
        group_out = state[1] if g == 0 else group_grads[g - 1]
        if positions[g] == 0:  # only documents of one token: no loss, no gradient
            losses[g] = 0.0
            if with_grads:
                _zero(group_out)
        elif with_grads:
            losses[g] = group_loss_and_grads(state[0], group_out, wss[g], plans[g], positions[g], total)
        else:
            losses[g] = group_loss(state[0], wss[g], plans[g], positions[g], total)
        stop_flushing(saved)
    if with_grads:
        grads = state[1]
        for chunk in prange(CHUNKS):  # summed in group order, whatever the thread count
            saved = start_flushing()
            for i in range(chunk * grads.size // CHUNKS, (chunk + 1) * grads.size // CHUNKS):
                for g in range(plans.shape[0] - 1):
                    grads[i] += group_grads[g, i]
            stop_flushing(saved)
    return sum_in_order(losses)


@parallel_entry_point
def adam_update(state, adam, lr, t):
    """adam.adam_step, in parallel over the parameters (the clipping norm still summed in order)."""
    clip_gradients(state[1], adam)
    settings = adam_settings(adam, lr, t)
    p, g, m, v = state[0], state[1], state[2], state[3]
    for chunk in prange(CHUNKS):
        saved = start_flushing()
        for i in range(chunk * p.size // CHUNKS, (chunk + 1) * p.size // CHUNKS):
            adam_parameter(p, g, m, v, i, settings)
        stop_flushing(saved)


@entry_point
def train_steps(state, group_grads, wss, plans, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses):
    """gpt.train_steps for batches split into plans.shape[0] groups (group_bounds)."""
    for i in range(losses.size):
        for g in range(plans.shape[0]):
            plans[g, SLOT_DROP_KEY] = keys[i]
        losses[i] = loss_and_grads(state, group_grads, wss, plans, docs, doc_starts, i * batch_size, batch_size,
                                   runtime(True))
        adam_update(state, adam, lrs[i], first_t + i)


@kernel
def pack_groups(plans, docs, doc_starts, batch_first, batch_size):
    """pack_columns of each group's share of the batch (group_bounds'): returns (G,) the predicted positions of
    each group, and their total. Raises here, before the parallel loop (an exception inside one is lost), on a
    bad token id or when the batch has nothing to predict."""
    groups = plans.shape[0]
    positions, total = np.empty(groups, np.int64), 0
    for g in range(groups):
        first, stop = batch_first + g * batch_size // groups, batch_first + (g + 1) * batch_size // groups
        positions[g] = pack_columns(plans[g], docs, doc_starts, batch_first, first, stop)
        total += positions[g]
    if total == 0:
        raise ValueError(NOTHING_TO_PREDICT)
    return positions, total


@kernel
def _zero(values):
    values[:] = 0


@kernel
def sum_in_order(values):
    total = 0.0
    for v in values:
        total += v
    return total
