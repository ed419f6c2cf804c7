"""benchmarks/bench_scaling.py: its table from saved measurements (ratios, failures), and a real run of the
smallest size on both engines whose token counts are those of the timed steps, with its plot."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'bench_scaling.py')


def run_script(*args, timeout=600):
    result = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return result.stdout


def test_table_from_saved_measurements(tmp_path):
    rows = [
        {'n_layer': 1, 'n_embd': 16, 'parameters': 4192, 'threads': 1,
         # by CPU time fused's best is the first (2,000 tokens/s), by wall time the second (500 against 250)
         'fused': [{'tokens': 1000, 'seconds': 4.0, 'cpu_seconds': 0.5, 'steps': 5, 'threads': 1},
                   {'tokens': 1000, 'seconds': 2.0, 'cpu_seconds': 1.0, 'steps': 5, 'threads': 1}],
         'torch': [{'tokens': 500, 'seconds': 2.0, 'cpu_seconds': 1.0, 'steps': 2, 'threads': 1}]},
        {'n_layer': 4, 'n_embd': 64, 'parameters': 201088, 'threads': 2,
         'fused': [{'tokens': 300, 'seconds': 1.0, 'cpu_seconds': 1.0, 'steps': 1, 'threads': 1}],
         'torch': [{'error': 'RuntimeError: out of memory'}]},
    ]
    saved = tmp_path / 'run.json'
    saved.write_text(json.dumps({'dtype': 'float32', 'clock': 'cpu', 'seconds': 2.0, 'rows': rows}))
    lines = run_script('--from-json', str(saved)).splitlines()
    want = ['| n_layer | n_embd | parameters | threads | fused tokens/s | torch tokens/s | fused / torch '
            '| by wall time |',
            '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
            '| 1 | 16 | 4,192 | 1 | 2,000 | 500 | 4.00x | 2.00x |',
            '| 4 | 64 | 201,088 | 2 | 300 | failed: RuntimeError: out of memory |  |  |']
    assert lines == want, lines
    by_wall = run_script('--from-json', str(saved), '--clock', 'wall').splitlines()
    assert by_wall[2] == '| 1 | 16 | 4,192 | 1 | 500 | 250 | 2.00x | 4.00x |', by_wall


@pytest.mark.slow(seconds=25)
def test_both_engines_at_the_smallest_size(tmp_path, names_path, require_torch):
    """Each engine's tokens are the predicted tokens of the steps it timed, after its 2 warm-up steps."""
    from microgpt.config import TrainConfig
    from microgpt.data import batch_for_step
    from microgpt.train.loop import predicted_tokens
    from microgpt.train.setup import prepare_run
    saved, png = tmp_path / 'run.json', tmp_path / 'scaling.png'
    out = run_script('--data', names_path, '--n-embd', '16', '--n-layer', '1', '--threads', '1', '--seconds', '0.3',
                     '--repeats', '2', '--json', str(saved), '--plot', str(png))
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    row = json.loads(saved.read_text())['rows'][0]
    assert (row['n_layer'], row['n_embd'], row['parameters'], row['threads']) == (1, 16, 4192, 1), row
    doc_tokens = prepare_run(names_path, {}, TrainConfig(batch_size=32), engine=None).train_tokens
    for engine_name in ('fused', 'torch'):
        first, second = row[engine_name]
        for result in (first, second):
            assert result['threads'] == 1 and result['steps'] >= 1 and result['cpu_seconds'] > 0, result
        # the second measurement trains on from where the first stopped, after the 2 warm-up steps
        for start, result in ((2, first), (2 + first['steps'], second)):
            want = sum(predicted_tokens(batch_for_step(doc_tokens, s, 32), 16)
                       for s in range(start, start + result['steps']))
            assert result['tokens'] == want, (engine_name, result, want)
    assert out.splitlines()[-2].startswith('| 1 | 16 | 4,192 | 1 | '), out
