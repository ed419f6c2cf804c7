"""makemore's transformer with makemore's own settings, on makemore's test set: the anchor our quality goal is
measured against, measured here. Needs torch.

    python benchmarks/makemore_transformer.py [--data names.txt] [--steps 20000] [--threads 1]

The model follows makemore's `Transformer` (train.py): learned token and position embeddings, 4 pre-LayerNorm
blocks of causal self-attention (4 heads) and a GELU MLP (tanh form), linear layers with biases, a final
LayerNorm and a bias-free lm_head; PyTorch's default initialisation. Training as makemore's defaults: batches of
32 names drawn at random with replacement, AdamW lr 5e-4 (constant), weight decay 0.01, betas (0.9, 0.99),
eps 1e-8, seed 3407. The test set is makemore's own (microgpt.makemore_split, tested equal to torch's draw), and
the loss is the mean over every predicted character, as `microgpt eval` computes it. Prints the test loss every
1000 steps and the best, which is what makemore's checkpointing keeps.
"""

import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.data import bundled_dataset_path, load_documents
from microgpt.makemore_split import MAKEMORE_SEED, makemore_split, torch_randperm

SHARED_NAMES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'names.txt')  # beside the clone
N_LAYER, N_EMBD, N_HEAD = 4, 64, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(N_EMBD), nn.LayerNorm(N_EMBD)
        self.c_attn, self.c_proj = nn.Linear(N_EMBD, 3 * N_EMBD), nn.Linear(N_EMBD, N_EMBD)
        self.c_fc, self.mlp_proj = nn.Linear(N_EMBD, 4 * N_EMBD), nn.Linear(4 * N_EMBD, N_EMBD)

    def forward(self, x):                                                    # x (B, T, C)
        B, T, C = x.shape
        q, k, v = (z.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)         # (B, NH, T, HS) each
                   for z in self.c_attn(self.ln_1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate='tanh'))


class Transformer(nn.Module):
    def __init__(self, vocab_size, block_size):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(block_size, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f, self.lm_head = nn.LayerNorm(N_EMBD), nn.Linear(N_EMBD, vocab_size, bias=False)

    def forward(self, idx):                                                  # idx (B, T) -> logits (B, T, V)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def encode(words, stoi, block_size):
    """(X, Y), each (N, block_size): makemore's <START> word, and word <END>, -1 where nothing is predicted."""
    X = torch.zeros(len(words), block_size, dtype=torch.long)
    Y = torch.full((len(words), block_size), -1, dtype=torch.long)
    for i, word in enumerate(words):
        ix = torch.tensor([stoi[ch] for ch in word])
        X[i, 1:1 + len(ix)] = ix
        Y[i, :len(ix)] = ix
        Y[i, len(ix)] = 0
    return X, Y


def test_loss(model, X, Y):
    """Mean cross-entropy over every predicted character of the test set."""
    model.eval()
    with torch.no_grad():
        logits = model(X)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), Y.view(-1), ignore_index=-1).item()
    model.train()
    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    default = SHARED_NAMES if os.path.exists(SHARED_NAMES) else bundled_dataset_path()
    parser.add_argument('--data', default=default, help=f'one name per line (default: {default})')
    parser.add_argument('--steps', type=int, default=20000, help='training steps (default: 20000)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default: 1)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(MAKEMORE_SEED)
    words = load_documents(args.data)
    # makemore draws its split first, then initialises the model: the same generator state here
    assert torch.randperm(len(words)).tolist() == torch_randperm(len(words)), "makemore_split is not torch's draw"
    train_words, test_words = makemore_split(words)
    chars = sorted(set(''.join(words)))
    stoi = {ch: i + 1 for i, ch in enumerate(chars)}                         # 0 is <START>/<END>, as in makemore
    block_size = max(map(len, words)) + 1
    Xtr, Ytr = encode(train_words, stoi, block_size)
    Xte, Yte = encode(test_words, stoi, block_size)
    model = Transformer(len(chars) + 1, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    print(f"{len(train_words)} training names, {len(test_words)} test names (makemore's), "
          f"{sum(p.numel() for p in model.parameters())} parameters, {args.threads} thread(s)")
    best, start = math.inf, time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.randint(len(Xtr), (32,))
        logits = model(Xtr[rows])
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), Ytr[rows].view(-1), ignore_index=-1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 1000 == 0 or step == args.steps:  # and after the last step, whatever the count
            loss = test_loss(model, Xte, Yte)
            best = min(best, loss)
            print(f"step {step} | test loss {loss:.4f} | best {best:.4f} | {time.perf_counter() - start:.0f} s",
                  flush=True)
    print(f"best test loss {best:.4f} in {args.steps} steps, {time.perf_counter() - start:.0f} s")


if __name__ == '__main__':
    main()
