"""IC-LoRA control on the tiny model: canny passes made by the farm (OpenCV), depth/pose passes given,
the reference appended to stage 1 with the IC-LoRA fused (the official recipe), chunked in step."""

from __future__ import annotations

import json
import sys

import av
import cv2
import numpy as np
import pytest
import torch

from cluster.cli import main
from ltx2 import stages
from ltx2.control import canny_pass, load_reference
from ltx2.samples import write_clip
from ltx2.tiny import write_tiny_lora
from tests.conftest import THREE_CHUNKS, small_chunk, write_job
from tests.test_cli import run


@pytest.fixture
def inputs(tmp_path, tiny_set):
    write_clip(tmp_path / "source.mp4", 40)
    write_clip(tmp_path / "short.mp4", 9)
    write_tiny_lora(tmp_path / "ic-canny.safetensors", tiny_set.checkpoint, seed=5, targets="attn1")
    write_tiny_lora(
        tmp_path / "ic-half.safetensors",
        tiny_set.checkpoint,
        seed=6,
        targets="attn1",
        metadata={"reference_downscale_factor": "3"},
    )
    return tmp_path


def _job(tmp_path, **fields):
    return write_job(tmp_path, recipe="distilled", **fields)


def test_canny_pass_is_opencv_canny_of_every_frame(tmp_path):
    write_clip(tmp_path / "source.mp4", 12)
    out = canny_pass(str(tmp_path / "source.mp4"), tmp_path / "edges.mkv", 100, 200)
    with av.open(str(tmp_path / "source.mp4")) as src, av.open(str(out)) as edges:
        pairs = list(zip(src.decode(video=0), edges.decode(video=0), strict=True))
    assert len(pairs) == 12
    for original, edge in pairs:
        expected = cv2.Canny(cv2.cvtColor(original.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY), 100, 200)
        got = edge.to_ndarray(format="rgb24")
        assert np.array_equal(got[:, :, 0], expected) and np.array_equal(got[:, :, 2], expected)  # lossless
    assert expected.any()  # the moving square has edges


def test_a_chunk_takes_its_own_span_of_the_reference(tmp_path):
    write_clip(tmp_path / "source.mp4", 40)
    full = load_reference(str(tmp_path / "source.mp4"), 0, 33, 64, 96, torch.float32, torch.device("cpu"))
    span = load_reference(str(tmp_path / "source.mp4"), 16, 17, 64, 96, torch.float32, torch.device("cpu"))
    assert torch.equal(span, full[:, :, 16:33])


def test_stage1_follows_the_reference_with_the_ic_lora_fused(resident, inputs):
    from ltx2.lora import LoraSpec

    lora = LoraSpec(str(inputs / "ic-canny.safetensors"))
    positive = stages.encode_prompt(resident, "a square slides right")
    plain = stages.stage1_chunk(resident, small_chunk(), positive, None)
    followed = stages.stage1_chunk(
        resident, small_chunk(control=(str(inputs / "source.mp4"), 1, 1.0), control_lora=lora), positive, None
    )
    assert resident.loras.state.stage == (lora,) and resident.loras.state.distilled
    assert followed.video.shape == plain.video.shape  # the reference tokens are appended, then stripped
    assert not torch.equal(followed.video, plain.video)
    resident.loras.use(distilled=True)  # what stage 2 uses: the IC-LoRA is gone, the job set unchanged
    assert resident.loras.state.stage == ()


