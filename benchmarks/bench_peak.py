"""Peak of the fused kernels' arithmetic on one core: eight independent 8-lane multiply-add chains sharing one
row of operands, as the matrix product's 8 x 8 block runs them (lanes.axpy8: one fused multiply-add; until
2026-12-01, in float64 a multiplication and an addition), operands in L1; GFLOP/s counting the multiply and the
add. The yardstick of docs/PERFORMANCE.md's "How close to the machine's limit" (times the cores for the threaded
makemore size).

    python benchmarks/bench_peak.py

It stops with an error if the chains' machine code has no vector arithmetic: the figure would not be the kernels'
(twelve chains, as this script had until 2026-11-30, compiled to scalar code in float32 once its multiply-adds
were fused, and read 7.7 GFLOP/s on the 2-core AMD EPYC, where eight read 110).
"""
import re
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


if __name__ == '__main__':
    main()
