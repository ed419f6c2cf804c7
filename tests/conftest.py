"""Fixtures only (shared helpers live in helpers.py): the shared data files (read from `<repo>/../shared`, never
copied in), PyTorch, and two ways to run the command line: in-process through `microgpt.cli.main`, and as
`python -m microgpt`.

A missing shared file or a missing optional dependency skips the tests that need it on a developer's
machine, and fails them in CI (the environment variable CI is set), so CI can never pass by skipping.
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
