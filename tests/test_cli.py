"""The `ltx2-farm` command as users run it (subprocesses; the render starts its own embedded Ray)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cluster.exit_codes import MEANINGS, ExitCode
from tests.conftest import CACHE, REPO, SMALL_JOB


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
    reference a sequence-parallel gang's render of the same job file must equal. `--out` is relative: to the folder
    it runs in."""
    folder = tmp_path_factory.mktemp("single")
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "name": "cli"}))
    return job, run("render", "--tiny", str(job), "--out", "out", "--json", cwd=folder)


def test_render_job_file_json(single_render):
    job, result = single_render
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is True
    assert Path(payload["video"]).is_absolute() and Path(payload["sidecar"]).is_absolute()  # from any folder
    assert Path(payload["video"]).parent == job.parent / "out"
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
        ["render", "--frames", "17", "--duration", "5"],
    ],
    ids=[
        "missing file",
        "empty prompt",
        "bad height",
        "sidecar over the MP4",
        "name too long for a file",
        "frames and duration",
    ],
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
    result = run("render", "--tiny", str(path), "--workers", "2", "--out", str(tmp_path / "out"), "--json")
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
            "--tiny",
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


TINY_RENDER = (
    "render",
    "--tiny",
    "--prompt",
    "rain",
    "--frames",
    "9",
    "--height",
    "64",
    "--width",
    "64",
    "--steps",
    "2",
)


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file in `folder`: its inode, modification time and bytes (a file written again shows)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_render_to_a_named_mp4_writes_that_file_and_never_replaces_another(tmp_path):
    """`--output DIR/clip.mp4` is the MP4 itself, its sidecar `clip.json` beside it. Rendered again, what is there
    stays (the same MP4: nothing written); another render's output there is refused before any model loads (exit
    code 2), a file that is no render's once the render finds it (exit code 6); either way it is left as it is."""
    dest, out = tmp_path / "dest", str(tmp_path / "out")
    first = run(*TINY_RENDER, "--out", out, "--output", str(dest / "clip.mp4"), "--json")
    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert Path(payload["video"]).name.endswith("-seed10.mp4") and payload["video"].count("seed") == 1
    assert [u["key"] for u in payload["upload"]] == [str(dest / "clip.mp4"), str(dest / "clip.json")]
    assert sorted(_files(dest)) == ["clip.json", "clip.mp4"]  # no folder named clip.mp4
    assert (dest / "clip.mp4").read_bytes() == Path(payload["video"]).read_bytes()
    assert json.loads((dest / "clip.json").read_text())["job_sha256"] == payload["job_sha256"]
    published = _files(dest)

    again = run(*TINY_RENDER, "--out", out, "--output", str(dest / "clip.mp4"), "--json")
    assert again.returncode == 0, again.stderr
    assert [u["verified"] for u in json.loads(again.stdout)["upload"]] == ["MD5", "kept"]
    assert _files(dest) == published  # the same MP4 was there: nothing written, its sidecar kept

    other = run(*TINY_RENDER, "--seed", "3", "--out", out, "--output", str(dest / "clip.mp4"))
    assert other.returncode == 2, other.stderr
    assert f"error: --output {dest / 'clip.mp4'} is taken: the sidecar clip.json beside it records another" in (
        other.stderr
    )
    assert "starting worker" not in other.stderr and _files(dest) == published

    (dest / "mine.mp4").write_bytes(b"a video of someone else's")
    clash = run(*TINY_RENDER, "--out", out, "--output", str(dest / "mine.mp4"))
    assert clash.returncode == 6, clash.stderr
    assert f"{dest / 'mine.mp4'} already holds another file, and an output never replaces one" in clash.stderr
    assert (dest / "mine.mp4").read_bytes() == b"a video of someone else's" and not (dest / "mine.json").exists()


