"""The study: named experiments, each trained over several seeds and scored by held-out loss.

Every run holds out the same distinct-name validation split (its own seed, fixed across runs, so the
scores compare) and reports the mean NLL per character on it after the last step. Runs use the fused
engine in float64, which computes what the reference engine computes up to rounding (tests/test_engines_agree.py).
Results are one JSON file per (experiment, seed) in the results folder, so an interrupted study resumes where it
stopped; runs go to a process pool (one worker per core). Quiet: the CLI prints and writes the report.
"""

import json
import math
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields

from ..config import SettingError, TrainConfig, check_settings, setting
from ..data import file_sha256, holdout_split
from ..errors import MicrogptError
from ..presets import PRESETS, fields_of, model_settings
from ..processes import ctrl_c_blocked
from ..tempfiles import TEMPORARY_PREFIX, write_text
from ..train.loop import evaluate, train_chunks, training_threads
from ..train.setup import Holdout, prepare_run

SPLIT_SEED = 42  # one held-out split for every run of the study
STUDY_FILE = 'study.json'  # the data the folder's results are for
ORIGINAL_MS_PER_STEP = 283  # microgpt.py's own step on the 2-core development machine (the project's recording)
MAX_SEEDS = 10_000  # each seed is a training run per experiment: more would run for weeks (or fill the memory)


@dataclass(frozen=True)
class StudyConfig:
    """`microgpt study`: which experiments, over how many seeds, where."""
    data: str = setting(None, 'dataset', metavar='FILE', shown_default='the bundled names')
    out: str = setting('results', 'results folder', metavar='DIR')
    num_seeds: int = setting(5, 'seeds per experiment: each runs with seeds 1..N', at_least=1, at_most=MAX_SEEDS,
                             metavar='N')
    experiments: str = setting(None, 'comma-separated experiment names', shown_default='all')
    workers: int = setting(2, 'parallel training processes', at_least=1)
    list_experiments: bool = setting(False, 'list the experiments and exit', flag='--list')

    def __post_init__(self):
        check_settings(self)
        if not self.out:
            raise MicrogptError("--out needs a folder name")
        if self.list_experiments:  # it lists and exits: every other flag would change nothing
            for f in fields(self):
                if f.name != 'list_experiments' and getattr(self, f.name) != f.default:
                    raise SettingError(lambda name, key=f.name: f"{name('list_experiments')} lists the experiments "
                                                                f"and exits; leave out {name(key)}")

    @property
    def chosen(self):
        """The experiments to run, in EXPERIMENTS' order."""
        if self.experiments is None:
            return EXPERIMENTS
        names = [n.strip() for n in self.experiments.split(',') if n.strip()]
        unknown = set(names) - {e.name for e in EXPERIMENTS}
        if not names:
            raise MicrogptError("--experiments names no experiment; give names from `microgpt study --list`, "
                                "separated by commas")
        if unknown:
            raise MicrogptError(f"unknown experiments {sorted(unknown)}; see `microgpt study --list`")
        return [e for e in EXPERIMENTS if e.name in names]

    @property
    def seeds(self):
        return list(range(1, self.num_seeds + 1))


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str               # what a seed system claimed, or what the row measures
    overrides: dict          # config fields that differ from their defaults, as a preset's (presets.py)


def _preset(name, **extra):
    return {**PRESETS[name], **extra}


