"""Fixtures only (shared helpers live in helpers.py): the shared data files (read from `<repo>/../shared`, never
copied in), PyTorch, and two ways to run the command line: in-process through `microgpt.cli.main`, and as
`python -m microgpt`.

A missing shared file or a missing optional dependency skips the tests that need it on a developer's
machine, and fails them in CI (the environment variable CI is set), so CI can never pass by skipping.

Then the hooks for `pytest -n 2`: the fused engine's kernels compiled once, on both cores, as the workers start, and
the tests ordered, the slowest first, handed out one at a time.
"""

import os
import signal
import subprocess
import sys

# Bytecode caches even where PYTHONDONTWRITEBYTECODE is set, as on our development machines: without them every
# worker rewrites the asserts of every test module again, and every `python -m microgpt` a test starts compiles the
# package from source (5 s of the quick loop's 55 on 2 cores). They go to __pycache__, which git ignores.
sys.dont_write_bytecode = False

import pytest

from helpers import GOLDEN_PATH, NAMES_PATH, missing, require_file, run_cli_in_process, run_cli_subprocess

# A suite started with SIGINT ignored (under nohup, or as `command &` from a script: the shell ignores it in background
# jobs) would pass that on to every process a test starts, and the Ctrl-C tests would fail on a signal never
# delivered. Python's own handler instead, which a started process gets back as the default: they test microgpt, not
# how the suite was started.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# trio (selenium's) registers a Hypothesis plugin that imports the whole of trio wherever hypothesis is imported,
# which pytest's Hypothesis plugin does at the end of every process: 0.3 s each, for strategies no test uses
os.environ.setdefault('HYPOTHESIS_NO_PLUGINS', '1')


@pytest.fixture
def names_path():
    return require_file(NAMES_PATH)


@pytest.fixture
def golden_path():
    return require_file(GOLDEN_PATH)


@pytest.fixture
def require_torch():
    """The torch module; skipped if it is not installed (failed in CI)."""
    try:
        import torch
    except ImportError:
        missing("torch is not installed (pip install torch)")
    return torch


@pytest.fixture
def run_cli():
    return run_cli_in_process


@pytest.fixture
def run_cli_process():
    return run_cli_subprocess


# ---- the order tests run in, so that `pytest -n 2` ends when its longest test does

def pytest_configure(config):
    """pytest-xdist hands each worker tests in chunks of a quarter of its share, taken in collection order, so
    a slow test at the end of a chunk starts late. With chunks of one (xdist still keeps two queued per worker),
    the next tests go to whichever worker is free: with the slowest first (pytest_collection_modifyitems), the
    longest starts at once and the rest fill in around it."""
    if getattr(config.option, 'maxschedchunk', False) is None:  # the option exists (xdist) and was not given
        config.option.maxschedchunk = 1
    if getattr(config.option, 'numprocesses', None) and not hasattr(config, 'workerinput') \
            and not config.option.collectonly:
        start_compiling_fused_kernels()


_compilers = []  # the processes start_compiling_fused_kernels started


def start_compiling_fused_kernels():
    """In the controller of `pytest -n`, as it starts the workers: two processes compile the fused engine's float64
    entry points into numba's disk cache, a training run's on one document and on batches of 2+ (about the same
    compile time each), so that the two cores compile at once. A worker compiles the kernels its first fused test
    calls, and waits for another process compiling the same entry point (compile.py's lock files), then loads it;
    the two workers' first fused tests came at about the same time, so one compiled while the other waited, and
    the quick loop took 59 s in a new clone (41 s warm). Once cached, each process only looks at the cache's index
    (loading the kernels it holds took 1.4 s of CPU a process, in every run of the suite)."""
    code = ('import sys\n'
            'from microgpt.engines.fused.compile import compiled, run_entry_points, kernels_are_cached\n'
            'batch_size, evaluates = int(sys.argv[1]), sys.argv[2] == "evaluates"\n'
            'if not kernels_are_cached("float64", batch_size, evaluates):\n'
            '    for kernel in run_entry_points(batch_size, evaluates):\n'
            '        compiled(kernel, "float64")')
    for batch_size, evaluates in (('1', 'evaluates'), ('2', 'trains only')):
        _compilers.append(subprocess.Popen([sys.executable, '-c', code, batch_size, evaluates]))


def pytest_unconfigure(config):
    for process in _compilers:
        if process.wait() != 0:  # the tests that call the kernel fail on their own, with the error
            print(f"conftest.py: compiling the fused kernels ahead of the workers failed (exit status "
                  f"{process.returncode}); each worker compiled its own", file=sys.stderr)


def pytest_collection_modifyitems(items):
    """Slow tests first, longest first: `slow(seconds=N)` where a test takes far longer than the others."""
    def expected_seconds(item):
        slow = item.get_closest_marker('slow')
        return 0 if slow is None else slow.kwargs.get('seconds', 10)
    items.sort(key=expected_seconds, reverse=True)  # stable: otherwise in the order pytest collected them
