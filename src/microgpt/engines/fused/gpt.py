"""The fused engine's model, as llm.c's gpt2_forward and gpt2_backward: one compiled call runs whole steps.

`gpt_forward` runs the layers of fused/layers.py in order and leaves their activations in the workspace (its
cache); `gpt_backward` calls the backward of each forward step in reverse order. Both see the model, the
workspace and the packed batch through the plan (plan.py). The entry points at the end are the functions
FusedEngine calls; only they are cached on disk (compile.py).
"""

from numba import njit

from ...config import MLP_EXPANSION, NOTHING_TO_PREDICT
from .adam import adam_step
from .lanes import ENTRY_OPTIONS, LANES, as_rows, borrowed, composite, inlined, kernel
from .layers import (activation_backward, activation_forward, add_columns, attention_backward, attention_forward,
                     cross_entropy_backward, cross_entropy_forward, dropout_columns, rmsnorm_backward, rmsnorm_forward)
from .matmul import matmul, product_columns, transpose
from .plan import (A, BRANCH, CE_STATS, DH, DLOGITS, DP, DQKV, DTMP, DX, DY, H, LOGITS, NORM_MICROGPT, NORM_NONE,
                   PROBS, QKV, ROWS, SCALES, SLOT_C, SLOT_DROP_KEY, SLOT_DROP_THRESHOLD, SLOT_L, SLOT_LM_HEAD,
                   SLOT_NH, SLOT_NORM, SLOT_NP, SLOT_RELU2, SLOT_SPAN, SLOT_T, SLOT_V, SLOT_WPE, SLOT_WTE, XMID, XN1,
                   XN2, XS, Y, buffer, columns_of, layer_weights, pack_columns)

entry_point = njit(**ENTRY_OPTIONS)


@composite
def gpt_forward(pm, ws, plan, columns, n, n_mean):
    """Loss of the n packed columns (summed, divided by n_mean); leaves every activation in the workspace.
    pm: the parameters as (P / C, C). With dropout, the embeddings and each attention and MLP output are
    multiplied by their masks."""
    V, C, NH, L, T, norm = plan[SLOT_V], plan[SLOT_C], plan[SLOT_NH], plan[SLOT_L], plan[SLOT_T], plan[SLOT_NORM]
    FC = MLP_EXPANSION * C  # mlp_fc1's width (llm.c's 4*C)
    nb = n + (-n) % LANES   # the micro-kernels' columns; the padding columns stay zero
    nw = product_columns(ws, nb, plan[SLOT_NP])  # the products' (matmul.product_columns)
    wte, wpe = pm[plan[SLOT_WTE]:plan[SLOT_WTE] + V], pm[plan[SLOT_WPE]:plan[SLOT_WPE] + T]
    scales = buffer(ws, plan, SCALES, 0, 2 * L + 1)                   # (2L + 1, NP)
    branch = buffer(ws, plan, BRANCH, 0, C)                           # (C, NP)
    x = buffer(ws, plan, XS, 0, C)                                    # (C, NP)
    for c in range(C):
        for j in range(nb):
            x[c, j] = wte[columns[0, j], c] + wpe[columns[2, j], c] if j < n else 0.0
    if plan[SLOT_DROP_THRESHOLD]:
        _dropout(x, x, plan, columns, n, 0)
    if norm == NORM_MICROGPT:
        rmsnorm_forward(x, scales[0], x, nb)
    for i in range(L):
        w_qkv, w_o, w_fc1, w_fc2 = layer_weights(pm, plan, i)
        x_in, xn1, qkv, y = (buffer(ws, plan, XS, i, C), buffer(ws, plan, XN1, i, C),
                             buffer(ws, plan, QKV, i, 3 * C), buffer(ws, plan, Y, i, C))
        x_mid, xn2, h, a = (buffer(ws, plan, XMID, i, C), buffer(ws, plan, XN2, i, C),
                            buffer(ws, plan, H, i, FC), buffer(ws, plan, A, i, FC))
        probs = buffer(ws, plan, PROBS, i, NH * (plan[SLOT_SPAN] + LANES - 1))      # (NH U, NP)
        if norm != NORM_NONE:
            rmsnorm_forward(xn1, scales[1 + 2 * i], x_in, nb)
        matmul(qkv, w_qkv, x_in if norm == NORM_NONE else xn1, 3 * C, nw, C)  # (3C, NP)
        attention_forward(y, probs, qkv, columns[3], nb, NH)                        # (C, NP)
        _add_branch(x_mid, x_in, w_o, y, C, branch, plan, columns, n, nb, nw, 1 + 2 * i)  # x += attn_wo @ y
        if norm == NORM_MICROGPT:
            rmsnorm_forward(xn2, scales[2 + 2 * i], x_mid, nb)
        matmul(h, w_fc1, xn2 if norm == NORM_MICROGPT else x_mid, FC, nw, C)  # (4C, NP)
        activation_forward(a, h, nb, plan[SLOT_RELU2] == 1)
        x_out = buffer(ws, plan, XS, i + 1, C)
        _add_branch(x_out, x_mid, w_fc2, a, FC, branch, plan, columns, n, nb, nw, 2 + 2 * i)  # x += mlp_fc2 @ a
    logits = buffer(ws, plan, LOGITS, 0, V)                           # (V, NP)
    lm_head = pm[plan[SLOT_LM_HEAD]:plan[SLOT_LM_HEAD] + V]
    matmul(logits, lm_head, buffer(ws, plan, XS, L, C), V, nw, C)
    return cross_entropy_forward(logits, logits, columns[1], buffer(ws, plan, CE_STATS, 0, 2), n, nb, n_mean)


