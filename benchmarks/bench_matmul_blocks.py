"""The matrix product's row blocks side by side on this CPU: eight rows by 8 columns (`matmul.eight_rows`, what a
CPU with AVX-512's 32 vector registers compiles; there, in float32, with its first columns 16 at a time) against
what AVX2's 16 get: four rows by 8 columns in float64 (`matmul.four_rows`), six rows by 16 columns in float32
(`matmul.six_rows`, and eight rows for the 8 columns past the last multiple of 16), at the default job's shapes and
the makemore size's. Both blocks of a dtype are compiled in one process and timed in turns, each turn in the other
order, so that they see the same machine; each row is the best of --rounds turns.

    python benchmarks/bench_matmul_blocks.py [--rounds 7]

A float64 block of eight rows holds 16 accumulators in 256-bit registers (two a lane tuple), plus its operands:
more than AVX2's 16 registers, so they spill to memory, and each step of k waits on a store and a reload. Four
rows hold 8. In float32 eight rows by 8 columns load 9 values a step of k for 8 multiply-adds; six rows by 16
columns load 8 for 12, in 12 accumulators, 2 operands and a broadcast. It prints which blocks this CPU's `matmul`
takes, and checks that both give the same bits.
"""

import argparse
import time

import numpy as np
from numba import njit

from microgpt.bench.benchmark import cpu_name
from microgpt.engines.fused import matmul as matmul_module
from microgpt.engines.fused.compile import slp_vectorizer
from microgpt.engines.fused.lanes import VECTOR_REGISTERS

# (rows, inner, columns): out = a (rows, inner) @ b (inner, columns). The default job's forward products on one
# document of up to 8 positions (qkv, attn_wo, mlp_fc1, mlp_fc2, lm_head), its qkv on one of 9 to 16, a weight
# gradient (16 columns, n_embd, whatever the document), then the makemore size's forward and weight-gradient
# products on a batch of about 232 positions
SHAPES = ((48, 16, 8), (16, 16, 8), (64, 16, 8), (16, 64, 8), (27, 16, 8), (48, 16, 16), (64, 8, 16),
          (192, 64, 232), (64, 232, 64))


@njit(error_model='numpy')
def eight_rows(out, a, b, reps):
    for _ in range(reps):
        matmul_module.eight_rows(out, a, b, out.shape[0], out.shape[1], a.shape[1])


@njit(error_model='numpy')
def four_rows(out, a, b, reps):
    for _ in range(reps):
        matmul_module.four_rows(out, a, b, out.shape[0], out.shape[1], a.shape[1])


@njit(error_model='numpy')
def six_rows(out, a, b, reps):
    for _ in range(reps):
        matmul_module.six_rows(out, a, b, out.shape[0], out.shape[1], a.shape[1])


AVX2_BLOCKS = {'float64': (four_rows, 'four rows'), 'float32': (six_rows, 'six rows')}


def nanoseconds(function, out, a, b, reps):
    """One timing of `reps` products, per product."""
    start = time.perf_counter()
    function(out, a, b, reps)
    return (time.perf_counter() - start) / reps * 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=7, help='turns of each block per shape (default: %(default)s)')
    parser.add_argument('--work', type=float, default=2e6,
                        help='multiply-adds a timing, over repeats of the product (default: %(default)s)')
    args = parser.parse_args()
    if args.rounds < 1 or args.work < 1:
        parser.error("--rounds and --work must be at least 1")
    takes = {'float64': 'four rows' if matmul_module.FOUR_ROWS_FLOAT64 else 'eight rows',
             'float32': 'six rows' if matmul_module.SIX_ROWS_FLOAT32 else 'eight rows'}
    print(f"CPU: {cpu_name()}, {VECTOR_REGISTERS} vector registers; its matmul takes {takes['float64']} in float64, "
          f"{takes['float32']} in float32; nanoseconds a product, best of {args.rounds} turns")
    print(f"{'dtype':<8} {'rows x inner x columns':>22} {'eight rows':>11} {'AVX2 block':>19} {'eight / AVX2':>13}")
    rng = np.random.default_rng(0)
    for dtype in ('float64', 'float32'):
        avx2_block, name = AVX2_BLOCKS[dtype]
        for rows, inner, columns in SHAPES:
            a = rng.standard_normal((rows, inner)).astype(dtype)
            b = rng.standard_normal((inner, columns)).astype(dtype)
            by_eight, by_avx2 = np.zeros((rows, columns), dtype), np.zeros((rows, columns), dtype)
            with slp_vectorizer():  # numba compiles at the first call, in here
                eight_rows(by_eight, a, b, 1)
                avx2_block(by_avx2, a, b, 1)
            if not np.array_equal(by_eight, by_avx2):
                raise SystemExit(f"the blocks differ at {dtype} {rows} x {inner} x {columns}")
            reps = max(1, int(args.work / (rows * inner * columns)))
            best = {eight_rows: float('inf'), avx2_block: float('inf')}
            for turn in range(args.rounds):
                for function in (eight_rows, avx2_block) if turn % 2 == 0 else (avx2_block, eight_rows):
                    best[function] = min(best[function], nanoseconds(function, by_eight, a, b, reps))
            print(f"{dtype:<8} {f'{rows} x {inner} x {columns}':>22} {best[eight_rows]:>11,.0f} "
                  f"{f'{name} {best[avx2_block]:,.0f}':>19} {best[eight_rows] / best[avx2_block]:>12.2f}x")


if __name__ == '__main__':
    main()