@pytest.mark.parametrize(
    ("control", "words"),
    [
        ({"kind": "canny", "path": "short.mp4", "lora": "ic-canny.safetensors"}, "has 9 frames"),
        ({"kind": "depth", "path": "job.yaml", "lora": "ic-canny.safetensors"}, "not a readable video"),
        ({"kind": "pose", "path": "source.mp4", "lora": "source.mp4"}, "not a readable safetensors file"),
        ({"kind": "canny", "path": "source.mp4", "lora": "ic-half.safetensors"}, "1/3 of the target size"),
        ({"kind": "canny", "path": "source.mp4", "lora": "ic-canny.safetensors", "canny_low": 300}, "canny_low"),
        ({"kind": "canny", "path": "source.mp4", "lora": "ic-canny.safetensors", "strength": 3}, "control.strength"),
        ({"kind": "normals", "path": "source.mp4", "lora": "ic-canny.safetensors"}, "control.kind"),
    ],
    ids=["too short", "not a video", "IC-LoRA not a LoRA", "downscale", "thresholds", "strength", "unknown kind"],
)
def test_bad_controls_are_refused_before_compute(inputs, capsys, control, words):
    path = _job(inputs, control=control)
    assert main(["validate", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_control_renders_whole_and_chunked(inputs):
    """Canny (made by the farm) in a one-piece job; a user's depth pass through three temporal chunks."""
    job = _job(inputs, name="edges", control={"kind": "canny", "path": "source.mp4", "lora": "ic-canny.safetensors"})
    result = run("render", "--tiny", str(job), "--out", str(inputs / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    control = doc["job"]["control"]
    assert control["reference"].endswith(".mkv") and len(control["sha256"]) == 64 and control["lora_sha256"]
    write_clip(inputs / "depth.mp4", 100)
    chunked = _job(
        inputs,
        name="depth-long",
        **THREE_CHUNKS,
        control={"kind": "depth", "path": "depth.mp4", "lora": "ic-canny.safetensors", "strength": 0.9},
    )
    result = run("render", "--tiny", str(chunked), "--workers", "2", "--out", str(inputs / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["plan"]["chunks"]) == 3 and doc["media"]["frames"] == 97
    assert doc["job"]["control"]["reference"] == doc["job"]["control"]["path"]  # a given pass is used as is


def test_command_line_flags_build_the_same_job(inputs, capsys, monkeypatch):
    from ltx2.samples import write_track

    write_track(inputs / "voice.wav", 1.0)
    monkeypatch.chdir(inputs)
    args = ["validate", "--prompt", "x", "--height", "128", "--width", "192", "--frames", "17", "--json"]
    flags = ["--control", "canny:source.mp4", "--control-lora", "ic-canny.safetensors:0.5", "--audio", "voice.wav@0.1"]
    assert main([*args, *flags]) == 0
    job = json.loads(capsys.readouterr().out)["job"]
    assert job["control"]["kind"] == "canny" and job["control"]["lora_strength"] == 0.5
    assert job["audio"]["start"] == 0.1 and len(job["audio"]["sha256"]) == 64
    assert main([*args, "--control", "normals:x.mp4", "--control-lora", "a.safetensors"]) == 2
    assert "KIND:PATH" in capsys.readouterr().err
    assert main([*args, "--control", "canny:source.mp4"]) == 2
    assert "needs --control-lora" in capsys.readouterr().err


def test_every_node_traces_canny_from_its_own_copy(inputs, monkeypatch):
    """A worker on another node has no access to the validating node's canny file: it gets the recipe and
    traces the same edges into its own cache."""
    from cluster.storage import canny_ref, localize
    from ltx2.checkpoint import file_sha256

    source = inputs / "source.mp4"
    monkeypatch.setenv("LTX2_FARM_CONTROL_DIR", str(inputs / "node-a"))
    here = localize(canny_ref(str(source), file_sha256(source), 100, 200))
    monkeypatch.setenv("LTX2_FARM_CONTROL_DIR", str(inputs / "node-b"))
    there = localize(canny_ref(str(source), file_sha256(source), 100, 200))
    assert here != there and there.startswith(str(inputs / "node-b"))
    with av.open(here) as a, av.open(there) as b:
        pairs = list(zip(a.decode(video=0), b.decode(video=0), strict=True))
    same = all(np.array_equal(x.to_ndarray(format="rgb24"), y.to_ndarray(format="rgb24")) for x, y in pairs)
    assert len(pairs) == 40 and same


def test_an_ic_lora_is_checked_against_the_model_before_any_worker_starts(inputs, capsys, tiny_set):
    """`render` checks the IC-LoRA's factors against the transformer the checkpoint's config builds, from its
    header, on the head: one that fits passes, one for another width is refused naming it."""
    from cluster.inputs import resolve_inputs
    from cluster.requests import check_job_loras
    from jobs.spec import validate_job
    from ltx2.checkpoint import validate_checkpoint_set
    from ltx2.tiny import save_file
    from tests.conftest import SMALL_JOB

    control = {"kind": "depth", "path": "source.mp4", "lora": "ic-canny.safetensors"}
    job = validate_job({**SMALL_JOB, "recipe": "distilled", "control": control})
    check_job_loras(resolve_inputs(job, [inputs], inputs), validate_checkpoint_set(tiny_set))
    save_file(
        {
            "diffusion_model.transformer_blocks.0.attn1.to_v.lora_A.weight": torch.zeros(4, 128),
            "diffusion_model.transformer_blocks.0.attn1.to_v.lora_B.weight": torch.zeros(128, 4),
        },
        str(inputs / "ic-wide.safetensors"),
    )
    path = _job(inputs, control={**control, "lora": "ic-wide.safetensors"})
    ray_before = _ray_running()
    assert main(["render", "--tiny", str(path), "--out", str(inputs / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{inputs / 'ic-wide.safetensors'}: " in err and "the model's weight is [64, 64]" in err
    assert not (inputs / "out").exists()
    assert _ray_running() == ray_before  # no cluster was started for it


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
