"""Run a search: trials are whole training runs on the fused engine, told to one Optuna study.

Each trial asks the study for a point of the space (space.py), trains it as `microgpt train` would with those
flags (the makemore preset as the base, float32, a held-out split of distinct names, evaluation 8 times a run)
into DIR/trials/NNNN, reports every held-out loss to the study's pruner, and is told back as complete (its best
held-out loss), pruned, or failed. Trials are asked and told one at a time (Optuna's ask-and-tell), so several
processes, here or on other machines, can share one storage: the storage gives each trial to one process.
"""

import math
import os
import re
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import ModelConfig, SettingError, TrainConfig, check_settings, flag_name, setting
from ..data import bundled_dataset_path, file_sha256, holdout_split, load_documents, redacted
from ..errors import MicrogptError
from ..fetch import is_url, local_path
from ..presets import fields_of, model_settings, resolve
from ..processes import ctrl_c_blocked
from ..tempfiles import folder_for, lock_folder, write_new_text
from ..train.run import EvalReport, TrainingRun
from ..train.setup import RunConfig, RunSettings
from . import space

BASE_PRESET = 'makemore'    # what a trial's flags override: init std 0.02, Adam betas 0.9 / 0.99
EVALUATIONS = 8             # held-out evaluations per trial, each reported to the pruner
STUDY_DB = 'tune.db'
SEARCH_FILE = 'search.json'  # the study whose trials the folder holds
TRIALS_DIR = 'trials'
AGAIN_DIR = 'again'  # where the printed command trains a trial again


@dataclass(frozen=True)
class TuneConfig:
    """`microgpt tune`'s settings; each is a flag."""
    data: str = setting(None, 'UTF-8 text file, one document per line', metavar='FILE',
                        shown_default='the bundled US baby names list')
    out: str = setting('tune', 'folder of the search: the study (tune.db), each trial\'s run (trials/), the best '
                               'run (best/), TRIALS.md and the plots', metavar='DIR')
    trials: int = setting(None, "the study's total number of trials (complete or pruned) to reach; the same "
                                "command again continues an interrupted search", at_least=1, metavar='N',
                          shown_default='no limit: give --trials and/or --minutes')
    minutes: float = setting(None, 'no trial starts after this many minutes of this invocation (a running one '
                                   'finishes)', metavar='M', shown_default='no limit')
    storage: str = setting(None, 'an Optuna storage URL shared by every worker, here or on other machines: '
                                 'sqlite:///FILE, postgresql://..., mysql://..., or journal:FILE', metavar='URL',
                           shown_default='sqlite:///DIR/tune.db')
    workers: int = setting(1, 'processes here that run trials of the study at the same time (the cores are '
                              'shared between them)', at_least=1, metavar='N')
    study: str = setting('microgpt', 'the study\'s name in the storage', metavar='NAME')
    max_steps: int = setting(20000, "the most steps one trial trains (a trial's length is searched in epochs)",
                             at_least=50, metavar='N')
    seed: int = setting(42, 'seed of every trial\'s run (its shuffle, initialisation and held-out split)',
                        at_least=0)

    def __post_init__(self):
        check_settings(self)
        if self.trials is None and self.minutes is None:
            raise SettingError(lambda name: f"give a budget: {name('trials')} N and/or {name('minutes')} M")
        if self.minutes is not None and not self.minutes > 0:
            raise SettingError(lambda name: f"{name('minutes')} must be > 0, got {self.minutes}")
        if self.out == '':
            raise SettingError(lambda name: f"{name('out')} needs a folder name")
        if not self.study.strip():
            raise SettingError(lambda name: f"{name('study')} needs a name, got {self.study!r}")

    def check(self):
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise MicrogptError(f"{self.out}: exists and is not a folder; give another --out DIR")
        if self.storage == '':
            raise MicrogptError("--storage needs a URL; leave it out for the folder's own DIR/tune.db")
        if self.storage is not None and _in_memory(self.storage):
            raise MicrogptError(f"--storage {self.storage}: a database in memory ends with each process (the report "
                                f"would find no trial); give sqlite:///FILE, or leave --storage out for DIR/tune.db")
        return self

    @property
    def data_path(self):
        """As given (a trial's `train` flags keep an http(s) address as it is): the bundled names if none."""
        return bundled_dataset_path() if self.data is None else self.data

    @property
    def local_data_path(self):
        """The file to read: data_path, or its download."""
        return local_path(self.data_path)

    @property
    def storage_url(self):
        return self.storage or f"sqlite:///{os.path.abspath(os.path.join(self.out, STUDY_DB))}"


