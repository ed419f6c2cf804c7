"""The fused engine: the NumPy engine's model and interface, with each training step one compiled call.

Parameters, gradients and Adam moments are the rows of one (4, P) buffer (engines/params.py), with named
views in the reference's names and order, initialised from the same seeded `random.Random` stream as every
engine. The compiled entry points (gpt.py's to train on one group of documents, parallel.py's for batches of
2+ split in groups and for the loss and gradients of any batch) see the model, the workspace and the batch
through plans (plan.py); compile.py compiles each, or loads it from numba's disk cache, when an engine of a
dtype first calls it.
"""

import numpy as np

from ... import dropout
from ...config import NOTHING_TO_PREDICT, learning_rates
from ...data import batches_for_steps
from ...documents import Documents
from .. import check_batch
from ..numpy.decoder import NumpyDecoder
from ..params import ParameterBuffers
from . import gpt, parallel
from .compile import compile_kernels, kernels_are_cached  # noqa: F401 (for callers)
from .compile import compiled, compiled_here
from .floating_point import flush_to_zero
from .lanes import LANES
from .matmul import VECTOR_BYTES
from .plan import SLOT_DROP_KEY, SLOT_DROP_THRESHOLD, build_plan, pack_documents


# The workspace starts on a 64-byte boundary (a cache line; a 512-bit register), and so does each of its rows: a
# 512-bit load across two cache lines costs two. The matrix product's block of 8 rows by 32 columns ran 1.5-1.9x as
# fast as the 8 x 16 one on aligned rows, 1.1-1.4x on rows 16 bytes off (an Ice Lake server, 2026-12-03), and numpy
# aligns its arrays to 16 bytes.
def aligned_zeros(shape, dtype):
    """np.zeros(shape, dtype) whose first element is on a VECTOR_BYTES boundary (matmul's 512-bit vectors)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    memory = np.zeros(size + VECTOR_BYTES // dtype.itemsize, dtype)
    start = (-memory.ctypes.data % VECTOR_BYTES) // dtype.itemsize
    return memory[start:start + size].reshape(shape)


CACHE_LINE = 64  # bytes


# A matrix product's block reads a column block of its `b`, rows of the workspace, one row after another: the
# makemore size's forward products 64 rows of 16 float32 columns. An address's set in the L1 cache (64 sets of 64-byte
# lines) is its line number modulo 64, so rows 2^m lines apart share 64 / 2^m sets, and rows of 128 float32 columns
# (8 lines) fit only 8 sets x 8 ways (a Zen 3's) = 64 lines: the block's own rows, with nothing else beside them, so
# (the likely cause; no cache misses were counted) they evict each other. Rows an odd number of lines apart use every
# set. Padded from 128 to 144 columns (float32; float64 from 128 to 136), the makemore size's step ran 1.05-1.14x as
# fast in float32 (four runs) and 1.03x in float64 on a Zen 3 (bench_interleaved.py, 2026-12-03; docs/PERFORMANCE.md).
def row_length(columns, itemsize):
    """The length of a workspace row that holds `columns` columns: whole cache lines, an odd number of them."""
    lines = -(-columns * itemsize // CACHE_LINE)
    return (lines + 1 - lines % 2) * CACHE_LINE // itemsize


class FusedEngine(ParameterBuffers):
    name = 'fused'

    def __init__(self, cfg, rng, dtype='float64'):
        super().__init__(cfg, rng, dtype)
        self._adam = np.zeros(5)   # TrainConfig's Adam settings, see adam.BETA1 ...
        self._adam_source = None
        self._groups = self._group_size = self._span = 0  # nothing reserved: the first batch sizes the workspace
        self._batch_size = 0  # of the last train_steps call

    @property
    def chunk_steps(self):
        """Steps per compiled call: 64; once training runs on one document a step, up to 256 for a small model (about
        2^20 parameter-steps: 250 for the default one). A call's Python work (packing the chunk's documents, ~60 us)
        was 6% of the default job's 64 steps; its 250 take ~4 ms. Batches of 2+ and larger models keep 64: their
        steps are longer, and more would keep Ctrl-C and the progress bar waiting (fewer cost the batches in groups
        a wake-up of the threads each call: 8 steps a call were 2-4% slower at the makemore preset's size)."""
        if self._batch_size != 1:
            return 64
        return max(64, min(256, 2**20 // self.flat.size))

    def _reserve(self, batch_size, span):
        """Size the workspaces and plans for batches of `batch_size` documents predicting up to `span` positions
        each (parallel.py splits batches of 2 or more into groups, each with its own plan and gradients, a thread's
        groups sharing the workspace of its first: the others are never written; one document uses group 0's).
        Memory follows the data: a --block-size far above the longest document costs nothing here."""
        bounds = parallel.group_bounds(batch_size)
        groups, group_size = len(bounds) - 1, max(b - a for a, b in zip(bounds, bounds[1:]))
        span = min(self.cfg.block_size, -(-max(span, 1) // LANES) * LANES)  # by 8s: a run regrows a few times
        if groups <= self._groups and group_size <= self._group_size and span <= self._span:
            return
        groups, group_size, span = max(groups, self._groups), max(group_size, self._group_size), max(span, self._span)
        capacity = row_length(group_size * span, np.dtype(self.dtype).itemsize)  # columns: every predicted position
        plan, rows = build_plan(self.cfg, capacity, span)
        self._plans = np.tile(plan, (groups, 1))                          # (G, plan)
        self._wss = aligned_zeros((groups, rows, capacity), self.dtype)   # (G, rows, NP) activations, feature-major
        self._group_grads = np.zeros((groups - 1, self.flat.size), self.dtype)  # (G - 1, P) groups 1 ..'s gradients
        self._groups, self._group_size, self._span = groups, group_size, span

    def _group_buffers(self, batch_size, doc_starts):
        """(group_grads, wss, plans) of the groups a batch of `batch_size` documents is split into, sized for
        the longest document of (docs, doc_starts) (already cut to block_size + 1 tokens)."""
        if batch_size == 0:
            raise ValueError(NOTHING_TO_PREDICT)
        longest = int(np.max(doc_starts[1:] - doc_starts[:-1])) if len(doc_starts) > 1 else 0
        self._reserve(batch_size, longest - 1)
        groups = len(parallel.group_bounds(batch_size)) - 1
        return self._group_grads[:groups - 1], self._wss[:groups], self._plans[:groups]

    def _documents(self, documents):
        """The entry points' form of the documents: (docs, doc_starts), plan.pack_documents'."""
        return pack_documents(check_batch(list(documents), self.cfg.vocab_size), self.cfg.block_size + 1)

    def _adam_settings(self, tcfg):
        if tcfg is not self._adam_source:
            self._adam[:] = tcfg.beta1, tcfg.beta2, tcfg.eps, tcfg.weight_decay, tcfg.grad_clip
            self._adam_source = tcfg
        return self._adam

    def _set_dropout(self, rate, seed_and_step):
        """Dropout (dropout.py) in every plan: off with rate 0, else the masks of (seed, step) (None: the caller
        sets each step's key)."""
        self._plans[:, SLOT_DROP_THRESHOLD] = dropout.drop_threshold(rate)
        if rate and seed_and_step is not None:
            self._plans[:, SLOT_DROP_KEY] = dropout.step_key(*seed_and_step)

    def loss(self, batch):
        """Loss of the batch (mean NLL over every predicted position), forward only: gradients are left as
        they are. Batches of one group and of many go through parallel.py's entry points alike, which a run that
        evaluates, or trains on batches of 2+, compiles anyway: gpt.py keeps no entry point for this API alone."""
        docs, doc_starts = self._documents(batch)
        group_grads, wss, plans = self._group_buffers(len(batch), doc_starts)
        self._set_dropout(0.0, None)
        with flush_to_zero():
            if compiled_here(parallel.steps, self.dtype):  # a run in groups: no more compiling
                return parallel.loss_and_grads(self.state_buffer, group_grads, wss, plans, docs, doc_starts, False)
            compiled(parallel.forward, self.dtype)
            return parallel.loss(self.state_buffer, wss, plans, docs, doc_starts)

    def loss_and_grads(self, batch, dropout=0.0, seed_and_step=None):
        """Loss of the batch (mean NLL over every predicted position); fills self.grads. With `dropout`,
        under the masks of `seed_and_step`, (seed, step), as the numpy engine's."""
        if dropout and seed_and_step is None:
            raise ValueError("dropout needs seed_and_step, the (seed, step) its masks are drawn from")
        docs, doc_starts = self._documents(batch)
        group_grads, wss, plans = self._group_buffers(len(batch), doc_starts)
        self._set_dropout(dropout, seed_and_step)
        with flush_to_zero():
            compiled(parallel.steps, self.dtype)
            return parallel.loss_and_grads(self.state_buffer, group_grads, wss, plans, docs, doc_starts)

    def adam_update(self, lr_t, tcfg):
        self.adam_steps += 1
        with flush_to_zero():
            compiled(gpt.adam_update, self.dtype)(self.state_buffer, self._adam_settings(tcfg), lr_t,
                                                  self.adam_steps)

    def train_step(self, batch, lr_t, tcfg):
        docs, doc_starts = self._documents(batch)
        return self._train(docs, doc_starts, len(batch), [lr_t], tcfg)[0]

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs=None):
        """Steps start .. stop - 1 of train.loop.train's loop in one compiled call; their losses (stop - start,).

        The same batches as data.batch_for_step (documents step*B .. step*B + B - 1, wrapping around), the
        same learning rates (learning_rate's, or the caller's `lrs` of them) and the same arithmetic as one
        train_step per step, without a Python call per step.
        """
        B = self._batch_size = tcfg.batch_size
        if isinstance(doc_tokens, Documents):  # a token array: packed with no Python object per document
            docs, doc_starts = doc_tokens.pack(start * B, (stop - start) * B, self.cfg.block_size + 1)
        else:
            docs, doc_starts = self._documents(doc for batch in batches_for_steps(doc_tokens, start, stop, B)
                                               for doc in batch)
        lrs = learning_rates(tcfg, start, stop) if lrs is None else lrs
        return self._train(docs, doc_starts, B, lrs, tcfg)

    def _train(self, docs, doc_starts, batch_size, lrs, tcfg):
        """len(lrs) Adam steps, step i on documents i B .. i B + B - 1 of (docs, doc_starts); their losses."""
        group_grads, wss, plans = self._group_buffers(batch_size, doc_starts)
        self._set_dropout(tcfg.dropout, None)
        # a step's masks depend only on the seed and the step, so a resumed run draws the same ones
        first_t = self.adam_steps + 1
        keys = np.array([dropout.step_key(tcfg.seed, t) for t in range(first_t, first_t + len(lrs))], np.int64) \
            if tcfg.dropout else np.zeros(len(lrs), np.int64)  # (steps,)
        lrs, losses = np.array(lrs, np.float64), np.empty(len(lrs))              # (steps,) each
        settings = self._adam_settings(tcfg)
        with flush_to_zero():
            if len(plans) > 1:  # the batches in groups on every core (parallel.py)
                compiled(parallel.steps, self.dtype)
                parallel.train_steps(self.state_buffer, group_grads, wss, plans, settings, docs, doc_starts, batch_size,
                                     lrs, keys, first_t, losses)
            else:
                compiled(gpt.train_steps, self.dtype)(self.state_buffer, wss[0], plans[0], settings, docs, doc_starts,
                                                      batch_size, lrs, keys, first_t, losses)
        self.adam_steps += len(lrs)
        return losses

    def decoder(self):
        """The numpy engine's decoder over this engine's parameter views: sampling is one position at a time,
        too little work for compiled kernels to matter (it follows the weights as they train)."""
        return NumpyDecoder(self.cfg, self.params, self.dtype)
