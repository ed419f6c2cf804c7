"""The fused engine on every core: a batch of B >= 2 documents split into groups that run on threads. FusedEngine
also takes the loss (and gradient) of a batch of one document here, as one group on one thread.

Group g has documents g * B // G .. (g + 1) * B // G - 1 of the batch, G = min(B, GROUPS); each packs them into
its own plan and writes its own gradients. `steps` runs on every thread at once (threads.py), each with its share
of the groups, one after another in one workspace (the workspace is scratch: a group reads only what it wrote),
then of the parameters: it sums the groups' gradients in group order there and
runs Adam on them (each parameter's update is independent of the others'). The threads wait for each other at a
barrier after the groups and after Adam. The split depends on B alone, never on the number of threads, so a run
gives the same numbers on any number of threads (and on any CPU with FMA, lanes.madd); they differ from a
one-group computation only by rounding, since each weight gradient's sum over positions is cut into G partial sums.
"""

import numpy as np
from numba import njit

from ...config import NOTHING_TO_PREDICT
from .adam import GRAD_CLIP, adam_parameters, adam_settings, clip_gradients
from .floating_point import start_flushing, stop_flushing
from .gpt import group_loss, group_loss_and_grads
from .lanes import ENTRY_OPTIONS, LANES, add8, borrowed, composite, counting, kernel, load8, store8
from .plan import SLOT_DROP_KEY, checked_positions, pack_columns
from .threads import barrier, run_on_threads, thread_count

GROUPS = 4  # at most; enough for 4 cores, and a group of a 32-document batch still fills the kernels' lanes

# an entry point that lets go of the GIL, so that Python threads run it at once
threaded_entry_point = njit(nogil=True, **ENTRY_OPTIONS)