# ---- the study and its storage

def _parsed(url):
    """SQLAlchemy's reading of a database URL (Optuna's RDB storages are SQLAlchemy's), or None."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url)
    except Exception:  # not a database URL (a journal file), or SQLAlchemy's parser moved
        return None


def _in_memory(url):
    """An sqlite database that lives in the process: no file, ':memory:', or SQLite's URI form of one
    (`file:NAME?mode=memory&uri=true`)."""
    parsed = _parsed(url)
    if parsed is None or not parsed.drivername.startswith('sqlite'):
        return False
    from sqlalchemy.util import asbool
    uri = asbool(parsed.query.get('uri', False))  # as SQLAlchemy reads it (true, 1, yes, on); else 'file:' names a file
    return parsed.database in (None, '', ':memory:') or uri and (parsed.query.get('mode') == 'memory' or
                                                                   parsed.database.startswith('file::memory:'))


PASSWORD_PARAMETERS = ('password', 'passwd', 'pwd')  # a driver's password given in the query string


def shown_storage(url):
    """A storage URL for a message or a file: its password, if any, shown as *** (in the address, or as a query
    parameter such as ?password=)."""
    parsed = _parsed(url)
    if parsed is None:
        return redacted(url)
    hidden = {key: '***' for key in parsed.query if key.lower() in PASSWORD_PARAMETERS}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True).replace('%2A%2A%2A', '***')


def make_storage(url):
    """An Optuna storage for `url`: an RDB URL (sqlite, postgresql, mysql, ...) or `journal:PATH` / the path of a
    `.log` file (Optuna's journal file, for file systems shared between machines; a URL ending in .log, such as
    sqlite:///x.log, is the URL)."""
    import optuna
    try:
        if url.startswith('journal:') or '://' not in url and url.endswith('.log'):
            from optuna.storages.journal import JournalFileBackend, JournalStorage
            path = url[len('journal:'):] if url.startswith('journal:') else url
            return JournalStorage(JournalFileBackend(path))
        return _rdb_storage(url)
    except Exception as e:  # SQLAlchemy and the drivers raise many types; each is one line for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MicrogptError(f"cannot open the study storage {shown_storage(url)!r} ({reason}); give an Optuna "
                            f"storage URL such as sqlite:///tune.db, postgresql://user@host/db or "
                            f"journal:FILE") from None


def _rdb_storage(url, tries=10):
    """Optuna's RDBStorage, which makes its tables in a new database: two processes making them in one at once race
    there (one fails with 'table studies already exists', or a unique constraint on the schema's version: every time,
    two `microgpt tune` started together on a new sqlite file), and the one that lost finds them made when it tries
    again."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={'connect_args': {'timeout': 60}}
                                              if url.startswith('sqlite') else {})
        except (IntegrityError, OperationalError) as e:
            if attempt == tries - 1 or not (isinstance(e, IntegrityError) or 'already exists' in str(e)):
                raise
            time.sleep(0.1 * (attempt + 1))


def fingerprint(options):
    """What a study must keep to stay one search: the data's bytes, the space, the trial length cap and the seed
    (it draws the held-out split every trial is scored on)."""
    return {'data_sha256': file_sha256(options.local_data_path), 'space_version': space.SPACE_VERSION,
            'max_steps': options.max_steps, 'seed': options.seed}


def open_study(options, before_creating=lambda: None):
    """The study in the options' storage, created on first use (once `before_creating()` has not raised); refused
    if it was made for other data or space."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(options.storage_url)
    search = dict(sampler=optuna.samplers.TPESampler(seed=None, n_startup_trials=6),
                  pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1))
    try:
        study = optuna.load_study(study_name=options.study, storage=storage, **search)
    except KeyError:  # no such study yet: a refused search must not leave one, with its fingerprint, behind
        before_creating()
        study = optuna.create_study(storage=storage, study_name=options.study, direction='minimize',
                                    load_if_exists=True, **search)
    want, have = fingerprint(options), dict(study.user_attrs)
    if 'seed' not in have:  # a study made before the seed was recorded: its trials' commands name it
        seeds = sorted(seed for seed in map(_seed_of, study.get_trials(deepcopy=False)) if seed is not None)
        if seeds:
            have['seed'] = seeds[0]
            study.set_user_attr('seed', seeds[0])
    differ = ', '.join(k for k in want if k in have and have[k] != want[k])
    if differ:
        other = "--study NAME and --out DIR" if options.storage else "--out DIR"
        raise MicrogptError(f"study {options.study!r} in {shown_storage(options.storage_url)} was made with another "
                            f"{differ}; give another {other} for this search")
    for key, value in want.items():
        if key not in have:  # a new study, or one made before the key was recorded
            study.set_user_attr(key, value)
    return study


