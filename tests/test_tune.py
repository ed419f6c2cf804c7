"""`microgpt tune`: a real Optuna study over real (tiny) training runs, continued, shared by two processes, and
reproduced by the command it prints; its bad inputs are one-line errors that leave the study as it was."""

import json
import os
import re
from pathlib import Path

import pytest

optuna = pytest.importorskip('optuna') if not os.environ.get('CI') else __import__('optuna')

from microgpt.errors import MicrogptError
from microgpt.tune.report import summarize
from microgpt.tune.search import TuneConfig, open_study, tune
from microgpt.train.checkpoint import load_checkpoint

from helpers import run_cli_in_process

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'charlotte', 'amelia', 'evelyn', 'abigail', 'liam',
         'noah', 'william', 'james', 'oliver', 'benjamin', 'elijah', 'lucas', 'mason', 'logan', 'harper', 'ella',
         'emily', 'madison', 'scarlett', 'victoria', 'aria', 'grace', 'chloe', 'camila', 'penelope', 'riley',
         'layla', 'lillian', 'nora', 'zoey', 'mila', 'aubrey', 'hannah', 'lily', 'addison', 'eleanor', 'natalie',
         'luna', 'savannah', 'brooklyn', 'leah', 'zoe', 'stella', 'hazel', 'ellie', 'paisley', 'audrey', 'skylar']


@pytest.fixture
def small_data(tmp_path):
    path = tmp_path / 'names.txt'
    path.write_text('\n'.join(NAMES * 4) + '\n')
    return str(path)


def options(data, out, **kw):
    return TuneConfig(data=data, out=str(out), **{'trials': 2, 'max_steps': 50, **kw})


@pytest.mark.slow
def test_study_runs_continues_and_reports(small_data, tmp_path):
    out = tmp_path / 'tune'
    seen = []
    study = tune(options(small_data, out), on_trial=lambda t, state, value: seen.append((t.number, state)))
    assert [n for n, _ in seen] == [0, 1], seen
    assert (out / 'tune.db').is_file()
    # the same command again: the budget is the study's total, already reached
    tune(options(small_data, out))
    assert len(study.trials) == 2, len(study.trials)
    # a larger budget continues the same study
    tune(options(small_data, out, trials=3))
    study = open_study(options(small_data, out))
    assert [t.number for t in study.trials] == [0, 1, 2], [t.number for t in study.trials]
    summary = summarize(study, str(out))
    table = (out / 'TRIALS.md').read_text()
    assert len(re.findall(r'^\| \d+ \|', table, re.M)) == 3, table
    assert (out / 'history.png').stat().st_size > 1000
    complete = [t for t in study.trials if t.state.name == 'COMPLETE']
    assert summary.best_value == min(t.value for t in complete), (summary.best_value, complete)
    assert load_checkpoint(str(out / 'best' / 'model.safetensors')).meta['best_val_loss'] == summary.best_value


@pytest.mark.slow
def test_the_command_it_prints_reproduces_the_best_trial(small_data, tmp_path):
    import shlex
    code, out, err = run_cli_in_process('tune', '--data', small_data, '--out', tmp_path / 'tune', '--trials', '1',
                                        '--max-steps', '50')
    assert code == 0, err
    best = float(re.search(r'held-out loss (\d+\.\d+)', out).group(1))
    words = shlex.split(re.search(r'^train it again: (.*)$', out, re.M).group(1))
    assert words[:2] == ['microgpt', 'train'], words
    code, _, err = run_cli_in_process(*words[1:])  # as printed: it writes beside the trial, not over it
    assert code == 0, err
    again = load_checkpoint(str(tmp_path / 'tune' / 'again' / '0000' / 'model.safetensors')).meta['best_val_loss']
    trial = load_checkpoint(str(tmp_path / 'tune' / 'best' / 'model.safetensors')).meta['best_val_loss']
    assert again == trial, (again, trial)   # the same run, bit for bit
    assert round(trial, 4) == best, (trial, best)


