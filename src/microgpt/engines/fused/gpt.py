"""The fused engine's model: one compiled call runs a whole training step (forward, backward, Adam).

The entry points see the model, the workspace and the batch through `plan`, one int64 array, so that a
step is one numba call with few arguments (each costs ~70 ns to pass). Layers are in fused_layers, the
8-lane helpers in fused_lanes, Adam in fused_adam, the decoder in fused_decoder. Only the entry points are
cached on disk; numba checks a cache against the entry point's own file only, so FusedEngine also drops it
when another file of the kernels (`KERNEL_FILES`: the fused_* modules and dropout.py) is newer.
"""

from numba import njit

from ...config import NOTHING_TO_PREDICT
from .adam import _adam
from .lanes import LANES, load8, store8
from .layers import (activation_backward, activation_forward, add_columns, attention_backward,
                           attention_forward, cross_entropy, dropout_columns, kernel, matmul, rmsnorm_backward,
                           rmsnorm_forward, transpose)

# plan: the int64 array describing the model, the workspace and the batch (FusedEngine._reserve fills it)
V, C, NH, L, T, NORM, RELU2, CAUSAL, OFF_WPE, OFF_LM, OFF_LAYERS, NP, BATCH_AT = range(13)
# dropout (see dropout.py): drop_threshold (0: off), the step's key, and the batch index of the plan's first
# document (a group's documents are not the batch's first)
DROP_THRESHOLD, DROP_KEY, FIRST_DOC = range(13, 16)
NORM_MICROGPT, NORM_ESP32, NORM_NONE = 0, 1, 2
WORKSPACE = ('xs', 'xmid', 'xn1', 'xn2', 'scales', 'qkv', 'y', 'h', 'a', 'probs', 'logits',
             'dx', 'dtmp', 'dqkv', 'dy', 'dh', 'dp', 'rows', 'scratch')
XS, XMID, XN1, XN2, SCALES, QKV, Y, H, A, PROBS, LOGITS, DX, DTMP, DQKV, DY, DH, DP, ROWS, SCRATCH = range(19)
WS = 16                        # plan[WS + k]: first workspace row of WORKSPACE[k]
COLUMNS = WS + len(WORKSPACE)  # plan[COLUMNS:COLUMNS + 5 NP]: (5, NP) input token, target, position, first key,
COLUMN_ROWS = 5                # and the dropout row: the batch's document index * T + position
# plan[plan[BATCH_AT]:]: B, then the B documents' lengths, then their tokens back to back

entry_point = njit(cache=True, error_model='numpy')


def workspace_rows(V_, C_, NH_, L_, T_):
    """Rows of each workspace array (each row has NP columns), by name."""
    U = T_ + LANES - 1  # keys a block of 8 queries can attend to
    return {'xs': (L_ + 1) * C_, 'xmid': L_ * C_, 'xn1': L_ * C_, 'xn2': L_ * C_, 'scales': 2 * L_ + 1,
            'qkv': L_ * 3 * C_, 'y': L_ * C_, 'h': L_ * 4 * C_, 'a': L_ * 4 * C_, 'probs': L_ * NH_ * U,
            'logits': V_, 'dx': C_, 'dtmp': C_, 'dqkv': 3 * C_, 'dy': C_, 'dh': 4 * C_, 'dp': U,
            'rows': 4 * C_, 'scratch': 2}


# ---- views of the parameters and the workspace (a slice is free, a reshape costs ~20 ns), forward, backward

@kernel
def _block(ws, plan, k, i, rows):
    """Layer i's (rows, NP) slice of workspace array WORKSPACE[k]."""
    start = plan[WS + k] + i * rows
    return ws[start:start + rows]


@kernel
def _layer(pm, plan, i):
    """Layer i's (w_qkv (3C, C), attn_wo (C, C), mlp_fc1 (4C, C), mlp_fc2 (C, 4C)) in pm, the (P / C, C) parameters."""
    C_ = plan[C]
    r = plan[OFF_LAYERS] // C_ + 12 * C_ * i  # wq, wk, wv are adjacent: one (3C, C) matrix
    return pm[r:r + 3 * C_], pm[r + 3 * C_:r + 4 * C_], pm[r + 4 * C_:r + 8 * C_], \
        pm[r + 8 * C_:r + 12 * C_].reshape((C_, 4 * C_))


@kernel
def _copy_columns(out, x, nb):
    for c in range(x.shape[0]):
        for j in range(0, nb, LANES):
            store8(out[c], j, load8(x[c], j))