def group_bounds(batch_size):
    """G + 1 document indices: group g has documents bounds[g] .. bounds[g + 1] - 1 of the batch."""
    groups = min(batch_size, GROUPS)
    return [g * batch_size // groups for g in range(groups + 1)]


# FusedEngine's calls: training as gpt.train_steps for one group, and the loss (with its gradient) of a batch of any
# size, one group included; `steps` or `forward` must be compiled first (compile.compiled)

def train_steps(state, group_grads, wss, plans, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses):
    """gpt.train_steps for batches split into plans.shape[0] groups (group_bounds)."""
    _on_threads(state, group_grads, wss, plans, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses, True,
                True)


def loss_and_grads(state, group_grads, wss, plans, docs, doc_starts, backward=True):
    """Mean loss of the batch (docs, doc_starts as gpt.train_steps's); with `backward`, fills state[1] with its
    gradient (without, the arithmetic of `loss`, for a process that has `steps` compiled already)."""
    losses, keys = np.empty(1), plans[:1, SLOT_DROP_KEY].copy()  # (1,) each; the key FusedEngine set
    _on_threads(state, group_grads, wss, plans, np.zeros(5), docs, doc_starts, doc_starts.size - 1, np.zeros(1), keys,
                1, losses, backward, False)
    return losses[0]


def loss(state, wss, plans, docs, doc_starts):
    """Mean loss of the batch, forward only (`forward` must be compiled first)."""
    groups = plans.shape[0]
    return run_on_threads(forward, min(thread_count(), groups), np.empty(groups), state, wss, plans, docs, doc_starts)


def _on_threads(state, group_grads, wss, plans, *arguments):
    groups = plans.shape[0]
    run_on_threads(steps, min(thread_count(), groups), np.empty(groups), state, group_grads, wss, plans, *arguments)


@threaded_entry_point
def steps(thread, threads, cells, group_losses, state, group_grads, wss, plans, adam, docs, doc_starts, batch_size,
          lrs, keys, first_t, losses, backward, update):
    """Thread `thread` of `threads` running len(losses) steps of gpt.train_steps in groups: step i trains on
    documents i B .. i B + B - 1 of docs (learning rate lrs[i], dropout key keys[i], Adam step first_t + i) and
    losses[i] is its loss. Without `update`, the loss of one batch and, with `backward`, its gradient in state[1].

    cells: the threads' barrier; group_losses (G,): each group's share of the loss; group_grads (G - 1, P): the
    gradients of groups 1 .. G - 1 (group 0 writes state[1])."""
    cells, group_losses, state, group_grads, wss, plans = (borrowed(cells), borrowed(group_losses), borrowed(state),
                                                           borrowed(group_grads), borrowed(wss), borrowed(plans))
    adam, docs, doc_starts, lrs, keys, losses = (borrowed(adam), borrowed(docs), borrowed(doc_starts), borrowed(lrs),
                                                 borrowed(keys), borrowed(losses))
    groups = plans.shape[0]
    first_group = thread * groups // threads
    own_groups = range(first_group, (thread + 1) * groups // threads)
    # one workspace for all of the thread's groups, where each group had its own: a step touches half the memory on
    # two threads (at the makemore size 3 MB of float32 activations a thread, not 6), and ran 1.10-1.13x as fast in
    # float32 and 1.02-1.11x in float64 on a Zen 3 (bench_interleaved.py, 2026-12-03); the others are never written
    # (a large np.zeros array's pages are mapped when first written)
    ws = wss[first_group]
    params_first, params_stop = thread * state.shape[1] // threads, (thread + 1) * state.shape[1] // threads
    totals = _check_batches(plans[0], docs, doc_starts, batch_size, losses.size)  # (steps,): all raise, or none
    saved = start_flushing()  # MXCSR is per thread: see floating_point.py
    for i in range(losses.size):
        for g in own_groups:
            n = _pack_group(plans, g, docs, doc_starts, i * batch_size, batch_size, keys[i])
            group_out = state[1] if g == 0 else group_grads[g - 1]
            if n == 0:  # only documents of one token: no loss, no gradient
                group_losses[g] = 0.0
                if backward:
                    group_out[:] = 0
            elif backward:
                group_losses[g] = group_loss_and_grads(state[0], group_out, ws, plans[g], n, totals[i])
            else:
                group_losses[g] = group_loss(state[0], ws, plans[g], n, totals[i])
        if not barrier(cells, threads):  # every group's loss and gradient written
            break
        if thread == 0:
            losses[i] = _sum_in_order(group_losses)
        if not backward:
            break
        grads = state[1]
        _add_group_gradients(grads, group_grads[:groups - 1], params_first, params_stop)
        if not update:  # every thread's writes done when thread 0 returns, even if its caller's wait for the others
            barrier(cells, threads)  # is interrupted (Ctrl-C)
            break
        if adam[GRAD_CLIP] > 0:  # the global norm, summed in order on one thread
            if not barrier(cells, threads):
                break
            if thread == 0:
                clip_gradients(grads, adam)
            if not barrier(cells, threads):
                break
        settings = adam_settings(adam, lrs[i], first_t + i)
        adam_parameters(state, params_first, params_stop, settings)
        if not barrier(cells, threads):  # every parameter updated before the next step's forward reads them
            break
    stop_flushing(saved)


@threaded_entry_point
def forward(thread, threads, cells, group_losses, state, wss, plans, docs, doc_starts):
    """The loss of one batch (all of docs), forward only, on thread `thread` of `threads` (thread 0 returns it):
    `steps` without a backward, the same arithmetic, compiled in a third of the time."""
    cells, group_losses, state, wss, plans = (borrowed(cells), borrowed(group_losses), borrowed(state), borrowed(wss),
                                              borrowed(plans))
    docs, doc_starts = borrowed(docs), borrowed(doc_starts)
    groups, total = plans.shape[0], _check_batches(plans[0], docs, doc_starts, doc_starts.size - 1, 1)[0]
    saved = start_flushing()
    first_group = thread * groups // threads
    ws = wss[first_group]  # the thread's groups' workspace, as in `steps`
    for g in range(first_group, (thread + 1) * groups // threads):
        n = _pack_group(plans, g, docs, doc_starts, 0, doc_starts.size - 1, plans[g, SLOT_DROP_KEY])
        group_losses[g] = group_loss(state[0], ws, plans[g], n, total) if n else 0.0
    done = barrier(cells, threads)
    stop_flushing(saved)
    return _sum_in_order(group_losses) if done else 0.0


@kernel
def _add_group_gradients(grads, group_grads, first, stop):
    """grads[first:stop] += the gradients of groups 1 .. G - 1, in group order whatever the thread count, 8
    parameters at a time (lanes.py: LLVM vectorizes them; one at a time, grads and group_grads might overlap as far
    as it knows, and the loop took 475 us of the makemore size's step against 41 us). The same sums in the same
    order: the same bits."""
    j = first
    while j + LANES <= stop:
        total = load8(grads, j)
        for g in range(group_grads.shape[0]):
            total = add8(total, load8(group_grads[g], j))
        store8(grads, j, total)
        j += LANES
    for k in range(j, stop):
        for g in range(group_grads.shape[0]):
            grads[k] += group_grads[g, k]


@composite
def _pack_group(plans, g, docs, doc_starts, batch_first, batch_size, key):
    """Packs group g's share of the batch of documents batch_first .. batch_first + batch_size - 1 into plans[g],
    with dropout key `key`; returns its number of columns."""
    groups = plans.shape[0]
    plans[g, SLOT_DROP_KEY] = key
    return pack_columns(plans[g], docs, doc_starts, batch_first, batch_first + g * batch_size // groups,
                        batch_first + (g + 1) * batch_size // groups)


@counting
def _check_batches(plan, docs, doc_starts, batch_size, steps):
    """(steps,) the positions each batch of `batch_size` documents predicts; raises as pack_columns would on a bad
    document, and on a batch with nothing to predict. Every thread checks every batch before the first barrier,
    so that all raise, or none."""
    totals = np.zeros(steps, np.int64)
    for i in range(steps):
        for d in range(i * batch_size, (i + 1) * batch_size):
            totals[i] += checked_positions(plan, docs[doc_starts[d]:doc_starts[d + 1]])
        if totals[i] == 0:
            raise ValueError(NOTHING_TO_PREDICT)
    return totals


@kernel
def _sum_in_order(values):
    total = 0.0
    for v in values:
        total += v
    return total
