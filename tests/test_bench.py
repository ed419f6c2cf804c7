"""`microgpt bench`: one table of every engine, PyTorch included, with ratios to the reference engine."""

import pytest

from helpers import run_cli_in_process as run


@pytest.mark.slow  # times every engine, PyTorch's first call and the reference engine included
def test_bench_prints_every_engine_with_its_ratio(names_path, require_torch):
    code, out, err = run('bench', '--data', names_path, '--reference-steps', '2', '--steps', '30',
                         '--engines', 'numpy,torch,reference')
    assert code == 0, err
    assert out.startswith('CPU: '), out
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()[2:] if not line.startswith('wall')}
    assert set(rows) == {('reference', 'float64'), ('numpy', 'float64'), ('numpy', 'float32'),
                         ('torch', 'float64'), ('torch', 'float32')}, out
    for engine, dtype, steps, us_per_step, tokens_per_second, ratio in rows.values():
        assert int(steps) == (2 if engine == 'reference' else 30)
        assert float(us_per_step) > 0 and float(tokens_per_second) > 0 and float(ratio) > 0
    assert float(rows[('numpy', 'float64')][5]) > 10  # hand-derived gradients beat the scalar autograd
    assert 'wall time of `microgpt train --engine numpy`' in out


def test_bench_unknown_engine():
    code, out, err = run('bench', '--engines', 'numpy,tpu')
    assert code == 2 and err.startswith("microgpt: error: unknown engines ['tpu']"), err


def test_an_engine_named_twice_is_timed_once():
    from microgpt.bench.benchmark import BenchConfig
    assert BenchConfig(engines='numpy, fused,numpy').engine_names == ['numpy', 'fused']
