"""The torch engine: the one PyTorch model (model.py) trained by autograd and Adam, on a CPU, a GPU, or several
processes with DistributedDataParallel.

Parameters, gradients and Adam's moments are flat (P,) tensors in the parameter table's order, initialised
from the same seeded `random.Random` stream as every engine; Adam runs on them in the reference's order of
operations, and dropout uses the same counter-based masks (dropout.py), drawn on the device (dropout_masks.py).
So in float64 on a CPU a seeded run follows the numpy engine step by step.

Data parallel (torchrun): every process holds the whole model and every document; each takes its share of a
step's global batch (devices.share), its loss is that share's NLL over the global batch's token count, and
DistributedDataParallel sums the gradients across processes during the backward pass. Each process then
applies the same Adam update to the same summed gradient, so their weights stay equal, and equal to one
process's on the global batch. Only `is_main_process` should print, evaluate, or write files.

On a CPU the engine computes on one thread (CPU_THREADS), set for the duration of each call and restored:
microgpt's matrices are too small for PyTorch's intra-op threads, which only contend with each other and any
other job (the default job, 2 threads beside a busy machine: 460 ms a step; one thread: 5.5 ms). To use more
cores, run more processes: `torchrun --nproc-per-node N`.
"""

import random
import re
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from ...config import NOTHING_TO_PREDICT, dropout_sites, init_parameters
from ...errors import MicrogptError, PeersLost
from .. import EngineState, check_decoder_step, check_state, documents_batches
from . import dropout_masks
from .devices import placement, share, sum_gradients_hook
from .model import GPT, batch_tensors, nll_sum, predicted_count


CPU_THREADS = 1


@contextmanager
def _cpu_threads(device):
    """PyTorch's intra-op threads limited to CPU_THREADS while computing on the CPU, then restored."""
    if device.type != 'cpu':
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _peers_alive(world_size):
    """A data-parallel step whose collective failed because another process stopped: one line, not a traceback."""
    try:
        yield
    except RuntimeError as e:
        if world_size == 1 or not (isinstance(e, dist.DistError) or 'gloo' in str(e) or 'NCCL' in str(e)):
            raise
        # gloo's message: "...: RuntimeError: [.../pair.cc:553] Connection closed by peer [addr]:port. This is ..."
        reason = re.sub(r'.*\[[^\]]*\.(cc|cpp):\d+\] ', '', str(e).splitlines()[0]).split('. ')[0][:160]
        raise PeersLost(f"another process of the data-parallel run stopped ({reason}); the checkpoints already "
                        f"written are intact: continue with --resume") from None


