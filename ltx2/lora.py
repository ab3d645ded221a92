"""LoRAs fused into a resident model and unfused again, with ltx-core's own fusing arithmetic.

ltx-core fuses LoRAs when it builds a model, so a LoRA'd stage (the distilled stage-2 refine) would need
a second 19B copy or a reload from disk. A resident worker instead fuses in place with the official
`apply_loras` (bit-identical weights to a fresh official build) and restores the exact original weights
from a host-memory backup afterwards, so no rounding drift accumulates across jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from ltx_core.loader import (
    LTXV_LORA_COMFY_RENAMING_MAP,
    LoraStateDictWithStrength,
    SafetensorsStateDictLoader,
    StateDict,
    apply_loras,
)
from ltx_core.loader.fuse_loras import _prepare_deltas
from torch.distributed.tensor import DTensor, distribute_tensor

from ltx2.checkpoint import CheckpointError, read_safetensors_header


def _local(param: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: the shard of a sharded (FSDP2) parameter, else the parameter."""
    return param.to_local() if isinstance(param, DTensor) else param


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and its strength; strength is part of a fused set's identity."""

    path: str
    strength: float = 1.0


@dataclass
class LoraFusion:
    """Fuses a set of LoRAs into `model`'s weights on demand; `unfuse` restores the originals exactly."""

    model: torch.nn.Module
    loras: Sequence[LoraSpec]
    _state_dicts: list[LoraStateDictWithStrength] = field(default_factory=list, init=False)
    _targets: list[str] = field(default_factory=list, init=False)
    _backup: dict[str, torch.Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        loader = SafetensorsStateDictLoader()
        for lora in self.loras:
            read_safetensors_header(lora.path)
            sd = loader.load(lora.path, sd_ops=LTXV_LORA_COMFY_RENAMING_MAP, device=torch.device("cpu"))
            self._state_dicts.append(LoraStateDictWithStrength(sd, lora.strength))
        params = dict(self.model.named_parameters())
        for lora, lsd in zip(self.loras, self._state_dicts, strict=True):
            matched = 0
            for key in lsd.state_dict.sd:
                if key.endswith(".lora_A.weight"):
                    target = key.removesuffix(".lora_A.weight") + ".weight"
                    if target not in params:
                        raise CheckpointError(
                            lora.path,
                            f"LoRA targets {target}, which the model does not have",
                            "use a LoRA trained for this model version",
                        )
                    if target not in self._targets:
                        self._targets.append(target)
                    matched += 1
            if matched == 0:
                raise CheckpointError(lora.path, "LoRA holds no lora_A/lora_B pairs for this model")

    @property
    def fused(self) -> bool:
        return bool(self._backup)

    @torch.inference_mode(False)  # stages call this inside inference mode; sharded weights need autograd-aware ops
    @torch.no_grad()
    def fuse(self) -> None:
        """Add every LoRA delta to its weight (no-op when already fused)."""
        if self.fused:
            return
        params = dict(self.model.named_parameters())  # looked up now: sharding replaces the parameters
        for name in self._targets:
            param = params[name]
            local = _local(param)
            backup = local.detach().to("cpu", copy=True)
            self._backup[name] = backup.pin_memory() if local.is_cuda else backup
            weight = param.detach().full_tensor() if isinstance(param, DTensor) else param.detach()
            base = StateDict(sd={name: weight}, device=weight.device, size=weight.nbytes, dtype={weight.dtype})
            if weight.dtype == torch.float32:  # ltx-core fuses bf16/fp8 only; same deltas, added in float32
                fused = weight + _prepare_deltas(self._state_dicts, name, torch.float32, weight.device)
            else:
                fused = apply_loras(model_sd=base, lora_sd_and_strengths=self._state_dicts, dtype=weight.dtype)
                fused = fused.sd[name]
            if isinstance(param, DTensor):  # every rank fused the same full weight: keep this rank's shard
                fused = distribute_tensor(fused, param.device_mesh, param.placements, src_data_rank=None).to_local()
            local.copy_(fused)

    @torch.inference_mode(False)
    @torch.no_grad()
    def unfuse(self) -> None:
        """Restore the exact pre-fusion weights."""
        params = dict(self.model.named_parameters())
        for name, backup in self._backup.items():
            _local(params[name]).copy_(backup, non_blocking=True)
        if self._backup and torch.cuda.is_available():
            torch.cuda.synchronize()
        self._backup.clear()