@pytest.mark.slow(seconds=5)
def test_a_search_continued_from_another_folder_keeps_its_own_best(tmp_path, monkeypatch):
    """Trials kept their run folders as given (relative): a search of A continued from folder B copied B's
    trial 0 into A's best/, and printed a command whose --data and --out named B's files."""
    import shlex
    for name, lines in (('A', NAMES), ('B', NAMES[::-1])):  # two searches, one relative layout each
        (tmp_path / name).mkdir()
        (tmp_path / name / 'd.txt').write_text('\n'.join(lines * 4) + '\n')
        monkeypatch.chdir(tmp_path / name)
        code, _, err = run_cli_in_process('tune', '--data', 'd.txt', '--out', 't', '--trials', '1', '--max-steps', '50')
        assert code == 0, err
    code, out, err = run_cli_in_process('tune', '--data', '../A/d.txt', '--out', '../A/t', '--trials', '1',
                                        '--max-steps', '50')  # from B, the study is complete: it reports
    assert code == 0, err
    a_trial = load_checkpoint(str(tmp_path / 'A' / 't' / 'trials' / '0000' / 'model.safetensors')).meta
    assert load_checkpoint(str(tmp_path / 'A' / 't' / 'best' / 'model.safetensors')).meta == a_trial
    words = shlex.split(re.search(r'^train it again: (.*)$', out, re.M).group(1))
    assert words[words.index('--data') + 1] == str(tmp_path / 'A' / 'd.txt'), words
    assert words[words.index('--out') + 1] == str(tmp_path / 'A' / 't' / 'again' / '0000'), words
    assert re.search(r'^trials: 1 complete$', out, re.M), out
    # the study reported into another folder, on its storage: the best trial's run is not there to copy
    code, out, err = run_cli_in_process('tune', '--data', '../A/d.txt', '--out', '../C', '--trials', '1', '--max-steps',
                                        '50', '--storage', f"sqlite:///{tmp_path / 'A' / 't' / 'tune.db'}")
    assert code == 0, err
    assert 'its run: not in this folder (it ran into another --out, or on another machine)\n' in out, out
    assert not (tmp_path / 'C' / 'best').exists()


