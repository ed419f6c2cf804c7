"""The plan: one int64 array that tells the compiled kernels the model's shape, where each parameter and each
workspace buffer starts, and which positions the batch predicts.

Kernels take the plan instead of a dozen arguments, so that one compiled function serves every model size.
Its header holds the dimension letters (V, C, NH, L, T), the model switches and the dropout settings in the
SLOT_ cells; then the first row of every workspace buffer, the first parameter row of every matrix (from
config.parameter_table: parameters are read as the (P / C, C) matrix `pm`), and the columns of the packed
batch. `build_plan` writes it for a model and a column capacity; `pack_columns` writes a batch into it.
"""

import numpy as np

from ...config import MLP_EXPANSION, NORM_PLACEMENTS, parameter_table
from .lanes import LANES, as_rows, counting, inlined, kernel, max2, min2

SLOT_V, SLOT_C, SLOT_NH, SLOT_L, SLOT_T = range(5)  # vocabulary, channels, heads, layers, block size
SLOT_NORM, SLOT_RELU2, SLOT_CAUSAL = range(5, 8)   # NORM_MICROGPT ..., squared ReLU, causal attention (1/0)
SLOT_NP = 8                                        # column capacity: the workspace's columns, a multiple of 8
# dropout (dropout.py): drop_threshold (0: off) and the step's key
SLOT_DROP_THRESHOLD, SLOT_DROP_KEY = 9, 10
SLOT_WTE, SLOT_WPE, SLOT_LM_HEAD = 11, 12, 13      # first rows of pm: wte (V, C), wpe (T, C), lm_head (V, C)
# positions per document the workspace holds (at most T, sized by the data): a query attends to at most SPAN keys
SLOT_SPAN = 14
HEADER = 15
NORM_MICROGPT, NORM_ESP32, NORM_NONE = (NORM_PLACEMENTS.index(n) for n in ('microgpt', 'esp32', 'none'))

# The workspace: buffers of (rows, NP), one column per predicted position of the packed batch (fused/layers.py).
# The forward's buffers are its cache, read by the backward; the backward's are its own.
BUFFERS = ('xs', 'xmid', 'xn1', 'xn2', 'scales', 'qkv', 'y', 'h', 'a', 'probs', 'branch', 'logits', 'ce_stats',
           'dx', 'dtmp', 'dqkv', 'dy', 'dh', 'dp', 'dlogits', 'rows')
(XS, XMID, XN1, XN2, SCALES, QKV, Y, H, A, PROBS, BRANCH, LOGITS, CE_STATS,
 DX, DTMP, DQKV, DY, DH, DP, DLOGITS, ROWS) = range(len(BUFFERS))
BUFFERS_AT = HEADER                   # plan[BUFFERS_AT + k]: first workspace row of BUFFERS[k]
LAYER_MATRICES = ('attn_wq', 'attn_wo', 'mlp_fc1', 'mlp_fc2')  # attn_wq .. attn_wv read as one (3C, C)
LAYERS_AT = BUFFERS_AT + len(BUFFERS)  # plan[LAYERS_AT + 4 i + m]: first row of layer i's LAYER_MATRICES[m]
# then plan[columns_at(L):]: the (COLUMN_ROWS, NP) columns of the packed batch, pack_columns's
COLUMN_ROWS = 5  # input token, target, position, first column attended to, dropout row (document * T + position)


def buffer_rows(cfg, span):
    """Rows of each workspace buffer, by name in BUFFERS order, for documents of up to `span` predicted
    positions; every row has NP columns."""
    V, C, NH, L = cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_layer
    FC = MLP_EXPANSION * C
    U = span + LANES - 1  # keys a block of 8 queries can attend to
    return {
        'xs': (L + 1) * C,      # (L + 1, C, NP) residual stream into each layer, and out of the last
        'xmid': L * C,          # (L, C, NP) residual stream between attention and MLP
        'xn1': L * C,           # (L, C, NP) attention's input, normalised
        'xn2': L * C,           # (L, C, NP) the MLP's input, normalised
        'scales': 2 * L + 1,    # (2L + 1, NP) each RMSNorm's 1 / rms
        'qkv': L * 3 * C,       # (L, 3C, NP) queries, keys, values
        'y': L * C,             # (L, C, NP) attention's output before attn_wo
        'h': L * FC,            # (L, 4C, NP) mlp_fc1's output
        'a': L * FC,            # (L, 4C, NP) the activation's output
        'probs': L * NH * U,    # (L, NH, U, NP) attention weights
        'branch': C,            # (C, NP) a residual branch's output before its dropout mask
        'logits': V,            # (V, NP) logits, then softmax's probabilities
        'ce_stats': 2,          # (2, NP) sum of e^(logit - peak), the target's logit - peak
        'dx': C,                # (C, NP) d loss / d residual stream
        'dtmp': C,              # (C, NP) d loss / d a branch's output, and before an RMSNorm's backward
        'dqkv': 3 * C,          # (3C, NP)
        'dy': C,                # (C, NP)
        'dh': FC,               # (4C, NP)
        'dp': U,                # (U, NP) one head's d loss / d attention weights, then / d scores
        'dlogits': V,           # (V, NP)
        'rows': FC,             # (NP, 4C) an activation transposed, for a weight gradient
    }


@inlined
def columns_at(n_layer):
    """Where the plan's columns start."""
    return LAYERS_AT + len(LAYER_MATRICES) * n_layer


