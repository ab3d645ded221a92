"""Sharded weights: the transformer's parameters split over a gang with FSDP2 (`fully_shard`).

Each of the 48 blocks is its own FSDP unit: a rank holds 1/N of every block and all-gathers one block's
weights just before using it (prefetching the next), then frees them. Peak weight memory per GPU is
about 38 GB / N plus two blocks (~0.8 GB each in bf16), so 2 × 24 GB or 4 × 16 GB cards run the 19B model.
The rest of the model set (VAEs, text encoder, upsampler) stays whole on every rank.

Sharding composes with the other modes: each rank still runs whole forwards of its own batch (guidance
parallel) or of its own token slice (sequence parallel); FSDP only changes where the weights live.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard


def gang_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    return init_device_mesh(device.type, (world_size,))


def shard_transformer(velocity_model: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    """Shard an ltx-core `LTXModel` in place: one FSDP unit per transformer block, one for the rest."""
    for block in velocity_model.transformer_blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(velocity_model, mesh=mesh, reshard_after_forward=True)
    return velocity_model


def local_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters this rank actually holds (its shards, for sharded parameters)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
