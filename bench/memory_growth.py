"""Memory over a long campaign on one worker (issue 8): 200 tiny jobs, one after another, on one in-process
`RenderWorker`; host RSS and CUDA memory sampled after jobs 1, 10, 20, 40, then every 40 up to 200.

Ray is not on the GPU machines, so the worker class runs in-process (the path a Ray actor runs). Jobs vary
prompt and seed (f"scene {i}", seed i), 128x192, 17 frames, `two_stage` with 3 steps; every 10th job is
`distilled` and every 7th carries a tiny style LoRA (strength 0.8), so LoRA switching is exercised.

At each sample: process RSS (psutil, else /proc/self/status VmRSS), torch.cuda.memory_allocated,
memory_reserved, max_memory_allocated (peak since the previous sample; reset after each sample), and the
wall time of the last job.

    OUT=$OUT python bench/memory_growth.py      # -> $OUT/memory_growth.json
    env: JOBS=200  ROOT=/tmp/tiny  RENDERS=/tmp/renders  TIME_LIMIT_S=0 (stop early past this; 0 = never)
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.boto3_stub import stub_boto3_if_missing

OUT = Path(os.environ.get("OUT", "bench/results"))
ROOT = Path(os.environ.get("ROOT", "/tmp/tiny"))
RENDERS = Path(os.environ.get("RENDERS", "/tmp/renders"))
JOBS = int(os.environ.get("JOBS", "200"))
TIME_LIMIT_S = float(os.environ.get("TIME_LIMIT_S", "0"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MIB = 2**20
SAMPLE_AT = sorted({1, 10, 20, 40, *range(40, JOBS + 1, 40), JOBS})

try:
    import psutil

    _PROC = psutil.Process()
    RSS_SOURCE = "psutil"
except ImportError:  # not on the GPU image: read the kernel's figure directly
    _PROC = None
    RSS_SOURCE = "/proc/self/status VmRSS"


def rss_bytes() -> int:
    if _PROC is not None:
        return _PROC.memory_info().rss
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cuda_memory() -> dict:
    if DEVICE != "cuda":
        return {"allocated_mib": None, "reserved_mib": None, "max_allocated_mib": None}
    torch.cuda.synchronize()
    sample = {
        "allocated_mib": round(torch.cuda.memory_allocated() / MIB, 2),
        "reserved_mib": round(torch.cuda.memory_reserved() / MIB, 2),
        "max_allocated_mib": round(torch.cuda.max_memory_allocated() / MIB, 2),
    }
    torch.cuda.reset_peak_memory_stats()
    return sample


def job_dict(i: int, lora: Path) -> dict:
    job = {
        "name": f"mem-{i:03d}",
        "prompt": f"scene {i}",
        "seed": i,
        "height": 128,
        "width": 192,
        "num_frames": 17,
        "frame_rate": 24,
        "recipe": "distilled" if i % 10 == 0 else "two_stage",
    }
    if job["recipe"] == "two_stage":
        job["steps"] = 3
    if i % 7 == 0:
        job["loras"] = [{"path": str(lora), "strength": 0.8}]
    return job


def flush(report: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory_growth.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    started = time.perf_counter()
    # ltx-pipelines -> transformers -> accelerate asks importlib.util.find_spec("boto3"), which fails on the stub
    # (no __spec__): import them before the stub goes in, as start_and_overhead.py does (its generator first).
    import ltx_pipelines  # noqa: F401

    report: dict = {
        "info": {
            "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "date": os.environ.get("DATE", "2026-11-25"),
            "commit": os.environ.get("COMMIT"),
            "rss_source": RSS_SOURCE,
            "boto3": stub_boto3_if_missing(),
            "jobs": JOBS,
            "size": [128, 192, 17],
            "rss_before_import_worker_mib": round(rss_bytes() / MIB, 1),
        },
        "samples": [],
    }
    from cluster.inputs import resolve_inputs
    from cluster.worker import RenderWorker, render_in_process
    from cluster.worker_options import WorkerOptions
    from jobs.spec import validate_job
    from ltx2.models import LOAD_COUNTER
    from ltx2.tiny import ensure_tiny_checkpoint_set, write_tiny_lora

    checkpoints = ensure_tiny_checkpoint_set(ROOT)
    (ROOT / "loras").mkdir(parents=True, exist_ok=True)
    lora = write_tiny_lora(ROOT / "loras" / "style.safetensors", checkpoints.checkpoint)
    worker = RenderWorker(checkpoints, WorkerOptions(device=DEVICE, dtype="bfloat16"))
    report["info"]["rss_after_worker_mib"] = round(rss_bytes() / MIB, 1)
    report["info"]["cuda_after_worker"] = cuda_memory()
    report["info"]["setup_s"] = round(time.perf_counter() - started, 2)
    walls: list[float] = []
    counts = {"two_stage": 0, "distilled": 0, "lora": 0}
    for i in range(1, JOBS + 1):
        spec = job_dict(i, lora)
        job = validate_job(spec)
        if "loras" in spec:
            job = resolve_inputs(job, [Path("/tmp")], Path("/tmp"))
        t = time.perf_counter()
        render_in_process(worker, job, RENDERS)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t)
        counts[spec["recipe"]] += 1
        counts["lora"] += "loras" in spec
        if i in SAMPLE_AT:
            sample = {
                "after_job": i,
                "rss_mib": round(rss_bytes() / MIB, 1),
                **cuda_memory(),
                "last_job_wall_s": round(walls[-1], 3),
                "last_job": f"{spec['recipe']}{' + lora' if 'loras' in spec else ''}",
                "gc_objects": len(gc.get_objects()),
                "loads": LOAD_COUNTER["loads"],
                "elapsed_s": round(time.perf_counter() - started, 1),
                **{f"jobs_{k}": v for k, v in counts.items()},
            }
            report["samples"].append(sample)
            print(json.dumps(sample), flush=True)
            flush(report)
        if TIME_LIMIT_S and time.perf_counter() - started > TIME_LIMIT_S:
            report["stopped_early"] = f"after job {i}: past TIME_LIMIT_S={TIME_LIMIT_S:.0f}"
            break
    report["job_wall_s"] = [round(w, 3) for w in walls]
    report["total_s"] = round(time.perf_counter() - started, 1)
    flush(report)
    print("| after job | RSS MiB | allocated MiB | reserved MiB | peak since last MiB | last job s | last job |")
    print("|---|---|---|---|---|---|---|")
    for s in report["samples"]:
        print(
            f"| {s['after_job']} | {s['rss_mib']} | {s['allocated_mib']} | {s['reserved_mib']} | "
            f"{s['max_allocated_mib']} | {s['last_job_wall_s']} | {s['last_job']} |"
        )


if __name__ == "__main__":
    main()