def _seed_of(trial):
    """The --seed of the command a trial recorded, or None."""
    import shlex
    try:
        words = shlex.split(trial.user_attrs.get('command', ''))
        return int(words[words.index('--seed') + 1])
    except (ValueError, IndexError):
        return None


def _search_record(study, storage_url):
    """What DIR/search.json keeps of the study whose trials DIR holds: the study itself, named by its name and the
    time its trial 0 started (set once by the storage, the same for every process that reads it, however the
    storage is given, and for no other study); and for messages, its storage as given, without a password. None
    before the study has a trial."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return None
    first = min(trials, key=lambda t: t.number)  # to the second: MySQL's DATETIME keeps no fraction
    started = first.datetime_start.isoformat(timespec='seconds') if first.datetime_start else ''
    return {'study': study.study_name, 'first_trial_started': started, 'storage': shown_storage(storage_url)}


def _read_record(path):
    """DIR/search.json's record, or None where there is none."""
    import json
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
        return {key: record[key] for key in ('study', 'first_trial_started', 'storage')}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise MicrogptError(f"{path}: damaged (not the record of the study whose trials are there); give another "
                            f"--out DIR") from None


def check_folder(options, study):
    """Refuse a --out DIR that holds the trials of another study (another --study, or another --storage): this
    search's trial NNNN would overwrite that one's run, and DIR/best/ would copy a run of the other study. A folder
    of trials with no record (made by microgpt before 2026-11-30) is this study's if one of its complete trials
    left its best checkpoint there. `study` None: a study about to be made, which holds no trial yet."""
    record = _read_record(os.path.join(options.out, SEARCH_FILE))
    if record is None:
        trials = os.path.join(options.out, TRIALS_DIR)
        if os.path.isdir(trials) and os.listdir(trials) and (study is None or not _ran_here(study, trials)):
            raise MicrogptError(f"{options.out} holds trials with no record of their study ({SEARCH_FILE}, which "
                                f"microgpt before 2026-11-30 did not write), and none of them is a run of study "
                                f"{options.study!r}: give another --out DIR")
        return
    mine = _search_record(study, options.storage_url) if study is not None else None
    if mine is None or (mine['study'], mine['first_trial_started']) != (record['study'],
                                                                        record['first_trial_started']):
        raise MicrogptError(f"{options.out} holds the trials of another search (study {record['study']!r} in "
                            f"{record['storage']}); those of study {options.study!r} in "
                            f"{shown_storage(options.storage_url)} would overwrite them: give another --out DIR, or "
                            f"continue that search with its --study and --storage")


def _ran_here(study, trials_dir):
    """Whether a complete trial of `study` left its run in trials_dir."""
    from optuna.trial import TrialState
    return any(holds_the_trial(trials_dir, trial) for trial in study.get_trials(deepcopy=False,
                                                                                states=(TrialState.COMPLETE,)))


def holds_the_trial(trials_dir, trial):
    """Whether trials_dir/NNNN is the run of the complete `trial`: its best checkpoint holds the trial's value (a
    number alone names the trial of any study)."""
    from ..train.checkpoint import load_checkpoint
    path = os.path.join(trials_dir, f"{trial.number:04d}", 'model.safetensors')
    try:
        return os.path.isfile(path) and load_checkpoint(path).meta.get('best_val_loss') == trial.value
    except MicrogptError:  # a damaged run: not evidence either way
        return False


