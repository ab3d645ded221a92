"""Transformer blocks streamed from host memory: the OOM ladder's CPU-offload rung.

While on, every block's weights live in (pinned) host memory and each block is copied to the GPU just
before it runs and dropped right after, so the transformer holds one block on the GPU instead of all
48 (35 GiB of bf16 weights for the 19B model left for activations), at the cost of one host-to-GPU copy
of the weights per forward. The numbers do not change: the same weights run the same kernels.

Weights change in place while a LoRA set is fused (`ltx2.lora`), which needs them on the GPU: fusion
turns streaming off, fuses, and turns it back on (`ResidentLoras.use`). Compiled blocks run eagerly
while streamed (the swap of a block's weights is not something to compile).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StreamedBlocks:
    """Turns streaming of one model's transformer blocks on and off; host buffers are kept between uses."""

    def __init__(self, velocity_model: torch.nn.Module, device: torch.device) -> None:
        self.blocks: list[torch.nn.Module] = list(velocity_model.transformer_blocks)
        self.device = torch.device(device)
        self.active = False
        self.loads = 0
        """Block copies to the device since the start (one per block per forward while on)."""
        self._host: list[list[torch.Tensor]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._compiled: list[object] = []

    def _params(self, index: int) -> list[torch.nn.Parameter]:
        return list(self.blocks[index].parameters())

    @torch.no_grad()
    def enable(self) -> None:
        """Move every block's weights to host memory and load each block on the device only while it runs."""
        if self.active:
            return
        pin = self.device.type == "cuda"
        first = not self._host
        for i, block in enumerate(self.blocks):
            params = self._params(i)
            if first:
                self._host.append([torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for p in params])
            for param, host in zip(params, self._host[i], strict=True):
                host.copy_(param.data)
                param.data = host
            self._hooks.append(block.register_forward_pre_hook(self._load_hook(i)))
            self._hooks.append(block.register_forward_hook(self._drop_hook(i)))
        self._compiled = [getattr(block, "_compiled_call_impl", None) for block in self.blocks]
        for block in self.blocks:
            block._compiled_call_impl = None
        self.active = True
        if pin:
            torch.cuda.empty_cache()

    @torch.no_grad()
    def disable(self) -> None:
        """Every block back on the device to stay (the host buffers are kept for the next `enable`)."""
        if not self.active:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for i in range(len(self.blocks)):
            for param, host in zip(self._params(i), self._host[i], strict=True):
                param.data = host.to(self.device, copy=True)
        for block, compiled in zip(self.blocks, self._compiled, strict=True):
            block._compiled_call_impl = compiled
        self.active = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Blocks resident for the duration (weights about to change in place), then streamed again if they were."""
        was = self.active
        self.disable()
        try:
            yield
        finally:
            if was:
                self.enable()

    def _load_hook(self, index: int):
        def load(_module: torch.nn.Module, _args: object) -> None:
            for param, host in zip(self._params(index), self._host[index], strict=True):
                param.data = host.to(self.device, non_blocking=True, copy=True)
            self.loads += 1

        return load

    def _drop_hook(self, index: int):
        def drop(_module: torch.nn.Module, _args: object, _output: object) -> None:
            for param, host in zip(self._params(index), self._host[index], strict=True):
                param.data = host

        return drop
