"""random.shuffle's permutation of positions 0 .. n - 1, drawn exactly as random.shuffle draws, for data files of
millions of documents.

microgpt shuffles its documents with `random.shuffle(docs)`, a Python call or two per document: 4.9 s for the
12.5 million of a 100 MB word list (the 2-core AMD EPYC), most of a cached run's start. Above a few million
positions the same permutation is computed by a compiled Fisher-Yates loop over the same Mersenne Twister's raw
outputs (NumPy's MT19937, given the random.Random's state), and the random.Random is left where random.shuffle
would leave it, so that everything drawn after the shuffle (the weights, the samples) is the same too.
"""

from array import array

import numpy as np

COMPILED_FROM = 2_000_000  # positions; fewer are shuffled by random.shuffle (importing numba costs more than it saves)
BLOCK = 2**20               # raw outputs drawn at a time


def shuffled_positions(n, rng):
    """(n,) int64: random.shuffle(list(range(n))) with rng's draws; rng moves on as random.shuffle moves it."""
    if n < COMPILED_FROM or n >= 2**32:  # random.shuffle draws two 32-bit words a position from 2^32 on
        positions = array('q')
        positions.frombytes(np.arange(n, dtype=np.int64).tobytes())
        rng.shuffle(positions)
        return np.frombuffer(positions, np.int64)
    return compiled_shuffle(n, rng)


def compiled_shuffle(n, rng):
    """shuffled_positions by the compiled loop, at any n below 2^32 (tests compare it with random.shuffle)."""
    version, words, gauss_next = rng.getstate()
    twister = np.random.MT19937()
    twister.state = {'bit_generator': 'MT19937',
                     'state': {'key': np.array(words[:624], np.uint32), 'pos': words[624]}}
    loop, positions, i = _compiled_loop(), np.arange(n, dtype=np.int64), n - 1
    while i >= 1:
        before = twister.state
        i, used = loop(positions, i, twister.random_raw(BLOCK).view(np.int64))  # 32-bit values: signed is exact
        if i < 1:  # done within this block: the twister exactly `used` outputs on, those the draws took
            twister.state = before
            twister.random_raw(used)
    state = twister.state['state']
    rng.setstate((version, tuple(state['key'].tolist()) + (int(state['pos']),), gauss_next))
    return positions


_loop = None


def _compiled_loop():
    global _loop
    if _loop is None:
        from numba import njit  # here: a run on a smaller file never imports numba for its shuffle
        _loop = njit(cache=True)(_fisher_yates)
    return _loop


def _fisher_yates(positions, i, raw):
    """random.shuffle's loop from position i down, on the twister's 32-bit outputs `raw`: position i swaps with
    j = randbelow(i + 1), which takes getrandbits(k) (an output's top k bits, k the bit length of i + 1) until one
    is below i + 1. Returns (the position it stopped at, the outputs it used): it stops at 0, or when `raw` runs
    out, maybe between a position's draws (the rejected ones are used up, as random.shuffle uses them)."""
    k, used = 0, 0
    while (i + 1) >> k:
        k += 1
    while i >= 1:
        while k > 1 and not (i + 1) >> (k - 1):  # the bit length of i + 1 as i goes down
            k -= 1
        j = i + 1
        while j > i:
            if used == raw.size:
                return i, used
            j = raw[used] >> (32 - k)
            used += 1
        positions[i], positions[j] = positions[j], positions[i]
        i -= 1
    return i, used
