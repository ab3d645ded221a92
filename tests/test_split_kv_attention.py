"""Few-query, many-key attention calls go to the split-KV flash kernel on GPUs; everything else keeps its kernel."""

from __future__ import annotations

import torch

from ltx2.split_kv_attention import SplitKvAttention, apply_split_kv_attention, splits_keys
from tests.test_speed import _chunk, fresh32  # noqa: F401  (fixture)


def test_only_short_queries_against_long_unmasked_keys_are_split():
    bf16 = torch.bfloat16
    assert splits_keys(126, 24_576, 64, bf16, masked=False)  # video-to-audio at 1024x1536x121
    assert splits_keys(126, 14_080, 64, torch.float16, masked=False)
    assert not splits_keys(126, 24_576, 64, bf16, masked=True)  # the flash kernel takes no mask
    assert not splits_keys(24_576, 126, 64, bf16, masked=False)  # audio-to-video: many queries
    assert not splits_keys(126, 1_024, 64, bf16, masked=False)  # the audio text layer: equal there
    assert not splits_keys(126, 24_576, 64, torch.float32, masked=False)
    assert not splits_keys(126, 24_576, 12, bf16, masked=False)  # head dims in steps of 8


def test_wrapped_layers_render_the_same_and_custom_attention_is_left_alone(fresh32):  # noqa: F811
    """On the CPU every call falls through to the layer's own callable: the render is unchanged; layers given
    another callable (a gang's sequence-parallel attention) are not wrapped."""
    from ltx_core.model.transformer.attention import Attention, PytorchAttention

    eager = _chunk(fresh32, "two_stage")
    model = fresh32.transformer.velocity_model
    layers = [m for m in model.modules() if isinstance(m, Attention)]

    class GangAttention:
        def __call__(self, q, k, v, heads, mask=None):
            return PytorchAttention()(q, k, v, heads, mask)

    custom = layers[0].attention_function = GangAttention()
    apply_split_kv_attention(model)
    assert layers[0].attention_function is custom
    assert all(isinstance(m.attention_function, SplitKvAttention) for m in layers[1:])
    assert all(isinstance(m.attention_function.inner, PytorchAttention) for m in layers[1:])
    wrapped = _chunk(fresh32, "two_stage")
    assert torch.equal(wrapped.video, eager.video) and torch.equal(wrapped.audio, eager.audio)
