"""Flush-to-zero: the kernels run with subnormal floats read and written as 0.

A float below 2^-1022 (float64) or 2^-126 (float32) is subnormal, and an x86 core computes with one through a
microcode assist, up to a hundred times slower than with a normal float. Long runs make them: the Adam
moments of a row whose gradient is 0 (a position or a token the recent documents lack) decay by beta1 and
beta2 every step, m below 2^-1022 after ~4,000 such steps, and float32 attention weights of far-apart scores
land there too. On a 100,000-step run they made an Ice Lake's step 2.5x slower. With the CPU's MXCSR
flags FTZ (a subnormal result is 0) and DAZ (a subnormal input is 0) they cost nothing; results differ only
where a subnormal would have been, values 1e-308 (1e-38) away from zero.

MXCSR is per thread. `flush_to_zero()` sets both flags in the calling thread around the compiled calls of
FusedEngine (and restores them, even when a kernel raises), so that Python and NumPy never run with them;
parallel.py's `steps` sets them on each of its threads. numba's `fastmath` does not
set them: it only lets LLVM assume there are none. On CPUs other than x86-64 these are no-ops.
"""

import platform
from contextlib import contextmanager

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

FLUSH_TO_ZERO = 1 << 15       # MXCSR FTZ: a subnormal result is written as 0
DENORMALS_ARE_ZERO = 1 << 6   # MXCSR DAZ: a subnormal input is read as 0
X86_64 = platform.machine().lower() in ('x86_64', 'amd64')


def _mxcsr_function(builder, name):
    """LLVM's llvm.x86.sse.stmxcsr / ldmxcsr: store MXCSR to, or load it from, the 4 bytes at a pointer."""
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def read_mxcsr(typingctx):
    """The calling thread's MXCSR (0 on other CPUs)."""
    def codegen(context, builder, signature, args):
        if not X86_64:
            return ir.Constant(ir.IntType(64), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.call(_mxcsr_function(builder, 'llvm.x86.sse.stmxcsr'),
                     [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return builder.zext(builder.load(slot), ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def write_mxcsr(typingctx, value):
    """Set the calling thread's MXCSR to `value` (nothing on other CPUs)."""
    def codegen(context, builder, signature, args):
        if X86_64:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
            builder.call(_mxcsr_function(builder, 'llvm.x86.sse.ldmxcsr'),
                         [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()
    return types.none(types.int64), codegen


@njit(error_model='numpy', inline='always')
def start_flushing():
    """Set FTZ and DAZ in this thread; returns the MXCSR to restore with stop_flushing."""
    saved = read_mxcsr()
    write_mxcsr(saved | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO)
    return saved


@njit(error_model='numpy', inline='always')
def stop_flushing(saved):
    write_mxcsr(saved)


@njit(cache=True)
def start_flushing_here():
    """start_flushing, called from Python."""
    return start_flushing()


@njit(cache=True)
def stop_flushing_here(saved):
    stop_flushing(saved)


@contextmanager
def flush_to_zero():
    """Subnormal floats as 0 in this thread inside the block (FusedEngine's compiled calls)."""
    if not stop_flushing_here.overloads:  # compiled (or loaded) before the flags change: a Ctrl-C in its first
        stop_flushing_here.compile((types.int64,))  # compile, in the `finally`, left them set (found by a review)
    saved = start_flushing_here()
    try:
        yield
    finally:
        stop_flushing_here(saved)