@pytest.mark.slow(seconds=4)
def test_two_workers_never_run_past_the_budget(small_data, tmp_path, monkeypatch):
    """Each worker counted the study's trials, then asked for one: two that both counted 7 of 8 ran 9."""
    import threading
    import time
    from microgpt.tune import search
    (tmp_path / 'tune').mkdir()
    opts = options(small_data, tmp_path / 'tune', trials=3)
    count = search.finished_trials

    def slow_count(study):  # the other worker counts in the meantime
        counted = count(study)
        time.sleep(0.3)
        return counted

    monkeypatch.setattr(search, 'finished_trials', slow_count)
    monkeypatch.setattr(search, 'run_trial', lambda trial, *rest: 1.0 + trial.number)
    open_study(opts)  # made once, as tune makes it before its workers start
    workers = [threading.Thread(target=search.work, args=(opts, None, lambda: False)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(open_study(opts).trials) == 3, [t.number for t in open_study(opts).trials]


@pytest.mark.slow
def test_two_workers_share_one_study(small_data, tmp_path):
    out = tmp_path / 'tune'
    study = tune(options(small_data, out, trials=4, workers=2))
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ('COMPLETE', 'PRUNED')]
    assert len(finished) >= 4, [(t.number, t.state) for t in trials]
    workers = {t.user_attrs['worker'] for t in finished}
    assert len(workers) == 2, workers   # both processes ran trials
    dirs = [t.user_attrs['out'] for t in finished]
    assert len(set(dirs)) == len(dirs), dirs  # no trial run twice
    assert all(Path(d, 'metrics.jsonl').is_file() for d in dirs), dirs


def test_a_storage_that_fails_during_the_search_is_one_line(small_data, tmp_path, monkeypatch):
    """A full disk under the study's database: the trial's tell failed with 60 lines of Optuna's traceback."""
    import sqlite3
    import optuna
    from sqlalchemy.exc import OperationalError
    from microgpt.tune import search

    def full(*args, **kwargs):  # as Optuna's RDBStorage raises it
        try:
            raise OperationalError('UPDATE trials ...', {}, sqlite3.OperationalError('database or disk is full'))
        except OperationalError as e:
            raise optuna.exceptions.StorageInternalError('An exception is raised during the commit.') from e
    monkeypatch.setattr(search, 'run_trial', lambda trial, *rest: 1.0)
    monkeypatch.setattr(optuna.study.Study, 'tell', full)
    out = tmp_path / 'tune'
    code, _, err = run_cli_in_process('tune', '--data', small_data, '--out', out, '--trials', '2')
    assert code == 2 and err.count('\n') == 1 and err.startswith(
        f"microgpt: error: the study storage sqlite:///{out / 'tune.db'} failed (database or disk is full); the trials "
        f"it recorded are kept, and the same command continues the search once it works again"), err


def asked_from_call(n):
    """A stop_requested that answers False n - 1 times, then True: tune's first asks once it has compiled, before
    starting its workers, and then while they run."""
    calls = []
    return lambda: calls.append(1) or len(calls) >= n


@pytest.mark.slow(seconds=6)
@pytest.mark.parametrize('asked', [1, 2], ids=['while compiling', 'while the workers start'])
def test_a_stop_asked_of_the_first_process_reaches_its_workers(small_data, tmp_path, monkeypatch, asked):
    """The workers of `tune --workers 2` ran every trial after a Ctrl-C that reached the first process alone (`kill
    -INT`, or one while it compiled): only a terminal's reached them."""
    from microgpt.engines.fused import compile as fused_compile
    monkeypatch.setattr(fused_compile, 'compile_kernels', lambda *args, **kwargs: None)  # the trials compile
    study = tune(options(small_data, tmp_path / 'tune', trials=4, workers=2), stop_requested=asked_from_call(asked))
    assert study.get_trials() == [], [(t.number, t.state) for t in study.get_trials()]


@pytest.mark.slow(seconds=6)
def test_a_ctrl_c_while_the_workers_start_is_not_lost(small_data, tmp_path, monkeypatch):
    """The first process ignored Ctrl-C while it started its workers (so that they would not take it before their
    own handler): one that came then was lost, and the search ran on. It is held pending instead."""
    import signal
    from multiprocessing.context import SpawnProcess
    from microgpt.engines.fused import compile as fused_compile
    monkeypatch.setattr(fused_compile, 'compile_kernels', lambda *args, **kwargs: None)
    start = SpawnProcess.start

    def interrupted_start(self):
        if not getattr(SpawnProcess, 'interrupted', False):
            SpawnProcess.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)
        start(self)
    monkeypatch.setattr(SpawnProcess, 'start', interrupted_start)
    monkeypatch.setattr(SpawnProcess, 'interrupted', False, raising=False)
    code, _, err = run_cli_in_process('tune', '--data', small_data, '--out', tmp_path / 'tune', '--trials', '4',
                                      '--max-steps', '50', '--workers', '2')
    assert code == 130 and 'stopped before any trial of the study completed' in err, (code, err)


@pytest.mark.slow(seconds=4)
def test_workers_start_from_a_thread_other_than_the_main_one(small_data, tmp_path, monkeypatch):
    """tune() is a library call too: setting a signal handler there failed outside the main thread."""
    import threading
    from microgpt.engines.fused import compile as fused_compile
    monkeypatch.setattr(fused_compile, 'compile_kernels', lambda *args, **kwargs: None)
    outcome = []

    def search():
        try:
            outcome.append(tune(options(small_data, tmp_path / 'tune', trials=4, workers=2),
                                stop_requested=asked_from_call(2)))
        except BaseException as error:
            outcome.append(error)
    thread = threading.Thread(target=search)
    thread.start()
    thread.join()
    assert not isinstance(outcome[0], BaseException), outcome[0]


