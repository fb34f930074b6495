"""torchrun helpers that work with NCCL on GPUs and with Gloo on CPUs (so CI can test multi-process runs)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["local_device", "init_distributed", "destroy_distributed", "is_main_process", "world_size"]


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
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel over every trainable parameter (encoder included when it is fine-tuned).
    `find_unused_parameters` for models whose forward may skip parameters (iBOT's mask token when no crop of
    a batch is masked). On GPUs, BatchNorm layers become SyncBatchNorm."""
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

    rank0_only = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ProgressBar)
    return [h for h in handlers if not isinstance(h, rank0_only)]
