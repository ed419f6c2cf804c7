"""The NumPy engine: whole documents as matrices, hand-derived gradients, Adam on flat buffers.

Parameters, gradients and Adam moments each live in one flat buffer (P,), with named views in the
reference's names and order; the same seeded `random.Random` stream initialises them, so a seeded run
follows the reference step by step. Because a layer's attn_wq, attn_wk and attn_wv are adjacent in
that order, they are also one (3C, C) view: q, k and v come out of a single matmul.
"""

import numpy as np

from ...dropout import masks as dropout_masks
from ...config import NOTHING_TO_PREDICT
from .. import run_steps
from ..params import ParameterBuffers
from .layers import (activation_backward, activation_forward, attention_backward, attention_forward,
                           cross_entropy_backward, cross_entropy_forward, rmsnorm_backward, rmsnorm_forward)



class NumpyEngine(ParameterBuffers):
    name = 'numpy'
    chunk_steps = 1

    def __init__(self, cfg, rng, dtype='float64'):
        super().__init__(cfg, rng, dtype)
        total = self.flat.size
        self.moments = self.state_buffer[2:]                # (2, P) Adam's m and v, moved together
        # Adam works on (2, P) pairs so that m and v (and g and g^2) move in one NumPy call each
        self._grad_and_square = np.zeros((2, total), self.dtype)  # (2, P) d loss / d parameters; its square
        self._adam_scratch = np.empty((2, total), self.dtype)  # (2, P)
        self._adam_coefficients = {}                        # (beta1, beta2) -> (2, 1) betas, 1 - betas
        self._bias_correction = np.empty((2, 1), self.dtype)  # (2, 1) 1 - beta1^t, 1 - beta2^t
        self._layers = [self._layer_views(i) for i in range(cfg.n_layer)]
        embeddings = (cfg.vocab_size + cfg.block_size) * cfg.n_embd  # wte and wpe lead the state-dict order
        self._embedding_grads = self.grad_flat[:embeddings]                # (V*C + T*C,)
        T = cfg.block_size
        allowed = np.tril(np.ones((T, T), bool)) if cfg.attention == 'causal' else np.eye(T, dtype=bool)
        self.mask_bias = np.where(allowed, 0.0, -np.inf).astype(self.dtype)  # (T, T)
        self._row_starts = np.arange(T) * cfg.vocab_size                   # (T,) offsets of logits rows
        self._mean_weights = [None] + [np.full(n, 1 / n, self.dtype) for n in range(1, T + 1)]  # n -> (n,) 1/n

    def _layer_views(self, i):
        """Weights and gradients of layer i, with q/k/v fused into one (3C, C) view."""
        C = self.cfg.n_embd
        start = self.offsets[f'layer{i}.attn_wq']
        p = f'layer{i}.'
        return {
            'w_qkv': self.flat[start:start + 3 * C * C].reshape(3 * C, C),
            'd_qkv': self.grad_flat[start:start + 3 * C * C].reshape(3 * C, C),
            'w_o': self.params[p + 'attn_wo'], 'd_o': self.grads[p + 'attn_wo'],
            'w_fc1': self.params[p + 'mlp_fc1'], 'd_fc1': self.grads[p + 'mlp_fc1'],
            'w_fc2': self.params[p + 'mlp_fc2'], 'd_fc2': self.grads[p + 'mlp_fc2'],
            # transposed views, made once: the forward multiplies by them every step
            'w_qkv.T': self.flat[start:start + 3 * C * C].reshape(3 * C, C).T,
            'w_o.T': self.params[p + 'attn_wo'].T, 'w_fc1.T': self.params[p + 'mlp_fc1'].T,
            'w_fc2.T': self.params[p + 'mlp_fc2'].T,
        }

    def _lm_head(self):
        return 'wte' if self.cfg.tie_lm_head else 'lm_head'

    def prepare(self, batch):
        """Token sequences -> inputs (B, T), flat target indices (B*T,) into the (B*T, V) logits, and loss
        weights (B*T,): 1/N on the N real positions, 0 on padding (padded with BOS)."""
        block_size, V = self.cfg.block_size, self.cfg.vocab_size
        if len(batch) == 1:  # the common case, kept to a handful of NumPy calls
            n = min(block_size, len(batch[0]) - 1)
            if n < 1:
                raise ValueError(NOTHING_TO_PREDICT)
            tokens = np.array(batch[0][:n + 1])                               # (n + 1,)
            return tokens[None, :n], self._row_starts[:n] + tokens[1:], self._mean_weights[n]
        lengths = [max(0, min(block_size, len(tokens) - 1)) for tokens in batch]
        if not any(lengths):
            raise ValueError(NOTHING_TO_PREDICT)
        B, T = len(batch), max(lengths)
        inputs = np.full((B, T), self.cfg.bos_id, np.intp)                   # (B, T)
        targets = np.full((B, T), self.cfg.bos_id, np.intp)                  # (B, T)
        weights = np.zeros((B, T), self.dtype)                               # (B, T)
        scale = 1 / sum(lengths)
        for b, (tokens, n) in enumerate(zip(batch, lengths)):
            inputs[b, :n] = tokens[:n]
            targets[b, :n] = tokens[1:n + 1]
            weights[b, :n] = scale
        return inputs, np.arange(B * T) * V + targets.ravel(), weights.ravel()

    def loss_and_grads(self, batch, dropout_rate=0.0, seed_and_step=None):
        """Loss of the batch; fills self.grads. Forward then backward, each layer's backward in reverse.

        Activations are (N, C) with N = B*T rows, position-major within each document, so every matrix
        product is one 2-D np.dot (a third cheaper to call than matmul at this size); only attention
        views them as (B, NH, T, HS). With `dropout_rate`, the embeddings and each attention and MLP output are
        dropped out (inverted dropout) by the masks of `seed_and_step`, (seed, step): see dropout.py.
        """
        cfg = self.cfg
        if dropout_rate and seed_and_step is None:
            raise ValueError("dropout needs seed_and_step, the (seed, step) its masks are drawn from")
        inputs, target_index, weights = self.prepare(batch)
        B, T = inputs.shape
        C = cfg.n_embd
        P, G = self.params, self.grads
        dot = np.dot
        mask_bias = self.mask_bias[:T, :T]
        masks = self._dropout_masks(dropout_rate, seed_and_step, B, T) if dropout_rate else None  # (1 + 2L, N, C)

        # ---- forward
        x = (P['wte'][inputs] + P['wpe'][:T]).reshape(B * T, C)              # (N, C)
        if masks is not None:
            x = x * masks[0]
        embed_norm = None
        if cfg.norm == 'microgpt':
            x, embed_norm = rmsnorm_forward(x)
        caches = []
        for i, layer in enumerate(self._layers):
            residual = x
            xn, norm1 = rmsnorm_forward(x) if cfg.norm != 'none' else (x, None)
            qkv = dot(xn, layer['w_qkv.T'])                                  # (N, 3C)
            y, attn = attention_forward(qkv, B, cfg.n_head, mask_bias)       # (N, C)
            x = dot(y, layer['w_o.T'])                                       # (N, C)
            if masks is not None:
                x *= masks[1 + 2 * i]
            x += residual
            residual = x
            xn2, norm2 = rmsnorm_forward(x) if cfg.norm == 'microgpt' else (x, None)
            a, act = activation_forward(dot(xn2, layer['w_fc1.T']), cfg.mlp_activation)  # (N, 4C)
            x = dot(a, layer['w_fc2.T'])                                     # (N, C)
            if masks is not None:
                x *= masks[2 + 2 * i]
            x += residual
            caches.append((xn, norm1, y, attn, xn2, norm2, a, act))
        lm_head = P[self._lm_head()]
        logits = dot(x, lm_head.T)                                           # (N, V)
        loss, ce = cross_entropy_forward(logits, target_index, weights)

        # ---- backward; every matrix but wte is used once per step, so its gradient is written, not summed;
        # wte's is summed (embedding rows, and the tied lm_head), and wpe's is written for T of its rows
        self._embedding_grads.fill(0.0)
        dlogits = cross_entropy_backward(ce)                                 # (N, V)
        if cfg.tie_lm_head:
            G['wte'] += dot(dlogits.T, x)                                    # (V, C), summed with the embedding's below
        else:
            dot(dlogits.T, x, out=G['lm_head'])                              # (V, C)
        dx = dot(dlogits, lm_head)                                           # (N, C)
        for i in reversed(range(cfg.n_layer)):
            layer, (xn, norm1, y, attn, xn2, norm2, a, act) = self._layers[i], caches[i]
            # mlp block: x_out = mask * (act(xn2 @ fc1.T) @ fc2.T) + x_mid
            d_branch = dx if masks is None else dx * masks[2 + 2 * i]         # (N, C)
            dot(d_branch.T, a, out=layer['d_fc2'])                           # (C, 4C)
            dh = activation_backward(dot(d_branch, layer['w_fc2']), act, cfg.mlp_activation)  # (N, 4C)
            dot(dh.T, xn2, out=layer['d_fc1'])                               # (4C, C)
            dxn2 = dot(dh, layer['w_fc1'])                                   # (N, C)
            dx += rmsnorm_backward(dxn2, norm2) if norm2 is not None else dxn2
            # attention block: x_mid = mask * (attn(xn @ qkv.T) @ o.T) + x_in
            d_branch = dx if masks is None else dx * masks[1 + 2 * i]         # (N, C)
            dot(d_branch.T, y, out=layer['d_o'])                             # (C, C)
            dqkv = attention_backward(dot(d_branch, layer['w_o']), attn)     # (N, 3C)
            dot(dqkv.T, xn, out=layer['d_qkv'])                              # (3C, C)
            dxn = dot(dqkv, layer['w_qkv'])                                  # (N, C)
            dx += rmsnorm_backward(dxn, norm1) if norm1 is not None else dxn
        if embed_norm is not None:
            dx = rmsnorm_backward(dx, embed_norm)
        if masks is not None:
            dx = dx * masks[0]
        np.add.reduce(dx.reshape(B, T, C), 0, out=G['wpe'][:T])
        np.add.at(G['wte'], inputs.ravel(), dx)
        return float(loss)

    def train_step(self, batch, lr_t, tcfg):
        # a step's masks depend only on the seed and the step, so a resumed run draws the same ones
        loss = self.loss_and_grads(batch, tcfg.dropout, (tcfg.seed, self.adam_steps + 1))
        self.adam_update(lr_t, tcfg)
        return loss

    def _dropout_masks(self, dropout, seed_and_step, B, T):
        """(1 + 2L, B * T, C) inverted-dropout masks (dropout.masks): 0 with probability `dropout`, else
        1 / (1 - dropout); one for the embeddings, then each layer's attention and MLP outputs."""
        cfg = self.cfg
        seed, step = seed_and_step
        return dropout_masks(dropout, seed, step, B, T, cfg.block_size, 1 + 2 * cfg.n_layer, cfg.n_embd, self.dtype)

    def adam_update(self, lr_t, tcfg):
        """Adam (optionally AdamW, clipped) in place on the flat buffers, in the reference's operation order."""
        g, p = self.grad_flat, self.flat
        g_g2, m_v, scratch = self._grad_and_square, self.moments, self._adam_scratch  # (2, P) each
        g_g2[0] = g
        g = g_g2[0]
        if tcfg.grad_clip:
            norm = float(np.sqrt(g @ g))
            g *= min(1.0, tcfg.grad_clip / (norm + 1e-6))
        key = (tcfg.beta1, tcfg.beta2)
        if key not in self._adam_coefficients:
            betas = np.array([[tcfg.beta1], [tcfg.beta2]], self.dtype)    # (2, 1)
            self._adam_coefficients[key] = (betas, np.array([[1 - tcfg.beta1], [1 - tcfg.beta2]], self.dtype))
        betas, one_minus_betas = self._adam_coefficients[key]
        t = self.adam_steps + 1
        np.multiply(g, g, out=g_g2[1])
        m_v *= betas
        m_v += np.multiply(g_g2, one_minus_betas, out=scratch)  # m = beta1 m + (1 - beta1) g; v likewise with g^2
        if tcfg.weight_decay:
            p -= np.multiply(p, lr_t * tcfg.weight_decay, out=scratch[0])  # decoupled (AdamW) decay
        correction = self._bias_correction
        correction[0, 0], correction[1, 0] = 1 - tcfg.beta1 ** t, 1 - tcfg.beta2 ** t
        m_hat, v_hat = np.divide(m_v, correction, out=scratch)
        np.sqrt(v_hat, out=v_hat)
        v_hat += tcfg.eps
        m_hat *= lr_t
        m_hat /= v_hat                                           # lr m_hat / (sqrt(v_hat) + eps)
        p -= m_hat
        self.adam_steps = t

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs):
        return run_steps(self, doc_tokens, start, stop, tcfg, lrs)

    def loss(self, batch):
        return self.loss_and_grads(batch)  # TODO forward only

    def decoder(self):
        return _NumpyDecoder(self)