def build_plan(cfg, capacity, span):
    """The plan of model `cfg` for batches of up to `capacity` predicted positions (a multiple of 8), each
    document predicting at most `span` of them (at most block_size), and the workspace's rows."""
    if not 1 <= span <= cfg.block_size:
        raise ValueError(f"span {span} is not in 1 .. block_size {cfg.block_size}")
    C = cfg.n_embd
    table = {p.name: p for p in parameter_table(cfg)}
    plan = np.zeros(columns_at.py_func(cfg.n_layer) + COLUMN_ROWS * capacity, np.int64)  # not compiled for one call
    plan[[SLOT_V, SLOT_C, SLOT_NH, SLOT_L, SLOT_T]] = cfg.vocab_size, C, cfg.n_head, cfg.n_layer, cfg.block_size
    plan[SLOT_NORM] = NORM_PLACEMENTS.index(cfg.norm)
    plan[SLOT_RELU2] = cfg.mlp_activation == 'relu2'
    plan[SLOT_CAUSAL] = cfg.attention == 'causal'
    plan[SLOT_NP] = capacity
    plan[SLOT_SPAN] = span
    for slot, name in ((SLOT_WTE, 'wte'), (SLOT_WPE, 'wpe'), (SLOT_LM_HEAD, 'wte' if cfg.tie_lm_head else 'lm_head')):
        plan[slot] = table[name].offset // C
    for i in range(cfg.n_layer):
        wq, wk, wv = (table[f'layer{i}.{kind}'] for kind in ('attn_wq', 'attn_wk', 'attn_wv'))
        assert wk.offset == wq.offset + wq.size and wv.offset == wk.offset + wk.size, "q, k, v must be adjacent"
        for m, kind in enumerate(LAYER_MATRICES):
            plan[LAYERS_AT + len(LAYER_MATRICES) * i + m] = table[f'layer{i}.{kind}'].offset // C
    start = 0
    for k, rows in enumerate(buffer_rows(cfg, span).values()):
        plan[BUFFERS_AT + k] = start
        start += rows
    return plan, start


@counting
def buffer(ws, plan, k, i, rows):
    """Layer i's (rows, NP) slice of workspace buffer BUFFERS[k] (i = 0 for a buffer outside the layers)."""
    start = plan[BUFFERS_AT + k] + i * rows
    return ws[start:start + rows]


@counting
def layer_weights(pm, plan, i):
    """Layer i's (w_qkv (3C, C), attn_wo (C, C), mlp_fc1 (4C, C), mlp_fc2 (C, 4C)) in pm, the (P / C, C) parameters."""
    C, at = plan[SLOT_C], LAYERS_AT + len(LAYER_MATRICES) * i
    FC = MLP_EXPANSION * C
    wq, wo, fc1, fc2 = plan[at], plan[at + 1], plan[at + 2], plan[at + 3]
    return pm[wq:wq + 3 * C], pm[wo:wo + C], pm[fc1:fc1 + FC], as_rows(pm[fc2:fc2 + FC], FC)


@counting
def columns_of(plan):
    """The plan's (COLUMN_ROWS, NP) columns."""
    at, NP = columns_at(plan[SLOT_L]), plan[SLOT_NP]
    return as_rows(plan[at:at + COLUMN_ROWS * NP], NP)


@kernel
def pack_columns(plan, docs, doc_starts, batch_first, first, stop):
    """Writes documents first .. stop - 1 of docs (tokens back to back, document d at
    docs[doc_starts[d]:doc_starts[d + 1]]) into the plan's columns: per predicted position its input token,
    target, position, the first column it attends to, and its dropout row ((d - batch_first) * T + position,
    batch_first being the batch's first document). Returns n, the number of columns (0 when every document
    has one token); the padding up to a multiple of 8 attends to itself only. Token ids and document lengths
    are checked here: the kernels index with them unchecked."""
    T, causal = plan[SLOT_T], plan[SLOT_CAUSAL] == 1
    columns = columns_of(plan)
    j = 0
    for d in range(first, stop):
        doc = docs[doc_starts[d]:doc_starts[d + 1]]
        for p in range(checked_positions(plan, doc)):
            columns[0, j], columns[1, j], columns[2, j] = doc[p], doc[p + 1], p
            columns[3, j] = j - p if causal else j
            columns[4, j] = (d - batch_first) * T + p
            j += 1
    for pad in range(j, j + (-j) % LANES):
        columns[0, pad], columns[1, pad], columns[2, pad], columns[3, pad], columns[4, pad] = 0, 0, 0, pad, 0
    return j


@kernel
def checked_positions(plan, doc):
    """The positions document `doc` (its tokens) predicts: min(T, len - 1). Raises on a token id outside the
    vocabulary (the kernels index with them unchecked), or past the workspace's span (the engine sizes it first:
    never)."""
    V, n = plan[SLOT_V], min2(plan[SLOT_T], doc.size - 1)
    if n > plan[SLOT_SPAN]:
        raise ValueError("a document predicts more positions than the workspace holds")
    for p in range(n):
        if not (0 <= doc[p] < V and 0 <= doc[p + 1] < V):
            raise ValueError("a token id is outside the vocabulary")
    return max2(n, 0)


def pack_documents(documents, keep):
    """(docs, doc_starts): the documents' tokens back to back (int64), each cut to its first `keep`, and the
    (D + 1,) index where each starts, the form the entry points take batches in."""
    tokens, starts = [], [0]
    for doc in documents:
        tokens.extend(doc[:keep])  # (a document may be an array: += would be NumPy's element-wise addition)
        starts.append(len(tokens))
    return np.array(tokens, np.int64), np.array(starts, np.int64)
