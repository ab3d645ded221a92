"""Out of memory: a job is retried one rung down the OOM ladder instead of failing.

The tiny model never fills a GPU, so the workers run with the farm's fault injection
(`LTX2_FARM_FAULTS=oom_over_tokens:N`): any transformer call over N video tokens raises the same
`torch.OutOfMemoryError` CUDA raises, as a small GPU would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cluster.campaign_store import Store
from jobs.fallback import OOM_LADDER, effective_tiling, ladder_for, rung_after
from jobs.plan import plan_job
from jobs.spec import validate_job
from tests.conftest import CACHE, SMALL_JOB

TINY = {"height": 128, "width": 192, "num_frames": 17, "recipe": "distilled"}


def test_ladder_order_and_tiles():
    assert [rung_after(n) for n in range(len(OOM_LADDER) + 2)] == [None, *OOM_LADDER, None]
    # rungs that change nothing for a pool are left out of its ladder
    assert "sequential_passes" not in ladder_for("replica") and "sequential_passes" in ladder_for("guidance")
    assert "sequential_passes" in ladder_for("replica", batched_passes=True)  # GPU replicas batch short steps
    assert "offload_transformer" in ladder_for("sequence") and "offload_transformer" not in ladder_for("sharded")
    assert ladder_for("replica")[2:] == ("fp8_weights", "offload_text_encoder", "offload_transformer")
    assert "fp8_weights" not in ladder_for("sharded")
    job = validate_job({**SMALL_JOB, "height": 1024, "width": 1536})
    tiles = {rung: len(plan_job(job.with_fallback(rung)).tiles) for rung in (None, "smaller_tiles", "smallest_tiles")}
    assert tiles[None] < tiles["smaller_tiles"] < tiles["smallest_tiles"], tiles
    smaller = effective_tiling(job, "smaller_tiles")
    smallest = effective_tiling(job, "smallest_tiles")
    assert smaller.tile_pixels == 512 and smallest.tile_pixels == 256
    assert smaller.decode_tile_pixels == 256 and smallest.decode_tile_frames == 32
    one_piece = validate_job({**SMALL_JOB, **TINY})
    assert plan_job(one_piece).trivial
    assert not plan_job(one_piece.with_fallback("smaller_tiles")).trivial  # even a one-piece job gets split
    # a rung keeps what the rungs above it did: the offload rungs render with the smallest tiles
    for rung in ("sequential_passes", "fp8_weights", "offload_text_encoder", "offload_transformer"):
        assert effective_tiling(job, rung) == smallest


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "campaign", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


LADDER = ladder_for("replica")


def _run_in_process(tmp_path, monkeypatch, tiny_set, fault: str, defaults: dict, **options) -> Store:
    """One campaign row under the fault, rendered by the campaign runner on an in-process worker (the runner and
    the ladder are the same on either executor; `campaign run`'s own path is held by the "ladder spent" case)."""
    from cluster.campaign_manifest import parse_manifest
    from cluster.campaign_runner import CampaignRunner
    from cluster.local_executor import LocalExecutor
    from cluster.worker_options import WorkerOptions

    monkeypatch.setenv("LTX2_FARM_FAULTS", fault)  # read by each worker as it starts
    manifest = parse_manifest(
        {"campaign": "oom", "defaults": defaults, "rows": [{"id": "big", "prompt": "a wide shot"}]}
    )
    store = Store(tmp_path / "db")
    store.submit(manifest.spec, manifest.jobs)
    executor = LocalExecutor(tiny_set, options=WorkerOptions(**options))
    try:
        CampaignRunner(store, executor, tmp_path / "out").run()
    finally:
        executor.shutdown()
    return store


@pytest.mark.parametrize(
    ("fault", "rung"),
    [("oom_over_tokens:40", "smaller_tiles"), ("oom_unless_streamed", "offload_transformer")],
    ids=["recovers", "recovers on the last rung"],
)
def test_an_oom_moves_the_job_down_the_ladder(tmp_path, monkeypatch, tiny_set, fault, rung):
    store = _run_in_process(tmp_path, monkeypatch, tiny_set, fault, TINY)
    [job] = store.jobs("oom")
    outcomes = [a["outcome"] for a in store.attempts("oom")]
    # stage 2 untiled has 72 video tokens > 40; halved tiles have at most 27
    assert job["state"] == "done" and outcomes == ["oom"] * (LADDER.index(rung) + 1) + ["ok"], outcomes
    [sidecar] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "oom").glob("*.json")]
    assert sidecar["fallback"] == rung and len(sidecar["plan"]["stage2_tiles"]) > 1


def test_a_job_out_of_memory_on_every_rung_fails_the_campaign_run(tmp_path):
    """Every call over the limit: `campaign run` tries each rung once, then fails the job saying so (exit 4)."""
    env = {
        **os.environ,
        "LTX2_FARM_CACHE": str(CACHE),
        "LTX2_FARM_DB": str(tmp_path / "db"),
        "LTX2_FARM_FAULTS": "oom_over_tokens:0",
    }
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump({"campaign": "oom", "defaults": TINY, "rows": [{"id": "big", "prompt": "a wide shot"}]})
    )
    assert _cli("submit", str(manifest), env=env).returncode == 0
    ran = _cli("run", "--tiny", "--workers", "1", "--out", str(tmp_path / "out"), env=env)
    assert ran.returncode == 4, ran.stderr  # 4: a job failed
    store = Store(tmp_path / "db")
    [job] = store.jobs("oom")
    outcomes = [a["outcome"] for a in store.attempts("oom")]
    assert job["state"] == "failed" and outcomes == ["oom"] * (len(LADDER) + 1), outcomes
    assert f"out of GPU memory on every rung of the OOM ladder ({', '.join(LADDER)})" in job["error"]


def test_batched_guided_passes_fall_back_to_one_by_one(tmp_path, monkeypatch, tiny_set):
    """A replica that batches a step's passes and runs out of memory doing it renders them one by one.

    Guided two-stage job: stage 1 has 18 video tokens a pass, 72 batched (4 passes); stage 2 has 72 untiled
    and at most 27 in halved tiles. Over 40 tokens is out of memory: the tile rungs fix stage 2, and stage 1
    renders once its passes run one by one."""
    job = {"height": 128, "width": 192, "num_frames": 17, "steps": 2}
    store = _run_in_process(tmp_path, monkeypatch, tiny_set, "oom_over_tokens:40", job, batched_passes=True)
    ladder = ladder_for("replica", batched_passes=True)
    outcomes = [a["outcome"] for a in store.attempts("oom")]
    assert outcomes == ["oom"] * (ladder.index("sequential_passes") + 1) + ["ok"], outcomes
    [sidecar] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "oom").glob("*.json")]
    assert sidecar["fallback"] == "sequential_passes"
