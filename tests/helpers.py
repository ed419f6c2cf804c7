"""Helpers shared by the tests: where the shared data lives, running the command line, random batches, comparing
engines' named arrays, loading weights into an engine through the engine contract, and editing checkpoints.

Test modules import from here (`from helpers import ...`), never from conftest or from another test module;
conftest holds only fixtures.
"""

import functools
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from microgpt.cli import main
from microgpt.engines import EngineState
from microgpt.train.checkpoint import safetensors_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / 'shared'
NAMES_PATH = SHARED / 'data' / 'names.txt'
GOLDEN_PATH = SHARED / 'golden' / 'microgpt_seed42_names.txt'

# thirty of names.txt's names, for small runs that need no shared file
NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail',
         'emily', 'ella', 'elizabeth', 'camila', 'luna', 'sofia', 'avery', 'mila', 'aria', 'scarlett',
         'penelope', 'layla', 'chloe', 'victoria', 'madison', 'eleanor', 'grace', 'nora', 'riley', 'zoey']


# ---- what the environment lacks: skipped on a developer's machine, failed in CI

def in_ci():
    return os.environ.get('CI', '').lower() not in ('', '0', 'false', 'no')


def missing(reason):
    """Skip the test for `reason`, or fail it when CI is set: CI can never pass by skipping."""
    if in_ci():
        pytest.fail(f"{reason}; CI must have it")
    pytest.skip(reason)


def require_file(path):
    """`path` as a string; skips the test if the file is missing (fails it in CI)."""
    if not Path(path).is_file():
        missing(f"{path} is missing (it lives in the shared folder next to the repository, not in it)")
    return str(path)


def require_tool(name):
    """Skips the test if the program `name` is not on PATH (fails it in CI)."""
    if shutil.which(name) is None:
        missing(f"no `{name}` on PATH")



# newlib's _sbrk wrapped (link with -Wl,--wrap=_sbrk): the heap a program took, on stderr at its exit
_COUNT_HEAP = r"""
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
void *__real__sbrk(ptrdiff_t increment);
static long heap_bytes;
void *__wrap__sbrk(ptrdiff_t increment) { heap_bytes += increment; return __real__sbrk(increment); }
static void report(void) { fprintf(stderr, "heap %ld\n", heap_bytes); }
__attribute__((constructor)) static void at_start(void) { atexit(report); }
"""


def newlib_heap_bytes(folder, source, *args):
    """(bytes of heap, stdout) of the C program `source` in `folder` run with ARGS: built with newlib for a
    32-bit ARM (Cortex-A7, semihosting) and run under qemu-arm, its _sbrk counted."""
    require_tool('arm-none-eabi-gcc')
    require_tool('qemu-arm')
    (Path(folder) / 'count_heap.c').write_text(_COUNT_HEAP)
    subprocess.run(['arm-none-eabi-gcc', '-std=c99', '-O2', '-mcpu=cortex-a7', '-marm', '--specs=rdimon.specs',
                    '-Wl,--wrap=_sbrk', '-o', 'heap.elf', source, 'count_heap.c', '-lm'], cwd=folder, check=True)
    proc = subprocess.run(['qemu-arm', 'heap.elf', *map(str, args)], cwd=folder, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr.startswith('heap '), proc
    return int(proc.stderr.split()[1]), proc.stdout

# ---- the command line

def run_cli_in_process(*args):
    """(exit_code, stdout, stderr) of `microgpt ARGS`, run through cli.main with string buffers."""
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_cli_subprocess(*args, timeout=600, env=None):
    """(exit_code, stdout_bytes, stderr_bytes) of `python -m microgpt ARGS` in a fresh interpreter.

    Standard streams are UTF-8 whatever the machine's locale, so non-ASCII samples compare exactly.
    """
    env = dict(os.environ if env is None else env, PYTHONIOENCODING='utf-8')
    proc = subprocess.run([sys.executable, '-m', 'microgpt', *[str(a) for a in args]],
                          capture_output=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, out, err, *fragments):
    """Exit status 2 and one line `microgpt: error: ...` on stderr holding every fragment, no traceback."""
    assert code == 2, (code, err)
    assert err.startswith('microgpt: error:') and err.count('\n') == 1, err
    assert 'Traceback' not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def write_names(path, repeats=2):
    """NAMES, each `repeats` times (duplicates, as in names.txt), one a line; returns the path as a string."""
    path.write_text('\n'.join(NAMES * repeats) + '\n', encoding='utf-8')
    return str(path)


def small_train(data, *extra):
    """The command line of a short `train` on `data` (20 steps, 2 samples), then `extra`."""
    return ['train', '--data', data, '--steps', '20', '--num-samples', '2', *extra]


# ---- engines

def random_batch(rng, cfg, batch_size, max_len):
    """Documents of random length (some longer than the block, some of one token: padding), wrapped in BOS."""
    bos = cfg.bos_id
    chars = [i for i in range(cfg.vocab_size) if i != bos]
    return [[bos] + [rng.choice(chars) for _ in range(rng.randrange(0, max_len))] + [bos]
            for _ in range(batch_size)]


def switches_id(switches):
    """A test id for a dict of ModelConfig switches: 'n_layer=2,norm=none,zero_init=attn_wo+mlp_fc2', or 'default'."""
    return ','.join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in switches.items()) or 'default'