@pytest.mark.parametrize('change, message', [
    ({'trials': 0}, 'trials must be at least 1'),
    ({'trials': None}, 'give a budget'),
    ({'minutes': float('nan')}, 'minutes must be a finite number'),
    ({'minutes': 0.0}, 'minutes must be > 0'),
    ({'workers': 0}, 'workers must be at least 1'),
    ({'storage': 'nosuchdb://x/y'}, 'cannot open the study storage'),
    ({'storage': 'sqlite:////nonexistent-dir/sub/tune.db'}, 'cannot open the study storage'),
    ({'storage': 'sqlite:///:memory:'}, 'a database in memory ends with each process'),
    ({'storage': 'sqlite://'}, 'a database in memory ends with each process'),
    ({'storage': 'sqlite+pysqlite://'}, 'a database in memory ends with each process'),
    ({'storage': 'sqlite:///file:m?mode=memory&uri=true'}, 'a database in memory ends with each process'),
    ({'storage': 'sqlite:///file::memory:?cache=shared&uri=true'}, 'a database in memory ends with each process'),
    ({'storage': 'sqlite:///file:m?mode=memory&uri=1'}, 'a database in memory ends with each process'),
    ({'storage': ''}, "--storage needs a URL"),
    ({'study': ''}, "study needs a name, got ''"),
    ({'study': '  '}, "study needs a name, got '  '"),
])
def test_bad_options_are_one_line_errors(small_data, tmp_path, change, message):
    with pytest.raises(MicrogptError, match=re.escape(message)) as e:
        tune(options(small_data, tmp_path / 'tune', **change))  # the config's own checks come first
    assert '\n' not in str(e.value), str(e.value)


@pytest.mark.slow(seconds=1)
def test_a_study_made_for_other_data_is_refused_and_kept(small_data, tmp_path):
    out = tmp_path / 'tune'
    out.mkdir()
    open_study(options(small_data, out))
    before = (out / 'tune.db').read_bytes()
    other = tmp_path / 'other.txt'
    other.write_text('\n'.join(reversed(NAMES)) + '\n')
    with pytest.raises(MicrogptError, match='was made with another data_sha256'):
        tune(options(str(other), out))
    assert (out / 'tune.db').read_bytes() == before


@pytest.mark.slow(seconds=1)
def test_a_study_made_with_another_seed_is_refused(small_data, tmp_path):
    """--seed draws the held-out split every trial is scored on: trials of two seeds were ranked together."""
    out = tmp_path / 'tune'
    out.mkdir()
    open_study(options(small_data, out))
    with pytest.raises(MicrogptError, match='was made with another seed; give another --out DIR'):
        open_study(options(small_data, out, seed=7))


@pytest.mark.slow(seconds=1)
@pytest.mark.parametrize('trial_seed', [None, 42])
def test_a_study_made_before_the_seed_was_recorded_takes_its_trials(small_data, tmp_path, trial_seed):
    """...the seed its trials' commands name; with none, this run's."""
    from microgpt.tune.search import fingerprint
    out = tmp_path / 'tune'
    out.mkdir()
    old = optuna.create_study(storage=options(small_data, out).storage_url, study_name='microgpt')
    for key, value in fingerprint(options(small_data, out)).items():
        if key != 'seed':
            old.set_user_attr(key, value)
    if trial_seed is not None:
        trial = old.ask()
        trial.set_user_attr('command', f'microgpt train --preset makemore --seed {trial_seed} --out x')
        old.tell(trial, 2.0)
        with pytest.raises(MicrogptError, match='was made with another seed'):
            open_study(options(small_data, out, seed=7))
        assert open_study(options(small_data, out)).user_attrs['seed'] == trial_seed
    else:
        assert open_study(options(small_data, out, seed=7)).user_attrs['seed'] == 7
        with pytest.raises(MicrogptError, match='was made with another seed'):
            open_study(options(small_data, out))


