"""Eight lanes: tuples of 8 floats, one per column of a feature-major activation, for the fused kernels.

Each helper puts eight scalar chains side by side in the calling kernel, where LLVM's SLP vectorizer makes one
SIMD register of them. That needs the lanes' loads before their stores (they are, in a tuple) and 8 consecutive
addresses. The loads, stores and arithmetic (add8, mul8, div8, max8, the multiply-adds; layers.py's masks
likewise) are numba intrinsics that write their LLVM instructions straight into the caller (`_lane_pointers`: the
lanes are j + 0 .. j + 7 of one array, with no slice and no negative-index fix-up). The few others (exp8, axpy16,
store16) are small compiled functions that LLVM inlines: each such function costs numba about 0.05-0.1 s to
compile, and inlining them in numba's IR instead (inline='always') gave the same speed for 6 s more.
"""

import math
import operator
from types import MethodType

import numpy as np
from llvmlite import binding as ll, ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.core.registry import CPUDispatcher, cpu_target
from numba.extending import intrinsic, lower_builtin, type_callable
from numba.np.arrayobj import populate_array

LANES = 8


class Kernel(CPUDispatcher):
    """A compiled function that only other compiled functions call, so it needs no machine code of its own: numba
    links a callee's optimised LLVM module into each caller and compiles the caller's whole module to machine
    code anyway.

    numba gives every compiled function a wrapper for calls from Python, and emits each function's machine code
    as soon as it is compiled. Compiling those wrappers was a sixth of a cold start (the default job's kernels:
    18.7-18.8 s of CPU with them, 15.2-15.9 s without, alternating), and emitting the kernels' machine code, never
    run, another 1.5-2 s (12.3 s against 10.3 s, the same machine code in the entry point, the same bits). A call
    from Python would jump to code that does not exist, so it is refused here.

    Kernels count no references (`kernel`): every array passed to one must be `borrowed` (the entry points borrow
    all of theirs), or a view of a borrowed array. An njit function of your own that calls a kernel borrows its
    arrays too: given an array that counts, a kernel that returns it (transpose) or a view of it (the plan's
    accessors) leaves its count off by one, and the array is freed too early or never."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__name__} is called from compiled code only (an entry point of gpt.py or "
                        f"parallel.py, or an njit function of your own, on borrowed arrays: lanes.borrowed)")

    def get_call_template(self, args, kws):
        """Compiles the kernel for its arguments' plain types (int64, bool). numba types a constant argument as its
        value (Literal[int](0), Literal[bool](True)) and would compile a kernel once per value it is called with: a
        buffer's index, a flag, a dropout site. Where LLVM inlines the kernel into its caller (the small ones, the
        norms), it still sees the constants; one it keeps as a function of its own (dropout_columns) takes them at
        run time. The arrays at `layout_free` positions are compiled for any layout (`any_layout`)."""
        args = tuple(types.unliteral(kind).copy(layout='A') if i in self.layout_free else types.unliteral(kind)
                     for i, kind in enumerate(args))
        return super().get_call_template(args, {name: types.unliteral(kind) for name, kind in kws.items()})

    layout_free = frozenset()  # positions of the array arguments compiled for any layout (`any_layout`)


def any_layout(*positions):
    """A kernel decorator: the arrays at these positions are compiled as numba's 'A' layout (strides read at run
    time) whether the caller's is row-major or transposed, so that numba compiles the kernel once for both. For
    `matmul`'s `a`, a weight in the forward and its transpose (w.T, column-major) in the backward, whose elements
    the blocks broadcast one at a time: the strides only change how their addresses step."""
    def mark(kernel):
        kernel.layout_free = frozenset(positions)
        return kernel
    return mark


def _finalize_for_linking(library):
    """numba's CPUCodeLibrary._finalize_final_module without adding the module to the JIT engine, which would
    emit its machine code: the module stays ready to be linked into callers."""
    library._finalize_dynamic_globals()
    library._verify_declare_only_symbols()
    library._finalized = True


def _left_to_the_caller(library):
    """A composite kernel's module is not optimised on its own (see `composite`)."""


