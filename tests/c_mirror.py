"""The inference C program (export/c_template/microgpt_names.c) written again in NumPy float32, operation for
operation: the same left-to-right sums, exp in double through libm, the same splitmix64 stream, the same
inverse-CDF draw, so the tests can check that the program (and the web page, which repeats its operations)
computes these logits and prints these names for the same seed.
"""

import math

import numpy as np

from microgpt.config import parameter_shapes
from microgpt.errors import MicrogptError
from microgpt.export.c import attention_scale


class SplitMix64:
    """The C program's generator: splitmix64, uniform doubles from the top 53 bits."""
    MASK = 2 ** 64 - 1

    def __init__(self, seed):
        if not 0 <= seed <= self.MASK:
            raise MicrogptError(f"the C program's seed must be in [0, 2^64), got {seed}")
        self.state = seed

    def uniform(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        z ^= z >> 31
        return (z >> 11) * (1.0 / 9007199254740992.0)


def _matvec(w, x):
    """w @ x with each row's sum running left to right in float32, as the C loop does (rows side by side)."""
    acc = np.zeros(w.shape[0], np.float32)                                 # (rows,)
    for j in range(w.shape[1]):
        acc += w[:, j] * x[j]
    return acc


def _rmsnorm(x):
    ms = _matvec(x[None, :], x)[0] / np.float32(x.size)
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(1e-5)))


class _CDecoder:
    """microgpt_names.c's forward(): one position per call, logits (V,) float32."""

    def __init__(self, weights, cfg):
        self.cfg = cfg
        self.w = {name: np.asarray(weights[name], np.float32) for name in parameter_shapes(cfg)}
        self.keys = np.zeros((cfg.n_layer, cfg.block_size, cfg.n_embd), np.float32)    # (L, T, C)
        self.values = np.zeros((cfg.n_layer, cfg.block_size, cfg.n_embd), np.float32)  # (L, T, C)
        self.scale = attention_scale(cfg)

    def step(self, token, pos):
        cfg, w = self.cfg, self.w
        x = w['wte'][token] + w['wpe'][pos]                                # (C,)
        if cfg.norm == 'microgpt':
            x = _rmsnorm(x)
        for l in range(cfg.n_layer):
            p = f'layer{l}.'
            xn = _rmsnorm(x) if cfg.norm != 'none' else x
            q = _matvec(w[p + 'attn_wq'], xn)                              # (C,)
            self.keys[l, pos] = _matvec(w[p + 'attn_wk'], xn)
            self.values[l, pos] = _matvec(w[p + 'attn_wv'], xn)
            x = x + _matvec(w[p + 'attn_wo'], self._attention(l, pos, q))
            xn = _rmsnorm(x) if cfg.norm == 'microgpt' else x
            h = _matvec(w[p + 'mlp_fc1'], xn)                              # (4C,)
            relu = np.where(h > 0, h, np.float32(0))                       # (4C,)
            x = x + _matvec(w[p + 'mlp_fc2'], relu * relu if cfg.mlp_activation == 'relu2' else relu)
        return _matvec(w['wte' if cfg.tie_lm_head else 'lm_head'], x)     # (V,)

    def _attention(self, l, pos, q):
        HS = self.cfg.head_dim
        first = pos if self.cfg.attention == 'self' else 0
        y = np.empty_like(q)                                               # (C,)
        for h in range(self.cfg.n_head):
            cols = slice(h * HS, (h + 1) * HS)
            scores = _matvec(self.keys[l, first:pos + 1, cols], q[cols]) * self.scale  # (t,)
            top = scores.max()
            att = np.array([math.exp(float(s - top)) for s in scores]).astype(np.float32)  # (t,)
            total = np.float32(0)
            for a in att:
                total = total + a
            y[cols] = _matvec(self.values[l, first:pos + 1, cols].T, att / total)  # (HS,)
        return y


def logits_like_c(weights, cfg, token_ids):
    """What `microgpt_names --logits TOKEN_IDS...` prints: the logits after the last token, float32."""
    decoder = _CDecoder(weights, cfg)
    for pos, token in enumerate(token_ids):
        logits = decoder.step(token, pos)
    return logits


def _sample_token(logits, temperature, rng):
    top = float(logits.max())
    weights = [math.exp((float(logit) - top) / temperature) for logit in logits]
    total = 0.0
    for weight in weights:
        total += weight
    u = rng.uniform() * total
    cumulative = 0.0
    for token, weight in enumerate(weights):
        cumulative += weight
        if u < cumulative:
            return token
    return len(weights) - 1


def sample_like_c(weights, cfg, vocab, n, temperature, seed):
    """The n names `microgpt_names n temperature seed` prints, as strings."""
    if not temperature > 0:
        raise MicrogptError(f"temperature must be > 0, got {temperature}")
    rng, decoder, names = SplitMix64(seed), _CDecoder(weights, cfg), []
    for _ in range(n):
        token, ids = cfg.bos_id, []
        for pos in range(cfg.block_size):
            token = _sample_token(decoder.step(token, pos), temperature, rng)
            if token == cfg.bos_id:
                break
            ids.append(token)
        names.append(vocab.decode(ids))
    return names
