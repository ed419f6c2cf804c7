"""The fused engine's pieces: its plan (parameter rows from the parameter table, the workspace's buffers, the
packed batch) and its forward-only loss."""

import itertools
import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from microgpt.config import ModelConfig, TrainConfig, parameter_table
from microgpt.engines import make_engine
from microgpt.engines.fused import plan as fused_plan

from helpers import QUICK_DTYPES, pack_columns, random_batch


@pytest.mark.parametrize('switches', [{}, {'n_layer': 3, 'n_embd': 8, 'n_head': 2, 'tie_lm_head': True}])
def test_plan_reads_parameter_rows_from_the_parameter_table(switches):
    cfg = ModelConfig(vocab_size=11, **switches)
    plan, rows = fused_plan.build_plan(cfg, capacity=16, span=cfg.block_size)
    table = {p.name: p for p in parameter_table(cfg)}
    C = cfg.n_embd
    want = {fused_plan.SLOT_WTE: table['wte'].offset // C, fused_plan.SLOT_WPE: table['wpe'].offset // C,
            fused_plan.SLOT_LM_HEAD: table['wte' if cfg.tie_lm_head else 'lm_head'].offset // C}
    for i in range(cfg.n_layer):
        for m, kind in enumerate(fused_plan.LAYER_MATRICES):
            want[fused_plan.LAYERS_AT + 4 * i + m] = table[f'layer{i}.{kind}'].offset // C
    got = {slot: int(plan[slot]) for slot in want}
    assert got == want, (got, want)
    buffer_rows = fused_plan.buffer_rows(cfg, cfg.block_size)
    assert tuple(buffer_rows) == fused_plan.BUFFERS, (tuple(buffer_rows), fused_plan.BUFFERS)
    starts = list(plan[fused_plan.BUFFERS_AT:fused_plan.BUFFERS_AT + len(fused_plan.BUFFERS)])
    assert starts == list(np.cumsum([0, *buffer_rows.values()])[:-1]) and rows == sum(buffer_rows.values()), starts


@pytest.mark.slow(seconds=2)  # compiles pack_columns on its own
def test_pack_columns_writes_each_predicted_position():
    """Two documents of one group, the second longer than the block: input, target, position, first key and
    dropout row per column, then padding columns that attend to themselves."""
    from microgpt.engines.fused.plan import columns_of  # a kernel: its Python reads the plan as compiled code does
    cfg = ModelConfig(vocab_size=6, block_size=3)
    plan, _ = fused_plan.build_plan(cfg, capacity=8, span=cfg.block_size)
    docs, doc_starts = fused_plan.pack_documents([[5, 1, 5], [5, 2, 3, 4, 1, 5], [5, 3, 5]], cfg.block_size + 1)
    assert docs.tolist() == [5, 1, 5, 5, 2, 3, 4, 5, 3, 5] and doc_starts.tolist() == [0, 3, 7, 10], (docs, doc_starts)
    n = pack_columns(plan, docs, doc_starts, 0, 0, 2)
    assert n == 5, n
    got = columns_of.py_func(plan).tolist()
    want = [[5, 1, 5, 2, 3, 0, 0, 0],    # input token
            [1, 5, 2, 3, 4, 0, 0, 0],    # target
            [0, 1, 0, 1, 2, 0, 0, 0],    # position
            [0, 0, 2, 2, 2, 5, 6, 7],    # first column attended to (the padding: itself)
            [0, 1, 3, 4, 5, 0, 0, 0]]    # dropout row: document * block_size + position
    assert got == want, got


def test_a_kernel_called_from_python_is_an_error_not_a_crash():
    """Kernels have no wrapper for calls from Python (lanes.Kernel): such a call is refused, not run."""
    cfg = ModelConfig(vocab_size=6, block_size=3)
    plan, _ = fused_plan.build_plan(cfg, capacity=8, span=cfg.block_size)
    docs, doc_starts = fused_plan.pack_documents([[5, 1, 5]], cfg.block_size + 1)
    with pytest.raises(TypeError, match='pack_columns is called from compiled code only'):
        fused_plan.pack_columns(plan, docs, doc_starts, 0, 0, 1)


def test_kernels_get_no_machine_code_composites_no_optimisation_and_callers_run_them(monkeypatch):
    """numba emits machine code for a module when it adds it to its JIT engine: a kernel's module is only linked
    into its callers (lanes.Kernel), whose code runs it. A composite kernel (lanes.composite: made of calls to
    kernels) also gets no LLVM module optimisation of its own: the kernels it calls and the caller that links it
    get theirs. A kernel that raises still raises through both."""
    from numba import njit
    from numba.core.codegen import CPUCodeLibrary
    from numba.core.registry import cpu_target
    from microgpt.engines.fused.lanes import composite, kernel
    codegen = cpu_target.target_context.codegen()
    emitted, add_module = [], codegen._add_module
    monkeypatch.setattr(codegen, '_add_module', lambda module: emitted.append(module.name) or add_module(module))
    optimised, optimise = [], CPUCodeLibrary._optimize_final_module
    monkeypatch.setattr(CPUCodeLibrary, '_optimize_final_module',
                        lambda self: optimised.append(self.name) or optimise(self))

    @kernel
    def twice_plus_one(x):
        if x < 0:
            raise ValueError("negative")
        return 2 * x + 1

    @composite
    def sum_of_two(x):
        return twice_plus_one(x) + twice_plus_one(x + 1.0)

    @njit
    def caller(x):
        return sum_of_two(x) + twice_plus_one(x)

    assert caller(3.0) == 23.0
    with pytest.raises(ValueError, match='negative'):
        caller(-3.0)
    assert any(name.endswith('caller') for name in emitted), emitted
    assert not any('twice_plus_one' in name or 'sum_of_two' in name for name in emitted), emitted
    assert any(name.endswith('twice_plus_one') for name in optimised), optimised
    assert any(name.endswith('caller') for name in optimised), optimised
    assert not any('sum_of_two' in name for name in optimised), optimised


def test_an_entry_point_optimises_its_composites_and_small_kernels_and_links_the_other_kernels_after(monkeypatch):
    """An entry point's library (lanes._finalize_entry) runs LLVM's O3 over its own code, its composites' and the
    kernels small enough to be inlined into them; the bigger kernels, optimised in their own modules already, are
    linked after it, and the machine code calls them. An njit function of your own calling the same composite links
    all of it, as numba does, and both give the same results and errors."""
    from numba import njit
    from numba.core.codegen import CPUCodeLibrary
    from microgpt.engines.fused import lanes
    from microgpt.engines.fused.lanes import ENTRY_OPTIONS, composite, kernel
    assert 'pipeline_class' in ENTRY_OPTIONS  # numba's internals as lanes.py expects them
    monkeypatch.setattr(lanes, '_size', lambda library: 1000 if 'big_step' in library.name else 10)
    defined_at_o3, optimise = {}, CPUCodeLibrary._optimize_final_module
    monkeypatch.setattr(CPUCodeLibrary, '_optimize_final_module', lambda self: defined_at_o3.setdefault(
        self.name, [f.name for f in self._final_module.functions if not f.is_declaration]) and optimise(self))

    @kernel
    def small_step(x):
        return 2 * x + 1

    @kernel
    def big_step(x):
        if x < 0:
            raise ValueError("negative")
        return x * x

    @composite
    def both_steps(x):
        return small_step(x) + big_step(x)

    def entry_point(x):
        return both_steps(x)

    def plain_caller(x):
        return both_steps(x)

    entry, plain = njit(**{name: value for name, value in ENTRY_OPTIONS.items() if name != 'cache'})(entry_point), \
        njit(plain_caller)
    assert entry(3.0) == plain(3.0) == 16.0
    for caller in (entry, plain):
        with pytest.raises(ValueError, match='negative'):
            caller(-3.0)
    at_o3 = ' '.join(next(names for library, names in defined_at_o3.items() if library.endswith('.entry_point')))
    plain_at_o3 = ' '.join(next(names for library, names in defined_at_o3.items() if library.endswith('plain_caller')))
    assert 'big_step' in plain_at_o3, plain_at_o3
    assert 'both_steps' in at_o3 and 'small_step' in at_o3 and 'big_step' not in at_o3, at_o3
    final = next(iter(entry.overloads.values())).library._final_module
    assert any('big_step' in f.name and not f.is_declaration for f in final.functions)


def test_compiling_runs_on_a_new_thread_and_gives_back_its_result_or_error():
    """compile._on_a_new_stack runs the compiler from the top of a new thread's stack (fewer system calls for
    CPython's frame chunks) and hands its result, or its exception, to the caller."""
    import threading
    from microgpt.engines.fused.compile import _on_a_new_stack

    def where(x):
        return threading.current_thread() is threading.main_thread(), x + 1

    assert _on_a_new_stack(where, 1) == (False, 2)

    def failing():
        raise ValueError("no such kernel")

    with pytest.raises(ValueError, match='no such kernel'):
        _on_a_new_stack(failing)


def test_compiling_waits_for_numbas_lock_yet_a_ctrl_c_meanwhile_raises_at_once_and_leaves_the_lock_free():
    """While another thread holds numba's compiler lock, _on_a_new_stack's thread waits for it; a Ctrl-C then
    raises in the caller at once, and the thread, once it has the lock, gives up without running the function and
    lets the lock go (an interrupt inside the lock's acquire left it held for good: found by a review). A caller
    that holds the lock itself runs the function on its own thread instead of waiting for ever."""
    import os
    import signal
    import threading
    import time
    from numba.core.compiler_lock import global_compiler_lock
    from microgpt.engines.fused.compile import _on_a_new_stack
    holding, release, ran = threading.Event(), threading.Event(), []

    def other_compiler():
        with global_compiler_lock:
            holding.set()
            release.wait(30)

    threading.Thread(target=other_compiler, daemon=True).start()
    assert holding.wait(10)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            _on_a_new_stack(ran.append, 'ran')
        assert time.perf_counter() - started < 10
    finally:
        timer.cancel()
        release.set()
    assert global_compiler_lock._lock.acquire(timeout=10), "the lock was left held"
    global_compiler_lock._lock.release()
    assert ran == []
    with global_compiler_lock:
        assert _on_a_new_stack(lambda: threading.current_thread() is threading.main_thread()) is True


KERNEL_BESIDE_AN_NJIT_FUNCTION_OF_ITS_NAME = """
from numba import njit
from microgpt.engines.fused.lanes import counting
other = {}
exec('from numba import njit\\n@njit\\ndef g(x):\\n    return x + 1.0', other)  # an njit function named g
mine = {'plus_one': other['g'], 'counting': counting}  # a raise with values needs numba's reference counting
exec('@counting\\ndef g(x):\\n    if x < 0:\\n        raise ValueError("negative", x)\\n'
     '    return 2 * plus_one(x)', mine)
kernel_g = mine['g']

@njit
def caller(x):
    return kernel_g(x)

print(caller(3.0), other['g'](3.0))  # the njit g, compiled inside the kernel g, still runs from Python
try:
    caller(-1.0)
except ValueError as error:
    print(error.args)  # a raise with values needs the kernel's environment
"""


@pytest.mark.slow(seconds=2)  # compiles in a new interpreter
def test_a_kernel_leaves_other_functions_of_its_name_alone_and_keeps_its_environment():
    """Only the kernel's own library goes without machine code: an njit function of the same name that it calls
    is emitted as numba would (it crashed the interpreter when called from Python, found by a review), and the
    kernel's environment is set once a caller is emitted (a raise with values needs it)."""
    result = subprocess.run([sys.executable, '-c', KERNEL_BESIDE_AN_NJIT_FUNCTION_OF_ITS_NAME], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split('\n')[:2] == ['8.0 4.0', "('negative', -1.0)"], result.stdout


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
@pytest.mark.parametrize('batch_size', [1, 5])
def test_loss_is_forward_only_and_equals_loss_and_grads(batch_size, dtype):
    """loss() runs the forward alone: the loss of loss_and_grads, bit for bit, with the gradients untouched."""
    cfg = ModelConfig(vocab_size=9, n_layer=2, block_size=6)
    engine = make_engine('fused', cfg, random.Random(1), dtype)
    rng = random.Random(2)
    engine.train_steps(random_batch(rng, cfg, 8, max_len=8), 0, 4, TrainConfig(steps=4, batch_size=2, dropout=0.3))
    for _ in range(2):
        batch = random_batch(rng, cfg, batch_size, max_len=9)
        gradients = engine.grad_flat.copy()
        got = engine.loss(batch)
        np.testing.assert_array_equal(engine.grad_flat, gradients)
        want = engine.loss_and_grads(batch)
        assert got == want, (got, want)
        assert not np.array_equal(engine.grad_flat, gradients)


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_evaluation_gives_the_same_bits_through_either_entry_point(dtype, monkeypatch):
    """A batch (of one document too) is evaluated by parallel.forward, or in a process that has parallel.steps
    compiled (a run that trains in groups) by steps without its backward: the same arithmetic, the same bits."""
    from microgpt.engines.fused import engine as fused_engine
    cfg = ModelConfig(vocab_size=9, n_layer=2, block_size=6)
    engine, rng = make_engine('fused', cfg, random.Random(1), dtype), random.Random(3)
    engine.train_steps(random_batch(rng, cfg, 12, max_len=8), 0, 2, TrainConfig(steps=2, batch_size=3))
    for batch_size in (1, 2, 7):
        batch = random_batch(rng, cfg, batch_size, max_len=9)
        losses = []
        for steps_compiled in (False, True):
            monkeypatch.setattr(fused_engine, 'compiled_here', lambda entry_point, dtype: steps_compiled)
            losses.append(engine.loss(batch))
        assert losses[0] == losses[1], (batch_size, losses)


def test_loss_equals_the_numpy_engines_and_checks_its_batch():
    cfg = ModelConfig(vocab_size=7, n_embd=8, n_head=2)
    engine, numpy_engine = make_engine('fused', cfg, random.Random(3)), make_engine('numpy', cfg, random.Random(3))
    batch = random_batch(random.Random(4), cfg, 6, max_len=20)
    for documents in (batch[:1], batch):
        got, want = engine.loss(documents), numpy_engine.loss(documents)
        assert abs(got - want) <= 1e-12 * want, (got, want)
    for bad in ([[6, 1, 7, 6]], [[6, 1, 6], [6, -1, 6]]):
        with pytest.raises(ValueError, match='not a token id'):
            engine.loss(bad)
    for nothing in ([[6]], [[6], [6]]):
        with pytest.raises(ValueError, match='no token to predict'):
            engine.loss(nothing)


# ---- subnormal floats (fused/floating_point.py): read and written as 0 inside the compiled calls only

def subnormal_quotient():
    """1e-308 / 10 computed now by NumPy: 1e-309, a subnormal, unless this thread flushes them to 0."""
    return float((np.array([1e-308]) / np.float64(10))[0])


def test_flush_to_zero_holds_inside_its_block_only():
    from microgpt.engines.fused.floating_point import X86_64, flush_to_zero
    if not X86_64:
        pytest.skip("flush-to-zero is x86-64's MXCSR; elsewhere it does nothing")
    assert subnormal_quotient() == 1e-309
    with flush_to_zero():
        inside = subnormal_quotient()
    assert inside == 0.0 and subnormal_quotient() == 1e-309, inside
    with pytest.raises(ValueError, match='not a token id'):
        with flush_to_zero():
            make_engine('fused', ModelConfig(vocab_size=3), random.Random(0)).loss([[2, 5, 2]])
    assert subnormal_quotient() == 1e-309


@pytest.mark.parametrize('batch_size', [1, 3])
def test_subnormal_adam_moments_become_zero_and_python_keeps_them(batch_size):
    """Rows with no gradient (positions past the documents) whose moments are subnormal: the step's kernels
    (one group, or parallel groups) read them as 0 and write 0; the other rows train as before."""
    from microgpt.engines.fused.floating_point import X86_64
    if not X86_64:
        pytest.skip("flush-to-zero is x86-64's MXCSR; elsewhere it does nothing")
    cfg = ModelConfig(vocab_size=5, block_size=8)
    engine = make_engine('fused', cfg, random.Random(1))
    tcfg = TrainConfig(steps=2, batch_size=batch_size)
    docs = [[4, 1, 2, 4]] * batch_size  # positions 3 .. 7 predict nothing
    engine.m[:], engine.v[:] = 1e-310, 1e-310
    unused = slice(engine.offsets['wpe'] + 3 * cfg.n_embd, engine.offsets['wpe'] + cfg.block_size * cfg.n_embd)
    engine.train_steps(docs, 0, 1, tcfg)
    assert not engine.m[unused].any() and not engine.v[unused].any(), (engine.m[unused], engine.v[unused])
    lm_head = slice(engine.offsets['lm_head'], engine.offsets['lm_head'] + cfg.vocab_size * cfg.n_embd)
    assert np.all(engine.m[lm_head] != 0) and subnormal_quotient() == 1e-309  # every logit has a gradient
    engine.m[unused] = 1e-310
    engine.train_step(docs, 0.01, tcfg)
    assert not engine.m[unused].any() and subnormal_quotient() == 1e-309


def test_every_stale_entry_point_is_flushed_before_any_compiles(monkeypatch):
    """An entry point may call others, and numba loads a callee from its own disk cache, checked against the
    callee's file only. Flushing only the entry point being compiled once let an entry point link another one
    (then gpt.py's loss_and_grads) compiled against an older plan layout: a segmentation fault after the plan
    gained a slot. Every stale cache is flushed first."""
    from microgpt.engines.fused import compile as fused_compile, gpt, parallel
    stale = {gpt.adam_update, parallel.steps}
    flushed = []
    monkeypatch.setattr(fused_compile, '_cache_is_stale', lambda kernel: kernel in stale)
    for kernel in stale:
        monkeypatch.setattr(kernel._cache, 'flush', lambda kernel=kernel: flushed.append(kernel))
    fused_compile._compile([])  # compiles nothing: what is flushed before compiling anything
    assert set(flushed) == stale and len(flushed) == len(stale), flushed


def test_madd_fuses_in_both_dtypes():
    """lanes.madd(acc, a, b) = acc + a b, rounded once (a fused multiply-add) in float32 and float64. With a = b =
    1 + 2^-k the exact product 1 + 2^(1-k) + 2^-2k is one bit too long, and acc = -(1 + 2^(1-k)) leaves that bit,
    or nothing if the product was rounded first (as float64's was until 2026-12-01)."""
    from numba import njit
    from microgpt.engines.fused.lanes import madd

    @njit
    def run(acc, a, b):
        return madd(acc, a, b)

    for real, k in ((np.float64, 27), (np.float32, 12)):  # numba types the scalars by dtype
        one_plus = real(1) + real(2.0 ** -k)
        got = run(-(real(1) + real(2.0 ** (1 - k))), one_plus, one_plus)
        assert float(got) == 2.0 ** (-2 * k), (real, float(got))


@pytest.mark.slow(seconds=2)  # compiles a function of every helper
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_the_lanes_intrinsics_load_store_and_combine_the_elements_j_to_j_plus_7(dtype):
    """load8 and load16_at_once read row[j:j + 8] and row[j:j + 16], store8 and store16_at_once write them (a float64
    tuple cast to a float32 row), also on a row with a stride (a matrix's column); fill8, add8, mul8, axpy8 and mac8
    compute lane by lane, their multiply-adds the bits of lanes.madd (fused: test_madd_fuses_in_both_dtypes)."""
    from numba import njit
    from numba.core.errors import TypingError
    from microgpt.engines.fused.lanes import (add8, axpy8, fill8, load8, load16_at_once, mac8, madd, mul8, store8,
                                              store16_at_once)

    @njit
    def run(row, column, out, j, s):
        a, b = load8(row, j), load8(column, 1)
        low, high = load16_at_once(row, j + 1)
        store8(out[0], 2, mac8(axpy8(add8(a, b), s, mul8(a, b)), low, high))
        store16_at_once(out[1], 1, (fill8(s), low))
        store8(out[2], 0, (1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5))  # float64 lanes
        store8(column, 0, a)  # a strided row
        return a, high

    @njit
    def lane_by_lane(p, s, q, lo, hi):
        out = np.empty_like(p)
        for i in range(p.size):
            out[i] = madd(madd(p[i], s, q[i]), lo[i], hi[i])
        return out

    rng = np.random.default_rng(0)
    row, matrix = rng.standard_normal(40).astype(dtype), rng.standard_normal((12, 3)).astype(dtype)
    column, out, j, s = matrix[:, 1], np.zeros((3, 20), dtype), 5, rng.standard_normal(1).astype(dtype)[0]
    matrix_before = matrix.copy()
    a, high = run(row, column, out, j, s)
    x, b = row[j:j + 8], matrix_before[1:9, 1]
    assert np.array_equal(np.array(a), x) and np.array_equal(np.array(high), row[j + 9:j + 17]), (a, high)
    want = lane_by_lane(x + b, s, x * b, row[j + 1:j + 9], row[j + 9:j + 17])
    assert np.array_equal(out[0, 2:10], want) and not out[0, :2].any() and not out[0, 10:].any(), (out[0], want)
    assert np.array_equal(out[1, 1:17], np.concatenate([np.full(8, s, dtype), row[j + 1:j + 9]])), out[1]
    assert out[1, 0] == 0 and not out[1, 17:].any(), out[1]
    assert np.array_equal(out[2, :8], np.arange(8) + 1.5) and not out[2, 8:].any(), out[2]
    assert np.array_equal(column[:8], x) and np.array_equal(column[8:], matrix_before[8:, 1]), column
    assert np.array_equal(matrix[:, [0, 2]], matrix_before[:, [0, 2]]), matrix

    @njit
    def mixed(row32, row64):
        return add8(load8(row32, 0), load8(row64, 0))

    with pytest.raises(TypingError):  # the lanes' helpers take one float type, as lanes.madd
        mixed(np.zeros(8, np.float32), np.zeros(8))

    @njit
    def multiply_adds(acc, s, x):
        return axpy8(fill8(acc), s, fill8(x)), mac8(fill8(acc), fill8(s), fill8(x))

    # fused, each lane: test_madd_fuses_in_both_dtypes's operands, whose product rounded first would leave 0
    real, k = np.dtype(dtype).type, {'float64': 27, 'float32': 12}[dtype]
    one_plus = real(1) + real(2.0 ** -k)
    for lanes in multiply_adds(-(real(1) + real(2.0 ** (1 - k))), one_plus, one_plus):
        assert set(lanes) == {2.0 ** (-2 * k)}, (dtype, lanes)


@pytest.mark.slow(seconds=2)  # compiles two functions of every helper
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_the_lanes_arithmetic_intrinsics_give_the_bits_of_the_python_they_replaced(dtype):
    """max8, div8 and layers.py's _rsqrt8, _mask8, _positive8 and _weights8 were small kernels of Python expressions,
    lane by lane; as intrinsics they must compute exactly those: max's NaN rule (b where b > a), the masks' signed
    comparisons. Each is checked here against the expression it replaced, compiled by numba, on values with NaN,
    infinities, signed zeros and subnormals."""
    from numba import njit
    from numba.core.errors import TypingError
    from microgpt.engines.fused.lanes import div8, load8, max8
    from microgpt.engines.fused.layers import _mask8, _positive8, _rsqrt8, _weights8

    @njit
    def intrinsics(a, b, starts, j, n, u):
        x, y, zero = load8(a, 0), load8(b, 0), a.dtype.type(0)
        s = load8(starts, 0)
        return (max8(x, y), div8(x, y), _rsqrt8(y, b[1], b[2]), _positive8(x, zero),
                _mask8(x, b[3], a.dtype.type(-np.inf), u, s, j), _weights8(j, n, b[4], zero))

    @njit(error_model='numpy')  # as the kernels were compiled: no ZeroDivisionError
    def expressions(a, b, starts, j, n, u):
        real = a.dtype.type
        out = np.empty((6, 8), a.dtype)
        for k in range(8):
            out[0, k] = max(a[k], b[k])
            out[1, k] = a[k] / b[k]
            out[2, k] = real(1) / math.sqrt(b[k] / b[1] + b[2])
            out[3, k] = real(1) if a[k] > 0 else real(0)
            out[4, k] = a[k] / b[3] if (starts[k] <= u) & (u <= j + k) else real(-np.inf)
            out[5, k] = b[4] if j + k < n else real(0)
        return out

    tiny = np.finfo(dtype).tiny / 4  # subnormal
    rng = np.random.default_rng(1)
    cases = [(rng.standard_normal(8), rng.standard_normal(8) + 3),
             ([np.nan, 1, -0.0, 0.0, np.inf, -np.inf, tiny, -tiny], [1, np.nan, 0.0, -0.0, 2, -np.inf, -tiny, 5])]
    starts = np.array([0, 0, 3, 3, 3, 9, 9, 9], np.int64)
    for a, b in cases:
        a, b = np.array(a, dtype), np.array(b, dtype)
        with np.errstate(all='ignore'):
            for j, n, u in ((0, 8, 0), (8, 13, 3), (16, 16, 9), (-4, 2, -1)):
                got = [np.array(lanes, dtype) for lanes in intrinsics(a, b, starts, j, n, u)]
                want = expressions(a, b, starts, j, n, u)
                for name, lanes, expected in zip(('max8', 'div8', '_rsqrt8', '_positive8', '_mask8', '_weights8'),
                                                 got, want):
                    assert lanes.tobytes() == expected.tobytes(), (dtype, name, j, n, u, lanes, expected)

    @njit
    def mixed(a32, b64):
        return max8(load8(a32, 0), load8(b64, 0))

    with pytest.raises(TypingError):  # one float type, as the other helpers
        mixed(np.zeros(8, np.float32), np.zeros(8))


@pytest.mark.slow(seconds=2)  # compiles the kernel and its reference
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_keys_gradient_sums_each_key_over_the_queries_in_lane_order_with_products_rounded(dtype):
    """layers._keys_gradient: out[at + d, u] += sum_t weights[u - lo, j + t] x[x_at + d, j + t] for keys lo <= u < hi,
    the sum over the block's 8 queries t in lane order, each product rounded before it is added (the dot product it
    replaced, one key at a time), but 8 keys at a time; keys past a multiple of 8 in a last group that overlaps the
    one before, whose lanes must keep their values. Nothing else in `out` changes."""
    from numba import njit
    from microgpt.engines.fused.lanes import borrowed
    from microgpt.engines.fused.layers import _keys_gradient

    @njit
    def eight_at_a_time(out, at, weights, lo, hi, x, x_at, j, hs):
        _keys_gradient(borrowed(out), at, borrowed(weights)[:hi - lo], lo, hi, borrowed(x), x_at, j, hs)

    @njit(error_model='numpy')
    def one_at_a_time(out, at, weights, lo, hi, x, x_at, j, hs):
        for u in range(lo, hi):
            for d in range(hs):
                total = weights[u - lo, j] * x[x_at + d, j]
                for t in range(1, 8):
                    total = total + weights[u - lo, j + t] * x[x_at + d, j + t]
                out[at + d, u] += total

    real = np.dtype(dtype).type
    k = {'float64': 27, 'float32': 12}[dtype]
    one_plus = real(1) + real(2.0 ** -k)
    rng = np.random.default_rng(2)
    for lo, hi in ((0, 8), (3, 12), (2, 17), (8, 24), (5, 26)):
        out = rng.standard_normal((12, 40)).astype(dtype)
        weights, x = rng.standard_normal((hi - lo + 3, 40)).astype(dtype), rng.standard_normal((9, 40)).astype(dtype)
        # the first key's two products cancel to 0 rounded (its other weights 0); fusing either into the sum would
        # leave 2^-2k
        weights[0, 16:24], x[1, 16:18], out[2, lo] = (one_plus, -one_plus, 0, 0, 0, 0, 0, 0), (one_plus, one_plus), 0
        got, want = out.copy(), out.copy()
        eight_at_a_time(got, 2, weights, lo, hi, x, 1, 16, 7)
        one_at_a_time(want, 2, weights, lo, hi, x, 1, 16, 7)
        assert got.tobytes() == want.tobytes(), (dtype, lo, hi, np.argwhere(got != want))
        assert not np.array_equal(got, out) and np.array_equal(got[[0, 1, 9, 10, 11]], out[[0, 1, 9, 10, 11]])
        assert np.array_equal(got[:, :lo], out[:, :lo]) and np.array_equal(got[:, hi:], out[:, hi:])


def test_min2_and_max2_are_numbas_min_and_max_of_two_numbers():
    """lanes.min2 and max2 compile as numba's min and max of two numbers (without a function of their own): the
    same type and value, NaN and signed zeros as Python's rule (b where b < a for min, b > a for max, else a)."""
    from numba import njit
    from microgpt.engines.fused.lanes import max2, min2

    ours, numbas = njit(lambda a, b: (min2(a, b), max2(a, b))), njit(lambda a, b: (min(a, b), max(a, b)))
    for a, b in [(1, 2), (2, 1), (-3, -3), (1.5, np.nan), (np.nan, 1.5), (-0.0, 0.0), (0.0, -0.0),
                 (np.float32(1.5), 2.0), (3, 2.5), (np.int64(-7), 1)]:
        got, want = ours(a, b), numbas(a, b)
        assert [type(x) for x in got] == [type(x) for x in want], (a, b, got, want)
        assert np.array(got).tobytes() == np.array(want).tobytes(), (a, b, got, want)


def test_as_rows_is_a_matrix_view_of_a_contiguous_array_in_compiled_code_and_in_python():
    """lanes.as_rows(a, n_cols): the (size // n_cols, n_cols) view that a.reshape gives, without numba's reshape
    (its helper's compilation and its C call); the same in Python. A non-contiguous array is a typing error (in
    Python a TypeError), n_cols 0 a ZeroDivisionError."""
    from numba import njit
    from numba.core.errors import TypingError
    from microgpt.engines.fused.lanes import as_rows

    @njit
    def write_through(flat, matrix):
        rows, cols = as_rows(flat, 4), as_rows(matrix[1:4], 6)
        rows[1, 2] = -1.0
        cols[1, 5] = -2.0
        return rows.shape, rows.strides, cols.shape, cols.strides

    flat, matrix = np.arange(12.0), np.arange(24.0).reshape(6, 4)
    assert write_through(flat, matrix) == ((3, 4), (32, 8), (2, 6), (48, 8))
    assert flat[6] == -1.0 and matrix[3, 3] == -2.0 and (flat == -1).sum() == 1 and (matrix == -2).sum() == 1
    view = as_rows(np.arange(10, dtype=np.int64), 5)
    assert view.shape == (2, 5) and view[1, 0] == 5
    with pytest.raises(TypingError):
        njit(lambda m: as_rows(m.T, 2))(matrix)
    with pytest.raises(TypeError, match='C-contiguous'):
        as_rows(matrix.T, 2)
    for function in (as_rows, njit(lambda m, n: as_rows(m, n))):  # an error, not SIGFPE (a review)
        with pytest.raises(ZeroDivisionError):
            function(flat, 0)


def test_a_borrowed_array_is_the_same_memory_and_its_views_count_no_references():
    """lanes.borrowed(a): a's data, shape and strides without its memory record, so that the views taken of it
    inside compiled code are not reference counted (an atomic add each); writes reach the caller's array."""
    from numba import njit
    from microgpt.engines.fused.lanes import borrowed

    # a call LLVM cannot inline (numba's optnone adds noinline): inlined, as array.sum was on a Zen 1 (znver1), a
    # view's whole life lies in sight of numba's pruning pass, which then removes its counts even on a counted array
    total = njit(_dbg_optnone=True)(lambda x: x.sum())

    def halves_of(view):
        """A compiled function that takes views of view(a), passes one to a call and writes through another."""
        def halves(a):
            b = view(a)
            left, right = b[:, :2], b[:, 2:].T
            left[0, 0] = total(right)
            return left.shape[0] + right.shape[0]
        return njit(halves)

    def reference_counts(function):
        """Calls to NRT_incref and NRT_decref in the optimised body of `function` (not its Python wrappers)."""
        ir = next(iter(function.inspect_llvm().values()))
        [body] = [body for name, body in re.findall(r'^define [^@]*@([^(]+)\((.*?)^}', ir, re.M | re.S)
                  if 'halves' in name and not name.startswith(('_ZN7cpython', 'cfunc'))]
        return body.count('@NRT_incref') + body.count('@NRT_decref')

    plain = halves_of(njit(inline='always')(lambda a: a))  # the same views, of the array itself
    on_borrowed = halves_of(borrowed)
    for function in (plain, on_borrowed):
        a = np.arange(12.0).reshape(3, 4)
        assert function(a) == 3 + 2 and a[0, 0] == 2 + 3 + 6 + 7 + 10 + 11, a
    counts = reference_counts(plain), reference_counts(on_borrowed)
    assert counts[0] > 0 and counts[1] == 0, counts
    with pytest.raises(Exception, match=r'(?s)No implementation of function.*borrowed'):
        njit(lambda x: borrowed(x))(1.0)


def test_kernels_on_borrowed_arrays_leave_their_reference_counts_as_they_were():
    """Kernels take borrowed arrays (lanes.Kernel): plan.pack_columns, which counts nothing, calls columns_of, which
    returns a counted view; on the plan itself each call left one count more, and the plan was never freed."""
    import gc
    import sys
    import weakref
    cfg = ModelConfig(vocab_size=6, block_size=3)
    plan, _ = fused_plan.build_plan(cfg, capacity=8, span=cfg.block_size)
    docs, doc_starts = fused_plan.pack_documents([[5, 1, 5], [5, 2, 3, 4, 1, 5]], cfg.block_size + 1)
    before = sys.getrefcount(plan), sys.getrefcount(docs)
    for _ in range(5):
        assert pack_columns(plan, docs, doc_starts, 0, 0, 2) == 5
    assert (sys.getrefcount(plan), sys.getrefcount(docs)) == before
    freed = weakref.ref(plan)
    del plan
    gc.collect()
    assert freed() is None


def test_a_kernel_counts_no_references_and_a_counting_one_does():
    """lanes.kernel compiles without numba's reference counting: the views a kernel takes and passes on (a row, a
    transpose) call neither NRT_incref nor NRT_decref. lanes.counting keeps them, for kernels that return a view."""
    from numba import njit
    from microgpt.engines.fused.lanes import counting, kernel

    def reference_counts(decorator):
        """Calls to NRT_incref and NRT_decref in the module of a kernel (by `decorator`) that takes views of its
        argument and writes through one, once a compiled caller has run it."""
        @decorator
        def halves(a):
            left, right = a[:, :2], a[:, 2:].T
            left[0, 0] = right.sum()
            return left.shape[0] + right.shape[0]

        a = np.arange(12.0).reshape(3, 4)
        assert njit(lambda a: halves(a))(a) == 3 + 2 and a[0, 0] == 2 + 3 + 6 + 7 + 10 + 11, a
        [compiled] = halves.overloads.values()
        module = compiled.library.get_llvm_str()
        return module.count('@NRT_incref') + module.count('@NRT_decref')

    counts = reference_counts(kernel), reference_counts(counting)
    assert counts[0] == 0 and counts[1] > 0, counts


@pytest.mark.slow(seconds=20)  # compiles the fused engine in float32 (helpers.QUICK_DTYPES)
@pytest.mark.parametrize('engine_name', ['numpy', 'fused'])
def test_float32_adam_with_beta2_next_to_one_takes_steps_of_about_lr(engine_name):
    """Adam's step is about lr per parameter, whatever beta2 in [0, 1). 0.99999999 rounds to 1.0 in float32: its
    1 - beta2 must come from float64, or v stays 0 and the first step is m / eps, 1e8 times too large."""
    cfg = ModelConfig(vocab_size=10, n_embd=8, n_head=2, block_size=6)
    tcfg = TrainConfig(steps=1, lr=0.01, beta2=0.99999999)
    engine = make_engine(engine_name, cfg, random.Random(4), 'float32')
    before = {name: array.copy() for name, array in engine.state().weights.items()}
    engine.train_step(random_batch(random.Random(5), cfg, 1, max_len=6), tcfg.lr, tcfg)
    largest = max(float(np.abs(array - before[name]).max()) for name, array in engine.state().weights.items())
    assert 0 < largest < 2 * tcfg.lr, largest


@pytest.mark.slow(seconds=8)  # compiling the three blocks: 4 s each on a Zen 3
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_matmul_row_blocks_give_the_same_bits(dtype):
    """The row blocks (matmul.row_blocks picks them for the CPU: with AVX2's 16 vector registers four rows in
    float64 and six rows by 16 columns, with eight rows for the 8 columns left, in float32; eight rows elsewhere) sum
    every out[r, j] in k order: the same bits whichever this machine compiles, whatever the order of `a`, over 13
    rows (the last repeated) and 4 (fewer than a block), 8, 16 and 40 columns (six rows leave 8, 0 and 8 of them to
    eight rows), an inner dimension of 37 and of 0 (zeros). Nothing is written outside out[:n_rows, :n8]: the rows
    and columns around it stay NaN."""
    from numba import njit
    from microgpt.engines.fused.compile import slp_vectorizer
    from microgpt.engines.fused.matmul import eight_rows, four_rows, six_rows

    @njit
    def by_blocks(out, a, b, rows, n_rows, n8, n_inner):
        if rows == 4:
            four_rows(out, a, b, n_rows, n8, n_inner)
        elif rows == 6:
            six_rows(out, a, b, n_rows, n8, n_inner)
        else:
            eight_rows(out, a, b, n_rows, n8, n_inner)

    with slp_vectorizer():
        rng = np.random.default_rng(8)
        w = rng.standard_normal((13, 37)).astype(dtype)
        for n_rows, n8, n_inner in itertools.product((13, 4), (8, 16, 40), (37, 0)):
            b = rng.standard_normal((37, n8 + 16)).astype(dtype)
            for a in (w, np.ascontiguousarray(w.T).T):  # out: a block's worth of rows and columns around the product
                outs = {rows: np.full((21, n8 + 16), np.nan, dtype) for rows in (4, 6, 8)}
                for rows, out in outs.items():
                    by_blocks(out, a, b, rows, n_rows, n8, n_inner)
                    assert np.array_equal(out, outs[4], equal_nan=True), (rows, n_rows, n8, n_inner, a.flags)
                assert np.isnan(outs[4][n_rows:]).all() and np.isnan(outs[4][:, n8:]).all(), (n_rows, n8, n_inner)
                np.testing.assert_allclose(outs[4][:n_rows, :n8], w[:n_rows, :n_inner].astype(np.float64) @
                                           b[:n_inner, :n8], rtol=0, atol=1e-4 if dtype == 'float32' else 1e-12)


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_transpose_writes_the_first_n_columns_as_rows_and_nothing_else(dtype):
    """matmul.transpose moves 8 x 8 blocks through vector registers and the columns and rows past them otherwise:
    for row counts below, at and past multiples of 8 and every column count up to 24, `rows` holds x's first n
    columns as its first n rows, bit for bit, and its other rows are untouched (NaN here)."""
    from numba import njit
    from microgpt.engines.fused.compile import slp_vectorizer
    from microgpt.engines.fused.lanes import borrowed
    from microgpt.engines.fused.matmul import transpose

    @njit(error_model='numpy')
    def transposed(rows, x, n):
        transpose(borrowed(rows), borrowed(x), n)  # it returns `rows`: borrowed, as every kernel's array

    rng = np.random.default_rng(3)
    with slp_vectorizer():  # compiled here, at the first call, as the engine compiles its kernels
        for K in (1, 7, 8, 16, 19, 64):
            for n in range(25):
                x, rows = rng.standard_normal((K, 24)).astype(dtype), np.full((24, K), np.nan, dtype)
                transposed(rows, x, n)
                assert np.array_equal(rows[:n], x[:, :n].T), (K, n)
                assert np.isnan(rows[n:]).all(), (K, n)


@pytest.mark.parametrize('dtype', QUICK_DTYPES)
def test_the_block_of_two_512_bit_vectors_a_row_gives_the_bits_of_blocks_of_8(dtype):
    """matmul._eight_by_two_vectors, the wide block where LLVM's model of the CPU prefers 256-bit vectors (Intel's
    AVX-512 cores), tested on every CPU (elsewhere matmul does not call it): 8 rows (some repeated, as at the last
    block of a matrix) by two 512-bit vectors of columns (32 float32, 16 float64) from column 8 of `out`, `a`
    row-major and transposed, inner sizes 0, 1 and 19; the bits of matmul's 8 columns at a time, and nothing written
    outside those rows and columns."""
    from numba import njit
    from microgpt.engines.fused.compile import slp_vectorizer
    from microgpt.engines.fused.lanes import borrowed
    from microgpt.engines.fused.matmul import VECTOR_BYTES, _eight_by_two_vectors, matmul

    @njit(error_model='numpy')
    def block(out, a, b, rows, j, n_inner):
        _eight_by_two_vectors(borrowed(out), a, borrowed(b), rows, j, n_inner)

    @njit(error_model='numpy')
    def product(out, a, b, n_rows, n_cols, n_inner):
        matmul(borrowed(out), a, borrowed(b), n_rows, n_cols, n_inner)

    rng = np.random.default_rng(5)
    rows, width = (0, 1, 2, 3, 4, 5, 5, 5), 2 * VECTOR_BYTES // np.dtype(dtype).itemsize
    with slp_vectorizer():
        for n_inner in (0, 1, 19):
            w, b = rng.standard_normal((6, 19)).astype(dtype), rng.standard_normal((19, width + 16)).astype(dtype)
            for a in (w, np.ascontiguousarray(w.T).T):
                out = np.full((6, width + 16), np.nan, dtype)
                block(out, a, b, rows, 8, n_inner)
                for j in range(8, 8 + width, 8):
                    part = np.zeros((6, 8), dtype)
                    product(part, a, np.ascontiguousarray(b[:, j:j + 8]), 6, 8, n_inner)
                    assert np.array_equal(out[:, j:j + 8], part), (n_inner, j, a.flags)
                assert np.isnan(out[:, :8]).all() and np.isnan(out[:, 8 + width:]).all()


@pytest.mark.slow(seconds=4)
@pytest.mark.parametrize('dtype', ['float64', 'float32'])  # compiling matmul: 3-4 s on a Zen 3
def test_matmul_blocks_of_16_and_32_columns_give_the_bits_of_blocks_of_8(dtype):
    """`matmul` sums each out[r, j] in k order whatever its block: over 56 + 3 columns (where the lanes are float32,
    on a CPU with AVX-512 (matmul.WIDE_FLOAT32) eight rows by 32 columns, LLVM vectors of 16 lanes, then by 16 as
    8-lane tuples; with AVX2 six rows by 16, SIX_ROWS_FLOAT32; then 8, then 3 one at a time) and 13 rows (the last
    repeated), the bits of the same product taken 8 columns at a time, and the float64 product within float32's
    rounding; `a` row-major, as a weight in the forward, and transposed, as in the backward's w.T @ d, both through
    one compilation."""
    from numba import njit
    from microgpt.engines.fused.compile import slp_vectorizer
    from microgpt.engines.fused.matmul import matmul

    @njit
    def product(out, a, b, n_rows, n_cols, n_inner):
        matmul(out, a, b, n_rows, n_cols, n_inner)

    with slp_vectorizer():  # numba compiles at the first call, in here
        rng = np.random.default_rng(7)
        w, b = rng.standard_normal((13, 37)).astype(dtype), rng.standard_normal((37, 59)).astype(dtype)
        for a in (w, np.ascontiguousarray(w.T).T):  # the same values, C and F order
            whole, by_eight = np.zeros((13, 59), dtype), np.zeros((13, 59), dtype)
            product(whole, a, b, 13, 59, 37)
            for j in range(0, 59, 8):  # contiguous parts: one compiled signature per order of `a`
                part = np.zeros((13, 8), dtype)
                product(part, a, np.ascontiguousarray(b[:, j:j + 8]), 13, min(8, 59 - j), 37)
                by_eight[:, j:j + 8] = part[:, :min(8, 59 - j)]
            assert np.array_equal(whole, by_eight), a.flags
            np.testing.assert_allclose(whole, w.astype(np.float64) @ b, rtol=0,
                                       atol=1e-4 if dtype == 'float32' else 1e-12)
    # `a` row-major and transposed took one compilation (lanes.any_layout): its strides are read at run time
    compiled = [args for args in matmul.overloads if str(args[0].dtype) == dtype]
    assert len(compiled) == 1 and compiled[0][1].layout == 'A', compiled