@kernel
def _pack_columns(plan, columns):
    """Fills columns (5, NP) from the batch: per predicted position its input token, target, position, the
    first column it attends to, and its dropout row. Returns n, the number of columns; the padding up to a
    multiple of 8 attends to itself only. Token ids are checked here: the kernels index with them unchecked."""
    V_, T_, at, causal = plan[V], plan[T], plan[BATCH_AT], plan[CAUSAL] == 1
    n_docs = plan[at]
    token = at + 1 + n_docs
    j = 0
    for b in range(n_docs):
        length = plan[at + 1 + b]
        for p in range(min(T_, length - 1)):
            columns[0, j], columns[1, j], columns[2, j] = plan[token + p], plan[token + p + 1], p
            columns[3, j] = j - p if causal else j
            columns[4, j] = (plan[FIRST_DOC] + b) * T_ + p
            if not (0 <= columns[0, j] < V_ and 0 <= columns[1, j] < V_):
                raise ValueError("a token id is outside the vocabulary")
            j += 1
        token += length
    if j == 0:
        raise ValueError(NOTHING_TO_PREDICT)
    for pad in range(j, j + (-j) % LANES):
        columns[0, pad], columns[1, pad], columns[2, pad], columns[3, pad], columns[4, pad] = 0, 0, 0, pad, 0
    return j