def _finalize_composite(library):
    """numba's finalize of a composite kernel's library, which links its callees' modules into its own, after
    keeping its own code apart (microgpt_own_module), ready to link: an entry point links that and the callees
    itself (`_finalize_entry`). Other callers (an njit function of your own) link the whole module, as numba does."""
    library.microgpt_own_module = _ready_to_link(library._final_module.clone())
    type(library).finalize(library)


def _ready_to_link(module):
    """A module's functions as numba's CPUCodeLibrary._get_module_for_linking makes them (linkonce_odr: each
    caller's copy may be inlined and dropped)."""
    for function in module.functions:
        if not function.is_declaration and function.linkage == ll.Linkage.external:
            function.linkage = 'linkonce_odr'
    return module


# instructions: a kernel whose module (its callees' code included) has fewer may be inlined into a composite, and is
# linked into the entry point before its optimisation (`_finalize_entry`). In the entry points' optimised modules (the
# default job and batches of 2+, both dtypes, 2026-12-03), LLVM had inlined the kernels of up to 150 instructions
# (clip_gradients) and adam_step (float32, 200-odd), and kept every other one of 190 or more (dropout_columns) a call.
INLINED_BELOW = 180


def _size(library):
    """The instructions in the module a library gives its callers (computed once)."""
    if not hasattr(library, 'microgpt_size'):
        library.microgpt_size = sum(1 for function in library._get_module_for_linking().functions
                                    for block in function.blocks for _ in block.instructions)
    return library.microgpt_size


def _entry_links(library):
    """(before, after): the modules an entry point links before its module's optimisation and after it. Before: the
    composites' own code and whatever they and the entry point call that is not a kernel of INLINED_BELOW
    instructions or more; after: those kernels, optimised in their own modules already."""
    before, after, seen = [], [], set()

    def visit(caller):
        for callee in caller._linking_libraries:
            if callee in seen:
                continue
            seen.add(callee)
            if hasattr(callee, 'microgpt_own_module'):
                before.append((callee, callee.microgpt_own_module))
                visit(callee)
            elif getattr(callee, 'microgpt_kernel', False) and _size(callee) >= INLINED_BELOW:
                after.append((callee, callee._get_module_for_linking()))
            else:
                before.append((callee, callee._get_module_for_linking()))
    visit(library)
    return before, after


def _finalize_entry(library):
    """numba's CPUCodeLibrary.finalize for an entry point, whose module links every kernel in: its LLVM optimisation
    (O3) runs over the entry point's own code, the composites' and the small kernels' only. The other kernels, each
    optimised in its own module, are linked after it: LLVM kept them calls anyway, and optimising each again, as
    numba's finalize would, took 1.1 s of the default job's train_steps O3 (1.57 s against 0.47 s; a Zen 3,
    2026-12-03) and changed no call but one (float32's adam_step, called once a step). Compiling the default job took
    9.8 s against 11.5 in-process, the makemore preset 12.2 against 13.9 (float64) and 11.6-14.1 against 14.4-15.9
    (float32), with the same bits and the same speed (docs/PERFORMANCE.md, 2026-12-04)."""
    from numba.core.compiler_lock import require_global_compiler_lock
    require_global_compiler_lock()
    library._codegen._check_llvm_bugs()
    library._raise_if_finalized()
    before, after = _entry_links(library)
    for links, optimise in ((before, library._optimize_final_module), (after, lambda: None)):
        for callee, module in links:
            library._reload_init.update(callee._reload_init)
            library._final_module.link_in(module, preserve=True)
        optimise()
    library._final_module.verify()
    library._finalize_final_module()


_COMPOSITES = set()  # the code objects of the composite kernels