class _NumpyDecoder:
    """One position per call, with a KV cache of (NH, block_size, HS) per layer."""

    def __init__(self, engine):
        self.engine = engine
        cfg = engine.cfg
        shape = (cfg.n_layer, cfg.n_head, cfg.block_size, cfg.head_dim)
        self.keys = np.zeros(shape, engine.dtype)    # (L, NH, block_size, HS)
        self.values = np.zeros(shape, engine.dtype)  # (L, NH, block_size, HS)

    def reset(self):
        pass  # positions are overwritten before they are read: position p only reads cache[:p + 1]

    def step(self, token_id, pos_id):
        e, cfg = self.engine, self.engine.cfg
        NH, HS = cfg.n_head, cfg.head_dim
        P = e.params
        x = P['wte'][token_id] + P['wpe'][pos_id]                            # (C,)
        if cfg.norm == 'microgpt':
            x = rmsnorm_forward(x)[0]
        for li, layer in enumerate(e._layers):
            residual = x
            xn = rmsnorm_forward(x)[0] if cfg.norm != 'none' else x
            q, k, v = (layer['w_qkv'] @ xn).reshape(3, NH, HS)               # each (NH, HS)
            self.keys[li, :, pos_id] = k
            self.values[li, :, pos_id] = v
            first = pos_id if cfg.attention == 'self' else 0
            keys = self.keys[li, :, first:pos_id + 1]                         # (NH, t, HS)
            values = self.values[li, :, first:pos_id + 1]                     # (NH, t, HS)
            att = np.einsum('hd,htd->ht', q, keys) * (HS ** 0.5) ** -1        # (NH, t)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            y = np.einsum('ht,htd->hd', att, values).reshape(-1)             # (C,)
            x = layer['w_o'] @ y + residual
            residual = x
            xn2 = rmsnorm_forward(x)[0] if cfg.norm == 'microgpt' else x
            a = activation_forward(layer['w_fc1'] @ xn2, cfg.mlp_activation)[0]  # (4C,)
            x = layer['w_fc2'] @ a + residual
        return (P[e._lm_head()] @ x).tolist()                                # (V,)