def test_another_search_on_a_shared_storage_is_told_to_take_another_name(small_data, tmp_path):
    """'give another --out DIR' led to the same refusal: the study's name in the shared storage is the same."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    no_trial(options(small_data, tmp_path / 'a', storage=shared))
    with pytest.raises(MicrogptError, match='was made with another max_steps; give another --study NAME and --out DIR'):
        no_trial(options(small_data, tmp_path / 'b', storage=shared, max_steps=60))


def no_trial(options_):
    """tune() up to the first trial: the checks and the study."""
    return tune(options_, stop_requested=lambda: True)


def first_trial(options_):
    """What a search does before its trial 0 trains: the checks, the study, the trial asked, the folder claimed."""
    from microgpt.tune.search import claim_folder
    study = no_trial(options_)
    trial = study.ask()
    claim_folder(options_, study)
    return study, trial


def test_a_folder_holds_the_trials_of_one_study(small_data, tmp_path, monkeypatch):
    """A second study in the same --out DIR (another --study, or --storage left out or changed) numbered its trials
    from 0000 too, over the first one's runs, and DIR/best/ then copied a run of the other study beside the first
    study's score. Now the folder records its study (by the start of its trial 0, which the storage keeps however
    it is given), and another study is refused; the same one continues from another directory, a moved folder, or
    with the storage's path or password written otherwise."""
    out = tmp_path / 'tune'
    study, trial = first_trial(options(small_data, out, study='first'))
    record = json.loads((out / 'search.json').read_text())
    assert record == {'study': 'first', 'first_trial_started': trial.datetime_start.isoformat(timespec='seconds'),
                      'storage': f"sqlite:///{out}/tune.db"}, record
    elsewhere = f"sqlite:///{tmp_path / 'shared.db'}"
    for change, there in (({'study': 'second'}, f"sqlite:///{out}/tune.db"),
                          ({'study': 'first', 'storage': elsewhere}, elsewhere)):
        with pytest.raises(MicrogptError) as info:
            no_trial(options(small_data, out, **change))
        assert str(info.value) == (
            f"{out} holds the trials of another search (study 'first' in sqlite:///{out}/tune.db); those of study "
            f"{change['study']!r} in {there} would overwrite them: give another --out DIR, or continue that search "
            f"with its --study and --storage"), str(info.value)
    # and the refused search made no study: it was made, with this data's fingerprint, before the folder refused
    assert optuna.get_all_study_names(f"sqlite:///{out}/tune.db") == ['first']
    assert optuna.get_all_study_names(elsewhere) == []
    os.rename(out, tmp_path / 'moved')
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    no_trial(options(small_data, Path('..') / 'moved', study='first'))
    no_trial(options(small_data, tmp_path / 'moved', study='first',
                     storage=f"sqlite:///{tmp_path}/elsewhere/../moved/tune.db"))
    shared = tmp_path / 'shared'
    first_trial(options(small_data, shared, storage=elsewhere))
    with pytest.raises(MicrogptError, match="holds the trials of another search \\(study 'microgpt' in sqlite:///"):
        no_trial(options(small_data, shared))  # --storage forgotten: a new study in DIR/tune.db
    no_trial(options(small_data, shared, storage=elsewhere.replace('sqlite:///', 'sqlite+pysqlite:///')))


def test_a_database_url_ending_in_log_is_the_database_a_bare_log_file_a_journal(tmp_path):
    """sqlite:///x.log was opened as a journal file named 'sqlite:///x.log' (no such file or directory)."""
    from optuna.storages import JournalStorage, RDBStorage
    from microgpt.tune.search import make_storage
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 'x.log'}"), RDBStorage)
    assert (tmp_path / 'x.log').is_file()
    assert isinstance(make_storage(str(tmp_path / 'y.log')), JournalStorage)


def test_a_password_in_the_storage_is_not_shown_or_kept(small_data, tmp_path):
    for password in ('secret', 's3/cr?t#x'):  # SQLAlchemy reads a / ? or # in a password as part of it
        with pytest.raises(MicrogptError) as info:
            no_trial(options(small_data, tmp_path / 'new' / 'tune',
                             storage=f'postgresql://me:{password}@127.0.0.1:1/db'))
        assert password not in str(info.value) and 'me:***@127.0.0.1:1/db' in str(info.value), str(info.value)
        assert not (tmp_path / 'new').exists()  # a storage that cannot be opened leaves no new folder
    with pytest.raises(MicrogptError) as info:  # a driver's password as a query parameter was shown as given
        no_trial(options(small_data, tmp_path / 'new' / 'tune',
                         storage='postgresql://me@127.0.0.1:1/db?password=secret'))
    assert 'secret' not in str(info.value) and 'me@127.0.0.1:1/db?password=***' in str(info.value), str(info.value)


