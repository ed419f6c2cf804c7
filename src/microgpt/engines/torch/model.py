"""The GPT in PyTorch: the project's one PyTorch model, used by the torch engine, the benchmark and the tests.

It is microgpt's model with every ModelConfig switch, written with whole (B, T, C) tensors and left to
PyTorch's autograd. Its parameters are one flat (P,) tensor laid out by the parameter table
(config.parameter_table), exactly as the numpy and fused engines lay out theirs; each named matrix is a
view of it, so gradients land in one flat (P,) buffer (one all-reduce under DistributedDataParallel) and
Adam works on whole buffers. Dimension letters: B batch, T time, C channels, NH heads, HS head size, V
vocabulary, N = B * T rows, S dropout sites.

A batch is padded with BOS to its longest document; padded positions have target IGNORE and add nothing
to the loss, and they come after every real position, so causal attention never lets a real position see
one.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F

from ...config import NOTHING_TO_PREDICT, RMSNORM_EPS, parameter_table
from .. import check_batch

IGNORE = -1  # the target of a padded position


def rmsnorm(x):
    """x / sqrt(mean(x^2) + eps) over the channels, no learned gain (microgpt's)."""
    return x * (x.pow(2).mean(-1, keepdim=True) + RMSNORM_EPS).rsqrt()


class GPT(torch.nn.Module):
    """flat (P,): every parameter, in the parameter table's order; `views()` names its (rows, cols) matrices."""

    def __init__(self, cfg, dtype=torch.float64, device='cpu'):
        super().__init__()
        self.cfg = cfg
        self.table = parameter_table(cfg)
        total = sum(p.size for p in self.table)
        self.flat = torch.nn.Parameter(torch.zeros(total, dtype=dtype, device=device))  # (P,)
        self.offsets = {p.name: p.offset for p in self.table}

    def views(self, flat=None):
        """Name -> (rows, cols) view of `flat` (default: the parameters), in the parameter table's order."""
        flat = self.flat if flat is None else flat
        return {p.name: flat[p.offset:p.offset + p.size].view(p.rows, p.cols) for p in self.table}

    def _qkv(self, layer):
        """Layer `layer`'s attn_wq, attn_wk, attn_wv as one (3C, C) view: LAYER_PARAMETERS stores them adjacent."""
        C = self.cfg.n_embd
        start = self.offsets[f'layer{layer}.attn_wq']
        return self.flat[start:start + 3 * C * C].view(3 * C, C)                 # (3C, C)

    def forward(self, inputs, masks=None):
        """Logits (B, T, V) of inputs (B, T); masks (S, B, T, C): inverted dropout of the embeddings and of each
        attention and MLP output (dropout.py), or None."""
        cfg = self.cfg
        B, T = inputs.shape
        C, NH = cfg.n_embd, cfg.n_head
        w = self.views()
        x = w['wte'][inputs] + w['wpe'][:T]                                       # (B, T, C)
        if masks is not None:
            x = x * masks[0]
        if cfg.norm == 'microgpt':
            x = rmsnorm(x)
        for i in range(cfg.n_layer):
            p = f'layer{i}.'
            xn = rmsnorm(x) if cfg.norm != 'none' else x
            q, k, v = (xn @ self._qkv(i).T).split(C, -1)                          # each (B, T, C)
            q, k, v = (z.view(B, T, NH, C // NH).transpose(1, 2) for z in (q, k, v))  # each (B, NH, T, HS)
            if cfg.attention == 'causal':
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)       # (B, NH, T, HS)
            else:  # each position attends to itself only
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=self_only_mask(T, inputs.device))
            y = y.transpose(1, 2).reshape(B, T, C) @ w[p + 'attn_wo'].T           # (B, T, C)
            x = x + (y if masks is None else y * masks[1 + 2 * i])
            xn = rmsnorm(x) if cfg.norm == 'microgpt' else x
            h = torch.relu(xn @ w[p + 'mlp_fc1'].T)                               # (B, T, 4C)
            if cfg.mlp_activation == 'relu2':
                h = h * h
            y = h @ w[p + 'mlp_fc2'].T                                            # (B, T, C)
            x = x + (y if masks is None else y * masks[2 + 2 * i])
        lm_head = w['wte'] if cfg.tie_lm_head else w['lm_head']
        return x @ lm_head.T                                                      # (B, T, V)


def self_only_mask(T, device):
    """(T, T) True on the diagonal: each of T positions attends to itself only. Sized by the batch, never by the
    block: a --block-size 100000 over short names must not allocate (100000, 100000)."""
    return _eye(1 << (T - 1).bit_length(), device)[:T, :T]                       # (T, T)


@lru_cache(maxsize=None)
def _eye(size, device):
    """The mask of `size` positions, a power of two: a few sizes cover every T."""
    return torch.eye(size, dtype=torch.bool, device=device)                     # (size, size)


def predicted_count(batch, block_size):
    """Positions with a token to predict: min(block_size, len - 1) per document."""
    return sum(max(0, min(block_size, len(tokens) - 1)) for tokens in batch)


def batch_tensors(batch, cfg, device='cpu'):
    """Token sequences -> inputs (B, T) and targets (B, T), padded with BOS inputs and IGNORE targets."""
    lengths = [max(0, min(cfg.block_size, len(tokens) - 1)) for tokens in check_batch(batch, cfg.vocab_size)]
    if not any(lengths):
        raise ValueError(NOTHING_TO_PREDICT)
    B, T = len(batch), max(lengths)
    inputs = torch.full((B, T), cfg.bos_id, dtype=torch.long)                     # (B, T)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)                        # (B, T)
    for b, (tokens, n) in enumerate(zip(batch, lengths)):
        inputs[b, :n] = torch.tensor(tokens[:n])
        targets[b, :n] = torch.tensor(tokens[1:n + 1])
    if torch.device(device).type == 'cuda':  # pinned and asynchronous: the GPU keeps working on the last step
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


def nll_sum(logits, targets):
    """Sum of -log softmax(logits)[target] over the positions whose target is not IGNORE."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction='sum')


def mean_loss(model, batch, masks=None):
    """The batch's loss: mean NLL over every predicted token of every document."""
    inputs, targets = batch_tensors(batch, model.cfg, model.flat.device)
    return nll_sum(model(inputs, masks), targets) / predicted_count(batch, model.cfg.block_size)


def loss_and_grads(weights, cfg, batch):
    """Loss and name -> gradient (NumPy arrays) of `weights` (name -> (rows, cols) array-like) in float64,
    by autograd: the oracle the hand-derived gradients are tested against."""
    model = GPT(cfg, torch.float64)
    with torch.no_grad():
        for name, view in model.views().items():
            view.copy_(torch.as_tensor(weights[name], dtype=torch.float64))
    loss = mean_loss(model, batch)
    loss.backward()
    return loss.item(), {name: g.numpy().copy() for name, g in model.views(model.flat.grad).items()}
