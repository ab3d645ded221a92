"""The `ltx2-farm` command as users run it (subprocesses; the render starts its own embedded Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CACHE, SMALL_JOB


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE)}
    for var in ("LTX2_CHECKPOINT", "LTX2_GEMMA_ROOT", "LTX2_SPATIAL_UPSAMPLER", "LTX2_DISTILLED_LORA", "RAY_ADDRESS"):
        env.pop(var, None)
    # a hang still fails; on a 2-core CPU without AVX-512 a 2-worker control render took over 600 s
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=1200
    )


def test_help_teaches():
    out = run("--help").stdout
    assert "render" in out and "validate" in out and "LTX2_CHECKPOINT" in out
    assert "--snap" in run("render", "--help").stdout


@pytest.fixture(scope="module")
def single_render(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """SMALL_JOB rendered once by `ltx2-farm render` on one worker: checked as a render of a job file, and the
    reference a sequence-parallel gang's render of the same job file must equal."""
    folder = tmp_path_factory.mktemp("single")
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "name": "cli"}))
    return job, run("render", str(job), "--out", str(folder / "out"), "--json")


def test_render_job_file_json(single_render):
    _job, result = single_render
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is True
    assert Path(payload["video"]).is_file() and Path(payload["sidecar"]).is_file()
    assert payload["media"]["frames"] == 17


def test_validate_reports_fields_values_and_nearest(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "height": 500, "num_frames": 100}))
    result = run("validate", str(job), "--json")
    assert result.returncode == 2
    problems = {p["field"]: p for p in json.loads(result.stdout)["problems"]}
    assert problems["height"]["value"] == 500 and problems["height"]["nearest"] == 512
    assert problems["num_frames"]["nearest"] == 97
    assert "height: 500 is not a multiple of 64" in result.stderr
    snapped = run("validate", str(job), "--snap")
    assert snapped.returncode == 0 and "snapped to 512" in snapped.stdout


def test_bad_input_is_refused_before_any_model_or_cluster_starts(tmp_path):
    result = run("render", "--prompt", "", "--out", str(tmp_path))
    assert result.returncode == 2 and "prompt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists() and list(tmp_path.iterdir()) == []


def test_partial_model_flags_are_refused(tmp_path):
    result = run("render", "--checkpoint", str(tmp_path / "x.safetensors"), "--json")
    assert result.returncode == 2
    assert "--gemma-root" in json.loads(result.stdout)["error"]


def test_broken_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a model")
    args = ["render", "--checkpoint", str(bad)]
    for flag in ("--gemma-root", "--spatial-upsampler", "--distilled-lora"):
        args += [flag, str(tmp_path)]
    result = run(*args)
    assert result.returncode == 2
    assert f"{bad}: not a safetensors file" in result.stderr


