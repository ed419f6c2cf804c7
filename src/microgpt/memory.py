"""Will a run fit in memory? One estimate for every engine, checked before anything is allocated.

A step computes every position of each document up to the block: T = min(block_size, longest document + 1)
positions per document, B documents. Per position the engines keep about L (16C + 2 NH T) activations
(residual stream, norms, q/k/v, the MLP's 4C twice, attention weights and their gradients over up to T keys),
plus the logits and their gradient (2V) and a few C-sized gradients; the fused engine's workspace
(engines/fused/plan.buffer_rows) and the numpy engine's caches are both of this size. Parameters live in the
(4, P) buffer of weights, gradients and Adam's moments, with as much again in scratch. Sampling keeps a KV
cache of (L, 2, block_size, C). Buffers sized by block_size rather than by the data (the wpe parameter, the
KV cache) count at block_size.

The reference engine keeps every number as a Python object: each parameter holds about 130 bytes (its Value
and Adam's moments), and a step's graph about 500 bytes per parameter and position (a Value, its children and
local gradients for each multiply and add), measured with tracemalloc at 4 layers x 32 channels.
"""

import os

from .config import num_parameters
from .errors import MicrogptError

ITEM_BYTES = {'float64': 8, 'float32': 4, 'bfloat16': 4}  # bfloat16 is autocast: weights and Adam stay float32
REFERENCE_BYTES_PER_PARAMETER = 130
REFERENCE_BYTES_PER_PARAMETER_POSITION = 500
HEADROOM = 0.8  # of the available memory: the interpreter, the data and the OS need the rest


def positions_per_document(cfg, longest_document):
    """Positions a step computes for the longest document: its characters + 1 predictions, capped by the block."""
    return min(cfg.block_size, longest_document + 1)


def estimate_bytes(cfg, batch_size, longest_document, dtype='float64', engine='numpy'):
    """Bytes a training step of this model needs, for batches of `batch_size` documents of the given length."""
    V, C, NH, L = cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_layer
    T = positions_per_document(cfg, longest_document)
    if engine == 'reference':
        P = num_parameters(cfg)
        return P * (REFERENCE_BYTES_PER_PARAMETER + batch_size * T * REFERENCE_BYTES_PER_PARAMETER_POSITION)
    per_position = L * (16 * C + 2 * NH * T) + 3 * V + 16 * C + T
    parameters = 8 * num_parameters(cfg)   # (4, P) state and as much scratch
    kv_cache = 2 * L * cfg.block_size * C  # (L, 2, block_size, C) for sampling
    return ITEM_BYTES[dtype] * (parameters + batch_size * T * per_position + kv_cache)


def available_bytes():
    """Memory available to this process: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def check_memory(cfg, batch_size, longest_document, dtype='float64', available=None, engine='numpy'):
    """Raise a one-line MicrogptError if a step of this model would not fit in memory; call it before building
    the engine."""
    need = estimate_bytes(cfg, batch_size, longest_document, dtype, engine)
    have = HEADROOM * (available_bytes() if available is None else available)
    if need > have:
        T = positions_per_document(cfg, longest_document)
        raise MicrogptError(f"this model needs about {need / 2**30:.1f} GiB ({num_parameters(cfg):,} parameters, "
                            f"{batch_size} x {T} positions per step at n_embd {cfg.n_embd}, {cfg.n_layer} layers, "
                            f"{engine} engine, {dtype}) but {have / 2**30:.1f} GiB is available; lower --block-size, "
                            f"--batch-size, --n-embd or --n-layer, or use "
                            + ("--engine numpy" if engine == 'reference' else "--dtype float32"))