def claim_folder(options, study):
    """Record in DIR/search.json the study whose trials DIR holds (check_folder reads it), once the study has a
    trial, unless another search recorded its own first: checked again after."""
    import json
    path = os.path.join(options.out, SEARCH_FILE)
    record = _search_record(study, options.storage_url)
    if record is not None and not os.path.exists(path):
        write_new_text(path, json.dumps(record, indent=1) + '\n')
    check_folder(options, study)


# ---- one trial

def trial_flags(model, train, options, eval_every):
    """The settings a trial gives on top of the base preset: what `microgpt train` is given as flags."""
    return {'data': options.data_path, 'engine': 'fused', 'dtype': 'float32', 'eval_every': eval_every,
            **model, **train, 'seed': options.seed}


def command_line(flags, out_dir):
    """`microgpt train ...` with exactly these settings: it reproduces the trial."""
    import shlex
    fields_by_name = {f.name: f for cls in (RunConfig, ModelConfig, TrainConfig) for f in cls.__dataclass_fields__.values()}
    words = ['microgpt', 'train', '--preset', BASE_PRESET]
    for name, value in flags.items():
        words += [flag_name(fields_by_name[name]), str(value)]
    return shlex.join(words + ['--out', out_dir])


def run_trial(trial, options, n_train_docs, should_stop):
    """Train one trial; returns its best held-out loss. Raises optuna.TrialPruned when the pruner says so."""
    import optuna
    model, train = space.suggest(trial, n_train_docs, options.max_steps)
    eval_every = max(1, train['steps'] // EVALUATIONS)
    flags = trial_flags(model, train, options, eval_every)
    out_dir = os.path.join(options.out, TRIALS_DIR, f"{trial.number:04d}")
    claim_folder(options, trial.study)  # the study has a trial now: the folder is recorded as its own
    # the command that trains it again writes beside the trial, not over it: pasted as printed, from any folder, it
    # runs (a relative --data and --out named other files once a later search ran from another folder)
    again = {**flags, 'data': flags['data'] if is_url(flags['data']) else os.path.abspath(flags['data'])}
    trial.set_user_attr('command', command_line(again, os.path.abspath(os.path.join(options.out, AGAIN_DIR,
                                                                                    f"{trial.number:04d}"))))
    trial.set_user_attr('out', out_dir)  # where its run went, as this search named it
    trial.set_user_attr('worker', f"{socket.gethostname()}:{os.getpid()}")
    settings = resolve(BASE_PRESET, {**flags, 'out': out_dir, 'overwrite': True})
    run = TrainingRun(RunSettings(RunConfig(**fields_of(RunConfig, settings)), model_settings(settings),
                                  TrainConfig(**fields_of(TrainConfig, settings)), BASE_PRESET))
    started = time.perf_counter()
    best = math.inf
    for event in run.events(should_stop=should_stop):
        if isinstance(event, EvalReport):
            best = event.best_val_loss
            trial.report(event.val_loss, event.step)
            if trial.should_prune():
                trial.set_user_attr('seconds', time.perf_counter() - started)
                raise optuna.TrialPruned(f"held-out loss {event.val_loss:.4f} at step {event.step}")
    trial.set_user_attr('seconds', time.perf_counter() - started)
    if run.step < train['steps']:
        raise Interrupted
    return best


class Interrupted(Exception):
    """The trial's run stopped early on request; it saved its state and is told as failed."""


def fail_abandoned_trials(study):
    """Trials left 'running' by a process of this machine that no longer exists (killed, or the machine
    restarted) are told as failed, so they neither count against the budget nor stay running for ever.
    Trials of other machines are left to those machines."""
    from optuna.trial import TrialState
    here = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get('worker', '').rpartition(':')
        if host == here and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, and not yet reaped by its parent) answers signal 0, but runs no trial
        with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except (OSError, IndexError):  # no /proc (macOS): alive, as signal 0 says
        return True


def finished_trials(study):
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def work(options, deadline, stop_requested, on_trial=lambda trial, state, value: None):
    """Ask, train and tell trials until the budget is spent or a stop is requested. One process's share. A storage
    that fails on the way (a full disk, a database server gone) is one MicrogptError."""
    import optuna
    try:
        _work(options, deadline, stop_requested, on_trial)
    except optuna.exceptions.StorageInternalError as e:  # Optuna's words are of a commit; its cause says what failed
        reason = re.sub(r'^\([\w.]+\) ', '', str(e.__cause__ or e).splitlines()[0])  # SQLAlchemy's '(sqlite3.Error) '
        raise MicrogptError(f"the study storage {shown_storage(options.storage_url)} failed ({reason}); the trials "
                            f"it recorded are kept, and the same command continues the search once it works "
                            f"again") from None