def test_missing_job_file():
    result = run("render", "no/such/job.yaml")
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["render", "no/such/job.yaml"],
        ["render", "--prompt", ""],
        ["validate", "--height", "500"],
        ["render", "--prompt", "x", "--output", "s3://bucket/p", "--key-template", "{job}"],
        ["render", "--prompt", "x", "--name", "n" * 250],
    ],
    ids=["missing file", "empty prompt", "bad height", "sidecar over the MP4", "name too long for a file"],
)
def test_bad_input_is_reported_before_torch_ray_or_boto3_load(args):
    """An error in the job comes back at once: the command imports the heavy stacks only for real work."""
    code = (
        "import sys; from cluster.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, [m for m in ('torch', 'ray', 'boto3') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "2 []", result.stdout + result.stderr


def test_plan_prints_chunks_and_tiles():
    result = run("plan", "--duration", "30", "--resolution", "1920x1088", "--prompt", "a|b|c", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert len(plan["chunks"]) == 4 and len(plan["stage2_tiles"]) == 16
    assert plan["output"] == {"width": 1920, "height": 1088, "frames": 721, "fps": 24.0, "seconds": 30.0}
    human = run("plan", "--duration", "30", "--resolution", "1920x1088").stdout
    assert "stage 1: 4 chunk(s)" in human and "stage 2: 16 tile(s)" in human


def test_bad_resolution_and_too_many_prompts():
    bad = run("plan", "--resolution", "1920by1080")
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr
    many = run("plan", "--prompt", "a|b|c", "--frames", "17", "--json")
    assert many.returncode == 2 and "3 prompts but the job has 1 chunk" in many.stderr


def test_render_chunked_job_on_several_workers(tmp_path):
    job = {
        **SMALL_JOB,
        "num_frames": None,
        "duration": 4,
        "chunk_seconds": 2,
        "chunk_overlap": 0.5,
        "decode_tile_frames": 32,
        "name": "long",
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = run("render", str(path), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["media"]["frames"] == 97
    assert len(payload["plan"]["chunks"]) == 3
    assert {t["worker"] for t in payload["trace"]} == {"worker-0", "worker-1"}


@pytest.mark.parametrize("server_kind", ["moto", "swift"])
def test_render_uploads_to_s3_and_prints_links(tmp_path, server_kind):
    import boto3

    from tests.s3_servers import MotoServer, apply_env, moto_env
    from tests.swift_server import ACCESS_KEY, SECRET_KEY, SwiftServer

    if server_kind == "moto":
        env, server = moto_env(), MotoServer()
    else:
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
        server = SwiftServer(tmp_path / "swift")
    old = apply_env(env)
    server.start()
    try:
        boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="farm")
        result = run(
            "render",
            "--prompt",
            "rain on a tin roof",
            "--frames",
            "9",
            "--height",
            "64",
            "--width",
            "64",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--output",
            "s3://farm/tests",
            "--key-template",
            "{name}/{seed}.{ext}",
            "--endpoint-url",
            server.endpoint,
            "--addressing-style",
            "path",
            "--json",
        )
        assert result.returncode == 0, result.stderr
        uploads = json.loads(result.stdout)["upload"]
        assert [u["key"] for u in uploads] == ["tests/render/10.mp4", "tests/render/10.json"]
        s3 = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
        listed = s3.list_objects_v2(Bucket="farm")["Contents"]
        assert sorted(o["Key"] for o in listed) == ["tests/render/10.json", "tests/render/10.mp4"]
        secret = env["AWS_SECRET_ACCESS_KEY"].encode()
        assert secret.decode() not in result.stdout + result.stderr
        assert not (tmp_path / "out").exists()  # the bucket is the output: nothing travels to --out
        written = [s3.get_object(Bucket="farm", Key=o["Key"])["Body"].read() for o in listed]
        assert not [body for body in written if secret in body]  # sidecar, media, everything
        bad = run("render", "--output", "s3://Bad_Bucket/x")
        assert bad.returncode == 2 and "not a valid bucket name" in bad.stderr
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_render_on_a_sequence_parallel_gang_matches_the_single_worker(tmp_path, single_render):
    """`--placement sequence --gpus 2`: a gang of two CPU ranks renders the same frames and audio."""
    job, single = single_render
    gang = run("render", str(job), "--placement", "sequence", "--gpus", "2", "--out", str(tmp_path / "gang"), "--json")
    assert single.returncode == 0, single.stderr
    assert gang.returncode == 0, gang.stderr
    one, two = json.loads(single.stdout), json.loads(gang.stdout)
    assert two["worker"]["placement"] == {"mode": "sequence", "gpus": 2}
    transformer_tasks = [t for t in two["trace"] if t["kind"] in ("stage1", "stage2")]
    assert transformer_tasks and all(t["parallelism"] == "sequence" for t in transformer_tasks)
    assert all(t["gang"]["ranks"] == 2 for t in transformer_tasks)
    assert Path(one["video"]).name == Path(two["video"]).name  # placement is not part of the output's identity
    assert two["content_sha256"] == one["content_sha256"]  # frames and waveform hashes: exact


def test_impossible_placement_is_refused_before_any_worker_starts(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(SMALL_JOB))
    result = run("render", str(job), "--placement", "sequence", "--gpus", "4", "--json")
    assert result.returncode == 2
    assert "placement.gpus" in result.stderr and "must divide the model's 2 attention heads" in result.stderr
