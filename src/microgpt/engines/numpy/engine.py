"""The NumPy engine: the model of gpt.py on whole documents, and Adam on the flat buffers.

Parameters, gradients and Adam's moments are the rows of ParameterBuffers' (4, P) buffer, with named
views in microgpt's names and order; the same seeded `random.Random` stream initialises them, so a seeded
run follows the reference engine step by step.
"""

import numpy as np

from ...dropout import masks as dropout_masks
from .. import run_steps
from ..params import ParameterBuffers
from .decoder import NumpyDecoder
from .gpt import batch_arrays, gpt_backward, gpt_forward, model_views


class NumpyEngine(ParameterBuffers):
    name = 'numpy'
    chunk_steps = 8  # the loop's bookkeeping per call is paid once per 8 steps (~1 ms of the default job)

    def __init__(self, cfg, rng, dtype='float64'):
        super().__init__(cfg, rng, dtype)
        # gpt.py's views (model_views): by name outside the layers, by kind in each layer
        self.model_params = model_views(self.table, self.flat)
        self.model_grads = model_views(self.table, self.grad_flat)

    @np.errstate(all='ignore')  # quiet, as training is: an overflow gives an infinite or NaN loss, not warnings
    def loss(self, batch):
        inputs, target_index, loss_weights = batch_arrays(batch, self.cfg, self.flat.dtype)
        loss, _ = gpt_forward(self.model_params, inputs, target_index, loss_weights, self.cfg)
        return loss

    def loss_and_grads(self, batch, dropout=0.0, seed_and_step=None):
        """The batch's loss; writes self.grads. With `dropout`, the embeddings and each attention and MLP
        output are dropped out (inverted dropout) under the masks of `seed_and_step`, (seed, step): see
        dropout.py."""
        if dropout and seed_and_step is None:
            raise ValueError("dropout needs seed_and_step, the (seed, step) its masks are drawn from")
        inputs, target_index, loss_weights = batch_arrays(batch, self.cfg, self.flat.dtype)
        B, T = inputs.shape
        masks = self._dropout_masks(dropout, seed_and_step, B, T) if dropout else None  # (1 + 2L, N, C)
        loss, cache = gpt_forward(self.model_params, inputs, target_index, loss_weights, self.cfg, masks)
        gpt_backward(cache, self.model_grads)
        return loss

    def _dropout_masks(self, dropout, seed_and_step, B, T):
        """(1 + 2L, B * T, C) inverted-dropout masks (dropout.masks): 0 with probability `dropout`, else
        1 / (1 - dropout); one for the embeddings, then each layer's attention and MLP outputs."""
        cfg = self.cfg
        seed, step = seed_and_step
        return dropout_masks(dropout, seed, step, B, T, cfg.block_size, 1 + 2 * cfg.n_layer, cfg.n_embd, self.dtype)

    def train_step(self, batch, lr_t, tcfg):
        # a step's masks depend only on the seed and the step, so a resumed run draws the same ones
        loss = self.loss_and_grads(batch, tcfg.dropout, (tcfg.seed, self.adam_steps + 1))
        self.adam_update(lr_t, tcfg)
        return loss

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs):
        return run_steps(self, doc_tokens, start, stop, tcfg, lrs)

    def adam_update(self, lr_t, tcfg):
        """Adam (AdamW with weight_decay; with grad_clip, on the clipped gradient) on the flat (P,) buffers:
        microgpt's update, its two bias corrections folded into scalars as in the fused engine's adam.py."""
        p, g, m, v = self.flat, self.grad_flat, self.m, self.v                  # (P,) each
        if tcfg.grad_clip:
            norm = float(np.sqrt(g @ g))
            g = g * min(1.0, tcfg.grad_clip / (norm + 1e-6))                    # (P,)
        t = self.adam_steps + 1
        m *= tcfg.beta1
        m += (1 - tcfg.beta1) * g                                               # m = beta1 m + (1 - beta1) g
        v *= tcfg.beta2
        v += (1 - tcfg.beta2) * (g * g)                                         # v = beta2 v + (1 - beta2) g^2
        if tcfg.weight_decay:
            p -= (lr_t * tcfg.weight_decay) * p                                 # decoupled (AdamW) decay
        # p -= lr_t * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t) and v_hat = v / (1 - beta2^t):
        # the corrections are scalars, so they become multiplications (over the 4,192 parameters a division by a
        # scalar took 2.0 us, a multiplication 1.3; results move by an ulp)
        update = m * (lr_t / (1 - tcfg.beta1 ** t))                             # lr_t * m_hat, (P,)
        denom = np.sqrt(v * (1 / (1 - tcfg.beta2 ** t)))                        # sqrt(v_hat), (P,)
        denom += tcfg.eps
        update /= denom
        p -= update
        self.adam_steps = t

    def decoder(self):
        return NumpyDecoder(self.cfg, self.params, self.dtype)