def _pipelines():
    """(kernels', entry points') pipelines: numba's nopython pipeline with one pass more before the lowering, which
    creates the function's code library (which the lowering would create). A kernel's is finalised for linking only,
    an entry point's by `_finalize_entry`. numba's compiler is not public API: where its pieces are missing, both
    get numba's own pipeline (kernels get machine code, and entry points optimise every kernel again)."""
    try:
        from numba.core.compiler import CompilerBase, DefaultPassBuilder
        from numba.core.compiler_machinery import LoweringPass, register_pass
        from numba.core.typed_passes import AnnotateTypes
        from numba.core.codegen import CPUCodeLibrary
        needed = ('_finalize_final_module', '_finalize_dynamic_globals', '_verify_declare_only_symbols',
                  'enable_object_caching', '_optimize_final_module', '_get_module_for_linking', '_raise_if_finalized')
        probe = cpu_target.target_context.codegen().create_library('microgpt_probe')
        if not (all(hasattr(CPUCodeLibrary, name) for name in needed)
                and all(hasattr(probe, name) for name in ('_linking_libraries', '_reload_init', '_final_module'))
                and hasattr(probe._codegen, '_check_llvm_bugs')):
            return None, None
    except ImportError:
        return None, None

    def library_pass(name, make_ready):
        @register_pass(mutates_CFG=False, analysis_only=True)  # it leaves numba's IR as it is
        class Library(LoweringPass):  # a lowering pass: the IR holds numba's `del`s by now
            _name = name

            def __init__(self):
                LoweringPass.__init__(self)

            def run_pass(self, state):
                state.library = state.targetctx.codegen().create_library(state.func_id.func_qualname)
                state.library.enable_object_caching()
                make_ready(state.library, state.func_id.func)
                return False  # the IR did not change

        class Compiler(CompilerBase):
            def define_pipelines(self):
                pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
                pipeline.add_pass_after(Library, AnnotateTypes)
                pipeline.finalize()
                return [pipeline]

        return Compiler

    def kernel_library(library, func):
        library._finalize_final_module = MethodType(_finalize_for_linking, library)
        library.microgpt_kernel = True
        if func.__code__ in _COMPOSITES:
            library._optimize_final_module = MethodType(_left_to_the_caller, library)
            library.finalize = MethodType(_finalize_composite, library)

    def entry_library(library, func):
        library.finalize = MethodType(_finalize_entry, library)

    return (library_pass('microgpt_library_for_linking', kernel_library),
            library_pass('microgpt_entry_library', entry_library))


def _set_env_once_emitted(codegen):
    """numba sets a compiled function's environment (a global of its module) right after emitting it; a kernel's
    module is not emitted, so its environment is set when a module that links it in is (numba would write it
    through a null pointer, and a kernel that raises with values or prints needs it)."""
    set_env, waiting = codegen.set_env, {}

    def set_env_if_emitted(env_name, env):
        waiting[env_name] = env
        for name, value in list(waiting.items()):
            if codegen._engine.get_global_value_address(name):
                set_env(name, value)
                del waiting[name]

    codegen.set_env = set_env_if_emitted


_KERNEL_PIPELINE, _ENTRY_PIPELINE = _pipelines()
if _KERNEL_PIPELINE is not None:
    _codegen = cpu_target.target_context.codegen()
    if hasattr(_codegen, 'set_env') and hasattr(getattr(_codegen, '_engine', None), 'get_global_value_address'):
        _set_env_once_emitted(_codegen)
    else:
        _KERNEL_PIPELINE = _ENTRY_PIPELINE = None


# numpy's error model: no ZeroDivisionError branches. _nrt=False: no reference counts (`kernel`)
_KERNEL_OPTIONS = dict(nopython=True, error_model='numpy', no_cpython_wrapper=True, no_cfunc_wrapper=True, _nrt=False)
# an overload's implementation compiled as a kernel is: for numba's `overload(..., jit_options=OVERLOAD_OPTIONS)`
OVERLOAD_OPTIONS = dict(_KERNEL_OPTIONS, **({} if _KERNEL_PIPELINE is None else {'pipeline_class': _KERNEL_PIPELINE}))
# the entry points' (gpt.py's, parallel.py's): numba's disk cache, numpy's error model, `_finalize_entry`
ENTRY_OPTIONS = dict(cache=True, error_model='numpy',
                     **({} if _ENTRY_PIPELINE is None else {'pipeline_class': _ENTRY_PIPELINE}))


