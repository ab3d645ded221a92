"""What the workers of a pool are built with: decided once (from the command line, `cluster.cli.worker_options`)
and passed whole, executor → backend → `RenderWorker` (a gang's members too).

The speed choices are the user's; None leaves one to the device's default (`ltx2.speed.default_speed_options`).
How a worker applies them, with its gang's parallel mode and a job's OOM rung, is `ltx2.configure`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from jobs.placement import Placement
from ltx2.configure import REPLICA_ONLY
from ltx2.speed import SpeedOptions, default_speed_options

SPEED_CHOICES = ("compile", "fp8", "fp8_all_blocks", "fp8_attention", "fa4_attention", "batched_passes")
"""The speed options a user chooses (each a command-line flag of its name); the rest are the device's."""

GPU_ONLY = {
    "fp8_attention": "needs a Hopper-or-newer GPU (H100, H200, B200)",
    "fa4_attention": "needs a Hopper-or-newer GPU (H100, H200, B200)",
}
"""Speed choices that no CPU runs, and what they need."""


def flag(name: str) -> str:
    """The command-line flag of a speed choice."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class WorkerOptions:
    """One pool's worker options (frozen: every worker of the pool, and each replacement, gets the same)."""

    device: str | None = None
    """"cuda", "cuda:N" or "cpu"; None: a GPU if there is one. An executor gives each worker its own GPU."""
    dtype: str = "bfloat16"
    compile: bool | None = None
    """Compiled transformer blocks (None: on GPUs)."""
    fp8: bool | None = None
    """Linear layers in FP8 (`ltx2.fp8_linear`; FP8 tensor cores, or the CPU). None: off."""
    fp8_all_blocks: bool | None = None
    """With `fp8` (implied): every block in FP8 (`ltx2.speed.SpeedOptions.fp8_all_blocks`). None: off."""
    fp8_attention: bool | None = None
    """The video self-attention in FP8 through cuDNN (Hopper GPUs, `ltx2.fp8_attention`). None: off."""
    fa4_attention: bool | None = None
    """bf16 attention through FlashAttention-4 (None: where it runs, `ltx2.fa4_attention`)."""
    batched_passes: bool | None = None
    """A short step's guided passes as one batched forward (None: on GPUs)."""
    env: Mapping[str, str] | None = None
    """Variables set in Ray workers besides their node's own (a cluster gives them credentials through the node's
    environment); in-process workers share this process's environment."""

    def chosen(self) -> dict[str, bool]:
        """The speed choices made (not left to the device), `fp8` implied by `fp8_all_blocks`."""
        values = {name: getattr(self, name) for name in SPEED_CHOICES}
        if values["fp8_all_blocks"]:
            values["fp8"] = True
        return {name: value for name, value in values.items() if value is not None}

    def speed(self, device: torch.device | str) -> SpeedOptions:
        """The speed options a worker on `device` runs with: the device's defaults, then these choices."""
        return replace(default_speed_options(device), **self.chosen())

    def problems(self, placement: Placement, gpu: bool) -> list[str]:
        """What workers of `placement` on a GPU (or, `gpu` False, the CPU) cannot run of these choices, one line
        each naming its flag and the fix: replica-only options for a gang (`ltx2.configure.REPLICA_ONLY` says
        why), Hopper-only ones on the CPU."""
        found = []
        for name, wanted in self.chosen().items():
            if wanted and placement.is_gang and name in REPLICA_ONLY:
                found.append(
                    f"{flag(name)} is for replica workers ({REPLICA_ONLY[name]}): drop {flag(name)} or use "
                    "--placement replica"
                )
            elif wanted and not gpu and name in GPU_ONLY:
                found.append(f"{flag(name)} {GPU_ONLY[name]}, and this pool runs on the CPU: drop {flag(name)}")
        return found
