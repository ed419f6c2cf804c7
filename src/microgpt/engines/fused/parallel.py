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
from .adam import _adam_parameter, _adam_settings, _clip_gradients
from .gpt import BATCH_AT, DROP_KEY, FIRST_DOC, _checked_positions, _group_loss_and_grads
from .layers import kernel

GROUPS = 4  # at most; enough for 4 cores, and a group of a 32-document batch still fills the kernels' lanes

parallel_entry_point = njit(cache=True, error_model='numpy', parallel=True)
entry_point = njit(cache=True, error_model='numpy')  # one that only calls the parallel ones


def group_bounds(batch_size):
    """G + 1 document indices: group g has documents bounds[g] .. bounds[g + 1] - 1 of the batch."""
    groups = min(batch_size, GROUPS)
    return [g * batch_size // groups for g in range(groups + 1)]


@parallel_entry_point
def loss_and_grads(state, group_grads, wss, plans):
    """Mean loss of the documents in plans (G, ·) (each group's loaded); fills state[1] with the batch's gradient.

    group_grads (G - 1, P): gradients of groups 1 .. G - 1 (group 0 writes state[1]); wss (G, rows, NP)."""
    groups = plans.shape[0]
    positions, n_mean = _group_positions(plans)                     # (G,) predicted positions per group
    losses = np.empty(groups)                                       # (G,) each group's share of the loss
    for g in prange(groups):
        group_out = state[1] if g == 0 else group_grads[g - 1]
        if positions[g] == 0:  # only documents of one token: no loss, no gradient
            losses[g] = 0.0
            _zero(group_out)
        else:
            losses[g] = _group_loss_and_grads(state[0], group_out, wss[g], plans[g], n_mean)
    grads = state[1]
    for i in prange(grads.size):  # summed in group order, whatever the thread count
        for g in range(groups - 1):
            grads[i] += group_grads[g, i]
    return _sum_in_order(losses)


@parallel_entry_point
def adam_update(state, adam, lr, t):
    """fused_adam._adam, in parallel over the parameters (the clipping norm still summed in order)."""
    _clip_gradients(state[1], adam)
    settings = _adam_settings(adam, lr, t)
    p, g, m, v = state[0], state[1], state[2], state[3]
    for i in prange(p.size):
        _adam_parameter(p, g, m, v, i, settings)


@entry_point
def train_steps(state, group_grads, wss, plans, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses):
    """fused_kernels.train_steps for batches split into plans.shape[0] groups (group_bounds)."""
    for i in range(losses.size):
        _load_groups(plans, docs, doc_starts, i * batch_size, batch_size)
        for g in range(plans.shape[0]):
            plans[g, DROP_KEY] = keys[i]
        losses[i] = loss_and_grads(state, group_grads, wss, plans)
        adam_update(state, adam, lrs[i], first_t + i)


@kernel
def _load_groups(plans, docs, doc_starts, first_doc, batch_size):
    """Documents first_doc .. first_doc + B - 1 of docs (tokens back to back, document d at
    docs[doc_starts[d]:doc_starts[d + 1]]) into the groups' plans, group g taking its group_bounds share."""
    groups = plans.shape[0]
    for g in range(groups):
        plan = plans[g]
        at = plan[BATCH_AT]
        first, stop = g * batch_size // groups, (g + 1) * batch_size // groups
        plan[at], plan[FIRST_DOC] = stop - first, first
        token = at + 1 + stop - first
        for b in range(first, stop):
            d = first_doc + b
            length = doc_starts[d + 1] - doc_starts[d]
            plan[at + 1 + b - first] = length
            plan[token:token + length] = docs[doc_starts[d]:doc_starts[d + 1]]
            token += length


@kernel
def _group_positions(plans):
    """(G,) predicted positions of each group, and their total; checks the token ids first (an exception raised
    inside prange would be lost) and raises when the batch has nothing to predict."""
    positions, total = np.empty(plans.shape[0], np.int64), 0
    for g in range(plans.shape[0]):
        positions[g] = _checked_positions(plans[g])
        total += positions[g]
    if total == 0:
        raise ValueError(NOTHING_TO_PREDICT)
    return positions, total


@kernel
def _zero(values):
    values[:] = 0


@kernel
def _sum_in_order(values):
    total = 0.0
    for v in values:
        total += v
    return total
