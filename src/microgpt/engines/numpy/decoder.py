"""Sampling one token at a time with a KV cache, as microgpt's gpt(token_id, pos_id, keys, values) runs.

NumpyDecoder reads only the parameter table's named (rows, cols) views, so it decodes for any engine
that keeps its weights in arrays (numpy, fused). Dimension letters: C = n_embd, NH = n_head,
HS = C // NH, V = vocab_size, L = n_layer, T = block_size.
"""

import numpy as np

from .. import check_decoder_step
from .layers import activation_forward, rmsnorm_forward


class NumpyDecoder:
    """The Decoder of engines.Decoder over `params` (name -> (rows, cols) arrays, read at every step, so a
    decoder over an engine's views follows its training); keys and values of each position are cached."""

    def __init__(self, cfg, params, dtype):
        self.cfg = cfg
        self.params = params
        shape = (cfg.n_layer, cfg.n_head, cfg.block_size, cfg.head_dim)
        self.keys = np.zeros(shape, dtype)                                      # (L, NH, T, HS)
        self.values = np.zeros(shape, dtype)                                    # (L, NH, T, HS)

    def reset(self):
        pass  # positions are overwritten before they are read: position p only reads cache[:p + 1]

    @np.errstate(all='ignore')  # quiet, as training is: an overflow gives inf or NaN, which sampling refuses
    def step(self, token_id, pos_id):
        cfg, params = self.cfg, self.params
        check_decoder_step(token_id, pos_id, cfg)
        NH, HS = cfg.n_head, cfg.head_dim
        x = params['wte'][token_id] + params['wpe'][pos_id]                    # (C,)
        if cfg.norm == 'microgpt':
            x = rmsnorm_forward(x)[0]                                           # (C,)
        for i in range(cfg.n_layer):
            p = f'layer{i}.'
            # attention block: this position's query against the keys and values of every position so far
            xn = rmsnorm_forward(x)[0] if cfg.norm != 'none' else x             # (C,)
            q = (params[p + 'attn_wq'] @ xn).reshape(NH, HS)                    # (NH, HS)
            self.keys[i, :, pos_id] = (params[p + 'attn_wk'] @ xn).reshape(NH, HS)
            self.values[i, :, pos_id] = (params[p + 'attn_wv'] @ xn).reshape(NH, HS)
            first = pos_id if cfg.attention == 'self' else 0
            keys = self.keys[i, :, first:pos_id + 1]                            # (NH, t, HS)
            values = self.values[i, :, first:pos_id + 1]                        # (NH, t, HS)
            # microgpt divides by head_dim**0.5, i.e. multiplies by (head_dim**0.5)**-1
            att = np.einsum('hd,htd->ht', q, keys) * (HS ** 0.5) ** -1          # (NH, t)
            att = np.exp(att - att.max(-1, keepdims=True))                      # (NH, t)
            att /= att.sum(-1, keepdims=True)                                   # (NH, t) softmax
            y = np.einsum('ht,htd->hd', att, values).reshape(-1)               # (C,)
            x = params[p + 'attn_wo'] @ y + x                                   # (C,)
            # MLP block
            xn = rmsnorm_forward(x)[0] if cfg.norm == 'microgpt' else x         # (C,)
            a = activation_forward(params[p + 'mlp_fc1'] @ xn, cfg.mlp_activation)[0]  # (4C,)
            x = params[p + 'mlp_fc2'] @ a + x                                   # (C,)
        return (params['wte' if cfg.tie_lm_head else 'lm_head'] @ x).tolist()  # (V,)
