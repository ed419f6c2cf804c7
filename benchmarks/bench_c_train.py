"""Microseconds per training step of the exported C training program on this host, beside the fused and numpy
engines' float32 steps on the same model and documents, in one run.

    python benchmarks/bench_c_train.py [--data names.txt] [--steps 1000] [--repeats 3]

microgpt's default job: names shuffled by seed 42, the default model, one document a step. The C program is
built with its own build command (cc -O2) in the normal and the --low-memory build and run as a process;
its per-step time is (time of STEPS + 1 steps - time of 1 step) / STEPS, so start-up and the document
table's loading cancel out. The engines run through train.loop.train after a warm-up (the fused engine's
kernels are compiled or loaded from numba's cache before timing). Rounds alternate between the contenders;
each figure is the median over the rounds. Times are CPU time (user + system: the C program's from
getrusage of the child, the engines' from time.process_time), so that other processes on a shared machine do
not inflate them; every contender runs on one thread.
"""

import argparse
import os
import random
import statistics
import subprocess
import resource
import tempfile
import time

from microgpt.bench.benchmark import cpu_name
from microgpt.config import ModelConfig, TrainConfig
from microgpt.data import Vocabulary, load_documents, shuffled
from microgpt.engines import make_engine
from microgpt.export.c_train import BUILD_COMMAND, budget_total, export_c_train
from microgpt.train.loop import train

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')


def build_program(out_dir, docs, cfg, vocab, low_memory):
    export_c_train(out_dir, docs, cfg, vocab, TrainConfig(), low_memory=low_memory)
    subprocess.run(BUILD_COMMAND.split(), cwd=out_dir, check=True)
    return os.path.join(out_dir, 'microgpt_train')


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seconds(program, steps):
    """CPU seconds (user + system) of one run of the program."""
    start = child_cpu_seconds()
    subprocess.run([program, str(steps), '42', '0'], check=True, stdout=subprocess.DEVNULL)
    return child_cpu_seconds() - start


def c_us_per_step(program, steps):
    return (run_seconds(program, steps + 1) - run_seconds(program, 1)) / steps * 1e6


def engine_us_per_step(name, cfg, doc_tokens, steps, warmup=50):
    engine = make_engine(name, cfg, random.Random(42), 'float32')
    for _ in train(engine, doc_tokens, TrainConfig(steps=warmup)):
        pass
    start = time.process_time()
    for _ in train(engine, doc_tokens, TrainConfig(steps=steps)):
        pass
    return (time.process_time() - start) / steps * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default=SHARED_NAMES, help='documents, one a line (default: ../shared names.txt)')
    parser.add_argument('--steps', type=int, default=1000, help='timed steps per measurement (default: 1000)')
    parser.add_argument('--repeats', type=int, default=3, help='rounds, alternating the contenders (default: 3)')
    args = parser.parse_args()

    docs = shuffled(load_documents(args.data), random.Random(42))
    vocab = Vocabulary.from_documents(docs)
    cfg = ModelConfig(vocab_size=vocab.size)
    doc_tokens = [vocab.document_tokens(d) for d in docs]
    with tempfile.TemporaryDirectory() as tmp:
        programs = {f'C, {"low-memory" if low else "normal"} build ({budget_total(cfg, low):,} B RAM)':
                    build_program(os.path.join(tmp, str(low)), docs, cfg, vocab, low) for low in (False, True)}
        contenders = {label: (lambda p=program: c_us_per_step(p, args.steps)) for label, program in programs.items()}
        contenders['fused engine, float32'] = lambda: engine_us_per_step('fused', cfg, doc_tokens, args.steps)
        contenders['numpy engine, float32'] = lambda: engine_us_per_step('numpy', cfg, doc_tokens, args.steps)
        engine_us_per_step('fused', cfg, doc_tokens, 10)  # compile (or load) the fused kernels before any timing
        times = {label: [] for label in contenders}
        for _ in range(args.repeats):
            for label, measure in contenders.items():
                times[label].append(measure())
    medians = {label: statistics.median(values) for label, values in times.items()}
    fused = medians['fused engine, float32']
    print(f"microgpt's default job, {args.steps} steps, median of {args.repeats} alternating rounds, on {cpu_name()}")
    print(f"{'':<44} {'us/step':>9} {'x fused':>8}")
    for label, us in medians.items():
        print(f"{label:<44} {us:>9.1f} {fused / us:>8.2f}")


if __name__ == '__main__':
    main()
