"""Shared fixtures: the tiny checkpoint set (generated once, cached), resident models, a local Ray cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltx2.checkpoint import CheckpointSet

# Ray starts its workers at niceness 15. In the suite they share one host with the other test files' processes
# (`./farm test` runs files in parallel), which would starve them; a real node runs them on its own cores.
os.environ.setdefault("RAY_worker_niceness", "0")

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LTX2_FARM_CACHE", REPO / ".cache" / "ltx2-farm"))

# Small job used across tests: 2-stage needs multiples of 64; 17 frames = 8k+1 with k=2.
SMALL_JOB = {
    "prompt": "waves crash on black rocks, gulls cry",
    "seed": 7,
    "height": 128,
    "width": 192,
    "num_frames": 17,
    "frame_rate": 24.0,
    "steps": 3,
}


THREE_CHUNKS = {
    "num_frames": None,
    "duration": 4,
    "chunk_seconds": 2,
    "chunk_overlap": 0.5,
    "decode_tile_frames": 32,
}
"""A 4-second job rendered in three temporal chunks (97 frames): the shape the chunked end-to-end tests use."""


def write_job(folder: Path, **fields: object) -> Path:
    """SMALL_JOB with `fields` on top, written as `job.yaml` in `folder` (its inputs resolve from there)."""
    import yaml

    path = Path(folder) / "job.yaml"
    path.write_text(yaml.safe_dump({**SMALL_JOB, **fields}))
    return path


def small_chunk(**fields: object):  # -> ltx2.stages.ChunkRequest
    """A 17-frame 64x96 distilled stage-1 chunk request for the tiny model, `fields` on top."""
    from ltx2 import stages
    from ltx2.render import default_audio_guidance, default_video_guidance

    defaults = dict(
        frames=17,
        height=64,
        width=96,
        fps=24.0,
        seed=3,
        recipe="distilled",
        steps=2,
        video_guidance=default_video_guidance(2),
        audio_guidance=default_audio_guidance(2),
    )
    return stages.ChunkRequest(**{**defaults, **fields})


@pytest.fixture(scope="session", autouse=True)
def user_folders(tmp_path_factory) -> Iterator[Path]:
    """The per-user folders the farm defaults to (config file, campaign store: `cluster.settings`) in a folder of
    this test session, for this process and every command it starts, never the machine's own; the farm's cache is
    the shared one (`CACHE`: the tiny set is generated once)."""
    home = tmp_path_factory.mktemp("user")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    patch.setenv("XDG_DATA_HOME", str(home / "data"))
    patch.setenv("LTX2_FARM_CACHE", str(CACHE))
    patch.setenv("LTX2_FARM_KEPT", str(home / "kept"))  # kept task results: this run's own, never another's
    patch.delenv("LTX2_FARM_CONFIG", raising=False)
    patch.delenv("LTX2_FARM_DB", raising=False)
    yield home
    patch.undo()


LONG_FILES = (
    "test_cluster.py",
    "test_golden.py",
    "test_campaign_runner.py",
    "test_cli.py",
    "test_chaos.py",
    "test_gangs.py",
    "test_console.py",
    "test_nodes.py",
    "test_resume.py",
)
"""The files that take longest, run first: `./farm test` runs files in parallel processes (pytest-xdist, a file
whole in one process, in this order: `--no-loadscope-reorder`), and a long file handed out last would end the suite
alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_set() -> CheckpointSet:
    from ltx2.tiny import ensure_tiny_checkpoint_set

    return ensure_tiny_checkpoint_set(CACHE)


@pytest.fixture(scope="session")
def resident(tiny_set):
    from ltx2.models import load_resident_models

    return load_resident_models(tiny_set, "cpu")


@pytest.fixture(scope="session")
def small_render(resident):
    """SMALL_JOB rendered once in-process on the resident models (a fresh `Renderer`), with the progress callback's
    `(stage, step, steps)` calls: the bf16 reference several tests compare against. Read it, never change it."""
    from cluster.requests import render_request
    from jobs.spec import validate_job
    from ltx2.render import Renderer

    steps: list[tuple[str, int, int]] = []
    request = render_request(validate_job(SMALL_JOB), resident.num_layers)
    output = Renderer(resident).render(request, on_step=lambda s, i, n, _t: steps.append((s, i, n)))
    return output, steps


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from cluster.ray_executor import start_ray

    start_ray(num_cpus=4)  # logical CPUs: room for 3 one-CPU workers on a 2-core machine
    yield
    ray.shutdown()
