"""microgpt's GPT on NumPy arrays: gpt_forward and gpt_backward, built from the layer pairs in layers.py.

The model, as microgpt's gpt() computes it one token at a time, here for whole documents at once:

    x = rmsnorm(wte[token] + wpe[pos])
    for each layer:
        x = x + attn_wo(attention(attn_wq, attn_wk, attn_wv of rmsnorm(x)))
        x = x + mlp_fc2(relu(mlp_fc1(rmsnorm(x))))
    logits = lm_head(x)

with cfg's switches: where the norms sit (cfg.norm), the activation, lm_head tied to wte, the attention
kind, and inverted dropout of the embeddings and of each residual branch under masks given by the caller.

Dimension letters: B documents, T positions (the batch's longest document, at most block_size), N = B*T,
C = n_embd, NH = n_head, HS = C // NH, V = vocab_size, L = n_layer. Activations are (N, C), the documents'
positions stacked as rows, so every matrix product is one 2-D product; only attention views them as
(B, NH, T, HS). `params` and `grads` are model_views of a flat buffer: the parameter table's (rows, cols)
views by name outside the layers, and per layer by kind, with attn_wq, attn_wk and attn_wv stacked as
attn_wqkv so that q, k and v come out of one product.
"""

from functools import lru_cache

import numpy as np

from ...config import NOTHING_TO_PREDICT, dropout_sites
from .. import check_batch
from .layers import (activation_backward, activation_forward, attention_backward, attention_forward,
                     attention_mask_bias, cross_entropy_backward, cross_entropy_forward, dropout_backward,
                     dropout_forward, encoder_backward, encoder_forward, matmul_backward, matmul_forward,
                     rmsnorm_backward, rmsnorm_forward)


def model_views(table, flat):
    """gpt.py's names for the matrices of `flat` (parameters or gradients), made once: 'wte', 'wpe' and
    'lm_head' as in the parameter table ('lm_head' is wte's view when tied), and 'layers', one dict per layer
    of its (rows, cols) views by kind, plus 'attn_wqkv': a (3C, C) view over attn_wq, attn_wk and attn_wv,
    which the table stores back to back (config.LAYER_PARAMETERS), q first. A step then looks its matrices
    up without building names."""
    views = {p.name: flat[p.offset:p.offset + p.size].reshape(p.shape) for p in table if p.layer < 0}
    views.setdefault('lm_head', views['wte'])  # tied: the logits come from wte
    views['layers'] = [{} for p in table if p.kind == 'attn_wq']
    for p in table:
        if p.layer >= 0:
            views['layers'][p.layer][p.kind] = flat[p.offset:p.offset + p.size].reshape(p.shape)
    for q, k, v in zip(table, table[1:], table[2:]):
        if q.kind == 'attn_wq':
            assert (k.kind, v.kind, v.offset) == ('attn_wk', 'attn_wv', q.offset + 2 * q.size), (q, k, v)
            views['layers'][q.layer]['attn_wqkv'] = flat[q.offset:q.offset + 3 * q.size].reshape(3 * q.rows, q.cols)
    return views


def batch_arrays(batch, cfg, dtype):
    """Token sequences -> the arrays gpt_forward takes.

    A document of n + 1 tokens predicts tokens 1..n from 0..n-1 (n at most block_size); its row holds those
    n + 1 tokens, then BOS up to the batch's longest T + 1. Returns inputs (B, T), a row's first T tokens;
    target_index (N,), each position's next token as an index into the flat (N * V,) logits; loss_weights
    (N,), 1 / (tokens predicted in the batch) on predicted positions and 0 on padding.
    """
    lengths = tuple([max(0, min(cfg.block_size, len(tokens) - 1)) for tokens in check_batch(batch, cfg.vocab_size)])
    T = max(lengths) if lengths else 0  # an empty batch predicts nothing either (max's default= costs 0.15 us)
    if T == 0:
        raise ValueError(NOTHING_TO_PREDICT)
    rows = []  # one flat list: np.array reads one much faster than a list of lists
    for tokens, n in zip(batch, lengths):
        rows.extend(tokens[:n + 1])  # (a document may be an array: += would be NumPy's element-wise addition)
        rows += [cfg.bos_id] * (T - n)
    logits_row_starts, loss_weights = batch_layout(lengths, T, cfg.vocab_size, dtype)
    rows = np.array(rows).reshape(len(batch), T + 1)                        # (B, T + 1)
    target_index = logits_row_starts + rows[:, 1:]                          # (B, T)
    return rows[:, :-1], target_index.ravel(), loss_weights


@lru_cache(maxsize=1024)
def batch_layout(lengths, T, V, dtype):
    """What a batch's arrays take from its documents' `lengths` (tokens predicted by each) alone, read-only and
    cached (with batch size 1 a run sees at most block_size of them):
    logits_row_starts (B, T), the index of each position's first logit in the flat (B * T * V,) logits: 0, V,
    2V, ...; loss_weights (B * T,), 1 / sum(lengths) on each document's first n positions (n its length), 0 on
    its padding, so that the weighted sum of the losses is their mean over predicted tokens."""
    B, predicted = len(lengths), sum(lengths)
    starts = np.arange(0, B * T * V, V).reshape(B, T)                       # (B, T)
    weights = []
    for n in lengths:
        weights += [1 / predicted] * n + [0.0] * (T - n)
    weights = np.array(weights, dtype)                                      # (N,)
    starts.flags.writeable = weights.flags.writeable = False
    return starts, weights