def kernel(func, options=_KERNEL_OPTIONS):
    """The kernels' decorator: a Kernel of `func`, compiled without numba's reference counting.

    Every array a kernel sees is an entry point's argument, `borrowed`, or a view of one: its caller keeps it alive
    for the whole call, and its views have no memory record to count on. numba would still call NRT_incref and
    NRT_decref for each view a kernel takes or passes on (a buffer's rows, a layer's weights), and those calls
    returned at once: 231 call sites in the default job's train_steps, 57 without them, a step 1.072x faster in
    float64 and 1.073x in float32 (Zen 5, bench_cli_step.py). Without reference counts numba refuses a kernel that
    makes an array (np.empty) or returns a view as its one result, but not one that returns a view in a tuple or an
    array it was passed: `counting` is for the few that make one or return views. The rule that keeps the counts
    right is Kernel's: kernels take borrowed arrays only."""
    if _KERNEL_PIPELINE is None:
        return Kernel(py_func=func, locals={}, targetoptions=options)
    return Kernel(py_func=func, locals={}, targetoptions=options, pipeline_class=_KERNEL_PIPELINE)


def counting(func):
    """A kernel that counts references, as numba requires of one that returns a view of an array it was passed (the
    plan's accessors: a buffer of the workspace, a layer's weights), makes an array (parallel.py's _check_batches,
    whose caller, an entry point, frees it) or raises an exception with values. On a borrowed array the counts do
    nothing; the kernels that call one never drop them, so its arrays must be borrowed (Kernel) or they leak."""
    return kernel(func, dict(_KERNEL_OPTIONS, _nrt=True))


def composite(func):
    """A kernel made of calls to other kernels (gpt_forward, gpt_backward, the small steps around them). numba
    optimises each library's module (LLVM's O3 pipeline, twice over) once its callees are linked in, and the
    caller's module again with it linked in: the entry point's O3 does everything the composite's own would, and
    more, as it inlines across the composites (`_finalize_entry`). Left to it, compiling the default job took
    8.75 s of CPU against 10.35-10.62 (float64; float32 9.2-9.3 against 10.8-10.9; the makemore preset 10.1 against
    11.7), with the same bits and the same speed (default step 16.1-16.2 us against 16.2-16.4; makemore size
    76,000-76,400 tokens/s against 74,600-75,100), one process each, alternating, on the 2-core AMD EPYC. The
    composite's functions still get LLVM's function passes as numba adds them. Kernels that compute (the layers,
    the 8-lane helpers) keep their own O3: with it at O1, steps took 1.7x as long."""
    _COMPOSITES.add(func.__code__)
    return kernel(func)


lanes = kernel
# copied into the caller's numba IR and typed there at each call (the 8 x 8 matrix block, the group steps)
inlined = njit(error_model='numpy', inline='always')


# The memory and multiply-add helpers as intrinsics (2026-12-03, an Ice Lake server): where they were kernels of a
# slice (row[j:j + 8], then r[0] .. r[7]), LLVM vectorized the step differently; written as the loads and stores of
# elements j .. j + 7, the makemore size in float32 ran 1.04-1.17x as fast (bench_fused.py --old, three runs) and
# point 3a's ratio to PyTorch was 4.21-4.81x (median 4.70x) against 3.79-4.42x (4.20x) in seven alternating runs
# each (docs/PERFORMANCE.md), with the same bits. A type they do not take is numba's typing error, as for `madd`.
# The arithmetic ones that were still kernels (max8, div8, dot8, layers.py's _rsqrt8, _mask8, _positive8, _weights8)
# became intrinsics later that day, the same instructions in the same order, to save their compilation: with
# `as_rows` the default job compiled about a second sooner (alternating in-process compilations, 0.5-2.2 s in five
# pairs of six), and the makemore step ran as before (bench_interleaved.py: 0.993x and 1.002x in float32, 1.004x in
# float64). dot8 (attention's key and value gradients, a sum across the lanes) then gave way to layers._keys_gradient.


def _is_row(row, j):
    """Whether row is a 1-D array of numbers and j an integer."""
    return (isinstance(row, types.Array) and row.ndim == 1 and isinstance(row.dtype, types.Number)
            and isinstance(j, types.Integer))


def _lane_pointers(context, builder, row_type, row, j_type, j, count):
    """The addresses of row[j], row[j + 1] .. row[j + count - 1] (unchecked, as the kernels index)."""
    array = context.make_array(row_type)(context, builder, row)
    j = context.cast(builder, j, j_type, types.intp)
    return [cgutils.get_item_pointer(context, builder, row_type, array, [builder.add(j, ir.Constant(j.type, k))])
            for k in range(count)]