def test_render_to_a_named_mp4_in_a_bucket(tmp_path, monkeypatch):
    """`--output s3://bucket/dir/clip.mp4`: the objects `dir/clip.mp4` and `dir/clip.json`; another render's
    output there is refused before any model loads, nothing uploaded. Under a prefix the default key is the
    output file's name, the seed in it once."""
    import boto3

    from tests.s3_servers import MotoServer, moto_env

    for name, value in moto_env().items():
        monkeypatch.setenv(name, value)
    server = MotoServer().start()
    try:
        s3 = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
        s3.create_bucket(Bucket="farm")
        s3.put_bucket_versioning(Bucket="farm", VersioningConfiguration={"Status": "Enabled"})  # every PUT shows
        flags = ("--out", str(tmp_path / "out"), "--endpoint-url", server.endpoint, "--addressing-style", "path")
        named = run(*TINY_RENDER, *flags, "--output", "s3://farm/dir/clip.mp4", "--json")
        assert named.returncode == 0, named.stderr
        assert [u["key"] for u in json.loads(named.stdout)["upload"]] == ["dir/clip.mp4", "dir/clip.json"]

        def versions() -> dict:
            return {(v["Key"], v["VersionId"]): v["ETag"] for v in s3.list_object_versions(Bucket="farm")["Versions"]}

        published = versions()
        assert sorted(key for key, _ in published) == ["dir/clip.json", "dir/clip.mp4"]
        other = run(*TINY_RENDER, "--seed", "3", *flags, "--output", "s3://farm/dir/clip.mp4")
        assert other.returncode == 2 and "s3://farm/dir/clip.mp4 is taken" in other.stderr, other.stderr
        assert versions() == published

        prefix = run(*TINY_RENDER, *flags, "--output", "s3://farm/dir", "--json")
        assert prefix.returncode == 0, prefix.stderr
        video, sidecar = (u["key"] for u in json.loads(prefix.stdout)["upload"])
        assert video.startswith("dir/render-") and video.endswith("-seed10.mp4") and video.count("seed") == 1
        assert sidecar == video.removesuffix(".mp4") + ".json"
        body = [s3.get_object(Bucket="farm", Key=key)["Body"].read() for key in (video, "dir/clip.mp4")]
        assert body[0] == body[1]  # the same job: the same MP4 under both names
    finally:
        server.stop()


def test_render_on_a_sequence_parallel_gang_matches_the_single_worker(tmp_path, single_render):
    """`--placement sequence --gpus 2`: a gang of two CPU ranks renders the same frames and audio."""
    job, single = single_render
    gang = run(
        "render",
        "--tiny",
        str(job),
        "--placement",
        "sequence",
        "--gpus",
        "2",
        "--out",
        str(tmp_path / "gang"),
        "--json",
    )
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
    result = run("render", "--tiny", str(job), "--placement", "sequence", "--gpus", "4", "--json")
    assert result.returncode == 2
    assert "placement.gpus" in result.stderr and "must divide the model's 2 attention heads" in result.stderr


def test_one_table_of_exit_codes_in_the_code_the_help_and_the_readme():
    readme = (REPO / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme, re.M))
    assert {int(k): v for k, v in rows.items()} == {int(c): MEANINGS[c] for c in ExitCode}
    help_text = run("--help").stdout
    assert all(f"{int(c):<4}{MEANINGS[c]}" in help_text for c in ExitCode)


NO_CREDENTIALS = {
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",  # this machine has no instance role; asking would only wait
}


