"""Data at any size: load time and memory of a word list from 10 MB up, before (a list of strings and of token
lists, the old path) and after (corpus.load_corpus: tokenise once into a cached token array, memory-map it).

Each measurement runs in a fresh process, so its peak resident memory (/proc's VmHWM) is its own; the cache folder
is a fresh temporary folder per size. Figures: first load (tokenise + write the cache) in seconds and MB/s of
source, wall and CPU time (on a shared machine the CPU figure is the steadier one), peak memory against the
token array's bytes, and the cached reload (a new process, cache present) in seconds.

    python benchmarks/bench_data.py                      # 10, 30, 100, 300 MB
    python benchmarks/bench_data.py --sizes 10,100,1000  # up to 1 GB (needs about 3 GB of disk)
    python benchmarks/bench_data.py --base /work/base/src  # also the old path of that tree (to --base-up-to MB)
    python benchmarks/bench_data.py --plot data_scaling.png  # load time and peak memory against size
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

PEAK = '''
def peak():  # this process's own high-water mark: Linux's ru_maxrss keeps the spawning parent's across exec
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
'''

NEW_PATH = PEAK + '''
import json, sys, time
from microgpt.corpus import load_corpus
from microgpt.documents import Documents
started, cpu = time.perf_counter(), time.process_time()
corpus = load_corpus(sys.argv[1], cache_dir=sys.argv[2], min_cache_bytes=0)  # cached at every size
docs = Documents(corpus)
n = len(docs); docs[n // 2]  # a document read back
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak': peak(),
                  'token_bytes': int(corpus.tokens.nbytes), 'bound_bytes': int(corpus.bounds.nbytes),
                  'docs': n, 'cached': corpus.cache_path is not None}))
'''

OLD_PATH = PEAK + '''
import json, sys, time
from microgpt.data import Vocabulary, load_documents
started, cpu = time.perf_counter(), time.process_time()
docs = load_documents(sys.argv[1])
vocab = Vocabulary.from_documents(docs)
tokens = [vocab.document_tokens(d) for d in docs]
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak': peak(),
                  'docs': len(docs)}))
'''

BASELINE = PEAK + '''
import json
import numpy, microgpt.corpus, microgpt.documents
print(json.dumps({'peak': peak()}))
'''


def write_word_list(path, megabytes, seed=0):
    """Lowercase words of 2-12 letters, one per line, `megabytes` MB (10^6 bytes) in all."""
    rng = random.Random(seed)
    letters = 'abcdefghijklmnopqrstuvwxyz'
    pool = [''.join(rng.choice(letters) for _ in range(rng.randint(2, 12))) + '\n' for _ in range(200000)]
    target, written = megabytes * 10**6, 0
    with open(path, 'w', encoding='ascii') as f:
        while written < target:
            block = ''.join(rng.choices(pool, k=100000))[:target - written]
            f.write(block)
            written += len(block)
        f.write('\n')


def measure(script, *args, src=None):
    env = dict(os.environ, PYTHONPATH=src) if src else dict(os.environ)
    proc = subprocess.run([sys.executable, '-c', script, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"measurement failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='10,30,100,300', help='word-list sizes in MB (default: 10,30,100,300)')
    p.add_argument('--base', default=None, help='a source tree whose load_documents path to time as "before"')
    p.add_argument('--base-up-to', type=int, default=100, help='largest size in MB to time the old path on (default: 100)')
    p.add_argument('--folder', default=None, help='where to write the word lists (default: a temporary folder)')
    p.add_argument('--plot', default=None, metavar='PNG', help='also plot load time and peak memory against size')
    args = p.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(',')]
    except ValueError:
        p.error(f"--sizes takes whole numbers of MB separated by commas, not {args.sizes!r}")
    if min(sizes) < 1:
        p.error(f"--sizes must be 1 MB or more each, got {args.sizes}")
    baseline = measure(BASELINE)['peak']
    print(f"interpreter with numpy and microgpt imported: {baseline / 2**20:.0f} MiB resident")
    header = (f"{'MB':>6} {'docs':>11} {'first load s':>12} {'MB/s':>6} {'cpu s':>6} {'MB/cpu s':>8} "
              f"{'tokens MiB':>10} {'peak MiB':>9} {'peak / tokens':>13} {'reload s':>9} "
              f"{'old s':>8} {'old cpu s':>9} {'old peak MiB':>12}")
    print(header)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for mb in sizes:
            path, cache = os.path.join(folder, f'words-{mb}.txt'), os.path.join(folder, f'cache-{mb}')
            write_word_list(path, mb)
            first = measure(NEW_PATH, path, cache)
            reload = measure(NEW_PATH, path, cache)
            assert first['cached'] and reload['cached'], (first, reload)
            old = measure(OLD_PATH, path, src=args.base) if args.base and mb <= args.base_up_to else None
            source_mb = os.path.getsize(path) / 1e6
            print(f"{mb:>6} {first['docs']:>11,} {first['seconds']:>12.2f} {source_mb / first['seconds']:>6.0f} "
                  f"{first['cpu']:>6.2f} {source_mb / first['cpu']:>8.0f} "
                  f"{first['token_bytes'] / 2**20:>10.0f} {first['peak'] / 2**20:>9.0f} "
                  f"{first['peak'] / first['token_bytes']:>13.2f} {reload['seconds']:>9.3f} "
                  + (f"{old['seconds']:>8.2f} {old['cpu']:>9.2f} {old['peak'] / 2**20:>12.0f}" if old
                     else f"{'-':>8} {'-':>9} {'-':>12}"), flush=True)
            rows.append((source_mb, first, reload, old))
            os.remove(path)
            for name in os.listdir(cache):
                os.remove(os.path.join(cache, name))
    if args.plot:
        plot(rows, args.plot)


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    mb = [row[0] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(mb, [row[1]['seconds'] for row in rows], 'o-', label='first load (tokenise + cache)')
    left.loglog(mb, [row[2]['seconds'] for row in rows], 's-', label='cached reload')
    old = [(row[0], row[3]) for row in rows if row[3]]
    if old:
        left.loglog([m for m, _ in old], [o['seconds'] for _, o in old], 'x--', label='before: strings + token lists')
    left.set(xlabel='word list (MB)', ylabel='seconds', title='load time')
    right.loglog(mb, [row[1]['peak'] / 2**20 for row in rows], 'o-', label='first load')
    right.loglog(mb, [row[1]['token_bytes'] / 2**20 for row in rows], ':', label='token array')
    if old:
        right.loglog([m for m, _ in old], [o['peak'] / 2**20 for _, o in old], 'x--', label='before')
    right.set(xlabel='word list (MB)', ylabel='MiB', title='peak resident memory')
    for ax in (left, right):
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
