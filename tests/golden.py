"""Golden renders: every recipe and conditioning mode on the tiny model, pinned by the hashes of their frames and
audio (`tests/golden_renders.json`). A refactor of the render path must leave every hash as it is.

Run in a fresh interpreter with the CPU's numeric paths pinned to AVX2 and one thread (`PINNED_ENV`), so the same
code gives the same bits on any x86-64 machine CI may get (AVX2 or AVX-512, any core count):
    python -m tests.golden [ray]      # print the hashes as JSON (rendered on the in-process or the Ray executor)
    python -m tests.golden --record   # write them to tests/golden_renders.json (only when a change is meant to
                                      # change the output: say why in the commit)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden_renders.json")

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own kernels
    "MKL_CBWR": "AVX2",  # MKL's matmuls
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's convolutions and bf16 matmuls
    "OMP_NUM_THREADS": "1",  # reductions split over threads sum in another order
    "MKL_NUM_THREADS": "1",
}

_BASE = {  # written out, not tests.conftest.SMALL_JOB: the recorded hashes hold for these values only
    "prompt": "waves crash on black rocks, gulls cry",
    "seed": 7,
    "height": 128,
    "width": 192,
    "num_frames": 17,
    "frame_rate": 24.0,
    "steps": 3,
}
_CHUNKS = {"num_frames": None, "duration": 4, "chunk_seconds": 2, "chunk_overlap": 0.5, "decode_tile_frames": 32}

CASES: dict[str, dict] = {
    "two_stage": {},
    "distilled": {"recipe": "distilled"},
    "image_to_video": {"images": [{"path": "picture.png"}]},
    "keyframe": {"images": [{"path": "picture.png", "frame": 8, "strength": 0.8}]},
    "lora": {"loras": [{"path": "style.safetensors", "strength": 0.7}]},
    "control_canny": {
        "recipe": "distilled",
        "control": {"kind": "canny", "path": "clip.mp4", "lora": "ic.safetensors"},
    },
    "audio_to_video": {"audio": {"path": "track.wav"}},
    "negative_prompt": {"negative_prompt": "blurry, static"},
    "tiled": {"height": 256, "width": 256, "tile_pixels": 192, "tile_overlap": 64},
    "chunked": {**_CHUNKS},
    "chunked_image_audio": {**_CHUNKS, "images": [{"path": "picture.png"}], "audio": {"path": "track.wav"}},
}
"""Name -> the fields on top of the base job. Jobs whose plan is one chunk and one tile render both as a whole job
on a worker and through the coordinator; the others through the coordinator."""


def _inputs(folder: Path, checkpoint: Path) -> None:
    from ltx2.samples import write_clip, write_picture, write_track
    from ltx2.tiny import write_tiny_lora

    write_picture(folder / "picture.png")
    write_clip(folder / "clip.mp4", 40)
    write_track(folder / "track.wav", 4.5)
    write_tiny_lora(folder / "style.safetensors", checkpoint, seed=1, targets="attn")
    write_tiny_lora(folder / "ic.safetensors", checkpoint, seed=5, targets="attn1")


def render_all(backend: str = "local", cases: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{case (with the path it took): the sidecar's content hashes} of `cases` (default: all), rendered on the
    executor `backend`."""
    from cluster.coordinator import Coordinator
    from cluster.inputs import input_roots, resolve_inputs
    from cluster.local_executor import LocalExecutor
    from cluster.ray_executor import RayExecutor, start_ray
    from jobs.plan import plan_job
    from jobs.spec import validate_job
    from ltx2.tiny import ensure_tiny_checkpoint_set

    cache = Path(os.environ.get("LTX2_FARM_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "ltx2-farm"))
    tiny = ensure_tiny_checkpoint_set(cache)
    hashes: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _inputs(folder, tiny.checkpoint)
        if backend == "ray":
            start_ray(num_cpus=2)
        pool = (RayExecutor if backend == "ray" else LocalExecutor)(tiny, num_workers=2)
        try:
            coordinator = Coordinator(pool)
            for name in cases or CASES:
                fields = CASES[name]
                job = resolve_inputs(validate_job({**_BASE, **fields}), input_roots(folder), folder)
                plan = plan_job(job)
                if plan.trivial:
                    hashes[f"{name}/whole"] = pool.render(job, folder / name / "whole").document["content_sha256"]
                [document] = coordinator.run([plan], folder / name / "planned")
                hashes[f"{name}/planned"] = document["content_sha256"]
        finally:
            pool.shutdown()
    return hashes


PROCESSES = 2
"""Interpreters the cases are spread over: each renders on one thread, and CI has two cores."""


def render_pinned(backend: str = "local") -> dict[str, dict[str, str]]:
    """`render_all` in fresh interpreters with `PINNED_ENV` (the settings are read when torch loads), the cases
    spread over `PROCESSES` of them."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **PINNED_ENV, "PYTHONPATH": str(root)}
    names = list(CASES)
    shares = [",".join(names[i::PROCESSES]) for i in range(PROCESSES)]
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.golden", "--here", backend, "--cases", share],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    hashes: dict[str, dict[str, str]] = {}
    for process in running:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"golden renders failed:\n{err[-4000:]}")
        hashes.update(json.loads(out))
    return hashes


def main(argv: list[str]) -> int:
    backend = "ray" if "ray" in argv else "local"
    cases = argv[argv.index("--cases") + 1].split(",") if "--cases" in argv else None
    hashes = render_all(backend, cases) if "--here" in argv else render_pinned(backend)
    if "--record" in argv:
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(json.dumps(hashes, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