@kernel
def _forward(pm, ws, plan, columns, n, n_mean):
    """Loss of the packed batch (summed, divided by n_mean); leaves every activation, and d_logits, in the
    workspace. With dropout, the embeddings and each attention and MLP output are multiplied by their masks."""
    V_, C_, NH_, L_, norm = plan[V], plan[C], plan[NH], plan[L], plan[NORM]
    branch = _block(ws, plan, DTMP, 0, C_)  # (C, NP) a residual branch's output, before its mask
    nb = n + (-n) % LANES  # the micro-kernels' columns; the padding columns stay zero
    wte, wpe = pm[:V_], pm[plan[OFF_WPE] // C_:plan[OFF_WPE] // C_ + plan[T]]
    scales = _block(ws, plan, SCALES, 0, 2 * L_ + 1)
    x = _block(ws, plan, XS, 0, C_)
    for c in range(C_):
        for j in range(nb):
            x[c, j] = wte[columns[0, j], c] + wpe[columns[2, j], c] if j < n else 0.0
    if plan[DROP_THRESHOLD]:
        _dropout(x, x, plan, columns, n, 0)
    if norm == NORM_MICROGPT:
        rmsnorm_forward(x, scales[0], x, nb)
    for i in range(L_):
        w_qkv, w_o, w_fc1, w_fc2 = _layer(pm, plan, i)
        x_in, xn1, qkv, y = (_block(ws, plan, XS, i, C_), _block(ws, plan, XN1, i, C_),
                             _block(ws, plan, QKV, i, 3 * C_), _block(ws, plan, Y, i, C_))
        x_mid, xn2, h, a = (_block(ws, plan, XMID, i, C_), _block(ws, plan, XN2, i, C_),
                            _block(ws, plan, H, i, 4 * C_), _block(ws, plan, A, i, 4 * C_))
        if norm != NORM_NONE:
            rmsnorm_forward(xn1, scales[1 + 2 * i], x_in, nb)
        matmul(qkv, w_qkv, x_in if norm == NORM_NONE else xn1, 3 * C_, nb, C_, False)  # (3C, N)
        attention_forward(y, _block(ws, plan, PROBS, i, NH_ * (plan[T] + LANES - 1)), qkv, columns[3], nb, NH_)
        _add_branch(x_mid, x_in, w_o, y, C_, branch, plan, columns, n, nb, 1 + 2 * i)  # x += attn_wo @ y
        if norm == NORM_MICROGPT:
            rmsnorm_forward(xn2, scales[2 + 2 * i], x_mid, nb)
        matmul(h, w_fc1, xn2 if norm == NORM_MICROGPT else x_mid, 4 * C_, nb, C_, False)  # (4C, N)
        activation_forward(a, h, nb, plan[RELU2] == 1)
        x_out = _block(ws, plan, XS, i + 1, C_)
        _add_branch(x_out, x_mid, w_fc2, a, 4 * C_, branch, plan, columns, n, nb, 2 + 2 * i)  # x += mlp_fc2 @ a
    logits = _block(ws, plan, LOGITS, 0, V_)
    lm_head = pm[plan[OFF_LM] // C_:plan[OFF_LM] // C_ + V_]
    matmul(logits, lm_head, _block(ws, plan, XS, L_, C_), V_, nb, C_, False)  # (V, N)
    return cross_entropy(logits, columns[1], _block(ws, plan, SCRATCH, 0, 2), n, nb, n_mean)


@kernel
def _backward(pm, gm, ws, plan, columns, rows_c, rows_4c, n):
    """Fills gm (grads as (P / C, C)) from the activations _forward left; each layer's backward in reverse."""
    V_, C_, NH_, L_, norm = plan[V], plan[C], plan[NH], plan[L], plan[NORM]
    nb = n + (-n) % LANES
    scales, d_logits = _block(ws, plan, SCALES, 0, 2 * L_ + 1), _block(ws, plan, LOGITS, 0, V_)
    dx, dtmp, dqkv = _block(ws, plan, DX, 0, C_), _block(ws, plan, DTMP, 0, C_), _block(ws, plan, DQKV, 0, 3 * C_)
    dy, dh = _block(ws, plan, DY, 0, C_), _block(ws, plan, DH, 0, 4 * C_)
    dp = _block(ws, plan, DP, 0, plan[T] + LANES - 1)
    # every weight matrix is used once per step, so its gradient is written, not summed; only the embeddings'
    # rows are summed into (with lm_head tied, wte's gradient is first written by the lm_head matmul)
    lm, wpe = plan[OFF_LM] // C_, plan[OFF_WPE] // C_
    gm[wpe:wpe + plan[T]] = 0
    if lm != 0:
        gm[:V_] = 0
    x_final = transpose(rows_c, _block(ws, plan, XS, L_, C_), n)
    matmul(gm[lm:lm + V_], d_logits, x_final, V_, C_, n, False)         # (V, C)
    matmul(dx, pm[lm:lm + V_].T, d_logits, C_, nb, V_, False)          # (C, N)
    for i in range(L_ - 1, -1, -1):
        w_qkv, w_o, w_fc1, w_fc2 = _layer(pm, plan, i)
        d_qkv, d_o, d_fc1, d_fc2 = _layer(gm, plan, i)
        x_in, xn1, qkv, y = (_block(ws, plan, XS, i, C_), _block(ws, plan, XN1, i, C_),
                             _block(ws, plan, QKV, i, 3 * C_), _block(ws, plan, Y, i, C_))
        x_mid, xn2, h, a = (_block(ws, plan, XMID, i, C_), _block(ws, plan, XN2, i, C_),
                            _block(ws, plan, H, i, 4 * C_), _block(ws, plan, A, i, 4 * C_))
        # mlp block: x_out = mask * (mlp_fc2 @ act(mlp_fc1 @ xn2)) + x_mid; the branch's gradient is dx * mask
        d_branch = _branch_gradient(dtmp, dx, plan, columns, n, 2 + 2 * i)
        matmul(d_fc2, d_branch, transpose(rows_4c, a, n), C_, 4 * C_, n, False)
        matmul(dh, w_fc2.T, d_branch, 4 * C_, nb, C_, False)          # (4C, N)
        activation_backward(dh, h, nb, plan[RELU2] == 1)
        matmul(d_fc1, dh, transpose(rows_c, xn2 if norm == NORM_MICROGPT else x_mid, n), 4 * C_, C_, n, False)
        if norm == NORM_MICROGPT:
            matmul(dtmp, w_fc1.T, dh, C_, nb, 4 * C_, False)
            rmsnorm_backward(dx, dtmp, xn2, scales[2 + 2 * i], nb, True)
        else:
            matmul(dx, w_fc1.T, dh, C_, nb, 4 * C_, True)
        # attention block: x_mid = mask * (attn_wo @ attention(w_qkv @ xn1)) + x_in
        d_branch = _branch_gradient(dtmp, dx, plan, columns, n, 1 + 2 * i)
        matmul(d_o, d_branch, transpose(rows_c, y, n), C_, C_, n, False)
        matmul(dy, w_o.T, d_branch, C_, nb, C_, False)                # (C, N)
        attention_backward(dqkv, dy, _block(ws, plan, PROBS, i, NH_ * (plan[T] + LANES - 1)), dp, qkv, columns[3],
                           nb, NH_)
        matmul(d_qkv, dqkv, transpose(rows_c, x_in if norm == NORM_NONE else xn1, n), 3 * C_, C_, n, False)
        if norm == NORM_NONE:
            matmul(dx, w_qkv.T, dqkv, C_, nb, 3 * C_, True)
        else:
            matmul(dtmp, w_qkv.T, dqkv, C_, nb, 3 * C_, False)
            rmsnorm_backward(dx, dtmp, xn1, scales[1 + 2 * i], nb, True)
    if norm == NORM_MICROGPT:
        rmsnorm_backward(dtmp, dx, _block(ws, plan, XS, 0, C_), scales[0], nb, False)
        dx = dtmp
    if plan[DROP_THRESHOLD]:
        _dropout(dx, dx, plan, columns, n, 0)
    d_wte, d_wpe = gm[:V_], gm[wpe:]
    for j in range(n):
        for c in range(C_):
            d_wpe[columns[2, j], c] += dx[c, j]
            d_wte[columns[0, j], c] += dx[c, j]


@kernel
def _dropout(out, x, plan, columns, n, site):
    """out = x times the dropout mask of `site` (0: the embeddings, 1 + 2i / 2 + 2i: layer i's attention / MLP
    output) under plan's key, over the first n columns."""
    dropout_columns(out, x, columns[4], n, site, 1 + 2 * plan[L], plan[DROP_KEY], plan[DROP_THRESHOLD])


@kernel
def _add_branch(x_out, x_in, w, inputs, n_inner, branch, plan, columns, n, nb, site):
    """x_out = x_in + w @ inputs, a residual branch; with dropout the branch (C, NP) is built in `branch` and
    multiplied by its mask of `site` first."""
    C_ = x_out.shape[0]
    if plan[DROP_THRESHOLD]:
        matmul(branch, w, inputs, C_, nb, n_inner, False)
        _dropout(branch, branch, plan, columns, n, site)
        add_columns(x_out, x_in, branch, nb)
    else:
        _copy_columns(x_out, x_in, nb)
        matmul(x_out, w, inputs, C_, nb, n_inner, True)


@kernel
def _branch_gradient(scratch, dx, plan, columns, n, site):
    """The gradient of a residual branch's output: dx, or with dropout dx times the branch's mask (in scratch)."""
    if plan[DROP_THRESHOLD]:
        _dropout(scratch, dx, plan, columns, n, site)
        return scratch
    return dx


@kernel
def _loss_and_grads(state, ws, plan):
    """Loss of the batch in plan; fills state[1] with the gradients."""
    return _group_loss_and_grads(state[0], state[1], ws, plan, 0)


@kernel
def _group_loss_and_grads(params, grads, ws, plan, n_mean):
    """Loss of the documents in plan, summed and divided by n_mean (0: by their own predicted positions);
    fills grads with its gradient."""
    C_, NP_, P = plan[C], plan[NP], params.size
    columns = plan[COLUMNS:COLUMNS + COLUMN_ROWS * NP_].reshape((COLUMN_ROWS, NP_))
    rows = _block(ws, plan, ROWS, 0, 4 * C_)
    n = _pack_columns(plan, columns)
    pm = params.reshape((P // C_, C_))
    loss = _forward(pm, ws, plan, columns, n, n if n_mean == 0 else n_mean)
    _backward(pm, grads.reshape((P // C_, C_)), ws, plan, columns, rows[:C_].reshape((NP_, C_)),
              rows.reshape((NP_, 4 * C_)), n)
    return loss


@kernel
def _checked_positions(plan):
    """Predicted positions of the documents in plan (min(T, length - 1) each), after _pack_columns' checks of
    their token ids: for callers that must raise before a parallel region (an exception inside one is lost)."""
    V_, T_, at = plan[V], plan[T], plan[BATCH_AT]
    n_docs = plan[at]
    token, total = at + 1 + n_docs, 0
    for b in range(n_docs):
        length = plan[at + 1 + b]
        for p in range(min(T_, length - 1) + 1):
            if not 0 <= plan[token + p] < V_:
                raise ValueError("a token id is outside the vocabulary")
        total += max(0, min(T_, length - 1))
        token += length
    return total


# ---- entry points, called from FusedEngine

@entry_point
def loss_and_grads(state, ws, plan):
    return _loss_and_grads(state, ws, plan)


@entry_point
def adam_update(state, adam, lr, t):
    _adam(state, adam, lr, t)


@entry_point
def train_step(state, ws, plan, adam, lr, t):
    """One step: loss and gradients of the batch in plan, then Adam step t. Returns the loss before the update."""
    loss = _loss_and_grads(state, ws, plan)
    _adam(state, adam, lr, t)
    return loss


@entry_point
def train_steps(state, ws, plan, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses):
    """len(losses) steps: step i trains on documents i B .. i B + B - 1 of docs (tokens back to back,
    document d at docs[doc_starts[d]:doc_starts[d + 1]]) with learning rate lrs[i] and dropout key keys[i]
    (used when plan's DROP_THRESHOLD is not 0), as Adam step first_t + i."""
    at = plan[BATCH_AT]
    for i in range(losses.size):
        plan[DROP_KEY] = keys[i]
        plan[at] = batch_size
        token = at + 1 + batch_size
        for b in range(batch_size):
            d = i * batch_size + b
            length = doc_starts[d + 1] - doc_starts[d]
            plan[at + 1 + b] = length
            plan[token:token + length] = docs[doc_starts[d]:doc_starts[d + 1]]
            token += length
        losses[i] = train_step(state, ws, plan, adam, lrs[i], first_t + i)
