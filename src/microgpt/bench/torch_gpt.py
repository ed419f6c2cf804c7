"""The same model and training loop in PyTorch autograd, for side-by-side timing only (`microgpt bench`,
benchmarks/bench_fused.py). PyTorch is optional: this module imports it when called.

The job is benchmark.prepared_job's: the same initial weights (drawn by the NumPy engine), the same batches
(training.batch_for_step), learning rates and Adam settings; batches are padded (B, T) and the loss is the
mean over real positions. Only microgpt's switches (RMSNorm everywhere, ReLU, separate lm_head, causal
attention) are built: enough for the benchmarks, which time those.
"""

import time

from ..config import TrainConfig, learning_rate
from ..engines import make_engine
from ..data import batch_for_step
from ..train.loop import predicted_tokens


def batch_loss(weights, cfg, batch):
    """Mean NLL over the real positions of the padded batch; weights: name -> tensor, microgpt's names."""
    import torch
    import torch.nn.functional as F
    if (cfg.norm, cfg.mlp_activation, cfg.tie_lm_head, cfg.attention) != ('microgpt', 'relu', False, 'causal'):
        raise ValueError("the PyTorch baseline builds microgpt's own switches only")
    T, C, NH = cfg.block_size, cfg.n_embd, cfg.n_head
    lengths = [min(T, len(tokens) - 1) for tokens in batch]
    t = max(lengths)
    inputs = torch.full((len(batch), t), cfg.bos_id)                           # (B, T)
    targets = torch.full((len(batch), t), -1)                                   # (B, T); -1: padding, ignored
    for b, (tokens, n) in enumerate(zip(batch, lengths)):
        inputs[b, :n] = torch.tensor(tokens[:n])
        targets[b, :n] = torch.tensor(tokens[1:n + 1])
    causal = torch.ones(t, t, dtype=torch.bool).tril()                         # (T, T)
    x = _rmsnorm(weights['wte'][inputs] + weights['wpe'][:t])                   # (B, T, C)
    for i in range(cfg.n_layer):
        w = {name.split('.', 1)[1]: weights[name] for name in weights if name.startswith(f'layer{i}.')}
        xn = _rmsnorm(x)
        q, k, v = (xn @ torch.cat([w['attn_wq'], w['attn_wk'], w['attn_wv']]).T).split(C, -1)
        q, k, v = (z.view(len(batch), t, NH, C // NH).transpose(1, 2) for z in (q, k, v))  # (B, NH, T, HS)
        att = (q @ k.transpose(-1, -2) / (C // NH) ** 0.5).masked_fill(~causal, float('-inf'))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(len(batch), t, C)      # (B, T, C)
        x = x + y @ w['attn_wo'].T
        x = x + torch.relu(_rmsnorm(x) @ w['mlp_fc1'].T) @ w['mlp_fc2'].T
    logits = x @ weights['lm_head'].T                                           # (B, T, V)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)


def _rmsnorm(x):
    return x * (x.pow(2).mean(-1, keepdim=True) + 1e-5).rsqrt()


def time_torch(doc_tokens, cfg, rng, steps, batch_size=1, dtype='float64', warmup=5):
    """(seconds, predicted tokens) of `steps` training steps after `warmup` untimed ones."""
    import torch
    engine = make_engine('numpy', cfg, rng)  # the same initial weights as the other engines
    weights = {name: torch.tensor(w, dtype=getattr(torch, dtype), requires_grad=True)
               for name, w in engine.weights().items()}
    tcfg = TrainConfig(steps=warmup + steps, batch_size=batch_size)
    optimizer = torch.optim.Adam(weights.values(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps)
    start, tokens = None, 0
    for step in range(tcfg.steps):
        if step == warmup:
            start = time.perf_counter()
        batch = batch_for_step(doc_tokens, step, tcfg.batch_size)
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(tcfg, step)
        optimizer.zero_grad(set_to_none=True)
        batch_loss(weights, cfg, batch).backward()
        optimizer.step()
        if step >= warmup:
            tokens += predicted_tokens(batch, cfg.block_size)
    return time.perf_counter() - start, tokens
