"""Peak of the fused kernels' arithmetic on one core: eight independent 8-lane multiply-add chains sharing one
row of operands, as the matrix product's 8 x 8 block runs them (lanes.axpy8: one fused multiply-add; until
2026-12-01, in float64 a multiplication and an addition), operands in L1; GFLOP/s counting the multiply and the
add. The yardstick of docs/PERFORMANCE.md's "How close to the machine's limit" (times the cores for the threaded
makemore size).

    python benchmarks/bench_peak.py

It stops with an error if the chains' machine code has no vector arithmetic: the figure would not be the kernels'
(twelve chains, as this script had until 2026-11-30, compiled to scalar code in float32 once its multiply-adds
were fused, and read 7.7 GFLOP/s on the 2-core AMD EPYC, where eight read 110).

Then the CPU's own peak, which the kernels' form may not reach: twelve independent multiply-add chains of 256-bit
vectors and, on a CPU with AVX-512, of 512-bit ones, in C (GCC's vector types, built with the system's `cc -O2
-march=native`; skipped, with a line saying so, where there is no C compiler). On the Ice Lake server of
2026-12-03, 88.7 GFLOP/s in float32 on 256-bit registers and 165.7 on 512-bit ones (a loop of intrinsics before it:
97 and 178): two 512-bit FMA units, where LLVM's model of that core (bench_cpu_models.py) has one.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np
from numba import njit

from microgpt.bench.benchmark import cpu_name
from microgpt.engines.fused.compile import slp_vectorizer
from microgpt.engines.fused.lanes import axpy8, fill8, load8, store8

CHAINS = 8


@njit
def chains(x, s, out, reps):
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = fill8(x.dtype.type(0))
    for _ in range(reps):
        for j in range(0, x.size, 8):
            v = load8(x, j)
            c0, c1, c2, c3 = axpy8(c0, s[0], v), axpy8(c1, s[1], v), axpy8(c2, s[2], v), axpy8(c3, s[3], v)
            c4, c5, c6, c7 = axpy8(c4, s[4], v), axpy8(c5, s[5], v), axpy8(c6, s[6], v), axpy8(c7, s[7], v)
    for i, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7)):
        store8(out[i], 0, c)


C_PEAK = r"""
#include <stdio.h>
#include <time.h>
#define CHAINS 12
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define PEAK(name, type, bytes, label)                                                                                 \
    static void name(void) {                                                                                      \
        typedef type vector __attribute__((vector_size(bytes)));                                                  \
        vector acc[CHAINS], x, y;                                                                                 \
        for (int i = 0; i < (int)(bytes / sizeof(type)); i++) { x[i] = (type)1.0000001; y[i] = (type)1e-7; }      \
        for (int c = 0; c < CHAINS; c++) acc[c] = x * (type)c;                                                    \
        long reps = 5000000;  double best = 1e9;                                                                  \
        for (int round = 0; round < 5; round++) {                                                                 \
            double start = now();                                                                                 \
            for (long r = 0; r < reps; r++) {                                                                     \
                _Pragma("GCC unroll 12") for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * x + y;               \
            }                                                                                                     \
            double t = now() - start; if (t < best) best = t;                                                     \
        }                                                                                                         \
        type sum = 0; for (int c = 0; c < CHAINS; c++) sum += acc[c][0];                                          \
        printf("%s %d-bit %.1f GFLOP/s on one core (checksum %g)\n", label,                                    \
               bytes * 8, reps * CHAINS * (bytes / sizeof(type)) * 2.0 / best / 1e9, (double)sum);                \
    }
PEAK(float256, float, 32, "float32")
PEAK(double256, double, 32, "float64")
#ifdef __AVX512F__
PEAK(float512, float, 64, "float32")
PEAK(double512, double, 64, "float64")
#endif
int main(void) {
    float256(); double256();
#ifdef __AVX512F__
    float512(); double512();
#else
    printf("no AVX-512: no 512-bit figures\n");
#endif
    return 0;
}
"""


def c_peak():
    """The CPU's multiply-add peak on one core by C's vectors (module docstring), as printed lines."""
    cc = shutil.which('cc') or shutil.which('gcc')
    if cc is None:
        return ['the CPU\'s peak in C: skipped, no C compiler (cc or gcc) on PATH']
    with tempfile.TemporaryDirectory() as folder:
        source, program = os.path.join(folder, 'peak.c'), os.path.join(folder, 'peak')
        with open(source, 'w') as file:
            file.write(C_PEAK)
        subprocess.run([cc, '-O2', '-march=native', '-o', program, source], check=True)
        lines = subprocess.run([program], check=True, capture_output=True, text=True).stdout.splitlines()
    return [f'the CPU\'s peak in C, {line}' for line in lines]


def main():
    print('CPU:', cpu_name())
    for dtype in (np.float32, np.float64):
        x, s = np.random.rand(256).astype(dtype) * 1e-3, np.random.rand(CHAINS).astype(dtype) * 1e-3
        out = np.zeros((CHAINS, 8), dtype)
        with slp_vectorizer():
            chains(x, s, out, 1)
        asm = chains.inspect_asm(chains.signatures[-1])
        if not re.search(r'\bv(fmadd\w*|mul)p[sd]\s.*%[yz]mm', asm):  # 256- or 512-bit, as the kernels'
            raise SystemExit(f"{np.dtype(dtype).name}: the chains compiled to scalar code, not the kernels' vectors")
        reps, best = 20000, float('inf')
        for _ in range(5):
            start = time.perf_counter()
            chains(x, s, out, reps)
            best = min(best, time.perf_counter() - start)
        flops = reps * (x.size // 8) * CHAINS * 8 * 2
        print(np.dtype(dtype).name, f'{flops / best / 1e9:.1f} GFLOP/s on one core')
    for line in c_peak():
        print(line)


if __name__ == '__main__':
    main()