def _store_lanes(context, builder, row_type, row, j_type, j, tuple_types, tuples):
    """Stores the lanes of `tuples` (8-lane tuples) at row[j], row[j + 1] .., each cast to the row's type."""
    pointers = iter(_lane_pointers(context, builder, row_type, row, j_type, j, LANES * len(tuples)))
    for kind, value in zip(tuple_types, tuples):
        for lane in range(LANES):
            builder.store(context.cast(builder, builder.extract_value(value, lane), kind.dtype, row_type.dtype),
                          next(pointers))


@intrinsic
def load8(typingctx, row, j):
    """row[j:j + 8] as a tuple."""
    if not _is_row(row, j):
        return None
    lanes_type = types.UniTuple(row.dtype, LANES)

    def codegen(context, builder, signature, args):
        values = [builder.load(p) for p in _lane_pointers(context, builder, row, args[0], j, args[1], LANES)]
        return context.make_tuple(builder, lanes_type, values)
    return lanes_type(row, j), codegen


@intrinsic
def column8(typingctx, matrix, r, c):
    """matrix[r:r + 8, c], 8 elements down a column, as a tuple (unchecked, as load8)."""
    if not (isinstance(matrix, types.Array) and matrix.ndim == 2 and isinstance(matrix.dtype, types.Number)
            and isinstance(r, types.Integer) and isinstance(c, types.Integer)):
        return None
    lanes_type = types.UniTuple(matrix.dtype, LANES)

    def codegen(context, builder, signature, args):
        array = context.make_array(matrix)(context, builder, args[0])
        r_, c_ = context.cast(builder, args[1], r, types.intp), context.cast(builder, args[2], c, types.intp)
        values = [builder.load(cgutils.get_item_pointer(context, builder, matrix, array,
                                                        [builder.add(r_, ir.Constant(r_.type, k)), c_]))
                  for k in range(LANES)]
        return context.make_tuple(builder, lanes_type, values)
    return lanes_type(matrix, r, c), codegen


@intrinsic
def store8(typingctx, row, j, x):
    """row[j:j + 8] = x, an 8-lane tuple."""
    if not (_is_row(row, j) and isinstance(x, types.UniTuple) and x.count == LANES):
        return None

    def codegen(context, builder, signature, args):
        _store_lanes(context, builder, row, args[0], j, args[1], [x], [args[2]])
        return context.get_dummy_value()
    return types.none(row, j, x), codegen


@intrinsic
def fill8(typingctx, s):
    """(s, s, s, s, s, s, s, s)."""
    if not isinstance(s, types.Number):
        return None
    lanes_type = types.UniTuple(s, LANES)

    def codegen(context, builder, signature, args):
        return context.make_tuple(builder, lanes_type, [args[0]] * LANES)
    return lanes_type(s), codegen


def _fmuladd(builder, a, b, acc):
    """acc + a b as LLVM's fmuladd (`madd`)."""
    fmuladd = builder.module.declare_intrinsic('llvm.fmuladd', [acc.type], ir.FunctionType(acc.type, [acc.type] * 3))
    return builder.call(fmuladd, [a, b, acc])


def _is_lanes(*kinds):
    """Whether these are one type of 8-lane float tuple."""
    return (isinstance(kinds[0], types.UniTuple) and kinds[0].count == LANES and isinstance(kinds[0].dtype, types.Float)
            and all(kind == kinds[0] for kind in kinds))


def lane_by_lane(context, builder, signature, args, combine):
    """The 8-lane tuple of signature's return type whose lane k is combine(k, ...), given lane k of each tuple
    argument and each other argument as it is: the codegen of the lane-by-lane intrinsics."""
    lanes_ = [combine(k, *(builder.extract_value(value, k) if isinstance(kind, types.UniTuple) else value
                           for kind, value in zip(signature.args, args))) for k in range(LANES)]
    return context.make_tuple(builder, signature.return_type, lanes_)


