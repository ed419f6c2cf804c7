"""dropout.py's masks drawn on the torch engine's device: the same splitmix64 hash of the same indices, in int64.

A mask element is a pure function of (seed, step, document, position, site, channel) (dropout.py), so the GPU
can draw its own instead of receiving them from NumPy each step. PyTorch has no uint64 arithmetic, but int64
multiplication and addition wrap modulo 2^64 exactly as uint64's do, and a logical right shift is an
arithmetic one with the sign-extended bits masked off; the masks are tested equal to dropout.masks.
"""

import torch

from ... import dropout


def _signed(c):
    """A uint64 constant as the int64 with the same bits."""
    c = int(c)
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN, M1, M2 = _signed(dropout.GOLDEN), _signed(dropout._M1), _signed(dropout._M2)


def _shift_right(z, k):
    """Logical right shift of int64 bits: the arithmetic shift without the copies of the sign bit."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _draw(key, index):
    """dropout.draw on int64 tensors: splitmix64's finaliser of key + index * golden."""
    z = index * GOLDEN + key
    z = z ^ _shift_right(z, 30)
    z = z * M1
    z = z ^ _shift_right(z, 27)
    z = z * M2
    return z ^ _shift_right(z, 31)


def masks(rate, seed, step, lo, hi, T, block_size, n_sites, C, dtype, device):
    """(n_sites, hi - lo, T, C) masks of documents lo .. hi - 1 of a batch padded to T positions, on `device`:
    0 (dropped) or keep_scale, element for element dropout.masks's."""
    threshold = dropout.drop_threshold(rate)
    n_chunks = -(-C // dropout.CHUNKS)
    rows = torch.arange(lo, hi, device=device)[:, None] * block_size + torch.arange(T, device=device)  # (B, T)
    sites = torch.arange(n_sites, device=device)[:, None, None, None]                         # (S, 1, 1, 1)
    index = dropout.group_index(rows[None, :, :, None], sites, torch.arange(n_chunks, device=device),
                                n_sites, n_chunks)                                            # (S, B, T, C / 4)
    bits = _draw(dropout.step_key(seed, step), index)                                         # (S, B, T, C / 4)
    # chunk k of a draw is its k-th 16 bits from the bottom (channel 4 * chunk + k)
    chunks = torch.stack([_shift_right(bits, 16 * k) & 0xFFFF for k in range(dropout.CHUNKS)], -1)  # (S, B, T, C/4, 4)
    chunks = chunks.flatten(-2)[..., :C]                                                      # (S, B, T, C)
    return (chunks >= threshold).to(dtype) * dropout.keep_scale(threshold)
