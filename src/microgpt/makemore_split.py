"""makemore's train/test split, reproduced without torch, so figures can be compared on makemore's own test set.

makemore (train.py, create_datasets) seeds torch with 3407, draws `torch.randperm(len(words))` and holds out
its last min(1000, len(words) // 10) entries. On the CPU, randperm is a Fisher-Yates pass drawing
`mt19937() % (n - i)` from torch's generator, which is MT19937 seeded by init_genrand(seed). Python's `random`
runs the same MT19937, so we load it with that state and read its raw 32-bit outputs.
"""

import random

from .errors import MicrogptError

MAKEMORE_SEED = 3407
_N = 624  # MT19937 state words


def _mt19937(seed):
    """A random.Random whose getrandbits(32) yields MT19937's outputs after init_genrand(seed), as
    std::mt19937(seed) does."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, _N):
        previous = state[-1]
        state.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, tuple(state + [_N]), None))  # index 624: the first draw regenerates the state, as C++ does
    return rng


def torch_randperm(n, seed=MAKEMORE_SEED):
    """The list torch.randperm(n) returns on the CPU right after torch.manual_seed(seed) (n < 2^32 / 20)."""
    rng, perm = _mt19937(seed), list(range(n))
    for i in range(n - 1):
        z = i + rng.getrandbits(32) % (n - i)
        perm[i], perm[z] = perm[z], perm[i]
    return perm


def makemore_split(docs):
    """(train_docs, test_docs) as makemore splits these lines: test is the last min(1000, n // 10) of the
    permutation, in its order; train the rest, in its order."""
    train, test = makemore_positions(len(docs))
    return [docs[i] for i in train], [docs[i] for i in test]


def makemore_positions(n):
    """(train, test) positions of makemore's split of n lines."""
    n_test = min(1000, n // 10)
    if n_test == 0:
        raise MicrogptError(f"--val-split makemore holds out a tenth of the lines (at most 1000): {n} "
                            f"lines give none; give at least 10 or another --val-split")
    perm = torch_randperm(n)
    return perm[:n - n_test], perm[n - n_test:]
