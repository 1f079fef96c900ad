"""Processes for data-parallel training (torchrun): which one this is, summing across them, who prints."""
import os
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def init_processes(device):
    """(device, world size, rank): under torchrun, join the process group (NCCL on CUDA, gloo elsewhere)
    and take this process's own GPU; alone, (device, 1, 0)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, world, rank


def data_parallel(module, device):
    """`module` in DistributedDataParallel under torchrun (gradients summed across processes during backward), else
    itself. A compiled module inside DDP has its graph split at DDP's buckets, which are sent during backward."""
    if not dist.is_initialized():
        return module
    # compiled, the conv stem's 1x1 projection gets a gradient whose size-1 dims have other strides: DDP copies it
    # into its bucket as it copies every gradient, but warns
    warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce(t):
    """Sum a tensor over all processes (no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def own_share(n, world, rank):
    """How many of n samples this process trains on that no other does. A DistributedSampler (and
    augment.DeviceLoader) deals the n round-robin after padding them to a multiple of world with repeats, so a share
    is its own samples, then at most a repeat at its end: this many of it count towards the epoch's figures."""
    return len(range(rank, n, world))


def gather_shares(t, n):
    """The rows of n samples dealt round-robin to the processes, this one holding rows rank, rank + world, ... as t:
    all n in their order, in every process (on t's device); alone, t itself."""
    if not dist.is_initialized():
        return t
    world, device = dist.get_world_size(), t.device
    rows = -(-n // world)  # the longest share; shorter ones are padded to it, as all_gather needs equal tensors
    t = t.to("cuda" if dist.get_backend() == "nccl" else "cpu")  # CUDA tensors for NCCL, CPU ones for gloo
    t = torch.cat([t, t.new_zeros(rows - len(t), *t.shape[1:])])
    shares = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(shares, t)
    return torch.stack(shares, 1).flatten(0, 1)[:n].to(device)  # row i of rank r is sample r + i * world


def share_buffers(module):
    """Rank 0's buffers (batch norm's running statistics) in every process: DDP sends them at the start of each
    training step, so after an epoch each process holds its own; all then evaluate the model rank 0 saves."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def is_master():
    """True in the process that prints and writes files (rank 0, or the only process; before the process group
    exists, as torchrun's environment says)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("WORLD_SIZE", 1)) == 1 or os.environ.get("RANK", "0") == "0"


def log(*a):
    """print, in the master process only."""
    if is_master():
        print(*a, flush=True)


@contextmanager
def master_first():
    """Run the block in rank 0 first (e.g. to fill a cache that the others then read), then in the others together;
    if rank 0 stopped before its end (it has said why), the others exit quietly with status 2."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank > 0:
        try:
            dist.barrier()
        except RuntimeError:
            raise SystemExit(2) from None
    yield
    if rank == 0 and dist.is_initialized():
        dist.barrier()
