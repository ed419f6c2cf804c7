"""The study runner: results per (experiment, seed), resume, report."""

import dataclasses
import json
import os
import shutil

import pytest

from microgpt.bench.study import EXPERIMENTS, run_one, run_study, summarize, write_report

from helpers import run_cli_in_process as run


@pytest.mark.slow  # four 1000-step runs in two worker processes
def test_study_runs_resumes_and_reports(names_path, tmp_path):
    folder = str(tmp_path / 'study')
    chosen = [e for e in EXPERIMENTS if e.name in ('baseline', 'batch-32-equal-tokens')]
    first = list(run_study(chosen, [1, 2], names_path, folder, workers=2))
    assert sorted((r['experiment'], r['seed']) for r in first) == [
        ('baseline', 1), ('baseline', 2), ('batch-32-equal-tokens', 1), ('batch-32-equal-tokens', 2)]
    assert all(2.0 < r['val_loss'] < 3.0 for r in first), first
    assert list(run_study(chosen, [1, 2], names_path, folder, workers=2)) == []  # all done: nothing re-run
    rows = summarize(chosen, [1, 2], folder)
    assert [(e.name, n) for e, _, _, n in rows] == [('baseline', 2), ('batch-32-equal-tokens', 2)]
    write_report(rows, folder, 'microgpt study', speed=(74_000.0, 12.5))
    with open(os.path.join(folder, 'RESULTS.md'), encoding='utf-8') as f:
        report = f.read()
    assert '| baseline |' in report and os.path.getsize(os.path.join(folder, 'results.png')) > 1000
    assert 'takes 12.5 us per training step' in report and '74.0 ms: 5,920x.' in report and '22,640x |' in report
    with open(os.path.join(folder, 'runs', 'baseline.seed1.json')) as f:
        assert json.load(f)['steps'] == 1000


def test_study_bad_experiment_name(tmp_path):
    code, out, err = run('study', '--experiments', 'nope', '--out', str(tmp_path))
    assert code == 2 and err.startswith('microgpt: error: unknown experiments'), err


def test_study_runs_on_the_fused_engine_give_the_numpy_engines_numbers(names_path):
    """The study trains with the fused engine (fast); its scores are the exact engines' to ~1e-12."""
    experiment = next(e for e in EXPERIMENTS if e.name == 'batch-8-equal-tokens')
    fused, numpy_ = run_one(experiment, 3, names_path, 'fused'), run_one(experiment, 3, names_path, 'numpy')
    assert fused['val_loss'] == pytest.approx(numpy_['val_loss'], rel=1e-12, abs=0)
    assert fused['train_loss_tail'] == pytest.approx(numpy_['train_loss_tail'], rel=1e-12, abs=0)


def test_a_study_folder_keeps_to_its_data_and_reruns_a_damaged_result(tmp_path):
    """Results are reused only for the data they were trained on (another file's study in the folder is refused:
    its reused results were reported under the new file's name); a damaged result is run again, not a traceback."""
    from microgpt.bench.study import result_path
    from microgpt.errors import MicrogptError
    names = [f"{a}{b}{c}" for a in 'abcd' for b in 'aeiou' for c in 'lmnrs']
    data, other = tmp_path / 'a.txt', tmp_path / 'b.txt'
    data.write_text('\n'.join(names) + '\n')
    other.write_text('\n'.join(reversed(names)) + '\n')
    chosen, folder = [e for e in EXPERIMENTS if e.name == 'baseline'], str(tmp_path / 'study')
    quick = [dataclasses.replace(e, overrides={**e.overrides, 'steps': 3}) for e in chosen]
    first = list(run_study(quick, [1], str(data), folder, workers=1))
    with pytest.raises(MicrogptError, match='holds a study of another data file'):
        list(run_study(quick, [1], str(other), folder, workers=1))
    with open(result_path(folder, 'baseline', 1), 'w') as f:
        f.write('{"val_loss": ')  # cut off
    again = list(run_study(quick, [1], str(data), folder, workers=1))
    assert [r['val_loss'] for r in again] == [r['val_loss'] for r in first], (again, first)
    assert json.load(open(result_path(folder, 'baseline', 1)))['val_loss'] == first[0]['val_loss']
    assert summarize(quick, [1], folder)[0][1] == first[0]['val_loss']
    shutil.rmtree(os.path.join(folder, 'runs'))  # removed to run them again: study.json stays
    assert [r['val_loss'] for r in run_study(quick, [1], str(data), folder, workers=1)] == [first[0]['val_loss']]


