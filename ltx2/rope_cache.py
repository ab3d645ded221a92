"""RoPE tables computed once per positions tensor instead of at every forward.

Why: ltx-core's args preprocessors rebuild the cos/sin tables (video, audio, and the audio-video cross tables)
from the token positions in every forward: ~56 of the 174 small kernels the host issues one by one before the
first block can start, and a blocking copy of the frequency grid to the GPU, while the GPU idles (the cache
shortens that prologue: bench/README.md, "Numbers behind the code"). A job's positions do not change between
denoising steps (the official loop hands every step and every guided pass the same `LatentState.positions`
tensor), so the tables are the same. Same function, same inputs: the numbers are the official ones bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

ENTRIES = 2
"""Tables kept per preprocessor: the two a forward uses (self- and cross-attention). A new shape (the next
stage or job) replaces them, so at most one forward's tables outlive it."""


class RopeTableCache:
    """Memo of one preprocessor's `_prepare_positional_embeddings` keyed by where the positions live: their
    memory (the tensor is held while cached, so no other can be given that memory) and view geometry (the
    cross-attention tables come from a slice, a new view object every forward), the version counter where
    there is one (an in-place change misses; tensors made under `torch.inference_mode` have none, and nothing
    changes positions in place once a model was handed them: ltx-core's conditionings and the farm's windows
    build new ones), and the other arguments."""

    def __init__(self, compute: Callable[..., Any], entries: int = ENTRIES) -> None:
        self.compute = compute
        self.entries = entries
        self.tables: OrderedDict[tuple, tuple[torch.Tensor, Any]] = OrderedDict()
        self.misses = 0

    def __call__(self, positions: torch.Tensor, **kwargs: Any) -> Any:
        storage = positions.untyped_storage().data_ptr()
        version = None if positions.is_inference() else positions._version  # inference tensors keep none
        arguments = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
        view = (tuple(positions.shape), positions.stride(), positions.storage_offset(), positions.dtype)
        key = (positions.device, storage, version, view, arguments)
        hit = self.tables.get(key)
        if hit is not None:
            self.tables.move_to_end(key)
            return hit[1]
        self.misses += 1
        tables = self.compute(positions=positions, **kwargs)
        self.tables[key] = (positions, tables)  # held: no other tensor can get this memory while cached
        while len(self.tables) > self.entries:
            self.tables.popitem(last=False)
        return tables


def simple_preprocessors(velocity_model: torch.nn.Module) -> list[Any]:
    """The ltx-core `TransformerArgsPreprocessor`s that build the RoPE tables (inside the multimodal ones)."""
    found = []
    for name in ("video_args_preprocessor", "audio_args_preprocessor"):
        preprocessor = getattr(velocity_model, name, None)
        preprocessor = getattr(preprocessor, "simple_preprocessor", preprocessor)
        if preprocessor is not None:
            found.append(preprocessor)
    return found


def apply_rope_cache(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give each args preprocessor of the model a RoPE table cache (in place, once)."""
    for preprocessor in simple_preprocessors(velocity_model):
        if not isinstance(preprocessor._prepare_positional_embeddings, RopeTableCache):
            preprocessor._prepare_positional_embeddings = RopeTableCache(preprocessor._prepare_positional_embeddings)
    return velocity_model
