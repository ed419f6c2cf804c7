"""The fused engine: the NumPy engine's model and interface, with each training step one compiled call.

Parameters, gradients and Adam moments are the rows of one (4, P) buffer, with named views in the
reference's names and order, initialised from the same seeded `random.Random` stream as every engine.
The kernels (fused_kernels and the modules it uses) are compiled by numba on first use, 20-40 s, and
cached on disk next to the package (__pycache__), so later runs load them in a fraction of a second;
`kernels_are_cached` tells which case the next engine will be in.
"""

import os
from contextlib import contextmanager

import numpy as np

from ... import dropout
from . import adam as fused_adam
from . import decoder as fused_decoder
from . import parallel as fused_groups
from . import lanes as fused_lanes
from . import layers as fused_layers
from . import gpt as K
from ...config import learning_rate
from ..params import ParameterBuffers

KERNEL_FILES = tuple(module.__file__ for module in (fused_lanes, fused_layers, fused_adam, K, fused_decoder,
                                                    fused_groups, dropout))


def kernels_are_cached(dtype='float64', grouped=False):
    """Whether numba's disk cache holds every entry point for `dtype` (and, with `grouped`, those for batches of
    2+ documents, fused_groups), so that using the engine will not compile (False when unsure). For the CLI,
    to announce the one-time compilation."""
    try:
        for kernel, args in _entry_points(dtype) + (_group_entry_points(dtype) if grouped else []):
            key = kernel._cache._index_key(_signature(args), kernel.targetctx.codegen())
            if _cache_is_stale(kernel) or key not in kernel._cache._cache_file._load_index():
                return False
        return True
    except Exception:  # numba's cache internals are not public API: if they move, say "not cached"
        return False


def _entry_points(dtype):
    """(entry point, example arguments) for everything FusedEngine calls with one document per step (and for
    sampling), to compile it up front."""
    state, ws, plan, adam = np.zeros((4, 1), dtype), np.zeros((1, 1), dtype), np.zeros(1, np.int64), np.zeros(5)
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    return [(K.train_step, (state, ws, plan, adam, 0.0, 0)),
            (K.loss_and_grads, (state, ws, plan)),
            (K.adam_update, (state, adam, 0.0, 0)),
            (K.train_steps, (state, ws, plan, adam, ints, ints, 0, floats, ints, 0, floats)),
            (fused_decoder.decode_step, (state[0], plan, np.zeros((1, 2, 1, 1), dtype), ws, 0, 0, state[0]))]


def _group_entry_points(dtype):
    """Those for batches of 2+ documents (fused_groups), compiled when the first such batch comes: parallel
    kernels take as long again to compile, and microgpt's own job never needs them."""
    state, adam = np.zeros((4, 1), dtype), np.zeros(5)
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    group_grads, wss, plans = np.zeros((1, 1), dtype), np.zeros((1, 1, 1), dtype), np.zeros((1, 1), np.int64)
    return [(fused_groups.loss_and_grads, (state, group_grads, wss, plans)),
            (fused_groups.adam_update, (state, adam, 0.0, 0)),
            (fused_groups.train_steps, (state, group_grads, wss, plans, adam, ints, ints, 0, floats, ints, 0,
                                        floats))]


def _signature(args):
    from numba import typeof
    return tuple(typeof(a) for a in args)


def _cache_is_stale(kernel):
    """numba checks a cached function against its own source file only, but an entry point has the kernels
    of all KERNEL_FILES compiled into it: its cache is stale when any of them is newer."""
    index = kernel._cache._cache_file._index_path
    return os.path.exists(index) and os.path.getmtime(index) < max(map(os.path.getmtime, KERNEL_FILES))


@contextmanager
def _slp_vectorizer():
    """LLVM's SLP vectorizer on while our kernels compile (numba turns it off by default since numba#8852).

    The kernels' 8-lane tuples (fused_lanes) become SIMD registers only through it: 4-5x faster
    matrix products. numba reads the setting when it optimises a function, so switching it on around
    the compiling calls affects our kernels only; a kernel loaded from the cache is not recompiled.
    """
    from numba.core import config
    saved = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        config.SLP_VECTORIZE = saved


def _compile(entry_points):
    """Compile, or load from the disk cache, these (entry point, example arguments)."""
    with _slp_vectorizer():
        for kernel, args in entry_points:
            try:
                if _cache_is_stale(kernel):
                    kernel._cache.flush()
            except (AttributeError, OSError):  # cache internals moved, or a read-only cache: numba's check remains
                pass
            kernel.compile(_signature(args))


def compile_kernels(dtype='float64', grouped=True):
    """Compile (or load from the cache) now what engines of `dtype` will call: before starting worker processes,
    say, so that they do not each compile."""
    for flag in (False, True) if grouped else (False,):
        if (np.dtype(dtype).name, flag) not in FusedEngine._compiled:
            _compile(_group_entry_points(dtype) if flag else _entry_points(dtype))
            FusedEngine._compiled.add((np.dtype(dtype).name, flag))


