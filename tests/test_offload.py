"""Parked transformer blocks (the OOM ladder's FP8-weights and CPU-offload rungs): streamed blocks give the
same numbers one block at a time, FP8 blocks hold about half the bytes and stay close, both restore the exact
weights, and LoRA switches while parked fuse the exact weights."""

from __future__ import annotations

import pytest
import torch

from cluster.worker_options import WorkerOptions
from jobs.spec import validate_job
from ltx2 import stages
from ltx2.offload import Fp8Blocks, StreamedBlocks
from tests.conftest import SMALL_JOB, small_chunk


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
        host = {p.data_ptr() for buffers in streaming._host for p in buffers}  # parked copies
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


def test_a_whole_job_on_the_offload_rung_renders_as_its_tiles_rung_does(tiny_set, tmp_path):
    """Rungs are cumulative: the CPU-offload rung also decodes in the smallest tiles, so a whole-job render on
    it equals the `smallest_tiles` render of the same job bit for bit (streaming changes no number), and
    differs from the plain render only in the video (the decode's tiles; the audio is the same)."""
    from cluster.worker import RenderWorker, render_in_process

    worker = RenderWorker(tiny_set, WorkerOptions(device="cpu", compile=False), name="eager")
    job = validate_job({**SMALL_JOB, "recipe": "two_stage"})
    plain, tiles, streamed = (
        render_in_process(worker, job.with_fallback(rung), tmp_path / str(rung)).document["content_sha256"]
        for rung in (None, "smallest_tiles", "offload_transformer")
    )
    assert worker.streaming.loads > 0
    assert streamed == tiles
    assert streamed["audio_waveform"] == plain["audio_waveform"]
    assert streamed["video_frames"] != plain["video_frames"]


def test_fp8_blocks_hold_half_the_bytes_stay_close_and_restore_exact_weights(fresh):
    model = fresh.transformer.velocity_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = _chunk(fresh)
    linear = [m.weight for b in model.transformer_blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    bf16_bytes = sum(w.numel() * w.element_size() for w in linear)
    fp8 = Fp8Blocks(model, fresh.device)
    fp8.enable()
    assert all(w.numel() == 0 for w in linear)  # between runs only the FP8 copies are on the device
    assert fp8.device_bytes() < 0.6 * bf16_bytes
    quantized = _chunk(fresh)
    fp8.disable()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not torch.equal(quantized.video, plain.video)  # FP8 rounding of the weights shows
    error = (quantized.video.float() - plain.video.float()).abs().max() / plain.video.float().abs().max()
    assert error < 0.1, error
    assert fp8.loads == 2 * len(fp8.blocks) * 4  # 2 steps x 4 guided passes, every block fetched per forward


@pytest.mark.parametrize("parking", [StreamedBlocks, Fp8Blocks])
def test_a_lora_switch_while_parked_fuses_the_exact_weights_and_parks_again(fresh, parking):
    model = fresh.transformer.velocity_model
    fresh.loras.use(distilled=True)
    fused = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh.loras.use()
    parked = parking(model, fresh.device)
    fresh.loras.parked = [parked]
    parked.enable()
    fresh.loras.use(distilled=True)  # pauses the parking, fuses the exact weights, parks the fused ones
    assert parked.active
    parked.disable()
    assert all(torch.equal(p, fused[n]) for n, p in model.named_parameters())
    fresh.loras.use()