def test_an_s3_output_without_credentials_is_refused_before_anything_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | NO_CREDENTIALS
    code = (
        "import sys; from cluster.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, [m for m in ('torch', 'ray') if m in sys.modules])"
    )
    argv = ["render", "--prompt", "x", "--output", "s3://renders/p", "--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.splitlines()[-1] == "2 []", result.stdout + result.stderr
    assert result.stderr.startswith("error: --output s3://renders/p: no S3 credentials found ("), result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    profile = subprocess.run(
        [sys.executable, "-c", code, *argv, "--profile", "nobody"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "--profile nobody: no such profile" in profile.stderr


class Stderr:
    """A running command's stderr, read line by line on a thread of its own (its pipe never fills)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(process.stderr), daemon=True)
        self._thread.start()

    def wait_for(self, words: str, timeout_s: float, count: int = 1) -> str:
        """The `count`-th line with `words`, once it is there."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if words in line]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.2)
        raise AssertionError(f"no {words!r} on stderr after {timeout_s} s:\n" + "".join(self.lines[-30:]))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def _render_to_a_dead_endpoint(tmp_path: Path, port: int) -> tuple[subprocess.Popen, Stderr]:
    """`render` of a tiny job to an S3 endpoint where nothing listens (the server is down), as users start it."""
    from tests.s3_servers import moto_env

    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "LTX2_FARM_STAGING": str(tmp_path / "staging"), **moto_env()}
    env.pop("RAY_ADDRESS", None)
    argv = ["render", "--tiny", "--prompt", "rain", "--frames", "9", "--height", "64", "--width", "64", "--steps", "2"]
    argv += ["--name", "down", "--out", str(tmp_path / "out"), "--output", "s3://farm/t"]
    argv += ["--endpoint-url", f"http://127.0.0.1:{port}", "--addressing-style", "path"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *argv], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return process, Stderr(process)


def _staged_video(tmp_path: Path, line: str) -> Path:
    """The local file a waiting-upload line names: the worker's staged MP4."""
    video = Path(line.rstrip("\n").rsplit("the file is at ", 1)[1])
    assert video.parent == tmp_path / "staging" / "worker-0" / "render" and video.suffix == ".mp4", line
    return video


def test_ctrl_c_while_an_upload_waits_for_a_server_that_is_down(tmp_path):
    """While the server is down the command says what it waits for, for how long, until when and where the file
    is; Ctrl-C (SIGINT to this command only) then ends it with one line, code 130, and the render kept there."""
    from tests.s3_servers import free_port

    process, stderr = _render_to_a_dead_endpoint(tmp_path, free_port())
    try:
        line = stderr.wait_for("is waiting:", timeout_s=600)
        later = stderr.wait_for("is waiting:", timeout_s=120, count=2)  # it keeps saying so while it waits
        assert int(later.split(", retry ")[1].split(",")[0]) > int(line.split(", retry ")[1].split(",")[0])
        assert re.search(
            r"upload of down-\S+\.mp4 to s3://farm/t/down-\S+\.mp4 is waiting: the server could not be reached "
            r"\(EndpointConnectionError\); \d+ s so far, retry \d+, retrying until \d\d:\d\d:\d\d \(\d+ min left\); "
            r"the file is at ",
            line,
        ), line
        video = _staged_video(tmp_path, line)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = stderr.text()
    assert "Traceback" not in err, err
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert last == (
        f"interrupted: the render stays at {video} with its sidecar, on its way to s3://farm/t (not uploaded); "
        "copy it from there (a staged output is swept after a day)"
    ), err[-3000:]
    assert video.is_file() and video.with_suffix(".json").is_file()
    assert not (tmp_path / "out").exists()


def test_an_upload_refused_after_the_render_keeps_the_file_and_says_where(tmp_path):
    """The server comes back without the bucket (moto keeps nothing): a failure no retry fixes ends the command
    with code 6 and the path of the render, which stays there."""
    from tests.s3_servers import MotoServer

    server = MotoServer()
    process, stderr = _render_to_a_dead_endpoint(tmp_path, server.port)
    try:
        video = _staged_video(tmp_path, stderr.wait_for("is waiting:", timeout_s=600))
        server.start()
        assert process.wait(timeout=300) == 6
    finally:
        server.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    err = stderr.text()
    assert "Traceback" not in err, err
    assert f"failed: no such bucket (404 NoSuchBucket); the file stays at {video}\n" in err, err[-3000:]
    assert video.is_file() and video.with_suffix(".json").is_file()
