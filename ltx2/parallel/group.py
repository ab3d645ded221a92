"""The process group of one gang: N ranks on one node, NCCL on GPUs, gloo on the CPU.

A gang never spans nodes (its placement group is STRICT_PACK), so its rendezvous is always on the
loopback interface: nothing a gang opens is reachable from outside the node.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 right now (the rendezvous store binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class GangGroup:
    """This process's place in its gang."""

    rank: int
    world_size: int
    device: torch.device


def init_gang_group(rank: int, world_size: int, port: int, device: torch.device, timeout_s: float = 300.0) -> GangGroup:
    """Join the gang's process group (one per process); the collective timeout bounds a hang on a dead peer."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{LOOPBACK}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=dt.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    return GangGroup(rank=rank, world_size=world_size, device=device)
