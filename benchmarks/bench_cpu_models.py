"""Why the fused engine loses more than the Python engines moving from one CPU to another: the machine code numba
makes of its hottest loops for each CPU, and LLVM's own model of that CPU's pipelines (llvm-mca) running it.

    python benchmarks/bench_cpu_models.py                       # icelake-server, znver4, znver5
    python benchmarks/bench_cpu_models.py --cpus skylake-avx512 znver3 --mca llvm-mca-19

For each CPU, a fresh process compiles, as numba would on a machine of that CPU (NUMBA_CPU_NAME), the inner loop of
the matrix product (`matmul`: the 8 x 8 register block; on CPUs with AVX2's 16 vector registers the 4 x 8 one in
float64 and the 6 x 16 one in float32, and in float32 on CPUs with AVX-512 the wide one: 8 x 32 where LLVM's model
of the CPU prefers 256-bit vectors (Intel's), 8 x 16 where it prefers 512 (Zen 4 and 5)) and
Adam's update (`adam_parameters`), in both dtypes. llvm-mca then runs each loop's machine code through the
scheduling model of that CPU and gives its cycles per iteration, so each row is work per clock cycle: a model, not
a measurement (it knows ports, latencies and the front end, not clock speeds, caches or frequency drops under
AVX-512). It needs LLVM's llvm-mca (Debian: `apt-get install llvm-19`; znver5 needs LLVM 19 or newer).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CPUS = ('icelake-server', 'znver4', 'znver5')
LOOPS = (  # what, its code (worker's file name), dtypes, the instructions that count its work, the unit of that
    # work, and the least of it an iteration of the whole inner loop does (a k-step: the block's rows x its lanes)
    ('matmul 8 x 8', 'matmul_narrow', ('float64', 'float32'), r'v(mul|fmadd\d*)p[sd]', 'multiply-adds', 64),
    ('matmul 4 x 8', 'matmul_four', ('float64',), r'v(mul|fmadd\d*)p[sd]', 'multiply-adds', 32),
    ('matmul 6 x 16', 'matmul_six', ('float32',), r'v(mul|fmadd\d*)p[sd]', 'multiply-adds', 96),
    ('matmul wide', 'matmul_wide', ('float32',), r'v(mul|fmadd\d*)p[sd]', 'multiply-adds', 128),
    ('adam', 'adam_narrow', ('float64', 'float32'), r'vsqrtp[sd]', 'parameters', 4),
)

WORKER = '''
import sys
from numba import njit, types
from microgpt.engines.fused import matmul as matmul_module
from microgpt.engines.fused.adam import adam_parameters
from microgpt.engines.fused.compile import slp_vectorizer

# each block compiled on its own, so that its file holds no other block's loop: float32's wide block (the
# overload gives it where matmul.WIDE_FLOAT32, set here as on an AVX-512 machine) in a process of its own
matmul_module.WIDE_FLOAT32 = sys.argv[2] == 'wide'


@njit(error_model='numpy')
def eight_rows(out, a, b, n):
    matmul_module.eight_rows(out, a, b, n, n, n)


@njit(error_model='numpy')
def four_rows(out, a, b, n):
    matmul_module.four_rows(out, a, b, n, n, n)


@njit(error_model='numpy')
def six_rows(out, a, b, n):
    matmul_module.six_rows(out, a, b, n, n, n)


@njit(error_model='numpy')
def wide_block(out, a, b, n, rows):  # rows an argument, as in eight_rows: not constants LLVM could fold
    matmul_module.wide_block_columns(out, a, b, n, n, rows)


@njit(error_model='numpy')
def adam(state, settings):
    adam_parameters(state, 0, state.shape[1], settings)


adams = [('adam_narrow', adam, 'float64'), ('adam_narrow', adam, 'float32')]
if sys.argv[2] == 'wide':
    jobs = [('matmul_wide', wide_block, 'float32')]
elif sys.argv[3] == '16':  # AVX2's 16 vector registers: float64's block of four rows, float32's of six by 16
    # columns (matmul.FOUR_ROWS_FLOAT64, SIX_ROWS_FLOAT32) and the 8 x 8 one for its columns past a multiple of 16
    jobs = [('matmul_four', four_rows, 'float64'), ('matmul_six', six_rows, 'float32'),
            ('matmul_narrow', eight_rows, 'float32')] + adams
else:
    jobs = [('matmul_narrow', eight_rows, 'float64'), ('matmul_narrow', eight_rows, 'float32')] + adams
with slp_vectorizer():
    for name, function, dtype in jobs:
        matrix = types.Array(getattr(types, dtype), 2, 'C')
        signature = ((matrix, types.UniTuple(types.float64, 8)) if function is adam
                     else (matrix, matrix, matrix, types.int64, types.UniTuple(types.int64, 8))
                     if function is wide_block else (matrix, matrix, matrix, types.int64))
        function.compile(signature)  # compiled, not run: this machine may lack the CPU's instructions
        with open(f'{sys.argv[1]}/{name}_{dtype}.s', 'w') as f:
            f.write(function.inspect_asm(signature))
'''

# the CPUs with AVX-512 F and VL (32 vector registers), on which numba's float32 matmul takes the wide block (8 x 32
# or 8 x 16) and float64's the 8 x 8 one (matmul.WIDE_FLOAT32, matmul.FOUR_ROWS_FLOAT64)
AVX512 = {'skylake-avx512', 'cascadelake', 'cooperlake', 'cannonlake', 'icelake-client', 'icelake-server',
          'tigerlake', 'rocketlake', 'sapphirerapids', 'emeraldrapids', 'graniterapids', 'graniterapids-d',
          'diamondrapids', 'x86-64-v4', 'znver4', 'znver5'}


def find_mca(requested):
    """The llvm-mca to use: `requested`, else the newest llvm-mca-N on PATH, else llvm-mca."""
    if requested:
        return requested
    versions = sorted((int(m.group(1)), name) for folder in os.environ.get('PATH', '').split(os.pathsep)
                      if os.path.isdir(folder) for name in os.listdir(folder)
                      for m in [re.fullmatch(r'llvm-mca-(\d+)', name)] if m)
    return versions[-1][1] if versions else 'llvm-mca'


def known_cpus(mca):
    out = subprocess.run([mca, '-mcpu=help'], capture_output=True, text=True, stdin=subprocess.DEVNULL)  # it reads
    # its assembly from stdin after the list: a terminal's would keep it waiting
    return set(re.findall(r'^\s+([\w-]+)\s+- Select', out.stdout + out.stderr, re.M))


def loops(asm):
    """(latch, body) of every loop: its latch is a basic block whose last instruction jumps back to its own label or
    an earlier one, its body the blocks from that label to the latch, in the order of the code (the loop's bounds
    checks, where LLVM put them in blocks of their own, with the arithmetic)."""
    blocks, label, body = [], None, []
    for line in asm.splitlines():
        start = re.match(r'^(\.LBB\w+):', line)
        if start:
            label, body = start.group(1), []
            blocks.append((label, body))
        elif label and line.startswith('\t') and not line.strip().startswith(('.', '#')):
            if body and body[-1].split()[0].startswith('j'):  # a block ends at its branch
                label = None
                continue
            body.append(line.split('#')[0].strip())
    index = {label: i for i, (label, _) in enumerate(blocks)}
    found = []
    for i, (label, latch) in enumerate(blocks):
        target = latch[-1].split()[-1] if latch and latch[-1].split()[0].startswith('j') else None
        if target in index and index[target] <= i:
            found.append((latch, [line for _, block in blocks[index[target]:i + 1] for line in block]))
    return found


def lanes(instruction, dtype):
    width = 512 if 'zmm' in instruction else 256 if 'ymm' in instruction else 128
    return width // (64 if dtype == 'float64' else 32)


def hot_loop(asm, work, dtype):
    """(work units, instructions) of the kernel's inner loop: the loop whose latch does the most work, of those the
    innermost (the fewest instructions); its work counted over its whole body."""
    def units(lines):
        return sum(lanes(line, dtype) for line in lines if re.match(work, line))

    found = loops(asm)
    if not found:
        return 0, []
    _, body = max(found, key=lambda loop: (units(loop[0]), -len(loop[1])))
    return units(body), body


def cycles(mca, cpu, body):
    """llvm-mca's cycles per iteration of the loop `body` (its branch left out) on `cpu`."""
    with tempfile.NamedTemporaryFile('w', suffix='.s', delete=False) as f:
        f.write('\n'.join(body[:-1]) + '\n')
    try:
        proc = subprocess.run([mca, f'-mcpu={cpu}', '-iterations=1000', f.name], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
    finally:
        os.remove(f.name)
    if proc.returncode:
        raise SystemExit(f"{mca} failed on the {cpu} loop:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    return int(re.search(r'Total Cycles:\s*(\d+)', out).group(1)) / 1000


def compile_for(cpu, folder):
    """Writes the loops' machine code for `cpu` into folder: the 8 x 8 block (on a CPU without AVX-512, the 4 x 8
    one in float64 and the 6 x 16 one too in float32) and Adam, and on a CPU with AVX-512 the float32 wide block
    (numba compiles each kernel once per process: one process each)."""
    # no features named: LLVM's own for that CPU (numba would otherwise add this machine's)
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES='', NUMBA_CACHE_DIR=os.path.join(folder, 'cache'))
    for block in ('narrow', 'wide') if cpu in AVX512 else ('narrow',):
        registers = '32' if cpu in AVX512 else '16'
        proc = subprocess.run([sys.executable, '-c', WORKER, folder, block, registers], env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"compiling for {cpu} failed:\n{proc.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cpus', nargs='+', default=list(CPUS), help='LLVM CPU names (default: %(default)s)')
    parser.add_argument('--mca', help='the llvm-mca to run (default: the newest llvm-mca-N on PATH)')
    args = parser.parse_args()
    mca = find_mca(args.mca)
    if not shutil.which(mca):
        parser.error(f"{mca} not found: install LLVM's llvm-mca (Debian: apt-get install llvm-19), or give --mca")
    unknown = [cpu for cpu in args.cpus if cpu not in known_cpus(mca)]
    if unknown:
        parser.error(f"{mca} knows no CPU named {', '.join(unknown)} (its names: {mca} -mcpu=help); for a CPU newer "
                     f"than its LLVM, give a newer llvm-mca with --mca")
    version = subprocess.run([mca, '--version'], capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
    print(f"{mca} ({re.search(r'version ([0-9.]+)', version).group(1)}); work per clock cycle of each loop, as "
          f"numba compiles it for that CPU, in LLVM's model of the CPU; the last column against the first CPU with "
          f"that loop")
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for cpu in dict.fromkeys(args.cpus):  # each once
            folder = os.path.join(root, cpu)
            os.makedirs(folder)
            compile_for(cpu, folder)
            for what, code, dtypes, work, unit, least in LOOPS:
                for dtype in dtypes:
                    path = os.path.join(folder, f'{code}_{dtype}.s')
                    if not os.path.exists(path):  # a block this CPU does not compile
                        continue
                    with open(path) as f:
                        units, body = hot_loop(f.read(), work, dtype)
                    if units < least:  # none, or not the inner loop: its figure would not be the block's
                        raise SystemExit(f"no vectorized {what} loop in the {dtype} code for {cpu}")
                    registers = '/'.join(sorted({r for line in body for r in re.findall(r'[xyz]mm', line)}))
                    rows.setdefault((what, dtype, unit), []).append(
                        (cpu, registers, len(body), units, units / cycles(mca, cpu, body)))
    print(f"{'loop':<14} {'dtype':<8} {'cpu':<16} {'registers':<10} {'instructions':>12} {'work':>5} "
          f"{'a cycle':>8} {'ratio':>6}")
    for (what, dtype, unit), cpus in rows.items():
        first = cpus[0][4]
        for cpu, registers, instructions, units, per_cycle in cpus:
            print(f"{what:<14} {dtype:<8} {cpu:<16} {registers:<10} {instructions:>12} {units:>5} "
                  f"{per_cycle:>8.2f} {per_cycle / first:>6.2f}   {unit} a cycle")


if __name__ == '__main__':
    main()
