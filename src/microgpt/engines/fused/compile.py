"""Compiling the fused engine's entry points, and numba's disk cache of them.

numba compiles an entry point on its first call and caches it on disk next to the package (__pycache__), so
later runs load it in a fraction of a second. Each entry point is compiled here, with LLVM's SLP vectorizer on,
when the engine first calls it (`compiled`): a run compiles only what it calls, the training loop's
train_steps (gpt.py's for batches of one document) or parallel.py's `steps` (batches of 2+, which also
evaluates), and parallel.py's `forward` for the evaluation of a run on one document a step. The kernels under an
entry point are compiled once per process and shared by the next ones.
"""

import os
import time
from contextlib import contextmanager

import numpy as np

from ... import config, dropout
from . import adam, floating_point, gpt, lanes, layers, matmul, parallel, plan, threads

# every file whose code or constants (config's RMSNORM_EPS, ...) the compiled kernels hold
KERNEL_FILES = tuple(module.__file__ for module in (lanes, layers, matmul, plan, adam, gpt, parallel, threads,
                                                    floating_point, dropout, config))
_compiled = set()  # (entry point, dtype) this process has compiled or loaded


def compiled(entry_point, dtype):
    """`entry_point` (one of gpt.py's or parallel.py's), compiled or loaded from the disk cache for engines of
    `dtype` on its first use in this process."""
    if not compiled_here(entry_point, dtype):
        _compile([(entry_point, _example_arguments(dtype)[entry_point])])
        _compiled.add((entry_point, np.dtype(dtype).name))
    return entry_point


def compiled_here(entry_point, dtype):
    """Whether this process has compiled or loaded `entry_point` for `dtype`."""
    return (entry_point, np.dtype(dtype).name) in _compiled


def run_entry_points(batch_size, evaluates):
    """The entry points a training run calls: its train_steps (parallel.steps for batches of 2+, which evaluates
    too), and when it evaluates (train.loop.evaluate's batches of many documents) parallel.forward."""
    grouped = len(parallel.group_bounds(batch_size)) > 2
    return [parallel.steps] if grouped else [gpt.train_steps] + ([parallel.forward] if evaluates else [])


def kernels_are_cached(dtype='float64', batch_size=1, evaluates=False):
    """Whether numba's disk cache holds every entry point a training run with batches of `batch_size` (and
    evaluation, with `evaluates`) calls in `dtype`, so that the run will not compile (False when unsure). For
    the CLI, to announce the one-time compilation."""
    try:
        examples = _example_arguments(dtype)  # (a dtype the engine does not compute in: False)
        for kernel in run_entry_points(batch_size, evaluates):
            key = kernel._cache._index_key(_signature(examples[kernel]), kernel.targetctx.codegen())
            if _cache_is_stale(kernel) or key not in kernel._cache._cache_file._load_index():
                return False
        return True
    except Exception:  # numba's cache internals are not public API: if they move, say "not cached"
        return False


def compile_kernels(dtype='float64', grouped=True):
    """Compile (or load from the cache) now every entry point for `dtype` (with `grouped`, also those for
    batches of 2+ documents): before starting worker processes, say, so that they do not each compile."""
    for kernel in _entry_points(dtype) + (_group_entry_points(dtype) if grouped else []):
        compiled(kernel, dtype)


def _example_arguments(dtype):
    """Entry point -> example arguments of the types FusedEngine passes."""
    return dict(_one_group_examples(dtype) + _group_examples(dtype))


def _entry_points(dtype):
    return [kernel for kernel, _ in _one_group_examples(dtype)]


def _group_entry_points(dtype):
    return [kernel for kernel, _ in _group_examples(dtype)]


def _one_group_examples(dtype):
    """(entry point, example arguments) for what FusedEngine calls to train on one document a step, and its
    adam_update."""
    state, ws, plan_, adam_ = np.zeros((4, 1), dtype), np.zeros((1, 1), dtype), np.zeros(1, np.int64), np.zeros(5)
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    return [(gpt.adam_update, (state, adam_, 0.0, 0)),
            (gpt.train_steps, (state, ws, plan_, adam_, ints, ints, 0, floats, ints, 0, floats)),
            (floating_point.start_flushing_here, ()), (floating_point.stop_flushing_here, (0,))]


def _group_examples(dtype):
    """Those of parallel.py: training on batches of 2+ documents, and the loss (and gradients) of any batch."""
    state, adam_ = np.zeros((4, 1), dtype), np.zeros(5)
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    group_grads, wss, plans = np.zeros((1, 1), dtype), np.zeros((1, 1, 1), dtype), np.zeros((1, 1), np.int64)
    return [(parallel.steps, (0, 1, ints, floats, state, group_grads, wss, plans, adam_, ints, ints, 0, floats, ints, 0,
                              floats, False, False)),
            (parallel.forward, (0, 1, ints, floats, state, wss, plans, ints, ints))]


def _signature(args):
    from numba import typeof
    return tuple(typeof(a) for a in args)


def _cache_is_stale(kernel):
    """numba checks a cached function against its own source file only, but an entry point has the kernels
    of all KERNEL_FILES compiled into it: its cache is stale when any of them is newer."""
    index = kernel._cache._cache_file._index_path
    return os.path.exists(index) and os.path.getmtime(index) < max(map(os.path.getmtime, KERNEL_FILES))


@contextmanager
def slp_vectorizer():
    """LLVM's SLP vectorizer on while our kernels compile (numba turns it off by default since numba#8852).

    The kernels' 8-lane tuples (lanes.py) become SIMD registers only through it: 4-5x faster matrix
    products. numba reads the setting when it optimises a function, so switching it on around the compiling
    calls affects our kernels only; a kernel loaded from the cache is not recompiled.
    """
    from numba.core import config
    saved = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        config.SLP_VECTORIZE = saved