@intrinsic
def axpy8(typingctx, acc, s, x):
    """acc + s x, s a scalar of the lanes' type."""
    if not (_is_lanes(acc, x) and s == acc.dtype):
        return None

    def codegen(context, builder, signature, args):
        return lane_by_lane(context, builder, signature, args, lambda k, a, s_, b: _fmuladd(builder, s_, b, a))
    return acc(acc, s, x), codegen


@lanes
def axpy16(acc, s, x):
    """axpy8 over 16 lanes held as two 8-lane tuples."""
    return axpy8(acc[0], s, x[0]), axpy8(acc[1], s, x[1])


@lanes
def store16(row, j, x):
    """16 lanes held as two 8-lane tuples, stored as two groups of 8 (each a 256-bit register)."""
    store8(row, j, x[0])
    store8(row, j + LANES, x[1])


@intrinsic
def load16_at_once(typingctx, row, j):
    """row[j:j + 16] as two 8-lane tuples, loaded together: LLVM sees 16 consecutive addresses and makes them one
    512-bit register where the CPU prefers those (a Zen 5; as two load8 it saw two groups of 8). For AVX-512 blocks
    only: on AVX2, LLVM split the 16 lanes into pairs again with more moves than two load8 (the makemore size 0.92x)."""
    if not _is_row(row, j):
        return None
    half = types.UniTuple(row.dtype, LANES)
    both = types.Tuple((half, half))

    def codegen(context, builder, signature, args):
        values = [builder.load(p) for p in _lane_pointers(context, builder, row, args[0], j, args[1], 2 * LANES)]
        return context.make_tuple(builder, both, [context.make_tuple(builder, half, values[:LANES]),
                                                  context.make_tuple(builder, half, values[LANES:])])
    return both(row, j), codegen


@intrinsic
def store16_at_once(typingctx, row, j, x):
    """load16_at_once's converse: x, two 8-lane tuples, stored together at row[j:j + 16]."""
    if not (_is_row(row, j) and isinstance(x, types.BaseTuple) and len(x) == 2
            and all(isinstance(half, types.UniTuple) and half.count == LANES for half in x.types)):
        return None

    def codegen(context, builder, signature, args):
        halves = [builder.extract_value(args[2], 0), builder.extract_value(args[2], 1)]
        _store_lanes(context, builder, row, args[0], j, args[1], list(x.types), halves)
        return context.get_dummy_value()
    return types.none(row, j, x), codegen


def _has_32_vector_registers():
    """Whether the CPU numba compiles for has AVX-512's 32 vector registers for 256-bit operations (AVX-512F and VL;
    AVX2 has 16): matmul.py's blocks of rows and columns are sized for them. numba compiles for this machine's CPU
    unless NUMBA_CPU_NAME names another (then: no) or NUMBA_CPU_FEATURES lists the features (then: those)."""
    from llvmlite import binding
    from numba.core import config
    if config.CPU_NAME not in (None, 'host'):
        return False
    if config.CPU_FEATURES is not None:
        return {'+avx512f', '+avx512vl'} <= set(config.CPU_FEATURES.split(','))
    features = binding.get_host_cpu_features()
    return bool(features.get('avx512f', False) and features.get('avx512vl', False))


# counted as 256-bit registers: 16 on other CPUs too (ARM's 32 NEON registers are 128-bit: the room of 16)
VECTOR_REGISTERS = 32 if _has_32_vector_registers() else 16


def _cpu_name():
    """The LLVM name of the CPU numba compiles for: NUMBA_CPU_NAME's, or this machine's."""
    from llvmlite import binding
    from numba.core import config
    return binding.get_host_cpu_name() if config.CPU_NAME in (None, 'host') else config.CPU_NAME


# LLVM's models of Intel's AVX-512 cores prefer 256-bit vectors (their tuning "prefer-256-bit"), so that its SLP
# vectorizer keeps a row's 16 float32 lanes in two 256-bit registers there, though an Ice Lake server core has two
# 512-bit FMA units; its models of AMD's Zen 4 and 5 prefer 512 (matmul.wide_block_columns)
PREFERS_256_BIT_VECTORS = not _cpu_name().startswith('znver')


@intrinsic
def mac8(typingctx, acc, a, b):
    """acc + a b, lane by lane."""
    if not _is_lanes(acc, a, b):
        return None

    def codegen(context, builder, signature, args):
        return lane_by_lane(context, builder, signature, args, lambda k, c, x, y: _fmuladd(builder, x, y, c))
    return acc(acc, a, b), codegen


