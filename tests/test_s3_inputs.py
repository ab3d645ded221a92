"""Conditioning inputs from s3:// on a real S3-compatible server (moto, 127.0.0.1): fetched, checked and
pinned by digest before compute; each node fetches its own copy and refuses one whose content changed."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
import yaml
from PIL import Image

from cluster.cli import main
from cluster.storage import InputFetchError, fetch_input, input_ref, localize
from ltx2.tiny import write_tiny_lora
from tests.conftest import SMALL_JOB
from tests.s3_servers import MotoServer, moto_env
from tests.test_audio_to_video import RATE, decoded, write_track
from tests.test_cli import run


@pytest.fixture
def bucket(monkeypatch, tmp_path, tiny_set):
    for key, value in moto_env().items():
        monkeypatch.setenv(key, value)
    server = MotoServer().start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("LTX2_FARM_INPUT_CACHE", str(tmp_path / "input-cache"))
    client = boto3.session.Session().client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="inputs")
    rgb = np.zeros((96, 144, 3), np.uint8)
    rgb[20:60, 30:90] = (200, 40, 40)
    Image.fromarray(rgb).save(tmp_path / "shot.png")
    write_tiny_lora(tmp_path / "brand.safetensors", tiny_set.checkpoint, seed=9)
    write_track(tmp_path / "voice.wav", 1.0)
    for name in ("shot.png", "brand.safetensors", "voice.wav"):
        client.upload_file(str(tmp_path / name), "inputs", f"campaign/{name}")
    yield client
    server.stop()


def test_a_job_with_s3_inputs_validates_and_renders(bucket, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                **SMALL_JOB,
                "name": "from-s3",
                "images": [{"path": "s3://inputs/campaign/shot.png"}],
                "loras": [{"path": "s3://inputs/campaign/brand.safetensors", "strength": 0.7}],
                "audio": {"path": "s3://inputs/campaign/voice.wav"},
            }
        )
    )
    result = run("render", "--tiny", str(job), "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["job"]["images"][0]["path"] == "s3://inputs/campaign/shot.png"  # the spec keeps the URL
    assert len(doc["job"]["loras"][0]["sha256"]) == 64
    out = decoded(tmp_path / "out" / doc["output"]["video"])
    assert np.array_equal(out, decoded(tmp_path / "voice.wav")[:, : out.shape[1]])
    assert out.shape[1] // 2 >= 17 / 24 * RATE


def test_missing_object_is_refused_before_compute(bucket, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "images": [{"path": "s3://inputs/campaign/nope.png"}]}))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "images[0].path" in err and "no such object (404 NoSuchKey)" in err and "testing-secret-value" not in err
    with pytest.raises(InputFetchError, match=r"^s3://no-such-bucket/shot.png: no such bucket \(404 NoSuchBucket\)$"):
        fetch_input("s3://no-such-bucket/shot.png")


def test_a_changed_object_is_refused_at_render_time(bucket, tmp_path):
    """Validated with one content, replaced before the worker fetched it: the worker refuses to render."""
    _, digest = fetch_input("s3://inputs/campaign/shot.png")
    bucket.put_object(Bucket="inputs", Key="campaign/shot.png", Body=b"other pixels")
    (tmp_path / "input-cache").rename(tmp_path / "elsewhere")  # a node that has not fetched it yet
    with pytest.raises(InputFetchError, match="changed since the job was validated"):
        localize(("x", input_ref("s3://inputs/campaign/shot.png", digest)))
    assert localize("relative/local.png") == "relative/local.png"
