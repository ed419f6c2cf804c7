"""Fixtures only (shared helpers live in helpers.py): the shared data files (read from `<repo>/../shared`, never
copied in), PyTorch, and two ways to run the command line: in-process through `microgpt.cli.main`, and as
`python -m microgpt`.

A missing shared file or a missing optional dependency skips the tests that need it on a developer's
machine, and fails them in CI (the environment variable CI is set), so CI can never pass by skipping.

Then the hooks that order the tests for `pytest -n 2`: the slowest first, handed out one at a time.
"""

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


def pytest_collection_modifyitems(items):
    """Slow tests first, longest first: `slow(seconds=N)` where a test takes far longer than the others."""
    def expected_seconds(item):
        slow = item.get_closest_marker('slow')
        return 0 if slow is None else slow.kwargs.get('seconds', 10)
    items.sort(key=expected_seconds, reverse=True)  # stable: otherwise in the order pytest collected them
