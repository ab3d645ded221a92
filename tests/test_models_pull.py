"""Model sets resolved per node: the tiny set published to a real S3 server (moto on 127.0.0.1), pulled by the
CLI and by workers into node caches, two processes racing for one cache, changed and missing objects refused,
and hf:// files resolved from a Hugging Face cache laid out on disk with the hub unreachable (HF_HUB_OFFLINE)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from cluster.model_store import (
    MANIFEST_NAME,
    ModelFetchError,
    ModelSet,
    build_model_set,
    local_checkpoint_set,
    parse_model_set,
    publish_model_set,
    read_model_set,
    validate_models,
    write_manifest,
)
from cluster.worker_options import WorkerOptions
from ltx2.checkpoint import CheckpointError, CheckpointSet, validate_checkpoint_set
from tests.conftest import CACHE, REPO
from tests.s3_servers import MotoServer, apply_env, moto_env

BUCKET = "models"


@dataclass(frozen=True)
class Published:
    endpoint: str
    url: str
    models: ModelSet
    tiny: CheckpointSet
    env: dict[str, str]


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_set):
    """The tiny set published once to a moto server, by the same code `ltx2-farm models publish` runs."""
    server = MotoServer().start()
    env = {
        **moto_env(),
        "AWS_ENDPOINT_URL": server.endpoint,
        "LTX2_FARM_HASH_CACHE": str(tmp_path_factory.mktemp("hashes") / "file-hashes.json"),
    }
    old = apply_env(env)
    try:
        _s3().create_bucket(Bucket=BUCKET)
        models, url = publish_model_set(tiny_set, f"s3://{BUCKET}/ltx2/tiny")
        yield Published(server.endpoint, url, models, tiny_set, env)
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def node_cache(tmp_path, monkeypatch, published):
    """A fresh node: its own model cache and digest memo."""
    monkeypatch.setenv("LTX2_FARM_MODEL_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("LTX2_FARM_HASH_CACHE", str(tmp_path / "node-hashes.json"))
    return tmp_path / "node-cache"


def _s3():
    return boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


# `ltx2-farm` whose every file hash raises: a command run so must read each digest from the memo.
NO_HASHING = (
    "import sys, cluster.model_store, ltx2.checkpoint\n"
    "def hashed(path, *args, **kwargs):\n"
    "    raise AssertionError(f'{path} was hashed again')\n"
    "ltx2.checkpoint.file_sha256 = cluster.model_store.file_sha256 = hashed\n"
    "from cluster.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def cli(*args: str, hashing: bool = True, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "LTX2_FARM_CACHE": str(CACHE), **env}
    for var in ("LTX2_CHECKPOINT", "LTX2_GEMMA_ROOT", "LTX2_SPATIAL_UPSAMPLER", "LTX2_DISTILLED_LORA", "LTX2_MODELS"):
        full_env.pop(var, None)
    command = ["-m", "cluster.cli"] if hashing else ["-c", NO_HASHING]
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, env=full_env, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    return _the_error_line(result.stderr)


def _the_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("downloaded ", "verified "))]
    assert len(lines) == 1, stderr  # the per-file progress lines, then the error alone
    return lines[0]


def cli_here(capsys, *args: str) -> str:
    """The CLI in this process (no interpreter start): its one error line, after checking exit code 2."""
    from cluster.cli import main

    capsys.readouterr()
    assert main(list(args)) == 2
    return _the_error_line(capsys.readouterr().err)


def test_publish_writes_the_manifest_with_pins_and_the_checkpoint_config(published):
    body = _s3().get_object(Bucket=BUCKET, Key=f"ltx2/tiny/{MANIFEST_NAME}")["Body"].read()
    manifest = json.loads(body)
    assert manifest["schema"] == "ltx2-farm/models/1"
    assert manifest["checkpoint"]["url"] == f"s3://{BUCKET}/ltx2/tiny/{published.tiny.checkpoint.name}"
    assert manifest["checkpoint"]["size"] == published.tiny.checkpoint.stat().st_size
    assert len(manifest["distilled_lora"]["sha256"]) == 64
    assert manifest["gemma_root"] == published.tiny.gemma_root.name
    assert {f"{manifest['gemma_root']}/config.json", f"{manifest['gemma_root']}/tokenizer.model"} <= {
        f["path"] for f in manifest["gemma"]
    }
    # the head validates jobs against this, without the checkpoint file
    assert manifest["checkpoint_config"] == validate_checkpoint_set(published.tiny)
    assert read_model_set(f"s3://{BUCKET}/ltx2/tiny") == published.models  # the prefix names the manifest too
    assert validate_models(published.models)["transformer"]["num_layers"] == 2


def test_pull_fills_the_node_cache_once_and_the_set_loads(published, node_cache):
    stale = node_cache / "blobs" / f"{published.models.checkpoint.sha256}.partial-99999-1"  # a killed download's
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    first = cli("models", "pull", published.url, "--json")
    assert first.returncode == 0, first.stderr
    pulled = json.loads(first.stdout)
    assert len(pulled["downloaded"]) == len(published.models.files()) and not pulled["reused"]
    local = CheckpointSet(
        **{k: Path(pulled[k]) for k in ("checkpoint", "gemma_root", "spatial_upsampler", "distilled_lora")}
    )
    assert node_cache in local.checkpoint.parents
    for role, path in published.tiny.files().items():
        assert local.files()[role].read_bytes() == path.read_bytes(), role
    validate_checkpoint_set(local)
    assert not list(node_cache.rglob("*.partial-*"))
    # the digests verified during the download are the memo of every later process: no second hashing
    memo = json.loads(Path(os.environ["LTX2_FARM_HASH_CACHE"]).read_text())
    blob = local.checkpoint.resolve()
    assert memo.get(json.dumps([str(blob), blob.stat().st_size, blob.stat().st_mtime_ns])) == blob.name

    # verified from the digest memo: no download, and no file hashed (a hash in that process raises)
    second = cli("models", "pull", f"s3://{BUCKET}/ltx2/tiny", "--json", hashing=False)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["downloaded"] == [] and len(again["reused"]) == len(published.models.files())
    assert again["checkpoint"] == pulled["checkpoint"]


def test_a_worker_resolves_the_manifest_the_head_read(published, node_cache):
    from cluster.worker import RenderWorker

    assert local_checkpoint_set(published.tiny) is published.tiny  # local paths: a single-machine run
    worker = RenderWorker(published.models, WorkerOptions(device="cpu"), warm_lora_originals=False)
    assert node_cache in Path(worker.models.paths.checkpoint).parents
    assert worker.info().name == "worker"


def test_two_processes_on_one_node_fetch_each_file_once(published, node_cache, tmp_path):
    """Both start fetching at the same instant (a barrier file): one downloads, the other waits on the file locks
    and reuses the verified copy; neither sees a partial file."""
    barrier = tmp_path / "go"
    script = (
        "import json, os, sys, time\n"
        "from cluster.model_store import pull_model_set, read_model_set\n"
        "models = read_model_set(sys.argv[1])\n"
        "open(sys.argv[3], 'w').close()\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.002)\n"
        "r = pull_model_set(models)\n"
        "print(json.dumps({'downloaded': r.downloaded, 'checkpoint': str(r.checkpoints.checkpoint)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, published.url, str(barrier), str(r)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:  # both imported, manifest read
        assert all(p.poll() is None for p in procs)
        time.sleep(0.05)
    barrier.touch()
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    downloads = [path for out in outputs for path in out["downloaded"]]
    assert sorted(downloads) == sorted(f.path for f in published.models.files())  # each file exactly once
    assert outputs[0]["checkpoint"] == outputs[1]["checkpoint"]
    assert not list(node_cache.rglob("*.partial-*"))
    assert len(list((node_cache / "blobs").iterdir())) == len({f.sha256 for f in published.models.files()})


def test_a_changed_or_missing_object_is_refused_in_one_line(published, node_cache, tiny_set, capsys):
    models, url = publish_model_set(tiny_set, f"s3://{BUCKET}/ltx2/changed")
    head_read = read_model_set(url)  # what the head hands to workers
    lora = models.distilled_lora
    key = lora.url.removeprefix(f"s3://{BUCKET}/")
    content = bytearray(tiny_set.distilled_lora.read_bytes())
    content[-1] ^= 0xFF  # same size, other content: only the digest tells
    _s3().put_object(Bucket=BUCKET, Key=key, Body=bytes(content))

    line = _one_line_error(cli("models", "pull", url))
    assert line.startswith(f"error: {lora.url}: changed since the manifest was written")
    assert lora.sha256[:12] in line and "models publish" in line
    # A render: the head reads the manifest, its worker (a Ray actor) meets the changed object while loading.
    job = ["--prompt", "a gull", "--height", "64", "--width", "64", "--frames", "9", "--steps", "1"]
    rendered = cli("render", "--models", url, *job, "--out", str(node_cache.parent / "out"), "--workers", "1")
    assert rendered.returncode == 2 and "Traceback" not in rendered.stderr, rendered.stderr
    errors = [line for line in rendered.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {lora.url}: changed since the manifest was written")
    assert not list((node_cache.parent / "out").rglob("*.mp4"))
    with pytest.raises(ModelFetchError, match="changed since the manifest was written"):
        local_checkpoint_set(head_read)  # a worker given the pins the head read refuses the new object
    assert not (node_cache / "blobs" / lora.sha256).exists()

    _s3().put_object(Bucket=BUCKET, Key=key, Body=bytes(content) + b"more")  # other size: refused before download
    with pytest.raises(ModelFetchError, match=f"{lora.size + 4} bytes, pinned {lora.size}"):
        local_checkpoint_set(head_read)

    _s3().delete_object(Bucket=BUCKET, Key=key)
    assert f"{lora.url}: no such object" in cli_here(capsys, "models", "pull", url)
    with pytest.raises(ModelFetchError, match="no such object"):
        read_model_set(f"s3://{BUCKET}/nothing-here")


def test_bad_manifests_and_conflicting_flags_are_refused(published, tmp_path, capsys):
    from cluster.cli import UsageError, resolve_checkpoints

    data = published.models.to_json()
    for change, problem in (
        ({"schema": "v0"}, "schema"),
        ({"checkpoint": {**data["checkpoint"], "sha256": "abc"}}, "sha256"),
        ({"gemma": [f for f in data["gemma"] if not f["path"].endswith("tokenizer.model")]}, "tokenizer.model"),
        ({"checkpoint_config": {"transformer": {}}}, "lacks vae"),
        (  # the head sizes jobs by the recorded config (STG blocks, gangs): bounded like a file's
            {"checkpoint_config": {**data["checkpoint_config"], "transformer": {"num_layers": 10**9}}},
            "checkpoint_config: config transformer.num_layers is 1000000000: allowed is a whole number from 1 to 128",
        ),
        ({"distilled_lora": {**data["distilled_lora"], "path": "../x.safetensors"}}, "not a relative path"),
    ):
        with pytest.raises(CheckpointError, match=problem):
            parse_model_set({**data, **change}, "m.json")
    args = argparse.Namespace(models=published.url, checkpoint="x.safetensors")
    with pytest.raises(UsageError, match="not both"):
        resolve_checkpoints(args)
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text("{}")
    assert "not a model-set manifest: schema None" in cli_here(capsys, "models", "pull", str(tmp_path))


def _hf_cache_with(hf_cache: Path, repo_id: str, files: dict[str, Path], commit: str) -> None:
    """huggingface_hub's cache layout, as its downloads leave it: blobs by content, a snapshot of symlinks per
    commit, refs/main naming the commit."""
    import hashlib

    repo = hf_cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hf_files_resolve_from_the_hub_cache_offline(tiny_set, tmp_path, monkeypatch):
    ltx_commit, gemma_commit = "1" * 40, "2" * 40
    gemma = tiny_set.gemma_root.name

    def url_for(path: str) -> str:  # the LTX files pinned by branch, the Gemma folder by commit
        if path.startswith(f"{gemma}/"):
            return f"hf://google/{gemma}/{path.removeprefix(gemma + '/')}@{gemma_commit}"
        return f"hf://Lightricks/LTX-2-tiny/{path}@main"

    env = {"LTX2_FARM_HASH_CACHE": str(tmp_path / "hashes.json")}
    monkeypatch.setenv("LTX2_FARM_HASH_CACHE", env["LTX2_FARM_HASH_CACHE"])
    models = build_model_set(tiny_set, url_for)
    manifest = write_manifest(models, tmp_path / "hf" / MANIFEST_NAME)
    cache = tmp_path / "node-cache"
    singles = {p.name: p for p in (tiny_set.checkpoint, tiny_set.spatial_upsampler, tiny_set.distilled_lora)}
    _hf_cache_with(cache / "huggingface", "Lightricks/LTX-2-tiny", singles, ltx_commit)
    gemma_files = {
        p.relative_to(tiny_set.gemma_root).as_posix(): p for p in tiny_set.gemma_root.rglob("*") if p.is_file()
    }
    _hf_cache_with(cache / "huggingface", f"google/{gemma}", gemma_files, gemma_commit)

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    result = cli("models", "pull", str(manifest.parent), "--cache-dir", str(cache), "--json", **offline)
    assert result.returncode == 0, result.stderr
    pulled = json.loads(result.stdout)
    assert pulled["downloaded"] == []  # all found in the hub's cache
    checkpoint = Path(pulled["checkpoint"])
    assert f"snapshots/{ltx_commit}" in os.readlink(checkpoint)  # refs/main resolved by huggingface_hub
    assert checkpoint.read_bytes() == tiny_set.checkpoint.read_bytes()
    validate_checkpoint_set(CheckpointSet(**{k: Path(pulled[k]) for k in tiny_set.__dict__}))

    # a cached file with other content than the pin is refused
    lora_blob = (
        cache / "huggingface/models--Lightricks--LTX-2-tiny/snapshots" / ltx_commit / tiny_set.distilled_lora.name
    )
    data = bytearray(lora_blob.read_bytes())
    data[-1] ^= 0xFF
    lora_blob.resolve().write_bytes(bytes(data))
    line = _one_line_error(cli("models", "pull", str(manifest), "--cache-dir", str(cache), **offline))
    assert "not the pinned file: SHA-256" in line and models.distilled_lora.url in line
    assert "pin a commit revision" in line

    # a file the cache lacks, with the hub unreachable
    lora_blob.unlink()
    line = _one_line_error(cli("models", "pull", str(manifest), "--cache-dir", str(cache), **offline))
    assert models.distilled_lora.url in line and "HF_HUB_OFFLINE" in line


def test_a_set_published_to_a_folder_resolves_in_place(tiny_set, tmp_path, monkeypatch):
    """A folder mirror (a shared filesystem): local URLs, verified against the pins and linked, not copied."""
    monkeypatch.setenv("LTX2_FARM_HASH_CACHE", str(tmp_path / "hashes.json"))
    models, url = publish_model_set(tiny_set, str(tmp_path / "mirror"))
    assert url == str((tmp_path / "mirror" / MANIFEST_NAME).resolve())
    read = read_model_set(str(tmp_path / "mirror"))
    assert read == models and read.checkpoint.url == str((tmp_path / "mirror" / tiny_set.checkpoint.name).resolve())
    local = local_checkpoint_set(read, tmp_path / "cache")
    assert local.checkpoint.resolve() == (tmp_path / "mirror" / tiny_set.checkpoint.name).resolve()
    assert not (tmp_path / "cache" / "blobs").exists()
    validate_checkpoint_set(local)
    (tmp_path / "mirror" / tiny_set.distilled_lora.name).write_bytes(b"changed")
    with pytest.raises(ModelFetchError, match="not the pinned file"):
        local_checkpoint_set(read, tmp_path / "cache")


def test_the_head_validates_a_job_against_the_manifest_without_the_files(published, node_cache, tmp_path):
    """`render --models`: the model's shape (2 blocks) comes from the manifest's recorded config, refused before
    Ray or any worker starts, and nothing was fetched on the head."""
    from tests.conftest import write_job

    job = write_job(tmp_path, video_guidance={"stg_blocks": [7]})
    result = cli("render", str(job), "--models", published.url, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "stg_blocks" in result.stderr and "the model has 2" in result.stderr
    assert not node_cache.exists()


def test_errors_a_worker_raises_reach_the_head_whole():
    """Ray pickles a worker's error to hand it to the head: each keeps its message and fields."""
    import pickle

    from cluster.storage import UploadError
    from jobs.spec import FieldProblem, JobValidationError

    errors = [
        ModelFetchError("s3://b/k", "changed since the manifest was written", "publish the set again"),
        CheckpointError("/m/x.safetensors", "is not a safetensors file"),
        UploadError("s3://b/k: SlowDown", retryable=True),
        JobValidationError([FieldProblem("seed", -1, "must be >= 0")]),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error), error
