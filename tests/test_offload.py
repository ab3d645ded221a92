"""Transformer blocks streamed from host memory (the OOM ladder's CPU-offload rung): same numbers, one block
loaded at a time, LoRA switches while streaming."""

from __future__ import annotations

import pytest
import torch

from ltx2 import stages
from ltx2.offload import StreamedBlocks
from tests.conftest import small_chunk


@pytest.fixture()
def fresh(tiny_set):
    """A model set of its own: streaming moves its weights."""
    from ltx2.models import load_resident_models

    return load_resident_models(tiny_set, "cpu")


def _chunk(models):
    positive = stages.encode_prompt(models, "waves crash on black rocks, gulls cry")
    negative = stages.encode_prompt(models, "blurry")
    return stages.stage1_chunk(models, small_chunk(recipe="two_stage"), positive, negative)


def test_streamed_blocks_give_the_same_numbers_one_block_at_a_time(fresh):
    model = fresh.transformer.velocity_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = _chunk(fresh)
    streaming = StreamedBlocks(model, fresh.device)
    loaded_while_running: list[int] = []

    def count_loaded(_module, _args):  # runs after the streamer's own pre-hook: the block is loaded now
        host = {p.data_ptr() for buffers in streaming._host for p in buffers}
        loaded_while_running.append(sum(p.data_ptr() not in host for b in streaming.blocks for p in b.parameters()))

    streaming.enable()
    hooks = [b.register_forward_pre_hook(count_loaded) for b in streaming.blocks]
    streamed = _chunk(fresh)
    for hook in hooks:
        hook.remove()
    assert torch.equal(streamed.video, plain.video) and torch.equal(streamed.audio, plain.audio)
    per_block = len(list(streaming.blocks[0].parameters()))
    assert loaded_while_running and set(loaded_while_running) == {per_block}  # only the running block
    assert streaming.loads == len(loaded_while_running)
    streaming.disable()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_lora_switch_while_streaming_fuses_resident_weights_and_streams_again(fresh):
    model = fresh.transformer.velocity_model
    fresh.loras.use(distilled=True)
    fused = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh.loras.use()
    streaming = StreamedBlocks(model, fresh.device)
    fresh.loras.streaming = streaming
    streaming.enable()
    fresh.loras.use(distilled=True)  # pauses streaming, fuses, streams the fused weights again
    assert streaming.active
    streaming.disable()
    assert all(torch.equal(p, fused[n]) for n, p in model.named_parameters())
    fresh.loras.use()
