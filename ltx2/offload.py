"""Transformer blocks whose weights are parked between their runs: two rungs of the OOM ladder.

- `StreamedBlocks` (CPU offload): every block's weights live in (pinned) host memory; each block is copied
  to the GPU just before it runs and dropped right after, so one block of 48 is on the GPU (35 GiB of
  bf16 weights left for activations at 19B), at one host-to-GPU copy of the weights per forward. The
  numbers do not change: the same weights run the same kernels.
- `Fp8Blocks` (FP8 weights): the blocks' linear weights stay on the GPU as FP8 (e4m3) with one scale per
  row, about half the bytes, and each block's are dequantised to the model's dtype just before it runs.
  The numbers change by the FP8 rounding of the weights; the exact weights wait in host memory and come
  back when the rung is turned off.

Weights change in place while a LoRA set is fused (`ltx2.lora`), which needs them resident: fusion pauses
the parking, fuses, and parks the fused weights again (`ResidentLoras.use`). Compiled blocks run eagerly
while parked (swapping a block's weights is not something to compile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)


class ParkedBlocks:
    """Turns parking of one model's transformer block weights on and off (subclasses say where they park)."""

    def __init__(self, velocity_model: torch.nn.Module, device: torch.device | str) -> None:
        self.blocks: list[torch.nn.Module] = list(velocity_model.transformer_blocks)
        self.device = torch.device(device)
        self.active = False
        self.loads = 0
        """Blocks fetched for a run since the start (one per block per forward while on)."""
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._compiled: list[object] = []
        # listed once: the hooks run per block per forward, and parking swaps a parameter's data, not the object
        self._block_params: list[list[torch.nn.Parameter]] = [list(block.parameters()) for block in self.blocks]

    def _params(self, index: int) -> list[torch.nn.Parameter]:
        return self._block_params[index]

    def _park(self, index: int, params: list[torch.nn.Parameter]) -> None:
        raise NotImplementedError

    def _fetch(self, index: int, params: list[torch.nn.Parameter]) -> None:
        raise NotImplementedError

    def _drop(self, index: int, params: list[torch.nn.Parameter]) -> None:
        raise NotImplementedError

    def _unpark(self, index: int, params: list[torch.nn.Parameter]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def enable(self) -> None:
        """Park every block's weights; a block gets them back only while it runs."""
        if self.active:
            return
        for i, block in enumerate(self.blocks):
            self._park(i, self._params(i))
            self._hooks.append(block.register_forward_pre_hook(self._hook(i, self._fetch, count=True)))
            self._hooks.append(block.register_forward_hook(self._hook(i, self._drop)))
        self._compiled = [getattr(block, "_compiled_call_impl", None) for block in self.blocks]
        for block in self.blocks:
            block._compiled_call_impl = None
        self.active = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.no_grad()
    def disable(self) -> None:
        """Every block's exact weights back on the device to stay."""
        if not self.active:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for i in range(len(self.blocks)):
            self._unpark(i, self._params(i))
        for block, compiled in zip(self.blocks, self._compiled, strict=True):
            block._compiled_call_impl = compiled
        self.active = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Blocks resident for the duration (weights about to change in place), then parked again if they were."""
        was = self.active
        self.disable()
        try:
            yield
        finally:
            if was:
                self.enable()

    def _hook(self, index: int, action: Callable[[int, list[torch.nn.Parameter]], None], count: bool = False):
        def hook(_module: torch.nn.Module, *_args: object) -> None:
            with torch.no_grad():
                action(index, self._params(index))
            if count:
                self.loads += 1

        return hook


class StreamedBlocks(ParkedBlocks):
    """CPU offload: block weights in pinned host memory, copied to the device per run (buffers kept)."""

    def __init__(self, velocity_model: torch.nn.Module, device: torch.device | str) -> None:
        super().__init__(velocity_model, device)
        self._host: list[list[torch.Tensor]] = [[] for _ in self.blocks]

    def _park(self, index: int, params: list[torch.nn.Parameter]) -> None:
        if not self._host[index]:
            pin = self.device.type == "cuda"
            self._host[index] = [torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for p in params]
        for param, host in zip(params, self._host[index], strict=True):
            host.copy_(param.data)
            param.data = host

    def _fetch(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for param, host in zip(params, self._host[index], strict=True):
            param.data = host.to(self.device, non_blocking=True, copy=True)

    def _drop(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for param, host in zip(params, self._host[index], strict=True):
            param.data = host

    def _unpark(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for param, host in zip(params, self._host[index], strict=True):
            param.data = host.to(self.device, copy=True)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 (e4m3) values and one float32 scale per output row: `weight ≈ values * scale`."""
    scale = weight.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (weight.detach().float() / scale).to(FP8), scale


def dequantize_rows(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (values.to(torch.float32) * scale).to(dtype)


class Fp8Blocks(ParkedBlocks):
    """FP8 weights: the blocks' linear weights on the device as FP8 + row scales, dequantised per run; the
    exact weights in host memory until the rung is turned off. Biases, norms and tables stay as they are."""

    def __init__(self, velocity_model: torch.nn.Module, device: torch.device | str) -> None:
        super().__init__(velocity_model, device)
        linear = [{id(m.weight) for m in block.modules() if isinstance(m, torch.nn.Linear)} for block in self.blocks]
        self._linear_weights = [
            [(n, p) for n, p in enumerate(params) if id(p) in linear[i]] for i, params in enumerate(self._block_params)
        ]
        self._fp8: list[dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [{} for _ in self.blocks]

    def _quantized(self, index: int, _params: list[torch.nn.Parameter]) -> list[tuple[int, torch.nn.Parameter]]:
        return self._linear_weights[index]

    def _park(self, index: int, params: list[torch.nn.Parameter]) -> None:
        pin = self.device.type == "cuda"
        for n, param in self._quantized(index, params):
            exact = torch.empty(param.shape, dtype=param.dtype, pin_memory=pin)
            exact.copy_(param.data)
            values, scale = quantize_rows(param.data)
            self._fp8[index][n] = (values, scale, exact)
            param.data = torch.empty(0, dtype=param.dtype, device=self.device)

    def _fetch(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for n, param in self._quantized(index, params):
            values, scale, _exact = self._fp8[index][n]
            param.data = dequantize_rows(values, scale, param.dtype)

    def _drop(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for _n, param in self._quantized(index, params):
            param.data = torch.empty(0, dtype=param.dtype, device=self.device)

    def _unpark(self, index: int, params: list[torch.nn.Parameter]) -> None:
        for n, param in self._quantized(index, params):
            _values, _scale, exact = self._fp8[index].pop(n)
            param.data = exact.to(self.device, copy=True)

    def device_bytes(self) -> int:
        """Bytes the parked linear weights hold on the device (FP8 values + scales)."""
        return sum(
            v.numel() * v.element_size() + s.numel() * s.element_size() for d in self._fp8 for v, s, _ in d.values()
        )
