"""Peak of the fused kernels' arithmetic on one core: independent 8-lane multiply-add chains (acc + s * x, no FMA
contraction, as the kernels compile), operands in L1; GFLOP/s counting the multiply and the add. The yardstick of
docs/PERFORMANCE.md's "How close to the machine's limit" (times the cores for the threaded makemore size).

    python benchmarks/bench_peak.py
"""
import time

import numpy as np
from numba import njit
from microgpt.bench.benchmark import cpu_name
from microgpt.engines.fused.compile import slp_vectorizer
from microgpt.engines.fused.lanes import axpy8, load8, store8, fill8

def make():
    @njit
    def chains(x, s, out, reps):
        z = x.dtype.type(0)
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = fill8(z)
        for r in range(reps):
            for j in range(0, x.size, 8):
                v = load8(x, j)
                c0, c1, c2, c3 = axpy8(c0, s[0], v), axpy8(c1, s[1], v), axpy8(c2, s[2], v), axpy8(c3, s[3], v)
                c4, c5, c6, c7 = axpy8(c4, s[4], v), axpy8(c5, s[5], v), axpy8(c6, s[6], v), axpy8(c7, s[7], v)
                c8, c9, c10, c11 = axpy8(c8, s[8], v), axpy8(c9, s[9], v), axpy8(c10, s[10], v), axpy8(c11, s[11], v)
        for i, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11)):
            store8(out[i], 0, c)
    return chains
print('CPU:', cpu_name())
for dtype in (np.float32, np.float64):
    with slp_vectorizer():
        f = make()
        x = np.random.rand(256).astype(dtype) * 1e-3; s = np.random.rand(12).astype(dtype) * 1e-3; out = np.zeros((12, 8), dtype)
        f(x, s, out, 1)
    reps = 20000
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); f(x, s, out, reps); best = min(best, time.perf_counter() - t)
    flops = reps * (x.size // 8) * 12 * 8 * 2
    print(np.dtype(dtype).name, f'{flops / best / 1e9:.1f} GFLOP/s on one core')