EXPERIMENTS = [
    Experiment('baseline', 'microgpt.py as published: 1000 steps, one name per step', {}),
    Experiment('preset-zeroclaw', 'zeroclaw: "final loss 0.69 after 5000 steps" (one document, toy list)',
               _preset('zeroclaw')),
    Experiment('preset-esp32', 'the ESP32 port as configured', _preset('esp32')),
    Experiment('preset-makemore', 'makemore\'s transformer scaled to this tool: 4 layers x 64, batch 32, 5000 steps',
               _preset('makemore', eval_every=0)),
    Experiment('no-kv-cache', '"loss stalls ~2.0 without the KV cache" (each position attends only to itself)',
               {'attention': 'self'}),
    Experiment('no-lr-decay', '"final loss 0.5-1.0 higher without LR decay"', {'lr_schedule': 'constant'}),
    Experiment('beta2-0.999', '"slower convergence with beta2 0.999"', {'beta2': 0.999}),
    Experiment('beta2-0.95', 'beta2 0.95', {'beta2': 0.95}),
    Experiment('zeroclaw-outproj-std-0.02', 'zeroclaw: "less stable with std 0.02 on the output projections" '
               '(attn_wo, mlp_fc2 drawn at std 0.02 instead of zero)', _preset('zeroclaw', zero_init=())),
    Experiment('no-rmsnorm', 'one port left out RMSNorm altogether', {'norm': 'none'}),
    Experiment('tied-lm-head', 'lm_head tied to wte', {'tie_lm_head': True}),
    Experiment('squared-relu', 'squared ReLU instead of ReLU', {'mlp_activation': 'relu2'}),
    Experiment('steps-5000', '5000 steps instead of 1000', {'steps': 5000}),
    Experiment('batch-8-equal-tokens', 'batch 8 at equal tokens seen (125 steps)', {'batch_size': 8, 'steps': 125}),
    Experiment('batch-32-equal-tokens', 'batch 32 at equal tokens seen (32 steps)',
               {'batch_size': 32, 'steps': 32}),
]


def held_out_count(docs):
    """How many of `docs` every run of the study is scored on: run_one's split."""
    split = Holdout(seed=SPLIT_SEED)
    return len(holdout_split(docs, split.fraction, split.seed, split.by)[1])


