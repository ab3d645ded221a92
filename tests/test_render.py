"""End-to-end renders on the tiny model through the official model code (in-process, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cluster.requests import render_request
from cluster.worker import RenderWorker, render_in_process
from cluster.worker_options import WorkerOptions
from jobs.spec import validate_job
from ltx2.lora import LoraState
from ltx2.media import AAC_FRAME_SAMPLES
from ltx2.render import Renderer
from tests.conftest import SMALL_JOB


@pytest.fixture(scope="module")
def worker(tiny_set) -> RenderWorker:
    return RenderWorker(tiny_set, WorkerOptions(device="cpu"))


@pytest.mark.parametrize("recipe", ["two_stage", "distilled"])
def test_render_writes_a_checked_mp4_and_sidecar(worker, tmp_path, recipe):
    job = validate_job({**SMALL_JOB, "recipe": recipe})
    sidecar = render_in_process(worker, job, str(tmp_path)).document
    # a two-stage job restores the original weights after its stage 2; a distilled one keeps its LoRA fused
    assert worker.models.loras.state == (LoraState() if recipe == "two_stage" else LoraState(distilled=True))
    video = tmp_path / sidecar["output"]["video"]
    on_disk = json.loads(video.with_suffix(".json").read_text())
    assert on_disk["job_sha256"] == sidecar["job_sha256"]
    media = on_disk["media"]  # read back by decoding the file
    assert (media["video_codec"], media["audio_codec"]) == ("h264", "aac")
    assert (media["width"], media["height"], media["frames"], media["fps"]) == (192, 128, 17, 24.0)
    assert (media["sample_rate"], media["channels"]) == (24000, 2)
    assert abs(media["audio_seconds"] - media["video_seconds"]) <= AAC_FRAME_SAMPLES / 24000
    assert on_disk["resolved"] == {"num_frames": 17, "seed": 7, "recipe": recipe}
    assert set(on_disk["models"]) >= {"checkpoint", "spatial_upsampler", "distilled_lora"}
    assert all(len(m["sha256"]) == 64 for m in on_disk["models"].values())
    assert {"text_encode", "stage_1", "upsample", "stage_2", "decode", "audio", "mux", "total"} <= set(
        on_disk["timings_s"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([video.name, video.with_suffix(".json").name])


def test_same_seed_same_output_other_seed_differs(resident, small_render):
    """The same job gives the same output from another renderer, and again after that renderer rendered another
    seed (nothing of one render leaks into the next); the prompts are encoded once across the renders."""
    a, _ = small_render  # SMALL_JOB on a renderer of its own
    renderer = Renderer(resident)
    c = renderer.render(render_request(validate_job({**SMALL_JOB, "seed": 8}), resident.num_layers))
    b = renderer.render(render_request(validate_job(SMALL_JOB), resident.num_layers))
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.video, c.video)
    assert renderer.prompts.encodes == 2  # prompt + negative prompt, once each across two renders


def test_guidance_changes_the_output(resident, small_render):
    renderer = Renderer(resident)
    plain, _ = small_render
    strong = renderer.render(
        render_request(
            validate_job({**SMALL_JOB, "video_guidance": {"cfg": 9.0}, "audio_guidance": {"stg": 0.0}}),
            resident.num_layers,
        )
    )
    assert not torch.equal(plain.video, strong.video)
    assert not torch.equal(plain.audio, strong.audio)


def test_lora_fusion_restores_exact_weights(resident):
    model = resident.transformer.velocity_model
    resident.loras.use()  # a render leaves its last stage's LoRAs fused: start from the plain weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resident.loras.use(distilled=True)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".transformer_blocks." in f".{k}" for k in changed)
    resident.loras.use()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_lora_fusion_matches_official_build(resident, tiny_set):
    """In-place fusion gives the same weights as ltx-core building the model with the LoRA."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_pipelines.utils.model_ledger import ModelLedger

    ledger = ModelLedger(
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
        checkpoint_path=str(tiny_set.checkpoint),
        loras=(LoraPathStrengthAndSDOps(str(tiny_set.distilled_lora), 1.0, LTXV_LORA_COMFY_RENAMING_MAP),),
    )
    official = ledger.transformer().velocity_model.state_dict()
    resident.loras.use(distilled=True)
    try:
        ours = resident.transformer.velocity_model.state_dict()
        assert official.keys() == ours.keys()
        assert all(torch.equal(official[k], ours[k]) for k in official)
    finally:
        resident.loras.use()


def test_progress_callback_counts_steps(small_render):
    _, seen = small_render  # SMALL_JOB's render, with the callback's calls
    assert [x for x in seen if x[0] == "stage_1"][-1] == ("stage_1", 3, 3)
    assert [x for x in seen if x[0] == "stage_2"] == [("stage_2", 1, 3), ("stage_2", 2, 3), ("stage_2", 3, 3)]


def test_worker_output_name_is_content_addressed(worker, tmp_path):
    job = validate_job({**SMALL_JOB, "name": "shot"})
    sidecar = render_in_process(worker, job, str(tmp_path)).document
    assert Path(sidecar["output"]["video"]).name.startswith("shot-")
    assert sidecar["output"]["video"].endswith(f"-seed{SMALL_JOB['seed']}.mp4")


def test_decoded_frames_reach_the_writer_run_by_run(resident, worker, tmp_path):
    """A job of several decode tiles in time: the renderer hands the frames over run by run as the tiled decode
    yields them (the worker encodes them into the MP4 meanwhile); together they are the whole video, and the
    worker's content hash, taken run by run, is that of the whole video."""
    from cluster.requests import TensorDigest, tensor_sha256

    job = validate_job({**SMALL_JOB, "num_frames": 41, "decode_tile_frames": 32})
    runs: list[torch.Tensor] = []
    output = Renderer(resident).render(render_request(job, resident.num_layers), on_frames=runs.append)
    assert len(runs) > 1 and torch.equal(torch.cat(runs), output.video)
    digest = TensorDigest()
    for run in runs:
        digest.update(run)
    assert digest.hexdigest() == tensor_sha256(output.video)
    sidecar = render_in_process(worker, job, str(tmp_path)).document
    assert sidecar["content_sha256"]["video_frames"] == tensor_sha256(output.video)
    assert sidecar["media"]["frames"] == 41
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [sidecar["output"]["video"], Path(sidecar["output"]["video"]).stem + ".json"]
    )


def test_a_render_failing_after_frames_were_encoded_leaves_no_file(worker, tmp_path, monkeypatch):
    monkeypatch.setenv("LTX2_FARM_STAGING", str(tmp_path / "staging"))
    """The MP4 is encoded while the model still works; a failure after that (here: NaN found in a later run of
    frames) drops the half-encoded file, and the worker renders the next job normally."""
    from ltx2.render import NonFiniteOutputError

    real = worker.renderer.render

    def fails_after_the_first_frames(request, on_frames=None, **kwargs):
        output = real(request, **kwargs)
        on_frames(output.video[:8])
        raise NonFiniteOutputError("decoded video has NaN or Inf (injected)")

    monkeypatch.setattr(worker.renderer, "render", fails_after_the_first_frames)
    job = validate_job(SMALL_JOB)
    with pytest.raises(NonFiniteOutputError, match="injected"):
        render_in_process(worker, job, str(tmp_path / "failed"))
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []  # no MP4, sidecar or partial file
    assert not (tmp_path / "failed").exists()
    monkeypatch.undo()
    assert render_in_process(worker, job, str(tmp_path / "ok")).document["media"]["frames"] == 17
