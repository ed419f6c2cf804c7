"""Every script in benchmarks/ runs, with the smallest arguments it takes, and prints its table: a benchmark
that no longer runs against the code it measures is found here, not by the next person who needs its figures.

bench_scaling.py has its own tests (test_bench_scaling.py), and torch_throughput.py and gpu.sh theirs in
test_torch_engine.py. The figures themselves are not checked: they are timings of this machine at this moment.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, require_tool

BENCHMARKS = REPO_ROOT / 'benchmarks'
NUMBER = r'[0-9][0-9,]*(?:\.[0-9]+)?'


def bench(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)
    assert proc.returncode == 0, (script, args, proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow(seconds=2)
def test_bench_numpy_compares_a_tree_with_itself_bit_for_bit():
    out = bench('bench_numpy.py', '--old', REPO_ROOT / 'src', '--rounds', 2, '--repeats', 1, '--steps', 5)
    assert '2 rounds (a new pair of processes each) of 1 alternating runs of each' in out, out
    # wall clock and CPU time, each over all runs and per round (a pair of processes)
    assert len(re.findall(rf'new / old: median {NUMBER}, best {NUMBER}; per round {NUMBER} \(median\), {NUMBER} to '
                          rf'{NUMBER}', out)) == 2, out
    assert 'losses and final weights: bit-identical' in out, out


@pytest.mark.slow(seconds=2)
def test_bench_numpy_times_whole_train_commands():
    out = bench('bench_numpy.py', '--cli', '--old', REPO_ROOT / 'src', '--repeats', 1, '--steps', 5)
    assert '`python -m microgpt train --steps 5 --engine numpy`' in out, out
    assert len(re.findall(rf'new / old: median {NUMBER}, best {NUMBER}', out)) == 2, out


@pytest.mark.slow(seconds=3)
def test_bench_numpy_compares_the_fused_engine_and_refuses_a_folder_without_the_package(tmp_path):
    """--engine fused, the installed package against itself (its kernels compiled for the suite); a folder with no
    package is refused, as it would compare the installed package with itself."""
    import microgpt
    package_parent = Path(microgpt.__file__).parent.parent
    out = bench('bench_numpy.py', '--engine', 'fused', '--old', package_parent, '--new', package_parent, '--rounds', 1,
                '--repeats', 1, '--steps', 5)
    assert 'fused engine, float64, batch 1, 5 steps' in out and 'losses and final weights: bit-identical' in out, out
    refused = subprocess.run([sys.executable, BENCHMARKS / 'bench_numpy.py', '--old', tmp_path], capture_output=True,
                             text=True, cwd=REPO_ROOT)
    assert refused.returncode == 2 and 'holds no microgpt package' in refused.stderr, refused.stderr


@pytest.mark.slow(seconds=30)
def test_bench_fused_profiles_the_default_step_and_times_the_default_job(names_path):
    out = bench('bench_fused.py', '--only', 'profile', '--repeats', 1, '--data', names_path)
    assert re.search(rf'compiled steps \(loss, grads, Adam\), n in one call +{NUMBER} us', out), out
    assert len(re.findall(rf' {NUMBER} us$', out, re.M)) == 6, out
    out = bench('bench_fused.py', '--only', 'default', '--repeats', 1, '--data', names_path)
    for row in ('numpy  (training.train)', 'fused  (training.train)', 'fused  (train_steps)'):
        assert re.search(rf'{re.escape(row)} +{NUMBER} +{NUMBER}', out), (row, out)


@pytest.mark.slow(seconds=25)
def test_bench_fused_times_the_makemore_size(names_path):
    out = bench('bench_fused.py', '--only', 'makemore', '--no-torch', '--repeats', 1, '--makemore-steps', 2,
                '--data', names_path)
    for row in ('numpy float64', 'fused float64', 'fused float32', 'fused float32 dropout 0.1'):
        assert re.search(rf'{row} +{NUMBER} +{NUMBER}', out), (row, out)


@pytest.mark.slow(seconds=3)
def test_bench_fused_compares_two_source_trees_taking_turns(names_path, tmp_path):
    """--old and --new: the package the suite imports against itself (installed, as in CI, its kernels compiled
    for the suite), the smallest run; a ratio of medians for each dtype. A folder holding no package is refused:
    it would compare the installed package with itself."""
    import microgpt
    package_parent = Path(microgpt.__file__).parent.parent
    out = bench('bench_fused.py', '--old', package_parent, '--new', package_parent, '--rounds', 1, '--threads', 1,
                '--repeats', 1, '--makemore-steps', 2, '--dtypes', 'float64', '--data', names_path)
    assert re.search(rf'float64 +{NUMBER} +{NUMBER} +{NUMBER} +\({NUMBER}/{NUMBER}\)', out), out
    refused = subprocess.run([sys.executable, BENCHMARKS / 'bench_fused.py', '--old', tmp_path], capture_output=True,
                             text=True, cwd=REPO_ROOT)
    assert refused.returncode == 2 and 'holds no microgpt package' in refused.stderr, refused.stderr


@pytest.mark.slow(seconds=30)  # two copies of the package: each compiles, unless its copy of numba's cache holds it
def test_bench_interleaved_times_two_copies_of_a_tree_in_one_process(names_path, tmp_path):
    """--old and --new: the package the suite imports against itself, both imported into one process under names of
    their own, the smallest run; each dtype's step times and the median ratio of the rounds with its middle half. A
    folder holding no package, and rounds or steps below 1, are refused."""
    import microgpt
    package_parent = Path(microgpt.__file__).parent.parent
    out = bench('bench_interleaved.py', '--old', package_parent, '--new', package_parent, '--rounds', 2, '--steps', 1,
                '--dtypes', 'float64', '--threads', 2, '--data', names_path)
    assert 'in one process, 2 rounds of 1 steps each, taking turns; NUMBA_NUM_THREADS 2' in out, out
    assert re.search(rf'float64 +{NUMBER} +{NUMBER} +{NUMBER} +\({NUMBER}-{NUMBER}\)', out), out
    for bad, message in (([tmp_path], 'holds no microgpt package'),
                         ([package_parent, '--rounds', 0], 'take 1 or more'),
                         ([package_parent, '--threads', 0], 'take 1 or more')):
        refused = subprocess.run([sys.executable, BENCHMARKS / 'bench_interleaved.py', '--old', *map(str, bad)],
                                 capture_output=True, text=True, cwd=REPO_ROOT)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


@pytest.mark.slow(seconds=3)
def test_bench_cli_step_times_the_default_step_through_the_command_in_two_trees(tmp_path):
    """The default job's step through `microgpt train` in each tree, the long run's time less the 1,000-step run's;
    the smallest run, the installed package against itself. Arguments that measure nothing, and a folder holding no
    package, are refused."""
    import microgpt
    package_parent = Path(microgpt.__file__).parent.parent
    out = bench('bench_cli_step.py', '--old', package_parent, '--new', package_parent, '--rounds', 1, '--repeats', 1,
                '--steps', 11000)
    for clock in ('wall time', 'CPU time'):
        assert re.search(rf'{clock}: old {NUMBER} us a step, new {NUMBER} \(medians\); old / new {NUMBER} +'
                         rf'\({NUMBER}/{NUMBER}\)$', out, re.M), out
    assert "`microgpt train --engine fused --dtype float64`" in out, out  # the default job's dtype unless --dtype
    # 100,000 steps of about 1 us against 1,000: 11,000 were as long as the runs' noise on a loaded machine (CI's two
    # workers), and the difference came out below 0 there
    python_only = bench('bench_cli_step.py', '--old', package_parent, '--new', package_parent, '--rounds', 1,
                        '--repeats', 1, '--steps', 101000, '--python-only')
    assert "float64` (its Python only: the engine's train_steps does nothing)" in python_only, python_only
    old, new = map(float, re.search(rf'old (-?{NUMBER}) us a step, new (-?{NUMBER})', python_only).groups())
    assert 0 < old < 8 and 0 < new < 8, python_only  # no compiled step in it: a few us, not the step's 14-40
    for flags in (['--old', package_parent, '--steps', '1000'], ['--old', package_parent, '--repeats', '0'],
                  ['--old', package_parent, '--rounds', '0'], ['--old', tmp_path],
                  ['--old', package_parent, '--dtype', 'float16']):
        refused = subprocess.run([sys.executable, BENCHMARKS / 'bench_cli_step.py', *flags], capture_output=True,
                                 text=True, cwd=REPO_ROOT)
        assert refused.returncode == 2 and 'error:' in refused.stderr, (flags, refused.stderr)


def test_bench_cli_step_passes_its_dtype_to_each_tree_and_to_the_command(monkeypatch):
    """--dtype reaches each tree's process (its command line) and there `microgpt train` (its argv), without running
    either: subprocess.run and cli.main are stood in for."""
    import runpy
    import types
    import microgpt.cli
    script = runpy.run_path(str(BENCHMARKS / 'bench_cli_step.py'))  # its functions, not run as __main__
    package_parent = str(Path(microgpt.cli.__file__).parent.parent)
    commands, argvs = [], []
    monkeypatch.setattr(subprocess, 'run', lambda command, **_: commands.append(command) or
                        types.SimpleNamespace(returncode=0, stdout='10.0 9.5\n', stderr=''))
    monkeypatch.setattr(sys, 'argv', ['bench_cli_step.py', '--old', package_parent, '--rounds', '1', '--dtype',
                                      'float32'])
    script['main']()
    assert len(commands) == 2 and all(command[command.index('--dtype') + 1] == 'float32' for command in commands)
    monkeypatch.setattr(microgpt.cli, 'main', lambda argv, out, err: argvs.append(argv))
    script['step_microseconds'](1001, 1, 'float32')
    assert argvs and all(argv[argv.index('--dtype') + 1] == 'float32' for argv in argvs), argvs


@pytest.mark.slow(seconds=2)  # four processes that stop at once
def test_bench_cold_start_runs_another_tree_before_this_one_and_gives_the_ratio(monkeypatch, tmp_path, capsys):
    """--old: each job's cold and warm runs of the other tree (its src on PYTHONPATH) come first, then this tree's,
    and a line divides the cold wall times; a folder holding no package is refused. The processes are stood in for
    (cold runs of 40 and 10 s)."""
    import runpy
    script = runpy.run_path(str(BENCHMARKS / 'bench_cold_start.py'))
    runs, results = [], iter([(40.0, 1.0, True), (2.0, 1.0, False), (10.0, 1.0, True), (1.0, 1.0, False)])
    monkeypatch.setitem(script['main'].__globals__, 'timed_run',  # (wall s, CPU s, said that it compiles)
                        lambda argv, cache_dir, src: runs.append((src, argv)) or next(results))
    old_src = str(REPO_ROOT / 'src')  # any folder holding the package
    monkeypatch.setattr(sys, 'argv', ['bench_cold_start.py', '--old', old_src, '--jobs', 'makemore', '--dtypes',
                                      'float32'])
    script['main']()
    out = capsys.readouterr().out
    assert [src for src, _ in runs] == [old_src, old_src, script['NEW_SRC'], script['NEW_SRC']], runs
    assert all(argv[argv.index('--dtype') + 1] == 'float32' and argv[argv.index('--preset') + 1] == 'makemore'
               for _, argv in runs), runs
    assert '| makemore preset | float32 | old | 40.0 |' in out and '| makemore preset | float32 | new | 10.0 |' in out
    assert 'makemore preset, float32: cold wall old / new 4.00x' in out, out
    for flags, status, words in ((['--old', tmp_path], 2, 'holds no microgpt package'),
                                 (['--old', ''], 2, 'holds no microgpt package'),  # not this tree alone, in silence
                                 (['--steps', '0'], 2, '--steps takes 1 or more'),
                                 (['--data', tmp_path / 'missing.txt'], 1, 'missing.txt: no such file')):
        refused = subprocess.run([sys.executable, BENCHMARKS / 'bench_cold_start.py', *flags, '--jobs', 'default',
                                  '--dtypes', 'float64'], capture_output=True, text=True, cwd=REPO_ROOT)
        assert refused.returncode == status and words in refused.stderr, (flags, refused.stderr)
        assert 'Traceback' not in refused.stderr, refused.stderr  # microgpt's own line, not this script's traceback
    # a cold run that says nothing of compiling (its cache was not empty), or a warm one that compiles again (the
    # cache was not kept), or no notice at all: not a cold and a warm start's figures
    for said in ((False, False), (True, True), (False, True)):
        results = iter([(40.0, 1.0, said[0]), (2.0, 1.0, said[1])])
        monkeypatch.setattr(sys, 'argv', ['bench_cold_start.py', '--jobs', 'default', '--dtypes', 'float64'])
        with pytest.raises(SystemExit, match="the new tree's default job in float64 did not say it compiles on its "
                                             "first run and not on its second"):
            script['main']()


@pytest.mark.slow(seconds=3)
def test_bench_c_train_times_both_builds_against_the_engines(names_path):
    require_tool('cc')
    # a step is (CPU time of steps + 1 - that of 1) / steps: over 5 steps a start-up's noise made it negative in CI
    out = bench('bench_c_train.py', '--steps', 100, '--repeats', 1, '--data', names_path)
    for row in ('C, normal build', 'C, low-memory build', 'fused engine, float32', 'numpy engine, float32'):
        assert re.search(rf'{re.escape(row)}.* {NUMBER} +{NUMBER}$', out, re.M), (row, out)


@pytest.mark.slow(seconds=2)
def test_bench_data_loads_a_generated_word_list_and_reloads_it_from_the_cache():
    out = bench('bench_data.py', '--sizes', 1)
    row = [line for line in out.splitlines() if line.split()[:1] == ['1']]
    assert len(row) == 1, out
    docs, first_seconds, *_ = row[0].split()[1:]
    assert int(docs.replace(',', '')) > 100_000 and float(first_seconds) > 0, row


@pytest.mark.slow(seconds=15)
def test_bench_split_times_the_split_of_each_kind_of_file_beside_another_tree():
    out = bench('bench_split.py', '--megabytes', 1, '--compare', REPO_ROOT / 'src')
    rows = re.findall(rf'^\| (words|tied|urls) \| ({NUMBER}) \| (.+?) \| ({NUMBER}) \| {NUMBER} \| ({NUMBER}) \| '
                      rf'({NUMBER}) \|$', out, re.M)
    assert [(kind, tree == 'this tree') for kind, _, tree, *_ in rows] == [
        (kind, this) for kind in ('words', 'tied', 'urls') for this in (True, False)], out
    assert all(int(docs.replace(',', '')) > 10_000 and float(seconds) > 0 and int(peak.replace(',', '')) > 10
               for _, docs, _, seconds, peak, _ in rows), out  # a Python process with NumPy: over 10 MiB


@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize('rounds', [2, 0])
def test_bench_long_run_prints_the_cost_over_windows(names_path, rounds):
    out = bench('bench_long_run.py', '--steps', 40, '--window', 20, '--sample', 10, '--makemore-steps', 20,
                '--rounds', rounds, '--data', names_path)
    assert re.search(rf'step 20 costs {NUMBER}x step 2 by the mean, {NUMBER}x by the fastest part', out), out
    # each default-job window's sample of 10 steps is timed in 5 parts: a row has the step, the mean, the fastest
    rows = re.findall(rf'^ +(\d+) +({NUMBER}) +({NUMBER})$', out, re.M)
    assert rows and all(float(fastest) <= float(mean) * 1.000001 for _, mean, fastest in rows), out
    # then the first window against the last in one process, an engine from each taking turns of 10 steps
    side_by_side = re.findall(rf'side by side in one process: steps 40-59 cost {NUMBER}x steps 20-39 \({NUMBER} '
                              rf'against {NUMBER} us, medians of 2 alternating turns of 10 steps\)', out)
    assert len(side_by_side) == (2 if rounds else 0) and ('side by side' in out) == bool(rounds), out


@pytest.mark.parametrize('script, args, error', [
    ('bench_long_run.py', ['--steps', 10, '--window', 20], 'need --sample <= --window <= --steps'),
    ('bench_long_run.py', ['--sample', 0], 'must be 1 or more'),
    ('bench_long_run.py', ['--parts', 0], 'must be 1 or more'),
    ('bench_long_run.py', ['--rounds', -1], '--rounds 0 or more'),
    ('bench_data.py', ['--sizes', '10,-5'], 'must be 1 MB or more each'),
    ('bench_data.py', ['--sizes', '1,x'], 'whole numbers of MB'),
    ('bench_split.py', ['--megabytes', 0], '--megabytes must be 1 or more'),
    ('bench_matmul_blocks.py', ['--rounds', 0], '--rounds and --work must be at least 1'),
])
def test_benchmarks_refuse_arguments_that_measure_nothing(names_path, script, args, error):
    data = ['--data', names_path] if script == 'bench_long_run.py' else []
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args), *data], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 2 and error in proc.stderr.splitlines()[-1], proc.stderr


@pytest.mark.slow(seconds=6)
def test_bench_matmul_blocks_times_both_row_blocks_at_every_shape():
    from microgpt.engines.fused.matmul import FOUR_ROWS_FLOAT64, SIX_ROWS_FLOAT32
    out = bench('bench_matmul_blocks.py', '--rounds', 1, '--work', 1000)
    rows = re.findall(rf'^(float64|float32) +\d+ x \d+ x \d+ +({NUMBER}) +(four|six) rows ({NUMBER}) +{NUMBER}x$', out,
                      re.M)
    assert [(dtype, block) for dtype, _, block, _ in rows] == [('float64', 'four')] * 9 + [('float32', 'six')] * 9, out
    # the times, not their ratio: one stalled turn of a block (438,454 ns against 1,122 in a CI run) prints 0.00x
    assert all(float(ns.replace(',', '')) > 0 for _, eight, _, avx2 in rows for ns in (eight, avx2)), out
    assert (f"takes {'four' if FOUR_ROWS_FLOAT64 else 'eight'} rows in float64, "
            f"{'six' if SIX_ROWS_FLOAT32 else 'eight'} rows in float32") in out, out


@pytest.mark.slow(seconds=28)  # each CPU compiles the kernels again
def test_bench_cpu_models_gives_each_loops_work_per_cycle_on_each_cpu():
    require_tool('llvm-mca-19')
    out = bench('bench_cpu_models.py', '--cpus', 'icelake-server', 'znver4', 'znver3', '--mca', 'llvm-mca-19')
    rows = {tuple(m.group(1, 2, 3)): (float(m.group(4)), float(m.group(5))) for m in re.finditer(
        rf'^(matmul [48] x 8|matmul 6 x 16|matmul wide|adam) +(float64|float32) +([\w-]+) .* ({NUMBER}) +({NUMBER})'
        r'   \w', out, re.M)}
    assert len(rows) == 15 and all(per_cycle > 0 for per_cycle, _ in rows.values()), out
    # AVX2's 16 vector registers (znver3) take float64's block of four rows, float32's of six rows by 16 columns;
    # AVX-512's 32, eight rows by 8, and in float32 the wide block (by 32 where LLVM prefers 256-bit vectors,
    # Intel's; by 16 on Zen 4 and 5)
    assert ('matmul 4 x 8', 'float64', 'znver3') in rows and ('matmul 8 x 8', 'float64', 'znver3') not in rows, out
    assert ('matmul 6 x 16', 'float32', 'znver3') in rows and ('matmul 6 x 16', 'float32', 'znver4') not in rows, out
    assert ('matmul wide', 'float32', 'znver4') in rows and ('matmul wide', 'float32', 'znver3') not in rows, out
    # fused multiply-adds run at about one rate on both, in both dtypes (float64's separate multiplication and
    # addition, until 2026-12-01, took both of an Intel core's FMA ports where Zen's add pipes took the additions:
    # Zen / Ice Lake 2.00)
    for dtype in ('float64', 'float32'):
        assert 0.8 < rows[('matmul 8 x 8', dtype, 'znver4')][1] < 1.25, out


@pytest.mark.slow(seconds=2)
def test_bench_peak_prints_both_dtypes_and_the_cpus_peak_in_c():
    """The kernels' peak in both dtypes, then the CPU's own in C at 256 bits (and 512 where the CPU has AVX-512):
    measured wherever a C compiler is, as in CI, which builds the C exports with one."""
    out = bench('bench_peak.py')
    for dtype in ('float32', 'float64'):
        assert float(re.search(rf'^{dtype} ({NUMBER}) GFLOP/s on one core$', out, re.M).group(1)) > 0, out
        for width in (256, 512) if 'avx512f' in _cpu_flags() else (256,):
            assert float(re.search(rf"^the CPU's peak in C, {dtype} {width}-bit ({NUMBER}) GFLOP/s on one core ",
                                   out, re.M).group(1)) > 0, out


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return next((line for line in cpuinfo if line.startswith('flags')), '').split()
    except OSError:
        return []


@pytest.mark.slow(seconds=4)
def test_makemore_transformer_reports_a_test_loss_after_a_few_steps(names_path, require_torch):
    out = bench('makemore_transformer.py', '--steps', 5, '--data', names_path)
    loss = float(re.search(rf'best test loss ({NUMBER}) in 5 steps', out).group(1))
    assert 2 < loss < 4, out  # a few steps from the initial ln(27) = 3.3: measured, not the inf of no evaluation


@pytest.mark.slow(seconds=25)
def test_bench_cold_start_compiles_in_a_fresh_cache_then_loads_it(names_path):
    """One job: it compiles for half a minute or more in its own fresh cache. It also proves the command's notice: the
    benchmark stops with an error unless the first run says on standard error that it compiles and the second does
    not (tested above, with the runs stood in for), so the suite's one cold compile of `microgpt train` checks both."""
    out = bench('bench_cold_start.py', '--dtypes', 'float64', '--jobs', 'default', '--steps', 2, '--data', names_path)
    assert 'makemore preset' not in out, out
    for job in ('default job',):
        cells = re.search(rf'^\| {job} \| float64 \|(.*)\|$', out, re.M).group(1).split('|')
        cold_wall, cold_cpu, warm_wall, warm_cpu, compiling = map(float, cells)
        assert cold_wall > warm_wall and compiling > 0, (job, cells)