def run_one(experiment, seed, data_path, engine='fused'):
    """Train one (experiment, seed) and return its held-out loss and final training-loss mean."""
    tcfg = TrainConfig(**{**fields_of(TrainConfig, experiment.overrides), 'seed': seed})
    run = prepare_run(data_path, model_settings(experiment.overrides), tcfg, engine, holdout=Holdout(seed=SPLIT_SEED))
    with training_threads():
        losses = [loss for chunk in train_chunks(run.engine, run.train_tokens, tcfg) for loss in chunk.losses]
        val_loss = evaluate(run.engine, run.val_tokens)
    tail = losses[-max(1, len(losses) // 10):]
    return {'experiment': experiment.name, 'seed': seed, 'val_loss': val_loss,
            'train_loss_tail': sum(tail) / len(tail), 'steps': tcfg.steps, 'params': run.engine.num_params()}


@contextmanager
def _writing(path):
    """A failed write (a file where the folder should be, no permission, a full disk) is one error naming `path`."""
    try:
        yield
    except OSError as e:
        raise MicrogptError(f"{path}: cannot write the study's results ({e.strerror or e}); give another --out DIR") \
            from None


def result_path(folder, name, seed):
    return os.path.join(folder, 'runs', f'{name}.seed{seed}.json')


def read_result(folder, name, seed):
    """The saved result of (experiment, seed), or None when there is none, or it cannot be read (damaged or edited):
    then it is run again."""
    try:
        with open(result_path(folder, name, seed), encoding='utf-8') as f:
            result = json.load(f)
        return result if isinstance(result, dict) and isinstance(result.get('val_loss'), (int, float)) else None
    except (OSError, ValueError):
        return None


def claim_folder(folder, data_path, alone=False):
    """A study folder's results are for one data file: its SHA-256 is kept in DIR/study.json, and another file's
    study in the same folder is refused (its results would be mixed with, or taken for, this one's). A claim with no
    result behind it (its study stopped first: data too small for the held-out split, Ctrl-C) is replaced when
    this study is `alone` in the folder (`_claimed`)."""
    want, path = {'data_sha256': file_sha256(data_path)}, os.path.join(folder, STUDY_FILE)
    try:
        with open(path, encoding='utf-8') as f:
            have = json.load(f)
    except FileNotFoundError:
        have = None
    except (OSError, ValueError):
        raise MicrogptError(f"{path}: cannot be read; give another --out DIR") from None
    if have == want:
        return
    if have is not None and not (alone and not _holds_results(folder)):
        raise MicrogptError(f"{folder}: holds a study of another data file; give another --out DIR")
    with _writing(path):
        write_text(path, json.dumps(want))


def _holds_results(folder):
    try:
        return any(name.endswith('.json') and not name.startswith(TEMPORARY_PREFIX)  # a killed write's temporary
                   for name in os.listdir(os.path.join(folder, 'runs')))
    except OSError:
        return False


@contextmanager
def _claimed(folder, data_path):
    """claim_folder, then a shared lock on DIR/.study.lock for as long as the study runs: a study that finds no
    other holding it is alone in the folder, and may replace a claim no result backs. The check and the claim are
    made under DIR/.study.claim.lock, so that two studies starting at once cannot both find themselves alone (taking
    the running lock alone and then sharing it is not one step). Where no lock can be had, a study is not alone."""
    with ExitStack() as files:  # the locks go with the files
        try:
            import fcntl
            running, claiming = [files.enter_context(open(os.path.join(folder, name), 'a'))
                                 for name in ('.study.lock', '.study.claim.lock')]
        except (ImportError, OSError):
            running = None
        if running is None:
            claim_folder(folder, data_path)
        else:
            fcntl.flock(claiming, fcntl.LOCK_EX)
            try:
                fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except OSError:
                alone = False
            fcntl.flock(running, fcntl.LOCK_SH)  # other studies of the same data may join this one
            claim_folder(folder, data_path, alone)
            fcntl.flock(claiming, fcntl.LOCK_UN)
        yield


def _start_worker():
    """Pool workers already fill the cores: the fused engine's own threads would only contend with them. A Ctrl-C
    is the first process's to act on (it ends the workers): in a worker it would be a traceback. The worker started
    with it blocked (processes.ctrl_c_blocked), and ignores it from now on."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..engines.fused.threads import set_threads
    set_threads(1)


def _run_and_save(args):
    experiment, seed, data_path, folder = args
    result = run_one(experiment, seed, data_path)
    path = result_path(folder, experiment.name, seed)
    with _writing(path):
        write_text(path, json.dumps(result))
    return result


def run_study(experiments, seeds, data_path, folder, workers=2):
    """Yield each result as it finishes, skipping (experiment, seed) pairs already in `folder`."""
    with _writing(folder):
        os.makedirs(os.path.join(folder, 'runs'), exist_ok=True)  # also when a user removed runs/ to run them again
    with _claimed(folder, data_path):
        yield from _run_each(experiments, seeds, data_path, folder, workers)


def _run_each(experiments, seeds, data_path, folder, workers):
    todo = [(e, s, data_path, folder) for e in experiments for s in seeds if read_result(folder, e.name, s) is None]
    if workers <= 1:
        for job in todo:
            yield _run_and_save(job)
        return
    from ..engines.fused.engine import compile_kernels
    compile_kernels('float64')  # once, before the workers
    # spawned, not forked: a fork keeps none of the parent's threads (the fused engine's, torch's OpenMP)
    import multiprocessing  # here, as in every module the CLI imports: `microgpt train` does not load them
    from concurrent.futures import ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context('spawn'),
                               initializer=_start_worker)
    with ctrl_c_blocked():  # the workers start at the first submit, and ignore it once started
        runs = [pool.submit(_run_and_save, job) for job in todo]
    try:
        for run in runs:
            while not wait([run], timeout=0.2).done:  # polled: a Ctrl-C may land in another thread (numba's),
                pass                                  # and a wait without end would not see it
            yield run.result()
    except BaseException as error:  # Ctrl-C, a run's error, a worker lost: the runs under way stop now, their
        _end_at_once(pool)          # results unwritten (the pool's own shutdown ran every queued run first)
        if isinstance(error, BrokenProcessPool):
            raise MicrogptError("a worker process of the study ended abruptly (killed, or out of memory); the "
                                "results so far are kept: run the same command again to continue") from None
        raise
    pool.shutdown()


def _end_at_once(pool):
    """Cancel the pool's queued runs and end its workers in the middle of theirs (the executor's processes are not
    public API: where they move, its shutdown waits for the runs under way)."""
    processes = list((getattr(pool, '_processes', None) or {}).values())  # (shutdown forgets them)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


def summarize(experiments, seeds, folder):
    """(experiment, mean, std, n) of held-out loss over the seeds that have finished; std is None for one seed."""
    rows = []
    for e in experiments:
        losses = [result['val_loss'] for result in (read_result(folder, e.name, s) for s in seeds) if result]
        if losses:
            mean = sum(losses) / len(losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) if len(losses) > 1 else None
            rows.append((e, mean, std, len(losses)))
    return rows


def format_score(mean, std):
    """'mean +/- std', or the mean alone when one seed gives no spread."""
    return f'{mean:.4f}' if std is None else f'{mean:.4f} +/- {std:.4f}'


def measure_speed(data_path, reference_steps=30, fused_steps=1000):
    """(reference us/step, fused us/step) on the seeded default job, side by side in this process."""
    from .benchmark import time_engine
    reference = time_engine('reference', data_path, reference_steps)
    fused = time_engine('fused', data_path, fused_steps, warmup_steps=64)
    return reference.us_per_step, fused.us_per_step


def write_report(rows, folder, command, speed=None, held_out=None):
    """RESULTS.md (a Markdown table) and results.png (mean +/- std per experiment) in `folder`; `held_out`, the
    number of documents every run was scored on (the data's split, SPLIT_SEED's)."""
    scored = f'{held_out:,} distinct documents' if held_out is not None else 'the held-out documents'
    lines = ['# microgpt study: held-out loss by experiment', '',
             f'Reproduce: `{command}`', '',
             f'Held-out loss: mean negative log-likelihood per character (nats) on {scored} never '
             'trained on, after the last step; mean +/- sample standard deviation over seeds.', '',
             'The baseline is microgpt.py\'s own setup, the reference point for every other row (on makemore\'s '
             'names.txt it sits near 2.37 nats). A difference smaller than about twice the standard deviations '
             'is not a measured effect.', '',
             '| experiment | claim / what it measures | held-out loss | vs baseline | seeds |',
             '| --- | --- | ---: | ---: | ---: |']
    baseline = next((mean for e, mean, _, _ in rows if e.name == 'baseline'), None)
    for e, mean, std, n in rows:
        delta = f'{mean - baseline:+.4f}' if baseline is not None else 'n/a'
        lines.append(f'| {e.name} | {e.claim} | {format_score(mean, std)} | {delta} | {n} |')
    if speed is not None:
        reference_us, fused_us = speed
        lines += ['', '## Speed', '',
                  '| claim | measured (seeded default job, same process) |', '| --- | --- |',
                  f'| a port: "4,580x faster" than microgpt.py | the fused engine takes {fused_us:.1f} us per training '
                  f'step, the reference engine (microgpt.py\'s algorithm on a scalar autograd, same output bit for '
                  f'bit) {reference_us / 1000:.1f} ms: {reference_us / fused_us:,.0f}x. microgpt.py itself was '
                  f'recorded at {ORIGINAL_MS_PER_STEP} ms per step on the 2-core development machine, which makes '
                  f'{ORIGINAL_MS_PER_STEP * 1000 / fused_us:,.0f}x |']
    with _writing(folder), open(os.path.join(folder, 'RESULTS.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.errorbar([m for _, m, _, _ in rows], range(len(rows)), xerr=[s or 0.0 for _, _, s, _ in rows], fmt='o')
    ax.set_yticks(range(len(rows)), [e.name for e, *_ in rows])
    ax.invert_yaxis()
    ax.set_xlabel('held-out loss (nats per character)')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with _writing(folder):
        fig.savefig(os.path.join(folder, 'results.png'), dpi=120)
    plt.close(fig)