@composite
def gpt_backward(pm, gm, ws, plan, columns, n, n_mean):
    """Fills gm (the gradients as (P / C, C)) from the activations gpt_forward left: each step's backward in
    reverse order."""
    V, C, NH, L, T, norm = plan[SLOT_V], plan[SLOT_C], plan[SLOT_NH], plan[SLOT_L], plan[SLOT_T], plan[SLOT_NORM]
    FC, NP, nb = MLP_EXPANSION * C, plan[SLOT_NP], n + (-n) % LANES
    nw = product_columns(ws, nb, NP)
    scales = buffer(ws, plan, SCALES, 0, 2 * L + 1)
    dx, dtmp, dqkv = buffer(ws, plan, DX, 0, C), buffer(ws, plan, DTMP, 0, C), buffer(ws, plan, DQKV, 0, 3 * C)
    dy, dh = buffer(ws, plan, DY, 0, C), buffer(ws, plan, DH, 0, FC)
    dp = buffer(ws, plan, DP, 0, plan[SLOT_SPAN] + LANES - 1)
    rows = buffer(ws, plan, ROWS, 0, FC)
    rows_c, rows_h = as_rows(rows[:C], C), as_rows(rows, FC)  # activations transposed
    d_logits = buffer(ws, plan, DLOGITS, 0, V)
    cross_entropy_backward(d_logits, buffer(ws, plan, LOGITS, 0, V), columns[1], buffer(ws, plan, CE_STATS, 0, 2),
                           n, nb, n_mean)
    # every weight matrix is used once per step, so its gradient is written, not summed; only the embeddings'
    # rows are summed into (with lm_head tied, wte's gradient is first written by the lm_head matmul)
    wte, wpe, lm = plan[SLOT_WTE], plan[SLOT_WPE], plan[SLOT_LM_HEAD]
    gm[wpe:wpe + T] = 0
    if lm != wte:
        gm[wte:wte + V] = 0
    matmul(gm[lm:lm + V], d_logits, transpose(rows_c, buffer(ws, plan, XS, L, C), n), V, C, n)  # (V, C)
    matmul(dx, pm[lm:lm + V].T, d_logits, C, nw, V)                                          # (C, NP)
    for i in range(L - 1, -1, -1):
        w_qkv, w_o, w_fc1, w_fc2 = layer_weights(pm, plan, i)
        d_qkv, d_o, d_fc1, d_fc2 = layer_weights(gm, plan, i)
        x_in, xn1, qkv, y = (buffer(ws, plan, XS, i, C), buffer(ws, plan, XN1, i, C),
                             buffer(ws, plan, QKV, i, 3 * C), buffer(ws, plan, Y, i, C))
        x_mid, xn2, h, a = (buffer(ws, plan, XMID, i, C), buffer(ws, plan, XN2, i, C),
                            buffer(ws, plan, H, i, FC), buffer(ws, plan, A, i, FC))
        probs = buffer(ws, plan, PROBS, i, NH * (plan[SLOT_SPAN] + LANES - 1))
        # mlp block: x_out = mask * (mlp_fc2 @ act(mlp_fc1 @ xn2)) + x_mid; the branch's gradient is dx * mask
        d_branch = _branch_gradient(dtmp, dx, plan, columns, n, 2 + 2 * i)
        matmul(d_fc2, d_branch, transpose(rows_h, a, n), C, FC, n)
        matmul(dh, w_fc2.T, d_branch, FC, nw, C)                  # (4C, NP)
        activation_backward(dh, h, nb, plan[SLOT_RELU2] == 1)
        matmul(d_fc1, dh, transpose(rows_c, xn2 if norm == NORM_MICROGPT else x_mid, n), FC, C, n)
        matmul(dtmp, w_fc1.T, dh, C, nw, FC)                              # (C, NP)
        if norm == NORM_MICROGPT:
            rmsnorm_backward(dx, dtmp, xn2, scales[2 + 2 * i], nb, True)
        else:
            add_columns(dx, dx, dtmp, nb)
        # attention block: x_mid = mask * (attn_wo @ attention(w_qkv @ xn1)) + x_in
        d_branch = _branch_gradient(dtmp, dx, plan, columns, n, 1 + 2 * i)
        matmul(d_o, d_branch, transpose(rows_c, y, n), C, C, n)
        matmul(dy, w_o.T, d_branch, C, nw, C)                        # (C, NP)
        attention_backward(dqkv, dy, probs, dp, qkv, columns[3], nb, NH)    # (3C, NP)
        matmul(d_qkv, dqkv, transpose(rows_c, x_in if norm == NORM_NONE else xn1, n), 3 * C, C, n)
        matmul(dtmp, w_qkv.T, dqkv, C, nw, 3 * C)                         # (C, NP)
        if norm == NORM_NONE:
            add_columns(dx, dx, dtmp, nb)
        else:
            rmsnorm_backward(dx, dtmp, xn1, scales[1 + 2 * i], nb, True)
    if norm == NORM_MICROGPT:
        rmsnorm_backward(dtmp, dx, buffer(ws, plan, XS, 0, C), scales[0], nb, False)
        dx = dtmp
    if plan[SLOT_DROP_THRESHOLD]:
        _dropout(dx, dx, plan, columns, n, 0)
    d_wte, d_wpe = gm[wte:wte + V], gm[wpe:wpe + T]
    for j in range(n):
        for c in range(C):
            d_wpe[columns[2, j], c] += dx[c, j]
            d_wte[columns[0, j], c] += dx[c, j]