class FusedEngine(ParameterBuffers):
    name = 'fused'
    chunk_steps = 64  # ~1 ms of the default job per compiled call
    _compiled = set()  # (dtype, grouped) whose kernels this process has compiled or loaded

    def __init__(self, cfg, rng, dtype='float64'):
        super().__init__(cfg, rng, dtype)
        compile_kernels(self.dtype, grouped=False)
        self._adam = np.zeros(5)   # TrainConfig's Adam settings, see fused_adam.BETA1 ...
        self._adam_source = None
        self._groups = self._group_size = 0
        self._reserve(1)

    def _reserve(self, batch_size):
        """Size the workspaces and plans for batches of `batch_size` documents (fused_groups splits those of 2
        or more into groups, each with its own plan, workspace and gradients; one document uses group 0's)."""
        bounds = fused_groups.group_bounds(batch_size)
        groups, group_size = len(bounds) - 1, max(b - a for a, b in zip(bounds, bounds[1:]))
        if groups > 1:
            compile_kernels(self.dtype, grouped=True)
        if groups <= self._groups and group_size <= self._group_size:
            return
        groups, group_size = max(groups, self._groups), max(group_size, self._group_size)
        cfg = self.cfg
        T = cfg.block_size
        capacity = -(-group_size * T // K.LANES) * K.LANES  # columns: every predicted position of a group
        rows = K.workspace_rows(cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_layer, T)
        batch_at = K.COLUMNS + K.COLUMN_ROWS * capacity
        plan = np.zeros(batch_at + 1 + group_size * (T + 2), np.int64)
        plan[K.V], plan[K.C], plan[K.NH], plan[K.L], plan[K.T] = (cfg.vocab_size, cfg.n_embd, cfg.n_head,
                                                                   cfg.n_layer, T)
        plan[K.NORM] = ('microgpt', 'esp32', 'none').index(cfg.norm)
        plan[K.RELU2] = cfg.mlp_activation == 'relu2'
        plan[K.CAUSAL] = cfg.attention == 'causal'
        plan[K.OFF_WPE] = self.offsets['wpe']
        plan[K.OFF_LM] = self.offsets['wte' if cfg.tie_lm_head else 'lm_head']
        plan[K.OFF_LAYERS] = self.offsets['layer0.attn_wq']
        plan[K.NP] = capacity
        plan[K.BATCH_AT] = batch_at
        start = 0
        for i, name in enumerate(K.WORKSPACE):
            plan[K.WS + i] = start
            start += rows[name]
        self._plans = np.tile(plan, (groups, 1))                          # (G, plan)
        self._wss = np.zeros((groups, start, capacity), self.dtype)       # (G, rows, NP) activations, feature-major
        self._group_grads = np.zeros((groups - 1, self.flat.size), self.dtype)  # (G - 1, P) groups 1 ..'s gradients
        self._plan, self._ws = self._plans[0], self._wss[0]
        self._batch_at = batch_at
        self._groups, self._group_size = groups, group_size

    def _load_batch(self, batch):
        """Write one document's token sequence into the plan (only the first block_size + 1 tokens are used)."""
        keep = self.cfg.block_size + 1
        tokens = batch[0] if len(batch[0]) <= keep else batch[0][:keep]
        self._plan[K.FIRST_DOC] = 0
        self._plan[self._batch_at:self._batch_at + 2 + len(tokens)] = [1, len(tokens), *tokens]

    def _load_groups(self, batch):
        """Write a batch of 2 or more documents into its groups' plans; returns (group_grads, wss, plans) for them."""
        self._reserve(len(batch))
        keep = self.cfg.block_size + 1
        bounds = fused_groups.group_bounds(len(batch))
        for plan, first, stop in zip(self._plans, bounds, bounds[1:]):
            docs = [tokens if len(tokens) <= keep else tokens[:keep] for tokens in batch[first:stop]]
            values = [len(docs), *map(len, docs)]
            for tokens in docs:
                values += tokens
            plan[self._batch_at:self._batch_at + len(values)] = values
            plan[K.FIRST_DOC] = first
        return self._group_buffers(len(batch))

    def _group_buffers(self, batch_size):
        """(group_grads, wss, plans) of the groups a batch of `batch_size` documents is split into."""
        groups = len(fused_groups.group_bounds(batch_size)) - 1
        return self._group_grads[:groups - 1], self._wss[:groups], self._plans[:groups]

    def _adam_settings(self, tcfg):
        if tcfg is not self._adam_source:
            self._adam[:] = tcfg.beta1, tcfg.beta2, tcfg.eps, tcfg.weight_decay, tcfg.grad_clip
            self._adam_source = tcfg
        return self._adam

    def _set_dropout(self, rate, seed_and_step):
        """Dropout (dropout.py) in every plan: off with rate 0, else the masks of (seed, step) (None: the caller
        sets each step's key)."""
        self._plans[:, K.DROP_THRESHOLD] = dropout.drop_threshold(rate)
        if rate and seed_and_step is not None:
            self._plans[:, K.DROP_KEY] = dropout.step_key(*seed_and_step)

    def loss_and_grads(self, batch, dropout_rate=0.0, seed_and_step=None):
        """Loss of the batch (mean NLL over every predicted position); fills self.grads. With `dropout_rate`,
        under the masks of `seed_and_step`, (seed, step), as the numpy engine's."""
        if dropout_rate and seed_and_step is None:
            raise ValueError("dropout needs seed_and_step, the (seed, step) its masks are drawn from")
        group_buffers = self._load_groups(batch) if len(batch) > 1 else None  # may rebuild the plans: first
        self._set_dropout(dropout_rate, seed_and_step)
        if group_buffers:
            return fused_groups.loss_and_grads(self.state_buffer, *group_buffers)
        self._load_batch(batch)
        return K.loss_and_grads(self.state_buffer, self._ws, self._plan)

    def adam_update(self, lr_t, tcfg):
        self.adam_steps += 1
        K.adam_update(self.state_buffer, self._adam_settings(tcfg), lr_t, self.adam_steps)

    def train_step(self, batch, lr_t, tcfg):
        # a step's masks depend only on the seed and the step, so a resumed run draws the same ones
        if len(batch) > 1:
            loss = self.loss_and_grads(batch, tcfg.dropout, (tcfg.seed, self.adam_steps + 1))
            self.adam_update(lr_t, tcfg)
            return loss
        self._set_dropout(tcfg.dropout, (tcfg.seed, self.adam_steps + 1))
        self._load_batch(batch)
        self.adam_steps += 1
        return K.train_step(self.state_buffer, self._ws, self._plan, self._adam_settings(tcfg), lr_t, self.adam_steps)

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs=None):
        """Steps start .. stop - 1 of training.train's loop in one compiled call; returns their losses (stop - start,).

        The same batches as training.batch_for_step (documents step*B .. step*B + B - 1, wrapping around), the
        same learning rates (learning_rate's, or the caller's `lrs` of them) and the same arithmetic as one
        train_step per step, without a Python call per step.
        """
        B, keep = tcfg.batch_size, self.cfg.block_size + 1
        self._reserve(B)
        self._set_dropout(tcfg.dropout, None)
        first_t = self.adam_steps + 1
        keys = np.array([dropout.step_key(tcfg.seed, t) if tcfg.dropout else 0
                         for t in range(first_t, first_t + stop - start)], np.int64)  # (steps,)
        tokens, lengths = [], []
        for d in range(start * B, stop * B):
            doc = doc_tokens[d % len(doc_tokens)]
            tokens += doc[:keep]
            lengths.append(min(len(doc), keep))
        starts = np.zeros(len(lengths) + 1, np.int64)  # (D + 1,) where each of the D documents starts in docs
        np.cumsum(lengths, out=starts[1:])
        lrs = np.array([learning_rate(tcfg, step) for step in range(start, stop)] if lrs is None else lrs)
        losses = np.empty(stop - start)                # (steps,)
        docs, settings = np.array(tokens, np.int64), self._adam_settings(tcfg)  # (tokens,) back to back
        if B == 1:
            K.train_steps(self.state_buffer, self._ws, self._plan, settings, docs, starts, B, lrs, keys, first_t, losses)
        else:  # the same batches in groups on every core (fused_groups)
            fused_groups.train_steps(self.state_buffer, *self._group_buffers(B), settings, docs, starts, B, lrs, keys,
                                     first_t, losses)
        self.adam_steps += stop - start
        return losses

    def loss(self, batch):
        return self.loss_and_grads(batch)  # TODO forward only

    def decoder(self):
        return _FusedDecoder(self)


class _FusedDecoder:
    """One position per call, with a KV cache of (L, 2, block_size, C)."""

    def __init__(self, engine):
        self.engine = engine
        cfg = engine.cfg
        self.kv_cache = np.zeros((cfg.n_layer, 2, cfg.block_size, cfg.n_embd), engine.dtype)  # (L, 2, T, C)
        self.scratch = np.zeros((6, max(4 * cfg.n_embd, cfg.block_size)), engine.dtype)
        self.logits = np.zeros(cfg.vocab_size, engine.dtype)  # (V,)

    def reset(self):
        pass  # positions are overwritten before they are read: position p only reads cache[:p + 1]

    def step(self, token_id, pos_id):
        e = self.engine
        if not (0 <= token_id < e.cfg.vocab_size and 0 <= pos_id < e.cfg.block_size):
            raise ValueError(f"token {token_id} at position {pos_id} is outside the vocabulary or the block")
        fused_decoder.decode_step(e.flat, e._plan, self.kv_cache, self.scratch, token_id, pos_id, self.logits)
        return self.logits.tolist()
