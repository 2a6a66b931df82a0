"""torch.distributed helpers: process-group setup from torchrun's environment, rank queries, gathering."""
from __future__ import annotations

import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env() -> torch.device:
    """Initialise the default process group when launched by torchrun (nccl on CUDA, gloo on CPU).

    Returns the device this process should use.
    """
    if not launched_by_torchrun():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend)
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just [obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r gets indices r, r + W, ...; no padding, so gathered results hold each item once."""

    def __init__(self, length: int, num_replicas: int | None = None, rank_: int | None = None) -> None:
        self.length = length
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