@pytest.mark.slow(seconds=1)
def test_a_folder_an_older_version_left_without_a_record_is_its_own_studys(small_data, tmp_path):
    """Trials with no DIR/search.json: the first study to come was recorded as the folder's, and numbered its
    trials over the others'. Now the folder is the study's only if one of its complete trials left its best
    checkpoint there (the checkpoint holds the trial's value): a trial number alone, 0000, every study has."""
    from microgpt.train.checkpoint import rewrite_metadata
    out = tmp_path / 'old'
    study, trial = first_trial(options(small_data, out, study='first'))
    run = out / 'trials' / '0000'
    assert run_cli_in_process('train', '--data', small_data, '--steps', '5', '--eval-every', '5',
                              '--out', str(run), '--num-samples', '0')[0] == 0
    value = load_checkpoint(str(run / 'model.safetensors')).meta['best_val_loss']
    study.tell(trial, value)
    (out / 'search.json').unlink()  # as an older microgpt left it
    _, other_trial = first_trial(options(small_data, tmp_path / 'o', study='other',
                                         storage=f"sqlite:///{tmp_path / 'other.db'}"))
    other = options(small_data, out, study='other', storage=f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(MicrogptError) as info:
        no_trial(other)  # it has a trial 0 too, run elsewhere
    assert str(info.value) == (f"{out} holds trials with no record of their study (search.json, which microgpt before "
                               f"2026-11-30 did not write), and none of them is a run of study 'other': give another "
                               f"--out DIR"), str(info.value)
    assert not (out / 'search.json').exists()
    no_trial(options(small_data, out, study='first'))
    rewrite_metadata(str(run / 'model.safetensors'), {'best_val_loss': json.dumps(value + 1)})
    with pytest.raises(MicrogptError, match="none of them is a run of study 'first'"):
        no_trial(options(small_data, out, study='first'))


def test_a_study_that_records_the_folder_first_keeps_it(small_data, tmp_path, monkeypatch):
    """Two searches into one new folder at once: both found it free and both went ahead. The record is made only
    where none is, and read again after."""
    out = tmp_path / 'tune'
    study, _ = first_trial(options(small_data, out))
    record = json.loads((out / 'search.json').read_text())
    (out / 'search.json').unlink()
    (out / 'search.json').write_text(json.dumps({**record, 'study': 'other'}))  # the other search's, first
    from microgpt.tune.search import claim_folder
    with pytest.raises(MicrogptError, match="holds the trials of another search \\(study 'other'"):
        claim_folder(options(small_data, out), study)
    assert json.loads((out / 'search.json').read_text())['study'] == 'other'


def test_a_damaged_record_is_one_line(small_data, tmp_path):
    out = tmp_path / 'tune'
    out.mkdir()
    for text in ('[1, 2]', '{"study": "microgpt"}', 'not json', '\xff'):
        (out / 'search.json').write_text(text)
        with pytest.raises(MicrogptError, match='search.json: damaged \\(not the record of the study whose trials '
                                                'are there\\); give another --out DIR'):
            no_trial(options(small_data, out))


@pytest.mark.slow(seconds=4)
def test_two_studies_into_one_folder_keep_their_runs(small_data, tmp_path):
    """The filing's case, end to end: study 'second' into the first's folder overwrote its trial 0's run, and the
    first's report then copied the second's model into best/ beside the first's loss."""
    out = str(tmp_path / 'tune')
    common = ['tune', '--data', small_data, '--out', out, '--trials', '1', '--max-steps', '50']
    code, first, err = run_cli_in_process(*common, '--study', 'first')
    assert code == 0, err
    before = (tmp_path / 'tune' / 'trials' / '0000' / 'model.safetensors').read_bytes()
    code, _, err = run_cli_in_process(*common, '--study', 'second')
    assert code == 2 and "holds the trials of another search (study 'first'" in err, err
    code, again, err = run_cli_in_process(*common, '--study', 'first')
    assert code == 0, err
    assert (tmp_path / 'tune' / 'trials' / '0000' / 'model.safetensors').read_bytes() == before
    loss = float(re.search(r'held-out loss (\d+\.\d+)', again).group(1))
    assert round(load_checkpoint(str(tmp_path / 'tune' / 'best' / 'model.safetensors')).meta['best_val_loss'], 4) \
        == loss


def test_data_too_small_for_a_held_out_split_leaves_no_study(small_data, tmp_path):
    """The split is checked before the study is created: a study keeps the data's fingerprint, so one made for
    the bad file refused the next run on the right data."""
    tiny = tmp_path / 'tiny.txt'
    tiny.write_text('ab\n')
    with pytest.raises(MicrogptError, match='the validation split is empty: 1 distinct document is too few') as e:
        tune(options(str(tiny), tmp_path / 'tune'))
    assert '--val-fraction' not in str(e.value), str(e.value)  # tune has no such flag
    assert not (tmp_path / 'tune' / 'tune.db').exists()
    (tmp_path / 'tune').mkdir(exist_ok=True)
    assert open_study(options(small_data, tmp_path / 'tune')).user_attrs  # the right data is not refused


@pytest.mark.slow(seconds=10)  # fresh interpreters importing Optuna
def test_two_searches_making_one_new_database_at_once_both_open_it(tmp_path):
    """Optuna makes an RDB storage's tables on first use: of two processes making them in one new sqlite file at once,
    one failed (table already exists, or the schema version's unique constraint), 6 times in 6 tries here."""
    import subprocess
    import sys
    opens = "import sys; from microgpt.tune.search import make_storage; make_storage(sys.argv[1]); print('opened')"
    for i in range(3):
        url = f"sqlite:///{tmp_path / f'new{i}.db'}"
        processes = [subprocess.Popen([sys.executable, '-c', opens, url], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for _ in range(2)]
        for p in processes:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out == b'opened\n', err.decode()[-600:]


@pytest.mark.slow(seconds=1)
def test_a_trial_of_a_killed_process_is_failed_not_left_running(small_data, tmp_path):
    import subprocess
    import sys
    from microgpt.tune.search import fail_abandoned_trials
    out = tmp_path / 'tune'
    out.mkdir()
    study = open_study(options(small_data, out))
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    trial = study.ask()
    import socket
    trial.set_user_attr('worker', f"{socket.gethostname()}:{int(dead.stdout)}")
    alive = study.ask()
    alive.set_user_attr('worker', f"{socket.gethostname()}:{os.getpid()}")
    # a zombie (killed, not yet reaped) answers signal 0 as if it lived: its trial stayed running
    zombie = subprocess.Popen([sys.executable, '-c', 'pass'])
    while open(f'/proc/{zombie.pid}/stat').read().rpartition(')')[2].split()[0] != 'Z':
        pass
    study.ask().set_user_attr('worker', f"{socket.gethostname()}:{zombie.pid}")
    fail_abandoned_trials(study)
    zombie.wait()
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {0: 'FAIL', 1: 'RUNNING', 2: 'FAIL'}, states
    with pytest.raises(MicrogptError, match=r'^no trial of the study is complete yet \(2 failed, 1 running\); '):
        summarize(study, str(out))  # it showed Python's dict of the counts


@pytest.mark.slow(seconds=2)  # a study's database and report
def test_a_sigint_ignored_when_tune_started_stays_ignored(small_data, tmp_path, monkeypatch):
    """A script's `tune ... &` starts with SIGINT ignored, so that the terminal's Ctrl-C spares it: tune installed
    its stop request anyway."""
    import signal

    import optuna
    from microgpt.tune import search
    seen = []

    def trial_seeing_the_handler(trial, options, n_train_docs, should_stop):
        seen.append(signal.getsignal(signal.SIGINT))
        raise optuna.TrialPruned

    monkeypatch.setattr(search, 'run_trial', trial_seeing_the_handler)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_cli_in_process('tune', '--data', small_data, '--out', tmp_path / 'tune', '--trials', '1')
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN], seen


def test_ctrl_c_before_any_trial_completes_exits_130_saying_so(small_data, tmp_path, monkeypatch):
    """Ctrl-C during the first trial: its run saves and it is told as failed; with no trial complete there is no
    best to report, and the exit is Ctrl-C's 130 with a true line, not the error of a spent budget."""
    import signal
    from microgpt.tune import search

    def interrupted_trial(trial, options, n_train_docs, should_stop):
        signal.raise_signal(signal.SIGINT)
        assert should_stop()
        raise search.Interrupted

    monkeypatch.setattr(search, 'run_trial', interrupted_trial)
    code, out, err = run_cli_in_process('tune', '--data', small_data, '--out', tmp_path / 'tune', '--trials', '3')
    assert code == 130 and out == '', (code, out, err)
    # the last lines: a compile notice and the study's opening lines come before them, or not
    assert err.splitlines()[-3:] == ['trial    0 interrupted',
                                'microgpt: stopped before any trial of the study completed; the same command '
                                'continues it', 'microgpt: interrupted'], err
