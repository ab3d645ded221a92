"""RoPE tables built once per positions tensor: the official numbers, rebuilt whenever the positions change."""

from __future__ import annotations

import torch

from ltx2.parallel.guidance import shared_positions
from ltx2.rope_cache import RopeTableCache, apply_rope_cache, simple_preprocessors
from tests.test_guided_passes import GUIDANCES, _denoise, _ours
from tests.test_speed import _chunk, fresh32  # noqa: F401  (fixture)


def test_a_render_with_cached_tables_is_the_official_one_bit_for_bit_and_builds_them_once(fresh32):  # noqa: F811
    eager = _chunk(fresh32, "two_stage")
    model = fresh32.transformer.velocity_model
    apply_rope_cache(apply_rope_cache(model))  # twice: wrapped once
    cached = _chunk(fresh32, "two_stage")  # every step's cond, uncond and STG passes share the positions
    assert torch.equal(cached.video, eager.video) and torch.equal(cached.audio, eager.audio)
    caches = [p._prepare_positional_embeddings for p in simple_preprocessors(model)]
    assert len(caches) == 2 and all(isinstance(c, RopeTableCache) for c in caches)
    # once for the whole chunk: video self- and cross-attention tables; audio's two are the same call (one axis)
    assert [c.misses for c in caches] == [2, 1]


def test_batched_guided_passes_reuse_the_tables_and_give_the_same_numbers(fresh32):  # noqa: F811
    """A step's passes stacked into one batch (the GPU default at stage 1) share one positions tensor: the
    batch is a broadcast view of it, so every step hits the tables the first one built."""
    from ltx2.parallel.guidance import run_batched

    video_g, audio_g = GUIDANCES["official defaults (4 passes)"]
    plain = _denoise(fresh32, _ours(run_batched), video_g, audio_g)
    model = fresh32.transformer.velocity_model
    apply_rope_cache(model)
    cached = _denoise(fresh32, _ours(run_batched), video_g, audio_g)
    assert all(torch.equal(c, p) for c, p in zip(cached, plain, strict=True))
    video = simple_preprocessors(model)[0]._prepare_positional_embeddings
    assert video.misses == 2  # three steps of one batch-4 forward: built at the first


def test_tables_are_rebuilt_when_the_positions_change_in_place_or_are_another_tensor():
    built: list[torch.Tensor] = []

    def compute(positions: torch.Tensor, inner_dim: int, max_pos: list[int]) -> torch.Tensor:
        built.append(positions.clone())
        return positions * inner_dim

    cache = RopeTableCache(compute, entries=2)
    positions = torch.arange(12.0).reshape(1, 3, 4)
    first = cache(positions, inner_dim=2, max_pos=[20, 2048, 2048])
    assert cache(positions, inner_dim=2, max_pos=[20, 2048, 2048]) is first and cache.misses == 1
    assert cache(positions, inner_dim=4, max_pos=[20, 2048, 2048]) is not first  # other arguments
    assert cache(positions[:, 0:1], inner_dim=2, max_pos=[20, 2048, 2048]).shape == (1, 1, 4)  # a view of it
    assert cache.misses == 3 and len(cache.tables) == 2  # bounded: the oldest went
    positions += 1  # in place: the version counter moves
    assert torch.equal(
        cache(positions, inner_dim=2, max_pos=[20, 2048, 2048]), (torch.arange(12.0) + 1).reshape(1, 3, 4) * 2
    )
    assert cache(positions.clone(), inner_dim=2, max_pos=[20, 2048, 2048]) is not None and cache.misses == 5


def test_batched_passes_keep_their_shared_positions_tensor():
    from ltx_core.model.transformer.modality import Modality

    def modality(positions: torch.Tensor) -> Modality:
        return Modality(
            latent=torch.zeros(1, 4, 2),
            sigma=torch.ones(1),
            timesteps=torch.ones(1, 4, 1),
            positions=positions,
            context=torch.zeros(1, 1, 2),
        )

    positions = torch.arange(24.0).reshape(1, 3, 4, 2)
    batch = shared_positions([modality(positions)] * 3)
    assert batch.untyped_storage().data_ptr() == positions.untyped_storage().data_ptr()  # what the cache keys on
    assert torch.equal(batch, torch.cat([positions] * 3))
    other = positions.clone()
    assert torch.equal(shared_positions([modality(positions), modality(other)]), torch.cat([positions, other]))
