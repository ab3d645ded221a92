"""The guided passes of a step, listed and combined by the farm, against ltx-pipelines' own function."""

from __future__ import annotations

import pytest
import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.types import VideoPixelShape
from ltx_pipelines.utils.helpers import (
    multi_modal_guider_factory_denoising_func,
    noise_audio_state,
    noise_video_state,
)
from ltx_pipelines.utils.samplers import euler_denoising_loop
from ltx_pipelines.utils.types import PipelineComponents

from ltx2 import stages
from ltx2.parallel.guidance import BatchedWhenShort, guided_denoising_func, run_batched, run_sequential
from ltx2.render import Guidance, default_audio_guidance, default_video_guidance


@pytest.fixture(scope="module")
def resident32(tiny_set):
    from ltx2.models import load_resident_models

    return load_resident_models(tiny_set, "cpu", torch.float32)


def _denoise(models, make_func, video_g: Guidance, audio_g: Guidance, steps: int = 3):
    positive = stages.encode_prompt(models, "rain on a tin roof, distant thunder")
    negative = stages.encode_prompt(models, "blurry, silent")
    factories = [
        create_multimodal_guider_factory(params=g.to_params(), negative_context=n)
        for g, n in ((video_g, negative.video), (audio_g, negative.audio))
    ]
    func = make_func(factories[0], factories[1], positive.video, positive.audio, models.transformer)
    shape = VideoPixelShape(batch=1, frames=17, width=96, height=64, fps=24.0)
    noiser = GaussianNoiser(generator=torch.Generator().manual_seed(3))
    comps = PipelineComponents(dtype=models.dtype, device=models.device)
    video, _ = noise_video_state(shape, noiser, [], comps, models.dtype, models.device)
    audio, _ = noise_audio_state(shape, noiser, [], comps, models.dtype, models.device)
    sigmas = LTX2Scheduler().execute(steps=steps).to(torch.float32)
    with torch.inference_mode():
        video, audio = euler_denoising_loop(sigmas, video, audio, EulerDiffusionStep(), func)
    return video.latent, audio.latent


def _official(vf, af, v, a, t):
    return multi_modal_guider_factory_denoising_func(
        video_guider_factory=vf, audio_guider_factory=af, v_context=v, a_context=a, transformer=t
    )


def _ours(runner):
    return lambda vf, af, v, a, t: guided_denoising_func(vf, af, v, a, t, run_passes=runner)


GUIDANCES = {
    "official defaults (4 passes)": (default_video_guidance(2), default_audio_guidance(2)),
    "cfg only": (
        Guidance(cfg=4.0, stg=0.0, modality=1.0, rescale=0.0, stg_blocks=(1,)),
        Guidance(cfg=6.0, stg=0.0, modality=1.0, rescale=0.0, stg_blocks=(1,)),
    ),
    "skip steps differ per modality": (
        Guidance(cfg=3.0, stg=1.0, modality=3.0, rescale=0.7, stg_blocks=(1,), skip_step=1),
        Guidance(cfg=7.0, stg=0.0, modality=1.0, rescale=0.7, stg_blocks=(1,)),
    ),
}


@pytest.mark.parametrize("case", list(GUIDANCES))
def test_listed_passes_run_one_by_one_equal_the_official_function_bit_for_bit(resident32, case):
    video_g, audio_g = GUIDANCES[case]
    ref = _denoise(resident32, _official, video_g, audio_g)
    ours = _denoise(resident32, _ours(run_sequential), video_g, audio_g)
    assert torch.equal(ref[0], ours[0]) and torch.equal(ref[1], ours[1])


@pytest.mark.parametrize("case", list(GUIDANCES))
def test_batched_passes_match_the_official_function(resident32, case):
    video_g, audio_g = GUIDANCES[case]
    ref = _denoise(resident32, _official, video_g, audio_g)
    ours = _denoise(resident32, _ours(run_batched), video_g, audio_g)
    for r, o in zip(ref, ours, strict=True):
        assert (o - r).abs().max() <= 1e-5 * r.abs().max()


def test_passes_are_batched_only_up_to_the_token_limit(resident32):
    """The worker's GPU default batches short sequences (stage 1) and runs long ones one by one, as upstream."""
    video_g, audio_g = GUIDANCES["official defaults (4 passes)"]
    ref = _denoise(resident32, _ours(run_sequential), video_g, audio_g)
    batched = _denoise(resident32, _ours(run_batched), video_g, audio_g)
    tokens = 3 * 2 * 3  # 17 frames x 64 x 96 pixels: (1 + 16 / 8) x (64 / 32) x (96 / 32) latent tokens
    below = _denoise(resident32, _ours(BatchedWhenShort(max_video_tokens=tokens - 1)), video_g, audio_g)
    at = _denoise(resident32, _ours(BatchedWhenShort(max_video_tokens=tokens)), video_g, audio_g)
    assert all(torch.equal(b, r) for b, r in zip(below, ref, strict=True))  # one by one: bit for bit
    assert all(torch.equal(a, b) for a, b in zip(at, batched, strict=True))  # batched
    assert not all(torch.equal(b, r) for b, r in zip(batched, ref, strict=True))  # the two paths differ here
