"""Ulysses sequence parallelism for the ltx-core transformer, without forking the model code.

Video tokens are split across the gang's ranks before the transformer runs (a forward pre-hook) and
gathered after it (a forward hook). Everything per token (projections, norms, RoPE, AdaLN modulation,
feed-forward) then runs on the local tokens. Only attention needs other ranks' tokens, and ltx-core lets
each attention module take its own callable:

- `attn1` (video self-attention): all-to-all from (my tokens, all heads) to (all tokens, my heads),
  attention, and back (Ulysses). Exact: every head sees every token.
- `attn2` (video queries, text keys) and `audio_to_video_attn` (video queries, audio keys): local
  queries against replicated keys; no traffic.
- `video_to_audio_attn` (audio queries, video keys): the replicated audio queries need every video key
  and value; those are all-gathered along the sequence.
- audio self-attention and audio text cross-attention: audio tokens and text stay replicated.

Token counts need not divide the degree: ranks take balanced, possibly uneven, slices and the
collectives carry the per-rank sizes, so nothing is padded. The degree must divide the video head count
(32 for LTX-2: 2, 4, 8, 16 or 32), or the heads cannot be dealt out; that is refused.

Parallelism is switched per call (`SequenceParallel.active`), so one gang can run a stage sequence-
parallel and another stage (or a decode) on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from ltx_core.model.transformer.attention import AttentionCallable, AttentionFunction
from ltx_core.model.transformer.modality import Modality


def token_splits(total: int, world_size: int) -> list[int]:
    """Balanced slice sizes of `total` tokens over the ranks (the first ranks take one more when uneven)."""
    base, extra = divmod(total, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def check_sequence_degree(heads: int, world_size: int) -> None:
    """Refuse a degree that cannot deal out the attention heads evenly."""
    if world_size < 1 or heads % world_size:
        choices = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise ValueError(
            f"sequence-parallel degree {world_size} does not divide the model's {heads} video attention heads; "
            f"use one of {choices}"
        )


@dataclass
class SequenceParallel:
    """Shared switch and geometry of one sequence-parallel model: set per forward by the pre-hook."""

    world_size: int
    rank: int
    inner: AttentionCallable | AttentionFunction = AttentionFunction.DEFAULT
    active: bool = False
    splits: list[int] = field(default_factory=list)

    def local_range(self) -> tuple[int, int]:
        start = sum(self.splits[: self.rank])
        return start, start + self.splits[self.rank]


def _all_to_all(tensor: torch.Tensor, output_rows: int, in_splits: list[int], out_splits: list[int]) -> torch.Tensor:
    out = tensor.new_empty((output_rows, *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), output_split_sizes=out_splits, input_split_sizes=in_splits)
    return out


@dataclass
class UlyssesAttention:
    """Video self-attention over all tokens for this rank's share of the heads."""

    sp: SequenceParallel

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        sp = self.sp
        if not sp.active:
            return sp.inner(q, k, v, heads, mask)
        world, local = sp.world_size, q.shape[1]
        batch, width = q.shape[0], q.shape[2]
        part = width // world  # this rank's heads × head dim
        total = sum(sp.splits)

        def scatter_heads(t: torch.Tensor) -> torch.Tensor:
            # (B, t_r, H·D) → rows (world·t_r, B, part) ordered by destination rank → (T, B, part)
            rows = t.reshape(batch, local, world, part).permute(2, 1, 0, 3).reshape(world * local, batch, part)
            full = _all_to_all(rows, total, [local] * world, sp.splits)
            return full.permute(1, 0, 2)  # (B, T, part)

        out = sp.inner(scatter_heads(q), scatter_heads(k), scatter_heads(v), heads // world, mask)
        # (B, T, part) → send each rank its tokens → (world·t_r, B, part) by source rank → (B, t_r, H·D)
        back = _all_to_all(out.permute(1, 0, 2), world * local, sp.splits, [local] * world)
        return back.reshape(world, local, batch, part).permute(2, 1, 0, 3).reshape(batch, local, width)


def _all_gather_tokens(tensor: torch.Tensor, splits: list[int]) -> torch.Tensor:
    """Concatenate every rank's (B, t_r, C) slice along tokens (slices padded to the largest, then trimmed)."""
    longest = max(splits)
    padded = tensor
    if tensor.shape[1] < longest:
        pad = tensor.new_zeros((tensor.shape[0], longest - tensor.shape[1], *tensor.shape[2:]))
        padded = torch.cat([tensor, pad], dim=1)
    parts = [torch.empty_like(padded) for _ in splits]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:, :n] for p, n in zip(parts, splits, strict=True)], dim=1)


@dataclass
class GatheredKeysAttention:
    """Replicated queries against keys and values that are split over the ranks (audio → video)."""

    sp: SequenceParallel

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.sp.active:
            k, v = _all_gather_tokens(k, self.sp.splits), _all_gather_tokens(v, self.sp.splits)
        return self.sp.inner(q, k, v, heads, mask)


def _slice_video(video: Modality, start: int, stop: int) -> Modality:
    total = video.latent.shape[1]
    timesteps = video.timesteps
    if timesteps.ndim >= 2 and timesteps.shape[1] == total:
        timesteps = timesteps[:, start:stop]
    # attention_mask stays whole: Ulysses attends over all tokens, so the (T, T) bias applies unchanged.
    return replace(
        video, latent=video.latent[:, start:stop], timesteps=timesteps, positions=video.positions[:, :, start:stop]
    )


def apply_sequence_parallel(velocity_model: torch.nn.Module, rank: int, world_size: int) -> SequenceParallel:
    """Make `velocity_model` (an ltx-core `LTXModel`) sequence-parallel over the default process group.

    Returns the switch: parallel only inside `with sequence_parallel(sp):`, plain otherwise.
    """
    heads = velocity_model.num_attention_heads
    check_sequence_degree(heads, world_size)
    blocks = velocity_model.transformer_blocks
    sp = SequenceParallel(world_size=world_size, rank=rank, inner=blocks[0].attn1.attention_function)
    for block in blocks:
        block.attn1.attention_function = UlyssesAttention(sp)
        if hasattr(block, "video_to_audio_attn"):
            block.video_to_audio_attn.attention_function = GatheredKeysAttention(sp)

    def split_video(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if not sp.active:
            return args, kwargs
        kwargs = dict(kwargs)
        if args:  # LTXModel.forward(video, audio, perturbations)
            kwargs.update(zip(("video", "audio", "perturbations"), args, strict=False))
        video: Modality | None = kwargs.get("video")
        if video is None:
            sp.splits = []
            return (), kwargs
        sp.splits = token_splits(video.latent.shape[1], world_size)
        if min(sp.splits) == 0:
            raise ValueError(f"{video.latent.shape[1]} video tokens cannot be split over {world_size} ranks")
        kwargs["video"] = _slice_video(video, *sp.local_range())
        return (), kwargs

    def gather_video(_module: torch.nn.Module, _args: tuple, _kwargs: dict, output: tuple) -> tuple:
        if not sp.active or not sp.splits:
            return output
        video, audio = output
        return _all_gather_tokens(video, sp.splits), audio

    velocity_model.register_forward_pre_hook(split_video, with_kwargs=True)
    velocity_model.register_forward_hook(gather_video, with_kwargs=True)
    return sp


@contextlib.contextmanager
def sequence_parallel(sp: SequenceParallel | None) -> Iterator[None]:
    """Run the transformer sequence-parallel inside the block (a no-op for `None`)."""
    if sp is None:
        yield
        return
    sp.active = True
    try:
        yield
    finally:
        sp.active = False
        sp.splits = []
