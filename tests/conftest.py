"""Fixtures only (shared helpers live in helpers.py): the shared data files (read from `<repo>/../shared`, never
copied in), PyTorch, and two ways to run the command line: in-process through `microgpt.cli.main`, and as
`python -m microgpt`.

A missing shared file or a missing optional dependency skips the tests that need it on a developer's
machine, and fails them in CI (the environment variable CI is set), so CI can never pass by skipping.

Then the hooks for `pytest -n 2`: the fused engine's kernels compiled once before the workers start, and the tests
ordered, the slowest first, handed out one at a time.
"""

import subprocess
import sys

import pytest

from helpers import GOLDEN_PATH, NAMES_PATH, missing, require_file, run_cli_in_process, run_cli_subprocess


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
    if getattr(config.option, 'numprocesses', None) and not hasattr(config, 'workerinput'):
        compile_fused_kernels()


# the fused engine's float64 entry points (every run of the suite calls them), in two halves of about the same
# compile time: one process compiles each, so that the two cores compile at once
FUSED_ENTRY_POINTS = ('gpt.train_steps gpt.adam_update', 'parallel.steps parallel.forward')


def compile_fused_kernels():
    """In the controller of `pytest -n`, before it starts the workers. Each worker compiles the fused kernels its
    tests call, unless numba's disk cache holds them (compiled once per process: its first fused test waits for
    them), so in a new clone both workers compiled the same kernels at once: the quick loop took 59 s, its
    warm runs 41. Here they are compiled into the cache once, on both cores; with the cache warm, each process
    only loads them (about a second of start-up)."""
    code = ('import sys; from microgpt.engines.fused import compile, gpt, parallel\n'
            'for name in sys.argv[1].split(): compile.compiled(eval(name), "float64")')
    processes = [subprocess.Popen([sys.executable, '-c', code, names]) for names in FUSED_ENTRY_POINTS]
    for process in processes:  # a failure shows again in the tests that call the kernel
        process.wait()


def pytest_collection_modifyitems(items):
    """Slow tests first, longest first: `slow(seconds=N)` where a test takes far longer than the others."""
    def expected_seconds(item):
        slow = item.get_closest_marker('slow')
        return 0 if slow is None else slow.kwargs.get('seconds', 10)
    items.sort(key=expected_seconds, reverse=True)  # stable: otherwise in the order pytest collected them
