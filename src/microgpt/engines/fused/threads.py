"""Threads for parallel.py: the same compiled loop run on several Python threads that meet at barriers.

numba's `prange` would run the groups in parallel too, but numba compiles each prange loop as three functions of
its own, and LLVM optimised the whole linked forward and backward again at each of them: the makemore preset's
first run compiled for 30 s where the same kernels without prange took 17 s (docs/PERFORMANCE.md). Here the
entry point is an ordinary `nogil` function: each thread calls it with its own index, and the threads wait for
each other inside it at a `barrier`, an atomic counter they check between yields of their core (sched_yield: at
once back when no other thread waits for the core, and no core kept from them when one does). Side by side with
the prange version, the same steps took the same time (0.97-1.03x, default model batches of 2 to 32 and the
makemore preset's, a 2-core AMD EPYC; docs/PERFORMANCE.md).
"""

import operator
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .lanes import kernel

_COUNT, _GENERATION, _ABANDONED = 0, 1, 2  # a run's cells: threads at the barrier, barriers passed, abandoned (1)


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
    """Wait until all `threads` threads have called barrier (with the same cells) as often as this one has; True
    then, False when the run was abandoned meanwhile (run_on_threads: thread 0 will never come), and the caller
    must return at once."""
    if threads == 1:
        return True
    generation = _atomic_load(cells, _GENERATION)
    if _atomic_add(cells, _COUNT, 1) == threads - 1:  # the last to arrive lets the others go
        _atomic_store(cells, _COUNT, 0)
        _atomic_add(cells, _GENERATION, 1)
        return True
    while _atomic_load(cells, _GENERATION) == generation:
        if _atomic_load(cells, _ABANDONED):
            return False
        _yield_core()
    return True


_override = None


def set_threads(threads):
    """Run parallel.py's steps on at most `threads` threads (None: NUMBA_NUM_THREADS, by default one per core
    this process may use; numba.set_num_threads does not apply, as these are not numba's threads)."""
    global _override
    if threads is not None and (isinstance(threads, bool) or operator.index(threads) < 1):
        raise ValueError(f"threads must be a whole number of at least 1, not {threads!r}")
    _override = threads


def thread_count():
    return _override or numba.config.NUMBA_NUM_THREADS


_pool, _pool_pid = None, None
_one_run_at_a_time = threading.Lock()  # two runs sharing the pool could each hold a worker the other waits for


def run_on_threads(entry_point, threads, *args):
    """entry_point(thread, threads, cells, *args) on `threads` threads at once, this one being thread 0; returns
    thread 0's result. `cells` are the run's barrier (new for each run). The threads wait for each other at
    barriers, so they must all run at the same time: the pool has a thread for each of the others, and runs
    from several Python threads take turns. When this thread is interrupted before its own call begins (Ctrl-C
    between the others' start and its own), the run is abandoned: the others leave their barrier and return."""
    cells = np.zeros(3, np.int64)
    if threads == 1:
        return entry_point(0, 1, cells, *args)
    others = []
    with _one_run_at_a_time:
        try:
            pool = _pool_of(threads - 1)
            for thread in range(1, threads):
                others.append(pool.submit(_abandoning_on_error, entry_point, thread, threads, cells, *args))
            result = entry_point(0, threads, cells, *args)
        except BaseException:
            cells[_ABANDONED] = 1
            raise
        finally:
            _wait_for(others, cells)
    for other in others:  # on an error they raise as thread 0 does: each checks the same batches first
        other.result()
    return result


def _abandoning_on_error(entry_point, thread, threads, cells, *args):
    """A thread other than 0: if its call raises where the others' do not (out of memory, say), they would wait
    for it at a barrier for ever; the run is abandoned instead, and thread 0's caller gets the error."""
    try:
        return entry_point(thread, threads, cells, *args)
    except BaseException:
        cells[_ABANDONED] = 1
        raise


def _wait_for(others, cells):
    """Wait until the other threads have returned, even through Ctrl-C (each one abandons the run, and they
    return within a group's work), so that none writes to the engine's buffers after run_on_threads returns."""
    interrupted = None
    while True:
        try:
            wait(others)
            break
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM's (cli.py: TerminatedAtOnce), raised again as it is
            cells[_ABANDONED], interrupted = 1, interrupted or interrupt
    if interrupted is not None:
        raise interrupted


def _pool_of(workers):
    """The thread pool, with at least `workers` threads (a forked child has none of its parent's threads)."""
    global _pool, _pool_pid
    if _pool is None or _pool._max_workers < workers or _pool_pid != os.getpid():
        if _pool is not None and _pool_pid == os.getpid():
            _pool.shutdown(wait=False)
        _pool, _pool_pid = ThreadPoolExecutor(workers, thread_name_prefix='microgpt-fused'), os.getpid()
    return _pool
