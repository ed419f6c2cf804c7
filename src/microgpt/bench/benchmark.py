"""Side-by-side timing of the engines on the same seeded job. Quiet: returns numbers; the CLI prints them."""

import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, fields
from itertools import islice

from ..config import SettingError, TrainConfig, check_settings, setting
from ..engines import BENCH_ENGINES
from ..errors import MicrogptError
from ..train.loop import train, train_chunks, training_threads
from ..train.setup import prepare_run


@dataclass(frozen=True)
class BenchConfig:
    """`microgpt bench`: which engines, on how many steps."""
    data: str = setting(None, 'dataset', metavar='FILE', shown_default='the bundled names')
    reference_steps: int = setting(30, 'steps to time the slow reference engine on', at_least=1, metavar='N')
    steps: int = setting(1000, 'steps to time the other engines on', at_least=1, metavar='N')
    engines: str = setting(','.join(BENCH_ENGINES), 'comma-separated engines to time; torch is the same model in '
                                                    'PyTorch autograd, when installed')

    def __post_init__(self):
        check_settings(self)
        unknown = set(self.engine_names) - set(BENCH_ENGINES)
        if not self.engine_names:
            raise SettingError(lambda name: f"{name('engines')} names no engine; choose from {', '.join(BENCH_ENGINES)}")
        if unknown:
            raise MicrogptError(f"unknown engines {sorted(unknown)}; choose from {', '.join(BENCH_ENGINES)}")
        default = {f.name: f.default for f in fields(self)}  # a step count of an engine not timed changes nothing
        for key, timed, what in (('reference_steps', 'reference' in self.engine_names, 'the reference engine'),
                                 ('steps', set(self.engine_names) != {'reference'}, 'the engines but the reference')):
            if not timed and getattr(self, key) != default[key]:
                raise SettingError(lambda name, key=key, what=what: f"{name(key)} times {what}, which "
                                                                    f"{name('engines')} leaves out")

    @property
    def engine_names(self):
        names = [name.strip() for name in self.engines.split(',') if name.strip()]
        return list(dict.fromkeys(names))  # each once, in the order given: `numpy,numpy` times it once


@dataclass(frozen=True)
class EngineTiming:
    engine: str
    dtype: str
    steps: int
    seconds: float           # training only: start-up, data loading and (for fused) compilation excluded
    tokens: int

    @property
    def us_per_step(self):
        return 1e6 * self.seconds / self.steps

    @property
    def tokens_per_second(self):
        return self.tokens / self.seconds


def cpu_name(cpuinfo_path='/proc/cpuinfo'):
    """The CPU's model name (Linux's /proc/cpuinfo, else what Python's platform module knows): speed figures are
    only comparable on one CPU, so each benchmark names it beside its figures. An x86 CPU's family and model
    follow it, since a virtual machine's name may be its maker's line alone ("AMD EPYC" is a Zen 3 as family
    25 model 1, a Zen 4 as model 17)."""
    fields = {}
    try:
        with open(cpuinfo_path, encoding='utf-8') as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(':')
                if not key.strip():
                    break  # the first processor's block only
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get('model name') or platform.processor() or 'unknown CPU'
    if 'cpu family' in fields and 'model' in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def source_tree(parser, path):
    """The absolute path of a folder holding the microgpt package (a checkout's src/), for the benchmarks that compare
    two trees: anything else would import the installed package instead, and compare it with itself."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, 'microgpt', '__init__.py')):
        parser.error(f"{path} holds no microgpt package: give a checkout's src folder")
    return path


def prepared_job(data_path, seed, model_overrides=None):
    """The seeded job's rng (positioned at initialisation), training tokens and config: train's setup for callers
    that build their own model from the rng (benchmarks/)."""
    run = prepare_run(data_path, model_overrides or {}, TrainConfig(seed=seed), engine=None)
    return run.rng, run.train_tokens, run.cfg


def time_engine(engine_name, data_path, steps, dtype='float64', seed=42, model_overrides=None,
                batch_size=1, warmup_steps=0):
    """Time `steps` training steps of the seeded job (train's setup, without a held-out split); `warmup_steps`
    untimed steps first (JIT, caches)."""
    tcfg = TrainConfig(steps=warmup_steps + steps, batch_size=batch_size, seed=seed)
    run = prepare_run(data_path, model_overrides or {}, tcfg, engine_name, dtype)
    with training_threads():
        seconds, tokens = time_training(run.engine, run.train_tokens, tcfg, warmup_steps)
    return EngineTiming(engine_name, dtype, steps, seconds, tokens)


def time_training(engine, doc_tokens, tcfg, warmup_steps):
    """(seconds, predicted tokens) of train()'s steps warmup_steps .. tcfg.steps - 1 on `engine`, after its first
    warmup_steps untimed: the run's own steps and learning rates. The warm-up's chunks end at its last step; the
    timed steps run chunk_steps at a time from there, the engine's chunks as `microgpt train` runs them (ending a
    chunk at each multiple of the warm-up instead made the fused engine's default step 13% longer: 17.4-17.8 us
    against 15.4-15.7 in float64, the 2-core AMD EPYC)."""
    for _ in islice(train(engine, doc_tokens, tcfg, sync_every=(warmup_steps,)), warmup_steps):
        pass  # stops after the warm-up's last report, with its chunk done: the next one never starts
    tokens, start = 0, time.perf_counter()
    for chunk in train_chunks(engine, doc_tokens, tcfg, start_step=warmup_steps):  # reported as microgpt train does
        tokens += sum(chunk.tokens)
    return time.perf_counter() - start, tokens


def time_cli_train(extra_args=(), repeats=3):
    """Best whole-process wall time of `python -m microgpt train` (start-up and sampling included)."""
    import subprocess
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run([sys.executable, '-m', 'microgpt', 'train', *extra_args], stdout=subprocess.DEVNULL,
                              env={**os.environ, 'PYTHONHASHSEED': '0'}).returncode
        if code:  # its own error is on standard error, above
            raise MicrogptError(f"the timed `microgpt train {shlex.join(extra_args)}` ended with exit status {code}")
        best = min(best, time.perf_counter() - start)
    return best