def _compile(entry_points):
    """Compile, or load from the disk cache, these (entry point, example arguments).

    Every stale cache is flushed first, not only those of `entry_points`: numba loads an entry point that another
    calls from its own cache, which it checks against its own file only, and one compiled against an older plan
    layout reads the workspace at the wrong rows (no entry point calls another today; the check costs little)."""
    for kernel in {kernel for kernel, _ in _one_group_examples('float64') + _group_examples('float64')}:
        try:
            if _cache_is_stale(kernel):
                kernel._cache.flush()
        except (AttributeError, OSError):  # cache internals moved, or a read-only cache: numba's check remains
            pass
    _on_a_new_stack(_compile_each, entry_points)


def _compile_each(entry_points):
    # under numba's compiler lock (_on_a_new_stack holds it): SLP is a global setting, and two threads compiling at
    # once would each restore what the other had set
    with slp_vectorizer():
        for kernel, args in entry_points:
            with _compiling_alone(kernel):
                kernel.compile(_signature(args))  # loads it instead when another process compiled it meanwhile


def _on_a_new_stack(function, *args):
    """function(*args) under numba's compiler lock, run from the top of a new thread's stack; the caller waits, and
    gets its result or error.

    CPython (3.11 on) keeps its frames in 16 KB chunks of memory, mapped from the system when the stack grows into
    one and unmapped when it leaves it. numba's compiler recurses up and down thousands of times, and where its
    recursion straddles a chunk's edge, every crossing is a system call: a cold `microgpt train --engine fused`
    mapped and unmapped 480,000 chunks, 3 s of system time in a 12 s start. How often depends on the stack depth
    the compiler starts at; from the top of a new thread it was 0.4-0.5 s for the default job and the makemore
    preset (8-13 frames deeper, 1.9-3.4 s). A caller that holds numba's lock already (compiling from inside a
    compilation) runs the function itself: a thread would wait for that lock for ever.

    Ctrl-C reaches the waiting caller. Once the thread holds numba's lock, the caller passes it on: the compiler
    stops at its next line of Python, as it would on the caller's thread, releasing numba's lock, the lock file and
    the SLP setting on its way out; the caller waits for that (a call into LLVM finishes first, a second or so at
    most), then raises KeyboardInterrupt. While the thread still waits for the lock (another thread of the process
    compiling), the caller raises at once and the thread gives up as soon as it has the lock: an interrupt arriving
    inside the lock's acquire would leave it held. (Leaving the thread compiling held numba's lock, and a process
    exiting while it was inside LLVM crashed: both found by reviews.)"""
    import ctypes
    import threading
    from numba.core.compiler_lock import global_compiler_lock
    if global_compiler_lock.is_locked():
        return function(*args)
    outcome, holding, finished, cancelled = [], threading.Event(), threading.Event(), []

    def run():
        try:
            with global_compiler_lock:
                holding.set()
                if cancelled:
                    raise KeyboardInterrupt
                outcome.append((True, function(*args)))
        except BaseException as error:  # re-raised in the caller, KeyboardInterrupt included
            outcome.append((False, error))
        finally:
            finished.set()

    thread = threading.Thread(target=run, name='microgpt-compile', daemon=True)
    interrupt, passed_on, deadline = None, False, None
    try:
        thread.start()
    except KeyboardInterrupt as error:  # the thread may have started: it is stopped below
        interrupt = error
    # polled, and not by join(), which a Ctrl-C can leave reporting a running thread as ended (CPython 3.11)
    while not finished.is_set():
        if interrupt is not None and not passed_on:
            cancelled.append(True)  # before looking at `holding`: the thread looks at them the other way round
            if not holding.is_set():
                raise interrupt  # the thread gives up once it has the lock
            passed_on = True  # once: a second one could land in the thread's own clean-up
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                       ctypes.py_object(KeyboardInterrupt))
        if thread.is_alive():
            deadline = None
        elif deadline is None:  # not running yet, or gone without a word: a second's grace
            deadline = time.monotonic() + 1
        elif time.monotonic() > deadline:
            break
        try:  # a sleep, not finished.wait(): an interrupt landing as a Condition's wait takes its lock back broke the
            time.sleep(0.05)  # lock ("release unlocked lock"; SIGTERM and Ctrl-C at once)
        except KeyboardInterrupt as error:  # again while waiting: it still waits for the thread
            interrupt = interrupt or error
    if interrupt is not None or not outcome:
        raise interrupt or KeyboardInterrupt()
    done, value = outcome[0]
    if not done:
        raise value
    return value


@contextmanager
def _compiling_alone(kernel):
    """Hold a lock file beside the entry point's disk cache while compiling it, so that processes starting at once
    on a cold cache (`tune` workers, runs started together, a test suite's workers) compile each entry point once:
    the others wait, then load it from the cache (one lock for all its dtypes: they share numba's index file).
    Where no lock can be had (a read-only cache, a file system without locks, a system without fcntl), each
    compiles for itself, as numba alone would."""
    lock = None
    try:
        import fcntl
        lock = open(kernel._cache._cache_file._index_path + '.lock', 'a')
        while True:  # released when the file closes, or by the system if the process dies
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # polled, not waited for in the system: Ctrl-C stops this thread between tries
                time.sleep(0.05)
    except (ImportError, AttributeError, OSError):  # numba's cache internals moved, or no lock here
        if lock is not None:
            lock.close()
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()