def test_a_claim_no_result_backs_is_replaced_by_a_study_alone_in_the_folder(tmp_path, monkeypatch):
    """A first study on data too small for the held-out split left DIR/study.json behind: every later study in that
    folder (by default ./results) was refused as another data file's. A claim with no result behind it is replaced,
    unless another study is running in the folder (it holds DIR/.study.lock): that one's results are still to come."""
    import fcntl
    from microgpt.errors import MicrogptError
    (tmp_path / 'tiny.txt').write_text('emma\nolivia\nava\n')
    names = [f"{a}{b}{c}" for a in 'abcd' for b in 'aeiou' for c in 'lmnrs']
    (tmp_path / 'names.txt').write_text('\n'.join(names) + '\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run('study', '--data', 'tiny.txt', '--num-seeds', '1', '--experiments', 'baseline',
                         '--workers', '1')
    assert code == 2 and 'the validation split is empty' in err, err
    assert not os.path.exists('results'), os.listdir('results')  # the command now checks the split first
    quick = [dataclasses.replace(e, overrides={**e.overrides, 'steps': 3}) for e in EXPERIMENTS if e.name == 'baseline']
    with pytest.raises(MicrogptError, match='the validation split is empty'):  # as a study before that check
        list(run_study(quick, [1], 'tiny.txt', 'results', workers=1))
    assert os.path.exists('results/study.json'), os.listdir('results')
    with open('results/.study.lock', 'a') as running:  # another study, running
        fcntl.flock(running, fcntl.LOCK_SH)
        with pytest.raises(MicrogptError, match='holds a study of another data file'):
            list(run_study(quick, [1], 'names.txt', 'results', workers=1))
    assert [r['experiment'] for r in run_study(quick, [1], 'names.txt', 'results', workers=1)] == ['baseline']
    with pytest.raises(MicrogptError, match='holds a study of another data file'):  # now results back the claim
        list(run_study(quick, [1], 'tiny.txt', 'results', workers=1))


def test_the_report_names_the_number_of_documents_each_run_is_scored_on(tmp_path):
    """RESULTS.md said '1000 distinct names' and a baseline 'near 2.37 nats' whatever the data: 100 names hold out
    10 (makemore's min(1000, 10%)), which every run is scored on."""
    from microgpt.bench.study import SPLIT_SEED, held_out_count
    from microgpt.config import TrainConfig
    from microgpt.data import load_documents
    from microgpt.train.setup import Holdout, prepare_run
    data = tmp_path / 'names.txt'
    data.write_text('\n'.join(f'name{chr(97 + i % 26)}{chr(97 + i // 26)}' for i in range(100)) + '\n')
    scored = len(prepare_run(str(data), {}, TrainConfig(), None, holdout=Holdout(seed=SPLIT_SEED)).val_docs)
    assert held_out_count(load_documents(str(data))) == scored == 10
    write_report([(EXPERIMENTS[0], 2.5, None, 1)], str(tmp_path), 'microgpt study', held_out=scored)
    report = (tmp_path / 'RESULTS.md').read_text(encoding='utf-8')
    assert 'on 10 distinct documents never trained on' in report and '1000 distinct' not in report, report
    assert "(on makemore's names.txt it sits near 2.37 nats)" in report, report


def _children(pid):
    """The process ids of `pid`'s children (Linux's /proc)."""
    children = []
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
            children += f.read().split()
    return children


def _study_with_two_workers(names_path, tmp_path):
    """(the process of a `microgpt study --workers 2` of makemore-size runs, its workers' ids) once both run."""
    import subprocess
    import sys
    import time
    data = tmp_path / 'names.txt'
    with open(names_path, encoding='utf-8') as f:
        data.write_text(''.join(f.readlines()[:3000]), encoding='utf-8')
    proc = subprocess.Popen([sys.executable, '-m', 'microgpt', 'study', '--data', str(data), '--out',
                             str(tmp_path / 'study'), '--num-seeds', '4', '--experiments', 'preset-makemore',
                             '--workers', '2'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def workers():  # (the pool's resource tracker is a child too)
        return [pid for pid in _children(proc.pid) if b'spawn_main' in open(f'/proc/{pid}/cmdline', 'rb').read()]
    deadline = time.monotonic() + 120
    while len(workers()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # the workers import, and start their runs (a Ctrl-C waits until they ignore it)
    return proc, workers()


def _ended(proc):
    """(exit status, standard error) of `proc` within 20 s; its group killed if it runs on."""
    import signal
    try:
        return proc.wait(timeout=20), proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize('to', ['the group', 'the first process'])
def test_ctrl_c_stops_a_study_and_its_workers_at_once(names_path, tmp_path, to):
    """A terminal's Ctrl-C reaches every process of the group: with --workers 2 each worker took it as its run's
    result and started the next queued run, and the pool waited for them all (about 100 s of makemore-size runs,
    one started after the Ctrl-C). The workers ignore it; the first process ends them and exits 130, also when the
    Ctrl-C reached it alone (`kill -INT`), in whichever of its threads."""
    import signal
    proc, _ = _study_with_two_workers(names_path, tmp_path)
    (os.killpg if to == 'the group' else os.kill)(proc.pid, signal.SIGINT)
    code, err = _ended(proc)
    assert code == 130 and err.endswith('microgpt: interrupted\n') and 'Traceback' not in err, (code, err)
    assert os.listdir(tmp_path / 'study' / 'runs') == [], os.listdir(tmp_path / 'study' / 'runs')


@pytest.mark.slow(seconds=30)
def test_a_worker_that_dies_ends_the_study_in_one_line(names_path, tmp_path):
    """A worker killed (the out-of-memory killer, kill -9): one line and exit 2, the other worker ended too (a pool
    that replaced the worker and lost its run waited for ever)."""
    import signal
    proc, workers = _study_with_two_workers(names_path, tmp_path)
    os.kill(int(workers[0]), signal.SIGKILL)
    code, err = _ended(proc)
    assert code == 2 and err.endswith('microgpt: error: a worker process of the study ended abruptly (killed, or out '
                                      'of memory); the results so far are kept: run the same command again to '
                                      'continue\n'), (code, err)
    import time
    deadline = time.monotonic() + 5  # (ended, and reaped by init: the study that started them has exited)
    while any(os.path.exists(f'/proc/{pid}') for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f'/proc/{pid}') for pid in workers), workers
