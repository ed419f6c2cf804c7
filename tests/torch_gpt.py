"""The GPT written a third way, in PyTorch autograd: the oracle the hand-derived gradients are checked against.

Written from the model's definition (README), not from either engine, with every ModelConfig switch.
"""

import torch


def rmsnorm(x):
    return x * (x.pow(2).mean(-1, keepdim=True) + 1e-5) ** -0.5


def torch_forward_loss(weights, cfg, batch):
    """Mean NLL over every predicted position of every document; weights: name -> leaf tensor (rows, cols)."""
    total, count = 0.0, 0
    C, NH, HS = cfg.n_embd, cfg.n_head, cfg.head_dim
    lm_head = weights['wte'] if cfg.tie_lm_head else weights['lm_head']
    for tokens in batch:
        n = min(cfg.block_size, len(tokens) - 1)
        inputs = torch.tensor(tokens[:n])
        targets = torch.tensor(tokens[1:n + 1])
        x = weights['wte'][inputs] + weights['wpe'][:n]                       # (T, C)
        if cfg.norm == 'microgpt':
            x = rmsnorm(x)
        for i in range(cfg.n_layer):
            w = {k.split('.', 1)[1]: v for k, v in weights.items() if k.startswith(f'layer{i}.')}
            xn = rmsnorm(x) if cfg.norm != 'none' else x
            q = (xn @ w['attn_wq'].T).view(n, NH, HS).transpose(0, 1)         # (NH, T, HS)
            k = (xn @ w['attn_wk'].T).view(n, NH, HS).transpose(0, 1)
            v = (xn @ w['attn_wv'].T).view(n, NH, HS).transpose(0, 1)
            att = q @ k.transpose(-1, -2) / HS ** 0.5                          # (NH, T, T)
            allowed = torch.ones(n, n, dtype=torch.bool).tril()
            if cfg.attention == 'self':
                allowed = torch.eye(n, dtype=torch.bool)
            att = att.masked_fill(~allowed, float('-inf')).softmax(-1)
            y = (att @ v).transpose(0, 1).reshape(n, C)
            x = x + y @ w['attn_wo'].T
            xn = rmsnorm(x) if cfg.norm == 'microgpt' else x
            h = torch.relu(xn @ w['mlp_fc1'].T)
            if cfg.mlp_activation == 'relu2':
                h = h * h
            x = x + h @ w['mlp_fc2'].T
        logits = x @ lm_head.T                                                 # (T, V)
        total = total + torch.nn.functional.cross_entropy(logits, targets, reduction='sum')
        count += n
    return total / count


def torch_loss_and_grads(weights_np, cfg, batch):
    """Loss and name -> gradient (numpy) in float64."""
    weights = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in weights_np.items()}
    loss = torch_forward_loss(weights, cfg, batch)
    loss.backward()
    return loss.item(), {k: t.grad.numpy() if t.grad is not None else torch.zeros_like(t).numpy()
                         for k, t in weights.items()}