def gpt_logits(params, inputs, cfg, masks=None):
    """(logits (N, V), cache). inputs (B, T) token ids; masks (1 + 2L, N, C) dropout masks (dropout.masks:
    the embeddings, then each layer's attention and MLP branches) or None for no dropout."""
    B, T = inputs.shape
    sites = [None] * dropout_sites(cfg) if masks is None else masks
    mask_bias = attention_mask_bias(cfg.attention, T, params['wte'].dtype)  # (T, T)

    x = encoder_forward(inputs, params['wte'], params['wpe'])                   # (N, C)
    x = dropout_forward(x, sites[0])
    embed_norm = None
    if cfg.norm == 'microgpt':
        x, embed_norm = rmsnorm_forward(x)                                      # (N, C)
    layers = []
    for i, w in enumerate(params['layers']):
        # attention block: x = x + dropout(attn_wo(attention(rmsnorm(x))))
        xn1, norm1 = rmsnorm_forward(x) if cfg.norm != 'none' else (x, None)   # (N, C)
        qkv = matmul_forward(xn1, w['attn_wqkv'])                      # (N, 3C)
        y, attn = attention_forward(qkv, B, cfg.n_head, mask_bias)             # (N, C)
        x = x + dropout_forward(matmul_forward(y, w['attn_wo']), sites[1 + 2 * i])  # (N, C)
        # MLP block: x = x + dropout(mlp_fc2(relu(mlp_fc1(rmsnorm(x)))))
        xn2, norm2 = rmsnorm_forward(x) if cfg.norm == 'microgpt' else (x, None)  # (N, C)
        h = matmul_forward(xn2, w['mlp_fc1'])                          # (N, 4C)
        a, act = activation_forward(h, cfg.mlp_activation)                      # (N, 4C)
        x = x + dropout_forward(matmul_forward(a, w['mlp_fc2']), sites[2 + 2 * i])  # (N, C)
        layers.append({'xn1': xn1, 'norm1': norm1, 'attn': attn, 'y': y,
                       'xn2': xn2, 'norm2': norm2, 'act': act, 'a': a})
    logits = matmul_forward(x, params['lm_head'])                               # (N, V)
    cache = {'cfg': cfg, 'params': params, 'sites': sites, 'inputs': inputs, 'embed_norm': embed_norm,
             'layers': layers, 'x': x}
    return logits, cache


def gpt_forward(params, inputs, target_index, loss_weights, cfg, masks=None):
    """(loss, cache): the batch's mean negative log-likelihood (batch_arrays' arrays) and what
    gpt_backward needs. Forward only, this is the evaluation loss."""
    logits, cache = gpt_logits(params, inputs, cfg, masks)                     # (N, V)
    loss, cache['loss'] = cross_entropy_forward(logits, target_index, loss_weights)
    return float(loss), cache


def gpt_backward(cache, grads):
    """Writes d loss / d parameters into `grads`: gpt_forward's steps in reverse, each through its layer's
    backward. A residual connection x + branch passes d x to both x and the branch; the branch's gradient
    accumulates into d x with +=."""
    cfg, params, sites = cache['cfg'], cache['params'], cache['sites']
    dlogits = cross_entropy_backward(cache['loss'])                             # (N, V)
    # tied, this writes lm_head's gradient into grads['wte'], and the embedding's adds to it below
    dx = matmul_backward(dlogits, cache['x'], params['lm_head'], grads['lm_head'])  # (N, C)
    for i in reversed(range(cfg.n_layer)):
        c, w, dw = cache['layers'][i], params['layers'][i], grads['layers'][i]
        # MLP block
        d_branch = dropout_backward(dx, sites[2 + 2 * i])                       # (N, C)
        da = matmul_backward(d_branch, c['a'], w['mlp_fc2'], dw['mlp_fc2'])  # (N, 4C)
        dh = activation_backward(da, c['act'], cfg.mlp_activation)              # (N, 4C)
        dxn2 = matmul_backward(dh, c['xn2'], w['mlp_fc1'], dw['mlp_fc1'])  # (N, C)
        dx += dxn2 if c['norm2'] is None else rmsnorm_backward(dxn2, c['norm2'])  # (N, C)
        # attention block
        d_branch = dropout_backward(dx, sites[1 + 2 * i])                       # (N, C)
        dy = matmul_backward(d_branch, c['y'], w['attn_wo'], dw['attn_wo'])  # (N, C)
        dqkv = attention_backward(dy, c['attn'])                                # (N, 3C)
        dxn1 = matmul_backward(dqkv, c['xn1'], w['attn_wqkv'], dw['attn_wqkv'])  # (N, C)
        dx += dxn1 if c['norm1'] is None else rmsnorm_backward(dxn1, c['norm1'])  # (N, C)
    if cache['embed_norm'] is not None:
        dx = rmsnorm_backward(dx, cache['embed_norm'])                          # (N, C)
    dx = dropout_backward(dx, sites[0])                                         # (N, C)
    if not cfg.tie_lm_head:
        grads['wte'].fill(0.0)
    encoder_backward(dx, cache['inputs'], grads['wte'], grads['wpe'])