@intrinsic
def madd(typingctx, acc, a, b):
    """acc + a b, all of one float type, as LLVM's fmuladd: one fused multiply-add, rounded once, where the CPU has
    the instruction (without it, a multiplication then an addition, each rounded: not a libm call). float64 fused
    too since 2026-12-01: its products had kept the reference's two roundings, which an Intel core pays for with two
    of its two FMA ports' slots (docs/PERFORMANCE.md, "Zen and Ice Lake"); the results move at rounding level and
    the default job still prints microgpt.py's output byte for byte (test_golden.py)."""
    if not (isinstance(acc, types.Float) and acc == a == b):
        return None  # a typing error: the lanes' helpers take operands of the lanes' own type

    def codegen(context, builder, signature, args):
        acc_, a_, b_ = args
        return _fmuladd(builder, a_, b_, acc_)
    return acc(acc, a, b), codegen


def _lane_by_lane(name, instruction):
    """An intrinsic of two 8-lane tuples of one float type: LLVM's `instruction` (fadd, fmul, fdiv) of each pair of
    lanes."""
    def typer(typingctx, a, b):
        if not _is_lanes(a, b):
            return None

        def codegen(context, builder, signature, args):
            return lane_by_lane(context, builder, signature, args, lambda k, x, y: getattr(builder, instruction)(x, y))
        return a(a, b), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


add8 = _lane_by_lane('add8', 'fadd')  # a + b, lane by lane


def _of_two(name, comparison):
    """An intrinsic of two numbers that Python's min (comparison operator.lt) or max (operator.gt) is: b where
    `comparison`(b, a), else a, in their common type, with numba's own comparison. numba compiles its min and max as
    functions of their own, one per pair of types: 0.1-0.2 s of a cold start for a handful of calls."""
    def typer(typingctx, a, b):
        if not (isinstance(a, types.Number) and isinstance(b, types.Number)):
            return None
        kind = typingctx.unify_types(types.unliteral(a), types.unliteral(b))

        def codegen(context, builder, signature, args):
            x, y = (context.cast(builder, value, given, kind) for value, given in zip(args, signature.args))
            b_comes_first = context.get_function(comparison, types.boolean(kind, kind))(builder, (y, x))
            return builder.select(b_comes_first, y, x)
        return kind(a, b), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


min2 = _of_two('min2', operator.lt)  # min(a, b)
max2 = _of_two('max2', operator.gt)  # max(a, b)


@intrinsic
def max8(typingctx, a, b):
    """max(a, b), lane by lane, as Python's max: b where b > a, else a (so a where either is NaN)."""
    if not _is_lanes(a, b):
        return None

    def codegen(context, builder, signature, args):
        return lane_by_lane(context, builder, signature, args,
                            lambda k, x, y: builder.select(builder.fcmp_ordered('>', y, x), y, x))
    return a(a, b), codegen


mul8 = _lane_by_lane('mul8', 'fmul')  # a b, lane by lane
div8 = _lane_by_lane('div8', 'fdiv')  # a / b, lane by lane


@lanes
def exp8(x, peak):
    """e^(x - peak), lane by lane, in x's float type (computed in float64)."""
    return (cast_like(exp_nonpositive(x[0] - peak[0]), x[0]), cast_like(exp_nonpositive(x[1] - peak[1]), x[1]),
            cast_like(exp_nonpositive(x[2] - peak[2]), x[2]), cast_like(exp_nonpositive(x[3] - peak[3]), x[3]),
            cast_like(exp_nonpositive(x[4] - peak[4]), x[4]), cast_like(exp_nonpositive(x[5] - peak[5]), x[5]),
            cast_like(exp_nonpositive(x[6] - peak[6]), x[6]), cast_like(exp_nonpositive(x[7] - peak[7]), x[7]))


@intrinsic
def cast_like(typingctx, value, example):
    """`value` converted to the float type of `example` (a no-op where they are the same)."""
    if not isinstance(example, types.Float):
        return None  # a typing error: the kernels cast to a float type only

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.return_type)
    return example(value, example), codegen