def quick_loop(params, keep):
    """params, each one not in `keep` marked slow: the quick loop (-m 'not slow') runs `keep`, the full suite all.
    For parametrisations over many model switches, where a few cover the code and each more costs a C build
    (marked as taking a second, so that the full suite does not start them before its long tests)."""
    assert all(k in params for k in keep), keep
    return [p if p in keep else pytest.param(p, marks=pytest.mark.slow(seconds=1)) for p in params]


# The quick loop compiles the fused engine in float64 only: float32 is every entry point compiled again, 10 s or more
# of CPU on a cold cache (a new clone) for tests that take milliseconds once compiled. The full suite runs both.
QUICK_DTYPES = quick_loop(['float64', 'float32'], ['float64'])


def assert_named_arrays_close(got, want, rtol, atol, what):
    """Two name -> array dicts (weights or gradients) with the same names, equal within rtol/atol each."""
    assert want and list(got) == list(want), (what, list(got), list(want))  # nothing to compare is a failure
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name], np.float64), np.asarray(want[name], np.float64),
                                   rtol=rtol, atol=atol, err_msg=f'{what} of {name}')


def flat(named):
    """A name -> array dict, concatenated in its order: (P,) float64."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in named.values()])


def load_weights(engine, weights):
    """Put `weights` (name -> (rows, cols)) into `engine`, with fresh Adam state."""
    engine.load_state(EngineState(weights, None, None, 0))


# ---- checkpoints

def rewrite_checkpoint(path, change_meta=None, drop=None, change_tensor=None):
    """Write the checkpoint at `path` again with metadata entries changed, a tensor dropped or replaced, and its
    checksum recomputed: a file edited on purpose, which only the value checks can refuse."""
    with safe_open(str(path), framework='numpy') as f:
        meta = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys() if name != drop}
    meta.update(change_meta or {})
    tensors.update(change_tensor or {})
    Path(path).write_bytes(safetensors_bytes(tensors, meta))


def pack_columns(plan, docs, doc_starts, batch_first, first, stop):
    """The fused engine's plan.pack_columns, which only compiled code may call (lanes.Kernel), called from
    compiled code as the engine's entry points call it: on borrowed arrays."""
    return _compiled_pack_columns()(plan, docs, doc_starts, batch_first, first, stop)


@functools.lru_cache(maxsize=None)
def _compiled_pack_columns():
    from numba import njit

    from microgpt.engines.fused import plan
    from microgpt.engines.fused.lanes import borrowed

    @njit
    def call(plan_, docs, doc_starts, batch_first, first, stop):
        return plan.pack_columns(borrowed(plan_), borrowed(docs), borrowed(doc_starts), batch_first, first, stop)
    return call
