"""Where the torch engine computes: the device, the precision, and the processes of a data-parallel run.

`torchrun --nproc-per-node N -m microgpt train --engine torch ...` starts N processes and tells each its
RANK, WORLD_SIZE, LOCAL_RANK and a rendezvous address in environment variables (PyTorch's `env://`
contract). The engine joins that process group (gloo on CPU, NCCL on CUDA); a caller that has already
joined one (a test, a launcher of its own) keeps its own.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...errors import MicrogptError
from .. import DEVICES, torchrun_rank

TORCH_DTYPES = {'float64': torch.float64, 'float32': torch.float32, 'bfloat16': torch.bfloat16}


def launched_by_torchrun(environ=os.environ):
    """Whether this process is one of several started by torchrun (or another `env://` launcher)."""
    return torchrun_rank(environ) is not None


@dataclass(frozen=True)
class Placement:
    device: torch.device
    param_dtype: torch.dtype          # of the parameters, gradients and Adam moments
    autocast: torch.dtype = None      # bfloat16: matrix products and attention autocast to it (GPU only)
    rank: int = 0                     # this process's place in a data-parallel run
    world_size: int = 1               # processes in the run (1: no data parallelism)


def placement(device='auto', dtype='float64'):
    """The device and precision asked for, checked; joins torchrun's process group when launched by it."""
    if device not in DEVICES:
        raise MicrogptError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if dtype not in TORCH_DTYPES:
        raise MicrogptError(f"unknown dtype {dtype!r}; choose one of: {', '.join(TORCH_DTYPES)}")
    if launched_by_torchrun() and not dist.is_initialized():
        backend = 'nccl' if device in ('cuda', 'auto') and torch.cuda.is_available() else 'gloo'
        dist.init_process_group(backend)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    kind = _device_kind(device)
    if kind == 'cuda':
        local_rank = int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
        where = torch.device('cuda', local_rank)
    else:
        where = torch.device(kind)
    if dtype == 'bfloat16':
        if kind != 'cuda':
            raise MicrogptError(f"--dtype bfloat16 is autocast on a CUDA GPU, and this run is on {kind}; "
                                f"use --dtype float32 (or float64) there")
        return Placement(where, torch.float32, torch.bfloat16, rank, world_size)
    if kind == 'mps' and dtype == 'float64':
        raise MicrogptError("Apple's MPS devices compute in float32 at most: add --dtype float32")
    return Placement(where, TORCH_DTYPES[dtype], None, rank, world_size)


def _device_kind(device):
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == 'auto':
        return 'cuda' if cuda else 'mps' if mps else 'cpu'
    if device == 'cuda' and not cuda:
        raise MicrogptError("--device cuda, but PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                            "use --device cpu, or install a CUDA build of PyTorch on a machine with a GPU")
    if device == 'mps' and not mps:
        raise MicrogptError("--device mps, but PyTorch sees no Apple MPS device here; use --device cpu")
    return device


def share(batch_size, rank, world_size):
    """Documents lo .. hi - 1 of a global batch: this rank's contiguous share, sizes differing by one at most."""
    if batch_size < world_size:
        raise MicrogptError(f"--batch-size {batch_size} gives some of the {world_size} processes no document; "
                            f"use a batch of at least {world_size}, or at most {batch_size} processes (a run resumed "
                            f"keeps its batch size)")
    return rank * batch_size // world_size, (rank + 1) * batch_size // world_size


def sum_gradients_hook(process_group, bucket):
    """DistributedDataParallel communication hook: sum the ranks' gradients (DDP's own hook averages them).

    Each rank's loss is its share's NLL over the *global* batch's token count, so the sum is exactly the
    gradient of the global batch's mean, whatever the shares' sizes."""
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])