def check_same_data(summary):
    """In a data-parallel run, that every process read the same data, by `summary` (its documents, tokens,
    vocabulary and first documents in the shuffled order), gathered from all: each process reads --data itself, and a
    pipe splits its lines between them, or another machine's file may differ; they would train one model on
    different documents, or crash at DDP's shape check."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    summaries = [None] * dist.get_world_size()
    with _peers_alive(dist.get_world_size()):
        dist.all_gather_object(summaries, summary)
    differ = [rank for rank, theirs in enumerate(summaries) if theirs != summaries[0]]
    if differ:
        documents, tokens = summaries[0][:2]
        raise MicrogptError(f"the processes of this torchrun read different data: process {differ[0]}'s --data is not "
                            f"process 0's ({documents} documents, {tokens} tokens); give each the same file (a pipe "
                            f"splits its lines between the processes)")


class TorchEngine:
    name = 'torch'
    chunk_steps = 32  # losses of a chunk are read back from the device (and summed across processes) together

    def __init__(self, cfg, rng: random.Random, dtype='float64', device='auto'):
        self.cfg = cfg
        self.where = placement(device, dtype)
        self.device = self.where.device
        self.dtype = str(self.where.param_dtype).removeprefix('torch.')  # of the state; 'float32' under bfloat16
        self.model = GPT(cfg, self.where.param_dtype, self.device)
        with torch.no_grad():
            views = self.model.views()
            for name, rows in init_parameters(cfg, rng).items():
                views[name].copy_(torch.tensor(rows, dtype=torch.float64))
        self.flat = self.model.flat                                               # (P,)
        self.m = torch.zeros_like(self.flat.data)                                 # (P,) Adam first moments
        self.v = torch.zeros_like(self.flat.data)                                 # (P,) Adam second moments
        self.adam_steps = 0
        self.trained = self.model
        if self.where.world_size > 1:
            with _peers_alive(self.where.world_size):  # DDP's first collective: a process that stopped is seen here
                self.trained = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
            self.trained.register_comm_hook(None, sum_gradients_hook)

    @property
    def is_main_process(self):
        """True in a single process, and on rank 0 of a data-parallel run: the one that prints and writes."""
        return self.where.rank == 0

    def any_process(self, flag):
        """Whether `flag` holds in any process of a data-parallel run (a stop request after Ctrl-C), so that every
        process stops after the same step; in one process, `flag`. Every process must call it at the same step."""
        if self.where.world_size == 1:
            return bool(flag)
        flags = torch.tensor([int(bool(flag))], device=self.device)
        with _peers_alive(self.where.world_size):
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags.item())

    def num_params(self):
        return self.flat.numel()

    # ---- loss, gradients, Adam

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.where.autocast, enabled=self.where.autocast is not None)

    def _masks(self, rate, seed_and_step, lo, hi, T):
        """(S, hi - lo, T, C) dropout masks of documents lo .. hi - 1 of the global batch, padded to T, drawn on
        the device."""
        cfg = self.cfg
        seed, step = seed_and_step
        return dropout_masks.masks(rate, seed, step, lo, hi, T, cfg.block_size, dropout_sites(cfg), cfg.n_embd,
                                   self.flat.dtype, self.device)

    def _local_loss(self, batch, dropout_rate, seed_and_step):
        """This process's share of the global batch: its NLL sum over the global token count, as a tensor with
        autograd (under DDP, its backward sums the gradients of every process)."""
        if dropout_rate and seed_and_step is None:
            raise ValueError("dropout needs seed_and_step, the (seed, step) its masks are drawn from")
        count = predicted_count(batch, self.cfg.block_size)
        if not count:
            raise ValueError(NOTHING_TO_PREDICT)
        lo, hi = share(len(batch), self.where.rank, self.where.world_size)
        inputs, targets = batch_tensors(batch[lo:hi], self.cfg, self.device)     # (B, T) each
        masks = self._masks(dropout_rate, seed_and_step, lo, hi, inputs.shape[1]) if dropout_rate else None
        with self._autocast():
            logits = self.trained(inputs, masks)                                  # (B, T, V)
        return self._nll_sum(logits, targets) / count

    def _nll_sum(self, logits, targets):
        # under bfloat16 autocast the softmax and its sum run in float32, the parameters' dtype
        return nll_sum(logits.to(self.flat.dtype), targets)

    def _backward(self, batch, dropout_rate, seed_and_step):
        self.flat.grad = None
        with _peers_alive(self.where.world_size):
            loss = self._local_loss(batch, dropout_rate, seed_and_step)
            loss.backward()                       # under DDP, also sums the gradients across processes
        return loss.detach()

    def _global(self, losses):
        """The global batch's losses (steps,) from this process's shares: summed across processes."""
        losses = torch.stack(losses)
        if self.where.world_size > 1:
            with _peers_alive(self.where.world_size):
                dist.all_reduce(losses)
        return losses.tolist()

    def loss(self, batch):
        with torch.no_grad(), self._autocast(), _cpu_threads(self.device):
            inputs, targets = batch_tensors(batch, self.cfg, self.device)
            logits = self.model(inputs)                                           # (B, T, V)
            return (self._nll_sum(logits, targets) / predicted_count(batch, self.cfg.block_size)).item()

    def loss_and_grads(self, batch, dropout=0.0, seed_and_step=None):
        with _cpu_threads(self.device):
            return self._global([self._backward(batch, dropout, seed_and_step)])[0]

    @torch.no_grad()
    def adam_update(self, lr_t, tcfg):
        """Adam (optionally AdamW, clipped) on the flat buffers, in the reference's order of operations."""
        p, g, m, v = self.flat.data, self.flat.grad, self.m, self.v
        if tcfg.grad_clip:
            norm = torch.sqrt(g @ g).item()
            g = g * min(1.0, tcfg.grad_clip / (norm + 1e-6))
        t = self.adam_steps + 1
        m.mul_(tcfg.beta1).add_(g * (1 - tcfg.beta1))                             # m = beta1 m + (1 - beta1) g
        v.mul_(tcfg.beta2).add_(g * g * (1 - tcfg.beta2))                          # v = beta2 v + (1 - beta2) g^2
        if tcfg.weight_decay:
            p.sub_(p * (lr_t * tcfg.weight_decay))                                 # decoupled (AdamW) decay
        m_hat = m / (1 - tcfg.beta1 ** t)
        v_hat = v / (1 - tcfg.beta2 ** t)
        p.sub_(m_hat * lr_t / (v_hat.sqrt() + tcfg.eps))                           # lr m_hat / (sqrt(v_hat) + eps)
        self.adam_steps = t

    def _step(self, batch, lr_t, tcfg):
        # a step's masks depend only on the seed and the step, so a resumed run draws the same ones
        loss = self._backward(batch, tcfg.dropout, (tcfg.seed, self.adam_steps + 1))
        self.adam_update(lr_t, tcfg)
        return loss

    def train_step(self, batch, lr_t, tcfg):
        with _cpu_threads(self.device):
            return self._global([self._step(batch, lr_t, tcfg)])[0]

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs):
        """The steps one by one; their losses stay on the device until the chunk's end."""
        with _cpu_threads(self.device):
            batches = documents_batches(doc_tokens, start, stop, tcfg.batch_size)
            return self._global([self._step(batch, lr, tcfg) for batch, lr in zip(batches, lrs)])

    # ---- weights and state, as NumPy arrays in the parameter table's names

    def weights(self):
        return {name: view.detach().cpu().numpy().copy() for name, view in self.model.views().items()}

    def gradients(self):
        grad = self.flat.grad if self.flat.grad is not None else torch.zeros_like(self.flat)
        return {name: view.cpu().numpy().copy() for name, view in self.model.views(grad.detach()).items()}

    def state(self):
        return EngineState(self.weights(), self.m.cpu().numpy().copy(), self.v.cpu().numpy().copy(), self.adam_steps)

    @torch.no_grad()
    def load_state(self, state):
        check_state(state, self.cfg)
        views = self.model.views()
        for name, view in views.items():
            view.copy_(torch.as_tensor(np.asarray(state.weights[name]), dtype=self.flat.dtype))
        if state.adam_m is not None and state.adam_v is not None:
            self.m.copy_(torch.as_tensor(np.asarray(state.adam_m), dtype=self.m.dtype))
            self.v.copy_(torch.as_tensor(np.asarray(state.adam_v), dtype=self.v.dtype))
        self.adam_steps = state.adam_steps

    def decoder(self):
        return TorchDecoder(self)


class TorchDecoder:
    """One position per call: the model's forward over the tokens so far (no KV cache: at microgpt's block
    sizes a whole prefix costs about what one position does), returning the last position's logits."""

    def __init__(self, engine):
        self.engine = engine
        self.tokens = []

    def reset(self):
        self.tokens = []

    @torch.no_grad()
    def step(self, token_id, pos_id):
        e = self.engine
        check_decoder_step(token_id, pos_id, e.cfg)
        self.tokens = self.tokens[:pos_id] + [token_id]
        inputs = torch.tensor([self.tokens], device=e.device)                     # (1, T)
        with e._autocast(), _cpu_threads(e.device):
            logits = e.model(inputs)[0, -1]                                       # (V,)
        return logits.double().tolist()