def _work(options, deadline, stop_requested, on_trial):
    import optuna
    from optuna.trial import TrialState
    study = open_study(options)
    n_train_docs = len(holdout_split(load_documents(options.local_data_path), None, options.seed, 'name')[0])
    while not stop_requested():
        with _one_asking_at_a_time(options.out):  # two workers that both counted 7 trials of 8 ran 9
            if options.trials is not None and finished_trials(study) >= options.trials:
                return
            if deadline is not None and time.time() >= deadline:
                return
            trial = study.ask()
        try:
            value = run_trial(trial, options, n_train_docs, stop_requested)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            on_trial(trial, 'pruned', None)
        except Interrupted:
            trial.set_user_attr('interrupted', True)
            study.tell(trial, state=TrialState.FAIL)
            on_trial(trial, 'interrupted', None)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            on_trial(trial, 'complete', value)


# ---- several processes on one storage

@contextmanager
def _one_asking_at_a_time(folder):
    """The processes of this machine searching into `folder` count the study's trials and ask for the next one at a
    time: the folder's lock (tempfiles.lock_folder), held for that only; none where there is none to take."""
    fd = lock_folder(folder, wait=True)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it


class _StopFlag:
    """SIGINT sets the flag: running trials finish their step, save and are told; no trial starts after."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _worker(options, deadline, threads, stop_all):
    """One of `tune --workers N`'s processes: it stops on its own Ctrl-C (a terminal's reaches every process) or
    when the first process sets `stop_all` (its Ctrl-C alone: `kill -INT`)."""
    import sys
    os.environ['NUMBA_NUM_THREADS'] = str(threads)  # before numba loads: each worker takes its share of the cores
    stop = _StopFlag()
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked as it started (tune): a Ctrl-C since
    try:
        work(options, deadline, lambda: stop.requested or stop_all.is_set())
    except MicrogptError as e:  # one line, as the command line says it, not multiprocessing's traceback
        print(f"microgpt: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def tune(options, on_trial=lambda trial, state, value: None, stop_requested=lambda: False):
    """Run this invocation's share of the search; returns the study."""
    options.check()
    # bad data, or too little to hold some out, is one line before any study or process starts: a study is
    # created with the data's fingerprint, and would refuse the next run on the right data
    holdout_split(load_documents(options.local_data_path), None, options.seed, 'name')
    with folder_for(options.out) as written:  # a storage that cannot be opened leaves no new folder
        if options.storage is None:
            written.append(os.path.join(options.out, STUDY_DB))
        study = open_study(options, before_creating=lambda: check_folder(options, None))
        check_folder(options, study)
    fail_abandoned_trials(study)
    deadline = time.time() + 60 * options.minutes if options.minutes is not None else None
    if options.workers == 1:
        work(options, deadline, stop_requested, on_trial)
        return study
    from ..engines.fused.compile import compile_kernels
    compile_kernels('float32', grouped=True)  # once here, so the workers load it from the cache
    if stop_requested():  # Ctrl-C while compiling: no trial starts
        return study
    threads = max(1, (os.cpu_count() or 1) // options.workers)
    import multiprocessing
    context = multiprocessing.get_context('spawn')  # a fork keeps none of the parent's threads
    stop_all = context.Event()
    processes = [context.Process(target=_worker, args=(options, deadline, threads, stop_all))
                 for _ in range(options.workers)]
    # started with Ctrl-C blocked (a process inherits the mask), which _worker unblocks once it has its handler: a
    # Ctrl-C while they start, importing, was a traceback in each; here it waits, as in this thread, until unblocked
    with ctrl_c_blocked():
        for p in processes:
            p.start()
    try:
        while any(p.is_alive() for p in processes):
            if stop_requested():
                stop_all.set()
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C: the workers got it too, and end at once
        for p in processes:
            p.join()
        raise
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise MicrogptError(f"{len(failed)} of {options.workers} tune workers failed (exit {failed[0]}); the "
                            f"study keeps every trial they told; run the command again to continue")
    return study
