"""Shared fixtures: the shared data files (read from `<repo>/../shared`, never copied in), and two ways
to run the command line: in-process through `microgpt.cli.main`, and as `python -m microgpt`.

A missing shared file or a missing optional dependency skips the tests that need it on a developer's
machine, and fails them in CI (the environment variable CI is set), so CI can never pass by skipping.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt.cli import main

sys.path.insert(0, os.path.dirname(__file__))  # tests import torch_gpt, the PyTorch oracle

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / 'shared'
NAMES_PATH = SHARED / 'data' / 'names.txt'
GOLDEN_PATH = SHARED / 'golden' / 'microgpt_seed42_names.txt'


def in_ci():
    return bool(os.environ.get('CI'))


def require_file(path):
    """`path` as a string; skips the test if the file is missing (fails it in CI)."""
    if not path.is_file():
        reason = f"{path} is missing (it lives in the shared folder next to the repository, not in it)"
        if in_ci():
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return str(path)


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
        if in_ci():
            pytest.fail("torch is required in CI (pip install torch)")
        pytest.skip("torch is not installed")
    return torch


def run_cli_in_process(*args):
    """(exit_code, stdout, stderr) of `microgpt ARGS`, run through cli.main with string buffers."""
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_cli_subprocess(*args, timeout=600):
    """(exit_code, stdout_bytes, stderr_bytes) of `python -m microgpt ARGS` in a fresh interpreter.

    Standard streams are UTF-8 whatever the machine's locale, so non-ASCII samples compare exactly.
    """
    env = dict(os.environ, PYTHONIOENCODING='utf-8')
    proc = subprocess.run([sys.executable, '-m', 'microgpt', *[str(a) for a in args]],
                          capture_output=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def run_cli():
    return run_cli_in_process


@pytest.fixture
def run_cli_process():
    return run_cli_subprocess
