"""The held-out split by name on big word lists: what `microgpt train --eval-every` does before its first step.

For each kind of file it generates, the time and peak memory of `Documents.holdout(None, 42, 'name')` on the
cached token array, each in a fresh process (its peak resident memory, /proc's VmHWM, is its own), beside older
trees (--compare SRC puts SRC first on PYTHONPATH). Linux only. The kinds:
    words  lowercase words of 2-12 letters drawn from a pool of a million (repeats, as in a real word list)
    tied   the same, and one 100,000-character line three times (tied documents longer than a sort key)
    urls   every line 'https://www.' + a word + '.com/' (all documents tied in their first 12 characters)

    python benchmarks/bench_split.py                             # 30 MB of each
    python benchmarks/bench_split.py --megabytes 300 --kinds words --compare /work/base/src
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

MEASURE = '''
import json, sys, time
from microgpt.corpus import load_corpus
from microgpt.documents import Documents

def peak():  # this process's own high-water mark: Linux's ru_maxrss keeps the spawning parent's across exec
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
docs = Documents(load_corpus(sys.argv[1], cache_dir=sys.argv[2], min_cache_bytes=0))
loaded = peak()
started, cpu = time.perf_counter(), time.process_time()
train, val = docs.holdout(None, 42, 'name')
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({'seconds': seconds, 'cpu': cpu, 'loaded': loaded, 'docs': len(docs), 'val': len(val),
                  'peak': peak()}))
'''

KINDS = ('words', 'tied', 'urls')
THIS_TREE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')  # the checkout's, not an install


def write_file(path, kind, megabytes, seed=0):
    """A word list of `kind` (KINDS), `megabytes` MB (10^6 bytes; the last line may be cut short)."""
    rng = random.Random(seed)
    letters = 'abcdefghijklmnopqrstuvwxyz'
    pool = [''.join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(1_000_000)]
    if kind == 'urls':
        pool = [f'https://www.{word}.com/' for word in pool]
    target, written = megabytes * 10**6, 0
    with open(path, 'w', encoding='ascii') as f:
        if kind == 'tied':
            long_line = ''.join(rng.choices(letters, k=100_000)) + '\n'
            written += f.write(long_line * 3)
        while written < target:
            written += f.write(('\n'.join(rng.choices(pool, k=100_000)) + '\n')[:target - written])


def measure(path, cache, src):
    env = dict(os.environ, PYTHONPATH=src) if src else dict(os.environ)
    for _ in range(2):  # the first process tokenises and caches the file; the second measures a cached run
        proc = subprocess.run([sys.executable, '-c', MEASURE, path, cache], capture_output=True, text=True, env=env)
    if proc.returncode:
        return {'error': (proc.stderr.strip().splitlines() or ['no output'])[-1]}
    return json.loads(proc.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--megabytes', type=int, default=30, help='size of each generated file in MB (default: 30)')
    p.add_argument('--kinds', nargs='+', choices=KINDS, default=list(KINDS), help='files to generate (default: all)')
    p.add_argument('--compare', metavar='SRC', action='append', default=[],
                   help="also measure with PYTHONPATH=SRC (an older checkout's src/); may be repeated")
    p.add_argument('--folder', default=None, help='where to write the files (default: a temporary folder)')
    args = p.parse_args()
    if args.megabytes < 1:
        p.error(f"--megabytes must be 1 or more, got {args.megabytes}")
    trees = [('this tree', THIS_TREE)] + [(src, src) for src in args.compare]
    print(f"Documents.holdout by name, cached token arrays, {args.megabytes} MB files; a process per measurement")
    print("| file | documents | tree | split s | split CPU s | peak MiB | peak after loading MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for kind in args.kinds:
            path = os.path.join(folder, f'{kind}.txt')
            write_file(path, kind, args.megabytes)
            for label, src in trees:
                with tempfile.TemporaryDirectory(dir=folder) as cache:  # each tree its own cache
                    got = measure(path, cache, src)
                if 'error' in got:
                    print(f"| {kind} | | {label} | failed: {got['error']} | | | |", flush=True)
                    continue
                print(f"| {kind} | {got['docs']:,} | {label} | {got['seconds']:.2f} | {got['cpu']:.2f} | "
                      f"{got['peak'] / 2**20:,.0f} | {got['loaded'] / 2**20:,.0f} |", flush=True)
            os.remove(path)


if __name__ == '__main__':
    main()