@composite
def _dropout(out, x, plan, columns, n, site):
    """out = x times the dropout mask of `site` (0: the embeddings, 1 + 2i / 2 + 2i: layer i's attention / MLP
    output) under plan's key, over the first n columns."""
    dropout_columns(out, x, columns[4], n, site, 1 + 2 * plan[SLOT_L], plan[SLOT_DROP_KEY], plan[SLOT_DROP_THRESHOLD])


@composite
def _add_branch(x_out, x_in, w, inputs, n_inner, branch, plan, columns, n, nb, nw, site):
    """x_out = x_in + w @ inputs, a residual branch; with dropout the branch (C, NP) is multiplied by its mask
    of `site` first; the product over nw columns (matmul.product_columns)."""
    matmul(branch, w, inputs, x_out.shape[0], nw, n_inner)
    if plan[SLOT_DROP_THRESHOLD]:
        _dropout(branch, branch, plan, columns, n, site)
    add_columns(x_out, x_in, branch, nb)


@composite
def _branch_gradient(d_branch, dx, plan, columns, n, site):
    """The gradient of a residual branch's output: dx, or with dropout dx times the branch's mask (in d_branch)."""
    if plan[SLOT_DROP_THRESHOLD]:
        _dropout(d_branch, dx, plan, columns, n, site)
        return d_branch
    return dx


@inlined
def group_loss(params, ws, plan, n, n_mean):
    """Forward only: the loss of the n columns packed in plan, summed and divided by n_mean."""
    C = plan[SLOT_C]
    return gpt_forward(as_rows(params, C), ws, plan, columns_of(plan), n, n_mean)


@inlined
def group_loss_and_grads(params, grads, ws, plan, n, n_mean):
    """The loss of the n columns packed in plan, summed and divided by n_mean; writes its gradient to grads."""
    C, columns = plan[SLOT_C], columns_of(plan)
    pm, gm = as_rows(params, C), as_rows(grads, C)
    loss = gpt_forward(pm, ws, plan, columns, n, n_mean)
    gpt_backward(pm, gm, ws, plan, columns, n, n_mean)
    return loss


@composite
def _pack(plan, docs, doc_starts, first, stop):
    """pack_columns of the batch of documents first .. stop - 1; raises when it has nothing to predict."""
    n = pack_columns(plan, docs, doc_starts, first, first, stop)
    if n == 0:
        raise ValueError(NOTHING_TO_PREDICT)
    return n


# ---- entry points, called from FusedEngine: training on batches of one group (parallel.py's for more, and for
# FusedEngine.loss and loss_and_grads), and adam_update for a batch of any size. A batch comes as docs (tokens back
# to back) and doc_starts (D + 1,): document d is docs[doc_starts[d]:doc_starts[d + 1]].

@entry_point
def adam_update(state, adam, lr, t):
    adam_step(borrowed(state), borrowed(adam), lr, t)


@entry_point
def train_steps(state, ws, plan, adam, docs, doc_starts, batch_size, lrs, keys, first_t, losses):
    """len(losses) steps: step i trains on documents i B .. i B + B - 1 of docs with learning rate lrs[i] and
    dropout key keys[i] (used when plan's SLOT_DROP_THRESHOLD is not 0), as Adam step first_t + i; losses[i]
    is its loss before the update."""
    state, ws, plan, adam, docs, doc_starts = (borrowed(state), borrowed(ws), borrowed(plan), borrowed(adam),
                                               borrowed(docs), borrowed(doc_starts))
    lrs, keys, losses = borrowed(lrs), borrowed(keys), borrowed(losses)
    for i in range(losses.size):
        plan[SLOT_DROP_KEY] = keys[i]
        n = _pack(plan, docs, doc_starts, i * batch_size, (i + 1) * batch_size)
        losses[i] = group_loss_and_grads(state[0], state[1], ws, plan, n, n)
        adam_step(state, adam, lrs[i], first_t + i)
