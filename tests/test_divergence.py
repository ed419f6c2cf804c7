"""Divergence, on every engine: a NaN, infinite or runaway loss is one line that says what is kept, and every
checkpoint written holds finite numbers."""

import json
import os
import re

import pytest

from helpers import run_cli_in_process as run, small_train as small, write_names


@pytest.fixture
def data(tmp_path):
    return write_names(tmp_path / 'names.txt')


def saved_steps(out):
    steps = {}
    for name in ('model.safetensors', 'resume.safetensors'):
        path = os.path.join(out, name)
        if os.path.exists(path):
            code, stdout, err = run('info', '--checkpoint', path)  # loading refuses non-finite weights
            assert code == 0, err
            steps[name] = int(stdout.splitlines()[1].split()[1])
    return steps


@pytest.mark.parametrize('engine, lr', [('reference', '1e30'), ('reference', '1e300'), ('numpy', '1e300'),
                                        ('numpy', '1e30'), ('fused', '1e30'), ('torch', '1e30')])
@pytest.mark.parametrize('save', ['no-out', 'out', 'save-every-1'])
def test_divergence_is_one_line_and_keeps_only_finite_states(data, tmp_path, engine, lr, save):
    """Also a loss that is still a finite number: --lr 1e30 on the array engines reached 1e92 and exited 0
    (the reference engine's log(0) made it NaN)."""
    out = str(tmp_path / 'run')
    extra = {'no-out': [], 'out': ['--out', out], 'save-every-1': ['--out', out, '--save-every', '1']}[save]
    code, stdout, err = run(*small(data, '--engine', engine, '--lr', lr, '--steps', '50'), *extra)
    err = ''.join(line for line in err.splitlines(True) if not line.startswith("microgpt: compiling"))
    assert code == 2 and err.startswith('microgpt: error: ') and err.count('\n') == 1, (code, err)
    assert 'diverged' in err and 'Traceback' not in err, err
    if save == 'no-out':
        assert 'checkpoint' not in err and 'keeps' not in err, err
        return
    kept = saved_steps(out)  # every checkpoint written holds finite numbers
    if kept:
        assert f"keeps step {kept['resume.safetensors']}, the last finite state" in err, (kept, err)
    else:
        assert f'this run saved no checkpoint in {out}' in err, err


@pytest.mark.parametrize('flags, advice', [
    ([], 'lower --lr or set --grad-clip'),
    (['--grad-clip', '1'], 'lower --lr'),
    (['--weight-decay', '1e10', '--lr', '1'], 'lower --lr or set --grad-clip or lower --weight-decay'),
])
def test_the_advice_names_only_what_the_run_has_not_tried(data, flags, advice):
    """'set --grad-clip' was advised to a run that clipped, and a huge --weight-decay went unnamed."""
    code, _, err = run(*small(data, '--lr', '1e30', '--steps', '50', *flags))
    assert code == 2 and err.endswith(f'training diverged; {advice}\n'), err


@pytest.mark.parametrize('engine', ['numpy', 'fused'])
def test_the_steps_before_the_diverged_one_are_printed_and_recorded(data, tmp_path, engine):
    """The steps of one engine call are reported together (the fused engine's 50 here): those before the step
    that diverged are printed and in metrics.jsonl, that step and the later ones in neither."""
    out = tmp_path / 'run'
    code, stdout, err = run(*small(data, '--engine', engine, '--lr', '1e30', '--steps', '50'), '--out', out)
    at = int(re.search(r'at step (\d+):', err).group(1))
    assert code == 2 and at > 1, err
    printed = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith('step')]
    recorded = [json.loads(line)['step'] for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert printed == recorded == list(range(1, at)), (printed, recorded, err)
