"""torchrun helpers that work with NCCL on GPUs and with Gloo on CPUs (so CI can test multi-process runs)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "local_device",
    "init_distributed",
    "destroy_distributed",
    "is_main_process",
    "world_size",
    "rank",
    "wrap_ddp",
    "main_process_handlers",
    "mean_over_processes",
    "gather_from_processes",
    "broadcast_from_main",
]


def local_device() -> torch.device:
    """The device of this process: cuda:LOCAL_RANK on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> torch.device:
    """Create the default process group from torchrun's environment (nccl on GPU, gloo on CPU)."""
    device = local_device()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def destroy_distributed() -> None:
    """Tear the process group down once every process got here: a process that destroys it while another is still
    finishing its last collective can abort that one (seen with Gloo: "terminate called without an active
    exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel over every trainable parameter (encoder included when it is fine-tuned).
    `find_unused_parameters` only for models whose forward may skip parameters: it walks the autograd graph
    every step. The iBOT student does not need it (its mask token is in the graph even when nothing is
    masked). On GPUs, BatchNorm layers become SyncBatchNorm."""
    device_ids = [device] if device.type == "cuda" else None
    if device.type == "cuda":  # batch statistics over all GPUs (SyncBatchNorm has no CPU kernel)
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return torch.nn.parallel.DistributedDataParallel(module.to(device), device_ids=device_ids,
                                                     find_unused_parameters=find_unused_parameters)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def main_process_handlers(handlers: list) -> list:
    """Drop logging, progress and checkpoint-saving handlers on every process but rank 0 (they would write the
    same files and lines N times); learning-rate and validation handlers run everywhere."""
    if is_main_process():
        return list(handlers)
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    from visionfm_core.engine.progress import Progress

    rank0_only = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ProgressBar, Progress)
    return [h for h in handlers if not isinstance(h, rank0_only)]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over all processes (itself when not distributed), the same on every process.

    A NaN or inf on any process makes the mean non-finite everywhere, so a decision taken on it (stop on a
    non-finite loss, stop on collapse) is taken by every process together: one process stopping alone would
    leave the others waiting forever in their next collective."""
    if not _distributed():
        return values
    total = values.detach().to(torch.float64).clone()  # float64: no overflow of a large finite sum
    dist.all_reduce(total)
    return (total / dist.get_world_size()).to(values.dtype)


def gather_from_processes(values: torch.Tensor) -> torch.Tensor:
    """(world_size, *values.shape): every process's `values`, in rank order, on every process."""
    if not _distributed():
        return values.unsqueeze(0)
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.stack(parts)


def broadcast_from_main(value: float, device: torch.device | str = "cpu") -> float:
    """Rank 0's `value` on every process (`value` as given when not distributed). The broadcast also keeps the
    processes in step: the others wait here until rank 0 has finished its work (e.g. a k-NN probe).
    `device` must be the process's GPU under NCCL."""
    if not _distributed():
        return value
    buf = torch.tensor([value if is_main_process() else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(buf, src=0)
    return float(buf.item())
