"""Several ranks (torchrun): the process group, and work that rank 0 does once for every rank."""
from __future__ import annotations

import datetime
import os
import pickle

import torch
import torch.distributed as dist

from avemo.core.config import resolve_device


def setup_distributed(device_name: str, timeout_min: float = 60.0) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # the other ranks wait at a barrier while rank 0 hashes the shards and scores every set's dev split:
        # NCCL's 10-minute default would kill a run with large or several dev sets
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    return rank, world, device


def on_rank0(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 alone, its result sent to every rank (dist.broadcast_object_list); an
    exception there is raised on every rank, so none waits forever. Without a process group: a plain call."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn(*args, **kwargs))
        except Exception as exc:
            error = exc
            try:
                pickle.dumps(exc)
                box[0] = (False, exc)
            except Exception:
                box[0] = (False, RuntimeError(str(exc)))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error                          # rank 0: its own exception, with its traceback
    ok, value = box[0]
    if not ok:
        raise value
    return value