@intrinsic
def borrowed(typingctx, array):
    """`array` as a view without its memory record, for an entry point's arguments only: their Python caller holds
    them for the whole call, so the views taken of them inside (a buffer's rows, a layer's weights, a transpose)
    need no reference count. numba counts the references of every view it makes, each count an atomic add on the
    record (on a Zen 5 the default job's step was 11.9 us with non-atomic counts against 13.2, and 1.16x faster
    borrowed). A view of a borrowed array has no record either: the counting calls in the entry point fold away, and
    the kernels it calls count nothing (`kernel`). Never borrow an array made inside compiled code (np.empty, a
    copy): nothing would keep it alive. No entry point returns or keeps a borrowed view."""
    if not isinstance(array, types.Array):
        return None  # a typing error: only arrays are borrowed

    def codegen(context, builder, signature, args):
        view = context.make_array(array)(context, builder, value=args[0])
        view.meminfo = context.get_constant_null(types.MemInfoPointer(array.dtype))
        view.parent = context.get_constant_null(types.pyobject)
        return view._getvalue()
    return array(array), codegen


def as_rows(array, n_cols):
    """A C-contiguous array's elements as a (size // n_cols, n_cols) matrix, a view: `array.reshape((size // n_cols,
    n_cols))` for sizes n_cols divides (unchecked in compiled code). numba's reshape compiles a helper and calls a C
    function to check the strides at each call; compiled code gets this view directly (`_type_as_rows`), and the
    default job's kernels compiled in 0.2 s less. n_cols of 0 raises ZeroDivisionError, and in Python an array that
    is not C-contiguous raises TypeError (numba refuses to compile it)."""
    if not array.flags.c_contiguous:
        raise TypeError("as_rows takes a C-contiguous array (its rows are a view)")
    return array.reshape((array.size // n_cols, n_cols))


@type_callable(as_rows)
def _type_as_rows(context):
    def typer(array, n_cols):
        if isinstance(array, types.Array) and array.layout == 'C' and isinstance(n_cols, types.Integer):
            return array.copy(ndim=2)
        return None  # a typing error: a matrix view of a contiguous array only
    return typer


@lower_builtin(as_rows, types.Array, types.Integer)
def _lower_as_rows(context, builder, signature, args):
    array, n_cols = signature.args
    source = context.make_array(array)(context, builder, value=args[0])
    cols = context.cast(builder, args[1], n_cols, types.intp)
    with builder.if_then(cgutils.is_null(builder, cols), likely=False):  # the division would kill the process
        context.call_conv.return_user_exc(builder, ZeroDivisionError, ("as_rows: n_cols is 0",))
    view = context.make_array(signature.return_type)(context, builder)
    populate_array(view, data=source.data, shape=[builder.sdiv(source.nitems, cols), cols],
                   strides=[builder.mul(cols, source.itemsize), source.itemsize], itemsize=source.itemsize,
                   meminfo=source.meminfo, parent=source.parent)
    return impl_ret_borrowed(context, builder, signature.return_type, view._getvalue())


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 `bits`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@lanes
def exp_nonpositive(x):
    """e^x for x <= 0, within an ulp of libm's exp, with neither a branch nor a call, so that it vectorizes.

    e^x = 2^k e^r with k = round(x / ln 2) and r = x - k ln 2 (ln 2 in fdlibm's two parts, so k ln2_hi is
    exact), |r| <= ln 2 / 2; e^r is its Taylor series to r^13 (truncation error < 2e-17). Below 2^-1022: 0.
    """
    x = max2(x, -746.0)
    k = math.floor(x * 1.4426950408889634 + 0.5)
    r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    p = ((((((1 / 6227020800 * r + 1 / 479001600) * r + 1 / 39916800) * r + 1 / 3628800) * r + 1 / 362880) * r
          + 1 / 40320) * r + 1 / 5040) * r + 1 / 720
    p = (((((p * r + 1 / 120) * r + 1 / 24) * r + 1 / 6) * r + 1 / 2) * r + 1) * r + 1
    return p * _bits_to_float((max2(np.int64(k), -1023) + 1023) << 52)  # 2^k; the bits of 0.0 below 2^-1022
