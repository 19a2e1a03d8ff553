"""Data parallelism across processes launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU.

Each process trains on its own slice of every global batch and the gradients are averaged across
processes after each backward pass, so every process keeps identical weights (DistributedDataParallel's
semantics). We average explicitly rather than wrapping modules in DistributedDataParallel because one
joint step runs several backward passes through the same encoder that must update different
parameter sets (the contrastive loss updates the encoder; the generator's objective, which also flows
through the encoder, must update G only): DDP's one-forward-one-backward reducer does not fit that.

The contrastive loss of a process uses the negatives in its own batch (as SimCLR does per device
without a global gather); `--batch-size` is per process. Rank 0 writes the run folder; resuming needs
the same number of processes and the run folder visible to all of them (a shared file system).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, parameters) -> None:
        """Replace each gradient by its mean over the processes (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating buffers (batch-norm running statistics, estimated from each process's own batches)
        so that every process keeps the same model; DistributedDataParallel broadcasts rank 0's instead."""
        if self.enabled:
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer /= self.world_size

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over the processes of a tensor (a NaN on any process makes the result NaN everywhere)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        if self.enabled:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun set up (if any). Single-process runs need nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shutdown_distributed(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
