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
    "unwrap",
    "main_process_handlers",
    "mean_over_processes",
    "gather_from_processes",
    "broadcast_from_main",
]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel (or the model itself)."""
    return model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model


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
    """Tear the process group down once every process got here, and return only when Gloo's worker threads are idle.

    Why the wait: once a DistributedDataParallel model has been built, Gloo's process group outlives
    destroy_process_group (its worker threads keep running until the process ends). A worker that has finished a
    collective but not yet released it still holds that collective's tensors; when those were made in Python (a
    metric's all_gather), releasing them needs the GIL, and if the interpreter is already shutting down by then the
    thread is killed inside C++ and the process aborts ("terminate called without an active exception", exit -6)
    after a run that otherwise succeeded. Rare, and likelier on a loaded machine."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _wait_for_idle_gloo_workers()


def _gloo_worker_states() -> list[str]:
    """The scheduler state ('R' running, 'S' sleeping, ...) of each of this process's Gloo worker threads (Linux)."""
    states = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return states
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pt_gloo_runloop":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])  # the field after "(comm)"
        except OSError:  # the thread ended meanwhile
            continue
    return states


def _wait_for_idle_gloo_workers(timeout: float = 5.0, quiet_samples: int = 3, interval: float = 0.02) -> bool:
    """Sleep until every Gloo worker thread has been asleep for `quiet_samples` samples in a row; at most `timeout` s.

    Called after a barrier, so every collective has completed: a worker is then either releasing a finished job
    (running, or waiting for the GIL, which this sleep leaves free) or asleep waiting for its next job with nothing
    in hand. True when idle (or no worker threads: the group was freed, or no /proc)."""
    import time

    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        states = _gloo_worker_states()
        quiet = quiet + 1 if all(state == "S" for state in states) else 0
        if quiet >= quiet_samples:
            return True
        time.sleep(interval)
    return False


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
