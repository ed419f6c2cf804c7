"""Dropout masks as a pure function of (seed, step, document, position, site, channel), shared by the engines.

A mask element does not depend on which engine, thread or group computes it, nor on the batch's padded
length: the numpy engine draws a step's masks as one array, the fused engine draws each element where its
kernels need it (in parallel groups), and both get the same masks, so they stay equal to each other and a
resumed run draws the masks it would have drawn. Each element is 16 bits of a counter-based hash
(splitmix64's finaliser of key + index * golden ratio): the key comes from (seed, step), the index from
(document d of the batch, position t, site s, channel c), four channels to a 64-bit draw.

Sites: 0 the embeddings, then 1 + 2i and 2 + 2i layer i's attention and MLP outputs. An element is dropped when
its 16 bits are below `drop_threshold`, so the dropout rate is a multiple of 1/65536, and kept elements are
scaled by `keep_scale` (inverted dropout).
"""

from functools import lru_cache

import numpy as np

from .config import DROPOUT_LEVELS

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)
LEVELS = DROPOUT_LEVELS   # a mask element is CHUNK_BITS random bits: rates are multiples of 1 / LEVELS
CHUNK_BITS = LEVELS.bit_length() - 1
CHUNKS = 4                # channels per 64-bit draw


def draw(key, index):
    """The 64 random bits of element group `index` under `key` (both uint64: numpy arrays or, compiled by the
    fused engine, numba scalars): splitmix64's finaliser of key + index * golden, wrapping. Chunk k of them
    (channel 4 * chunk + k) is bits >> 16 k & 0xFFFF. On arrays the finaliser works in place (augmented
    assignments), a third of the time of fresh arrays."""
    z = index * GOLDEN
    z += key
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def drop_threshold(dropout):
    """Elements whose 16 bits are below this are dropped: the rate `dropout` rounded to a multiple of 1/65536."""
    return round(dropout * LEVELS)


def keep_scale(threshold):
    """What a kept element is multiplied by, so that the expected value is unchanged."""
    return LEVELS / (LEVELS - threshold)


def step_key(seed, step):
    """The key of step `step` (1-based, Adam's count) of a run seeded `seed`, as an int64 (the bits of a uint64)."""
    seed_key = draw(np.uint64(0), np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    return int(draw(seed_key, np.array([step], np.uint64)).view(np.int64)[0])


def group_index(row, site, chunk, n_sites, n_chunks):
    """The draw index of (row = document * block_size + position, site, chunk = channel // 4): the same
    expression compiles in the fused engine."""
    return (row * n_sites + site) * n_chunks + chunk


def masks(dropout, seed, step, n_docs, T, block_size, n_sites, C, dtype):
    """(n_sites, n_docs * T, C) masks of a batch padded to T positions: 0 (dropped) or keep_scale."""
    threshold = drop_threshold(dropout)
    cached_T = min(block_size, 1 << (T - 1).bit_length())  # a power of two: few sizes cached, memory follows T
    index = _indices(n_docs, cached_T, block_size, n_sites, C)[:, :, :T]                 # (S, B, T, C / 4)
    bits = draw(np.uint64(step_key(seed, step) & 0xFFFFFFFFFFFFFFFF), index)              # (S, B, T, C / 4)
    # chunk k is the k-th 16 bits from the bottom: the k-th uint16 of the little-endian word
    chunks = bits.astype('<u8', copy=False).view('<u2')[..., :C].reshape(n_sites, n_docs * T, C)  # (S, N, C)
    return (chunks >= threshold) * np.dtype(dtype).type(keep_scale(threshold))


@lru_cache(maxsize=16)
def _indices(n_docs, T, block_size, n_sites, C):
    """(n_sites, n_docs, T, C / 4) draw indices of the first T positions, uint64; cached, as a batch size recurs
    every step. Rows are numbered by block_size, so a position's draws do not depend on T."""
    n_chunks = -(-C // CHUNKS)
    rows = np.arange(n_docs)[:, None] * block_size + np.arange(T)                        # (B, T)
    index = group_index(rows[None, :, :, None], np.arange(n_sites)[:, None, None, None], np.arange(n_chunks),
                        n_sites, n_chunks).astype(np.uint64)                             # (S, B, T, C / 4)
    index.flags.writeable = False
    return index
