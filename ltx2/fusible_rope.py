"""ltx-core's rotary embeddings written so that inductor fuses them: the same operations, no in-place slices.

Why: compiled, the official split RoPE (the real 19B checkpoint's) becomes three full passes over q and k
per attention layer: it writes `x * cos` and then updates each half in place (`addcmul_` on slices),
which inductor can only follow by materialising the tensor between the steps, and those passes are a large
share of the bytes a block's fused kernels move (bench/README.md, "Numbers behind the code"). The
interleaved form (ltx-core's code default) materialises the rotated copy (`stack((-x2, x1))`).

Here both halves come from one expression over the whole tensor, `addcmul(x * cos, (-sin, sin), (second,
first))`: the official operations in the official order, so eager results are bit-identical, and the
swap of the halves is a flip, which inductor reads as an index change (a `stack` of the two halves is
copied in a pass of its own). Traced for compiling, the `addcmul` is a written-out sum (see
`_rotate_halves`). The interleaved rotation is likewise a flip times ±1 (exact).
`FusibleRopeAttention` runs ltx-core's own `Attention.forward`, its code object unchanged, with the
`apply_rotary_emb` it calls bound to this one.
"""

from __future__ import annotations

import types

import torch
from ltx_core.model.transformer import attention as official
from ltx_core.model.transformer.rope import LTXRopeType

from ltx2.speed import swap_module_class


def split_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`ltx_core...rope.apply_split_rotary_emb`: each head's first and second halves rotated by cos/sin.

    q and k come as (B, T, H·D) and the tables as (B, H, T, D/2) views of tokens-first memory (ltx-core
    builds them (B, T, H, D/2) and swaps the axes), so the rotation runs in (B, T, H, 2, D/2) order: every
    operand in its memory order, no axis swaps there and back (inductor's kernels are the same either way).
    """
    if x.ndim != 4 and cos.ndim == 4:
        b, h, t, _ = cos.shape
        rotated = _rotate_halves(x.reshape(b, t, h, 2, -1), cos.transpose(1, 2), sin.transpose(1, 2))
        return rotated.reshape(b, t, -1)
    return _rotate_halves(x.unflatten(-1, (2, -1)), cos, sin).flatten(-2)


def _rotate_halves(halves: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(first cos - sin second, second cos + sin first) over (..., 2, D/2).

    Eager, each half is rounded as ltx-core's `addcmul_` rounds it. Compiled, the sum is written out: inductor
    lowers a 16-bit `addcmul` to float32 arithmetic and a cast, and where the result feeds attention it stores
    the float32 sum (twice the bytes) and casts it in a pass of its own. Inductor rounds once at the store
    either way.
    """
    signed_sin = sin.unsqueeze(-2) * sin.new_tensor([[-1.0], [1.0]])  # (-sin, sin), exactly
    scaled, swapped = halves * cos.unsqueeze(-2), halves.flip(-2)
    if torch.compiler.is_compiling():
        return scaled + signed_sin * swapped
    return torch.addcmul(scaled, signed_sin, swapped)


def interleaved_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`ltx_core...rope.apply_interleaved_rotary_emb`: pairs (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = (pairs.flip(-1) * x.new_tensor([-1.0, 1.0])).flatten(-2)  # (-x2, x1), exactly
    return x * cos + rotated * sin


def fusible_rotary_emb(
    x: torch.Tensor,
    freqs_cis: tuple[torch.Tensor, torch.Tensor],
    rope_type: LTXRopeType = LTXRopeType.INTERLEAVED,
) -> torch.Tensor:
    """Drop-in for ltx-core's `apply_rotary_emb` (same signature, same values)."""
    if rope_type == LTXRopeType.SPLIT:
        return split_rotary_emb(x, *freqs_cis)
    if rope_type == LTXRopeType.INTERLEAVED:
        return interleaved_rotary_emb(x, *freqs_cis)
    raise ValueError(f"Invalid rope type: {rope_type}")


def _calling(function: types.FunctionType, **replacements: object) -> types.FunctionType:
    """`function`'s own code with some of the module globals it looks up bound to other objects. A name the code
    does not look up is refused: an ltx-core that stopped calling it would otherwise lose the change silently."""
    unused = sorted(set(replacements) - set(function.__code__.co_names))
    if unused:
        raise RuntimeError(f"{function.__qualname__} no longer looks up {unused}: ltx2.fusible_rope needs updating")
    rebound = types.FunctionType(
        function.__code__,
        {**function.__globals__, **replacements},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__doc__ = function.__doc__
    return rebound


class FusibleRopeAttention(official.Attention):
    """ltx-core's `Attention`, whose forward calls `fusible_rotary_emb` for its RoPE."""

    forward = _calling(official.Attention.forward, apply_rotary_emb=fusible_rotary_emb)


def apply_fusible_rope(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give every ltx-core `Attention` layer the fusible RoPE, in place (same parameters, names, values)."""
    return swap_module_class(velocity_model, official.Attention, FusibleRopeAttention)
