"""This process's place in a ``torchrun`` launch: the process group, its device, and what only rank 0 does.

Part of training/: train.py and evaluate.py run unchanged in one process or in several (one per GPU,
or CPU processes with gloo); what differs lives here. Only rank 0 writes files, shows progress and
warns about the image folder; counts are summed over the processes.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
import torch.distributed as torch_dist

from ..devices import resolve_device, visible_gpus
from ..errors import DataWarning, DeviceError


@dataclass(frozen=True)
class Processes:
    """This process's place in a ``torchrun`` launch (world_size 1 when not launched so)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    started_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def process_group(ngpus: int) -> Iterator[Tuple[Processes, torch.device]]:
    """Join the process group that ``torchrun`` set up (WORLD_SIZE/RANK/LOCAL_RANK) and pick this process's device.

    NCCL on GPUs (one per process, LOCAL_RANK), gloo on the CPU. Without torchrun, one process on
    the CPU (``ngpus=0``) or one GPU (``ngpus=1``). A group joined here is left on the way out.
    """
    processes, device = _start_processes(ngpus)
    try:
        yield processes, device
    finally:
        if processes.started_here:
            torch_dist.destroy_process_group()


def _start_processes(ngpus: int) -> Tuple[Processes, torch.device]:
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1 or 'RANK' not in os.environ:
        if ngpus > 1:
            raise DeviceError(f"training on {ngpus} GPUs runs one process per GPU: launch the script with "
                              f"`torchrun --nproc_per_node={ngpus} ...` and ngpus=1")
        return Processes(), resolve_device(ngpus=ngpus)
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if ngpus > 0:
        available = visible_gpus()
        if local_rank >= available:
            raise DeviceError(f"process {rank} needs GPU {local_rank} but {available} GPU(s) are visible; launch "
                              f"at most {available} processes per node, or use ngpus=0 for CPU processes")
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
    started_here = not torch_dist.is_initialized()
    if started_here:
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', init_method='env://')
    return Processes(world_size, rank, local_rank, started_here), device


def summed_over_processes(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    """``values`` summed over every process (in place), or as they are in a single process."""
    if processes.distributed:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


@contextmanager
def warnings_only_on_main(processes: Processes) -> Iterator[None]:
    """Every process scans the folders; one set of warnings is enough."""
    if processes.is_main:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DataWarning)
        yield


def per_process_batch(batch_size: int, processes: Processes) -> int:
    """Per-process batch: the global batch split over the processes, as the single-process recipe sees it."""
    per_process = max(1, batch_size // processes.world_size)
    if per_process * processes.world_size != batch_size and processes.is_main:
        warnings.warn(f"batch_size {batch_size} does not divide over {processes.world_size} processes; each "
                      f"takes {per_process} (global batch {per_process * processes.world_size})", stacklevel=4)
    return per_process
