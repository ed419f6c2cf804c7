"""Threads for parallel.py: the same compiled loop run on several Python threads that meet at barriers.

numba's `prange` would run the groups in parallel too, but numba compiles each prange loop as three functions of
its own, and LLVM optimised the whole linked forward and backward again at each of them: the makemore preset's
first run compiled for 30 s where the same kernels without prange took 17 s (docs/PERFORMANCE.md). Here the
entry point is an ordinary `nogil` function: each thread calls it with its own index, and the threads wait for
each other inside it at a `barrier`, an atomic counter they check between yields of their core (sched_yield: at
once back when no other thread waits for the core, and no core kept from them when one does). Side by side with
the prange version, the same steps took the same time (0.97-1.03x, default model batches of 2 to 32 and the
makemore preset's, this 2-core AMD EPYC).
"""

import os
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .lanes import kernel

_COUNT, _GENERATION = 0, 1  # a barrier's cells: threads arrived, barriers passed


def new_barrier():
    """The int64 cells a barrier of one run keeps its state in."""
    return np.zeros(2, np.int64)


def _cell(context, builder, array_type, array, index):
    cells = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, cells, [index])


@intrinsic
def _atomic_add(typingctx, cells, index, value):
    """cells[index] += value, atomically; returns the value before."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw('add', _cell(context, builder, signature.args[0], args[0], args[1]), args[2],
                                  'seq_cst')
    return types.int64(cells, types.intp, types.int64), codegen


@intrinsic
def _atomic_load(typingctx, cells, index):
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_cell(context, builder, signature.args[0], args[0], args[1]), 'seq_cst', 8)
    return types.int64(cells, types.intp), codegen


@intrinsic
def _atomic_store(typingctx, cells, index, value):
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _cell(context, builder, signature.args[0], args[0], args[1]), 'seq_cst', 8)
        return context.get_dummy_value()
    return types.none(cells, types.intp, types.int64), codegen


if os.name == 'posix':
    _sched_yield = types.ExternalFunction('sched_yield', types.int32())

    @kernel
    def _yield_core():
        _sched_yield()
else:  # no sched_yield: a waiting thread spins on, which a thread per core never notices
    @kernel
    def _yield_core():
        pass


@kernel
def barrier(cells, threads):
    """Wait until all `threads` threads have called barrier (with the same cells) as often as this one has."""
    if threads == 1:
        return
    generation = _atomic_load(cells, _GENERATION)
    if _atomic_add(cells, _COUNT, 1) == threads - 1:  # the last to arrive lets the others go
        _atomic_store(cells, _COUNT, 0)
        _atomic_add(cells, _GENERATION, 1)
        return
    while _atomic_load(cells, _GENERATION) == generation:
        _yield_core()


_override = None


def set_threads(threads):
    """Run parallel.py's steps on at most `threads` threads (None: NUMBA_NUM_THREADS, by default one per core
    this process may use)."""
    global _override
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    _override = threads


def thread_count():
    return _override or numba.config.NUMBA_NUM_THREADS


_pool, _pool_pid = None, None


def run_on_threads(entry_point, threads, *args):
    """entry_point(thread, threads, *args) on `threads` threads at once, this one being thread 0; returns thread
    0's result. They must all run at the same time (they wait for each other at barriers), so the pool has a
    thread for each of the others."""
    if threads == 1:
        return entry_point(0, 1, *args)
    global _pool, _pool_pid
    if _pool is None or _pool._max_workers < threads - 1 or _pool_pid != os.getpid():  # a forked child has no threads
        _pool, _pool_pid = ThreadPoolExecutor(threads - 1, thread_name_prefix='microgpt-fused'), os.getpid()
    others = [_pool.submit(entry_point, thread, threads, *args) for thread in range(1, threads)]
    try:
        result = entry_point(0, threads, *args)
    finally:
        wait(others)  # they raise as thread 0 does: each checks the same batches before the first barrier
    for other in others:
        other.result()
    return result
