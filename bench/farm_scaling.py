"""Issue 10's multi-GPU runs through the real farm: Ray, `RayExecutor` (replicas and gangs), `Coordinator` and
`CampaignRunner`, the code paths of `ltx2-farm render` and `ltx2-farm campaign run`, on 1 GPU and on N GPUs.

Phase `e2e` (latency of one job): one two-stage job (SIZE, STEPS guided stage-1 steps + the 3 distilled refine
steps), planned by `jobs.plan` and run by the coordinator, as `ltx2-farm render` runs any job with more than one
stage-2 tile (1024x1536 has two):
- `one_replica`: a pool of one replica (the 1-GPU baseline);
- `gang`: one gang of N GPUs, its mode chosen as `render` chooses it (`cluster.service.resolve_placement`: `auto`
  picks guidance-parallel stage 1 for a guided job; stage-2 tiles run sequence-parallel, one after the other;
  text encode, upsample, VAE decode and audio run on rank 0 alone);
- `replicas_tiles`: N replicas. The coordinator hands each stage-2 step's tiles and the VAE decode tiles to idle
  workers, so these spread over the replicas (stage 1, one chunk here, runs on one of them). Only stage 2 and
  what follows it are compared with `one_replica`, so this run uses TILE_STEPS stage-1 steps.
Wall time by stage comes from the coordinator's task trace in the sidecar (per task: kind, worker, start, end):
a stage's wall is its first task's start to its last task's end; stage 2 includes the coordinator's blends
between steps; `mux` is the muxer's close after the last frames (frames are encoded while tiles decode).
Stage-1 step times are the workers' own `ltx2farm_step_seconds` histograms (diff before/after the run).

Phase `throughput` (jobs per hour): JOBS short jobs (T_SIZE, T_RECIPE, T_STEPS) submitted as one campaign to the
durable store and run by `CampaignRunner` on one replica, then on N replicas (one per GPU): whole jobs per worker,
prompt encodings shared farm-wide. Goal of issue 10: (jobs/h with N) / (jobs/h with 1) / N >= 0.95. The default
job is guided two_stage with 10 steps, not `distilled` (the farm's one-pass recipe, 8 + 3 forwards): at 512x768 its
40 stage-1 passes keep the transformer's share of a job high, where distilled's would be near decode + mux.

The N-replica pool is started once per phase; the 1-replica runs use its first worker alone (the same pool object
with a shorter worker list, the others idle), which saves a cold start. Warm-ups before measuring: every worker's
model-file digests (pre-computed here in the background into the farm's on-disk memo while the workers load) and
one job per worker at the measured size (WARMUP_STEPS stage-1 steps), so that first-job costs (compiling the
blocks for each shape, the pinned copy of the LoRA originals, NCCL set-up) stay out of the numbers.

Workers run as the farm runs them: replicas with compiled blocks on GPUs (the default since ce14217), gangs eager
(they refuse compiled blocks). COMPILE=0 makes the replicas eager too, for a parallelism-only comparison.

Model: the real-size checkpoint set of `bench/start_and_overhead.py` (19B transformer, Gemma-3-12B, random
weights), written to ROOT once (~60 s) and reused while the machine keeps /tmp. Ray must be importable
(`bench/pack_ray.sh`). boto3 is not on the GPU image: the driver and every Ray worker process stub it
(`boto3_stub.stub_boto3_if_missing`, after importing ltx_pipelines; a Ray worker-process setup hook).
Results go to $OUT/farm_scaling.json after every run (a run cut off at the call limit keeps what finished).

    OUT=$OUT PHASES=e2e python bench/farm_scaling.py
    OUT=$OUT PHASES=throughput python bench/farm_scaling.py
    env: GPUS=<all visible>  ROOT=/tmp/ltx2-real  SIZE=1024x1536x121  STEPS=40  TILE_STEPS=2  WARMUP_STEPS=1
         GANG=auto|guidance|sequence|sharded  E2E_RUNS=one_replica,replicas_tiles,gang  COMPILE=auto|0|1
         TILE_PIXELS, TILE_OVERLAP, DECODE_TILE_PIXELS (default: the job's)
         JOBS=<4 per GPU>  T_SIZE=512x768x121  T_RECIPE=two_stage  T_STEPS=10
    SMOKE=1 OUT=/tmp/x python bench/farm_scaling.py   # CPU plumbing check: tiny set, 2 CPU workers, tiny sizes
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3_stub  # noqa: E402  (bench/: the script's folder)
import start_and_overhead as soh  # noqa: E402
import torch  # noqa: E402

from ltx2.checkpoint import CheckpointSet  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT = Path(os.environ.get("OUT", "bench/results"))
ROOT = Path(os.environ.get("ROOT", "/tmp/ltx2-real"))
PHASES = [p for p in os.environ.get("PHASES", "e2e,throughput").split(",") if p]
E2E_RUNS = os.environ.get("E2E_RUNS", "one_replica,replicas_tiles,gang").split(",")
GANG = os.environ.get("GANG", "guidance" if SMOKE else "auto")
H, W, F = map(int, os.environ.get("SIZE", "128x192x17" if SMOKE else "1024x1536x121").split("x"))
STEPS = int(os.environ.get("STEPS", "3" if SMOKE else "40"))
TILE_STEPS = int(os.environ.get("TILE_STEPS", "1" if SMOKE else "2"))
WARMUP_STEPS = int(os.environ.get("WARMUP_STEPS", "1"))  # 0: no warm-up jobs
COMPILE = {"auto": None, "1": True, "0": False}[os.environ.get("COMPILE", "auto")]  # replicas; gangs run eager
TILING = {  # smoke sizes need smaller tiles to have more than one; else the job's defaults (1024, 128, 512)
    key: int(os.environ.get(env, smoke))
    for key, env, smoke in (
        ("tile_pixels", "TILE_PIXELS", 128),
        ("tile_overlap", "TILE_OVERLAP", 32),
        ("decode_tile_pixels", "DECODE_TILE_PIXELS", 96),
    )
    if SMOKE or env in os.environ
}
JOBS_PER_GPU = 2 if SMOKE else 4  # JOBS default: this many per GPU (equal shares at any N)
TH, TW, TF = map(int, os.environ.get("T_SIZE", "128x192x9" if SMOKE else "512x768x121").split("x"))
T_RECIPE = os.environ.get("T_RECIPE", "two_stage")
T_STEPS = int(os.environ.get("T_STEPS", "2" if SMOKE else "10"))
RUNS = ROOT / "farm_scaling"  # outputs, campaign stores (MP4s deleted after each run: only sizes are kept)
GIB = 2**30

PROMPTS = (
    "A red fox trots through fresh snow at dawn; snow crunches, a raven calls.",
    "Waves crash against black rocks under a stormy sky while seagulls cry.",
    "A street musician plays a saxophone in the rain at night, neon reflections.",
    "A hot-air balloon drifts over green hills; wind, a distant dog barks.",
)

REPORT: dict[str, Any] = {}
LOG: list[str] = []
REPORT_LOCK = threading.Lock()  # warm-ups run one coordinator per worker in threads; they record and flush


def log(*parts: object) -> None:
    line = f"[{time.perf_counter() - T_START:7.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def flush() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with REPORT_LOCK:
        (OUT / "farm_scaling.json").write_text(json.dumps(REPORT, indent=1, default=str) + "\n")
        (OUT / "farm_scaling.log").write_text("\n".join(LOG) + "\n")


# --- set-up: stubs, Ray, the checkpoint set ------------------------------------------------------------------


def worker_setup(bench: str = str(Path(__file__).resolve().parent)) -> None:
    """Every Ray worker process, before its first task: what the driver does (the GPU image has no boto3).
    Ray runs it before it puts the driver's script folder on the worker's path: `bench` travels with it."""
    import ltx_pipelines  # noqa: F401  (transformers/accelerate ask find_spec("boto3"): before the stub)

    if bench not in sys.path:
        sys.path.append(bench)
    import boto3_stub  # torch-free: CUDA must not start before Ray pins this process to its GPU

    boto3_stub.stub_boto3_if_missing()


def start_ray() -> None:
    """The farm's `start_ray`, with `worker_setup` added to the runtime env it passes to `ray.init`."""
    import ray

    from cluster import executor

    init = ray.init

    def init_with_setup_hook(*args: Any, **kwargs: Any) -> Any:
        runtime_env = dict(kwargs.get("runtime_env") or {}, worker_process_setup_hook=worker_setup)
        return init(*args, **dict(kwargs, runtime_env=runtime_env))

    ray.init = init_with_setup_hook
    try:
        executor.start_ray(None, num_cpus=max(os.cpu_count() or 1, 4))  # the CLI's; 4: 2 CPU workers + a gang
    finally:
        ray.init = init


def existing_set(root: Path) -> CheckpointSet | None:
    """The real-size set `start_and_overhead.write_real_checkpoint_set` wrote into `root` (Gemma on disk or in
    /dev/shm), if complete: every header readable, the Gemma folder finished, the 48-layer transformer."""
    from ltx2.checkpoint import validate_checkpoint_set

    loras = sorted(root.glob("ltx-2-19b-distilled-lora-*.safetensors"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    gemma_dir = os.environ.get("GEMMA_DIR", "auto")
    gemmas = (
        [root / "gemma-3-12b-it", Path("/dev/shm/ltx2-real/gemma-3-12b-it")]
        if gemma_dir == "auto"
        else [Path(gemma_dir)]
    )
    for gemma in gemmas if loras else []:
        paths = CheckpointSet(
            checkpoint=root / "ltx-2-19b-dev.safetensors",
            gemma_root=gemma,
            spatial_upsampler=root / "ltx-2-spatial-upscaler-x2-1.0.safetensors",
            distilled_lora=loras[-1],
        )
        try:
            config = validate_checkpoint_set(paths)
        except Exception:
            continue
        if config["transformer"]["num_layers"] == soh.REAL_TRANSFORMER_CONFIG["num_layers"]:
            return paths
    return None


def checkpoint_set() -> CheckpointSet:
    if SMOKE:
        from ltx2.tiny import ensure_tiny_checkpoint_set

        REPORT["checkpoints"] = {"set": "tiny (ltx2.tiny)"}
        return ensure_tiny_checkpoint_set()
    t = time.perf_counter()
    paths = existing_set(ROOT)
    if paths is not None:
        REPORT["checkpoints"] = {"set": "real-size random (start_and_overhead)", "reused": True}
    else:
        soh.log, soh.flush = log, lambda _report: flush()  # its progress lines and partial reports: into ours
        paths = soh.write_real_checkpoint_set(ROOT, REPORT)  # -> REPORT["generate"]
        torch.cuda.empty_cache()  # the driver keeps no generator memory on GPU 0
        REPORT["checkpoints"] = {"set": "real-size random (start_and_overhead)", "reused": False}
    REPORT["checkpoints"].update(
        seconds=round(time.perf_counter() - t, 1),
        paths={k: str(v) for k, v in paths.files().items() if not k.startswith("gemma/")}
        | {"gemma": str(paths.gemma_root)},
        total_gb=round(sum(p.stat().st_size for p in paths.files().values()) / 1e9, 2),
        driver_cuda_reserved_gib=round(torch.cuda.memory_reserved() / GIB, 2) if torch.cuda.is_initialized() else 0,
    )
    return paths


def prehash(paths: CheckpointSet, record: dict) -> threading.Thread:
    """Model-file digests into the farm's on-disk memo (`cached_file_sha256`) while the workers load: their own
    background digests then mostly read the memo instead of hashing 75 GB each."""
    from ltx2.checkpoint import cached_file_sha256

    def run() -> None:
        t = time.perf_counter()
        for path in paths.files().values():
            cached_file_sha256(path)
        record["prehash_s"] = round(time.perf_counter() - t, 1)

    thread = threading.Thread(target=run, name="bench-prehash", daemon=True)
    thread.start()
    return thread


# --- pools -------------------------------------------------------------------------------------------------


def start_pool(checkpoints: CheckpointSet, workers: int, placement: Any, record: dict) -> Any:
    from cluster.ray_executor import RayExecutor
    from cluster.worker_options import WorkerOptions

    t = time.perf_counter()
    options = WorkerOptions(
        device="cpu" if SMOKE else None,
        compile=None if placement.is_gang else COMPILE,  # None: the farm's default (compiled on GPUs)
    )
    pool = RayExecutor(checkpoints, num_workers=workers, placement=placement, options=options)
    record["cold_start_s"] = round(time.perf_counter() - t, 1)
    record["workers"] = [
        {k: asdict(w.info)[k] for k in ("name", "pid", "device", "gpu", "load_seconds", "compile", "gang")}
        for w in pool.workers
    ]
    log(f"pool of {workers} {placement.mode} worker(s) x {placement.gpus} GPU(s) up in {record['cold_start_s']} s")
    return pool


def some_workers(pool: Any, indices: list[int]) -> Any:
    """The same live pool seen as some of its workers (the others stay idle): 1 replica, no second cold start."""
    view = copy.copy(pool)
    view.workers = [pool.workers[i] for i in indices]
    return view


def warm_each(pool: Any, record: dict) -> None:
    """A warm-up job on every worker at once, each through its own coordinator on a one-worker view: every worker
    meets the measured shapes (compiled blocks compile per shape and per process) before anything is timed."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(len(pool.workers)) as threads:
        runs = [f"warmup_{w.name}" for w in pool.workers]
        futures = [
            threads.submit(e2e_run, run, some_workers(pool, [i]), e2e_spec(run, WARMUP_STEPS), record)
            for i, run in enumerate(runs)
        ]
        for future in futures:
            future.result()
    record["all_workers_s"] = round(time.perf_counter() - t, 1)


def stop_pool(pool: Any) -> None:
    """Shut the pool down and wait until its worker processes are gone (their GPU memory with them)."""
    import ray

    from cluster.campaign_runner import _alive

    pids = [m for w in pool.workers for m in (w.info.gang.member_pids if w.info.gang else (w.info.pid,))]
    pool.shutdown()
    deadline = time.time() + 120
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    total = ray.cluster_resources()
    while time.time() < deadline and any(ray.available_resources().get(r, 0) < total.get(r, 0) for r in ("GPU", "CPU")):
        time.sleep(0.5)


def step_seconds(pool: Any) -> dict[str, list[float]]:
    """[sum, count] of each stage's `ltx2farm_step_seconds` histogram, over the pool's workers (gangs: rank 0)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    for _labels, text in ray.get([w.worker.metrics_text.remote() for w in pool.workers]):
        for family in text_string_to_metric_families(text):
            if family.name != "ltx2farm_step_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    entry = totals.setdefault(sample.labels["stage"], [0.0, 0.0])
                    entry[1 if sample.name.endswith("_count") else 0] += sample.value
    return totals


def steps_between(before: dict, after: dict) -> dict[str, dict]:
    out = {}
    for stage, (total, count) in after.items():
        total -= before.get(stage, [0.0, 0.0])[0]
        count -= before.get(stage, [0.0, 0.0])[1]
        if count:
            out[stage] = {"steps": int(count), "mean_s": round(total / count, 4), "total_s": round(total, 2)}
    return out


# --- phase e2e -----------------------------------------------------------------------------------------------

STAGES = (
    ("text_encode", ("encode",)),
    ("stage_1", ("stage1",)),
    ("upsample", ("upsample",)),
    ("stage_2", ("stage2_init", "stage2")),
    ("decode", ("decode",)),
    ("audio", ("audio",)),
)


def e2e_spec(run: str, steps: int, placement: dict | None = None, seed: int = 10) -> dict:
    """The e2e job; a new prompt text every run (each run encodes its prompt, as a new job would)."""
    prompt = f"{PROMPTS[sum(map(ord, run)) % len(PROMPTS)]} ({run})"
    return {
        "name": f"e2e-{run}",
        "prompt": prompt,
        "seed": seed,
        "height": H,
        "width": W,
        "num_frames": F,
        "frame_rate": 24,
        "recipe": "two_stage",
        "steps": steps,
        **({"placement": placement} if placement else {}),  # read by resolve_placement; the pool shape decides
        **TILING,
    }


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def stage_table(sidecar: dict, submitted: float, returned: float) -> dict:
    """Wall time by stage from the coordinator's trace (seconds from submit; a stage spans its tasks)."""
    trace = sidecar["trace"]
    table: dict[str, Any] = {}
    for stage, kinds in STAGES:
        tasks = [t for t in trace if t["kind"] in kinds]
        if not tasks:
            continue
        first, last = min(t["start"] for t in tasks), max(t["end"] for t in tasks)
        table[stage] = {
            "wall_s": round(last - first, 2),
            "from_s": round(first - submitted, 2),
            "to_s": round(last - submitted, 2),
            "task_s": round(sum(t["seconds"] for t in tasks), 2),
            "tasks": len(tasks),
            "workers": len({t["worker"] for t in tasks}),
        }
    steps = sorted({t["task"].split(":")[1] for t in trace if t["kind"] == "stage2"}, key=int)
    if steps:
        per_step = []
        for step in steps:
            tiles = [t for t in trace if t["kind"] == "stage2" and t["task"].split(":")[1] == step]
            per_step.append(
                {
                    "wall_s": round(max(t["end"] for t in tiles) - min(t["start"] for t in tiles), 2),
                    "tile_s": [round(t["seconds"], 2) for t in sorted(tiles, key=lambda t: t["task"])],
                    "workers": len({t["worker"] for t in tiles}),
                }
            )
        table["stage_2"]["steps"] = per_step
    decode_end = table.get("decode", {}).get("to_s")
    table["mux"] = {
        "close_s": round(sidecar["timings_s"].get("mux_close", 0.0), 2),
        "last_decode_to_done_s": round(returned - submitted - decode_end, 2) if decode_end is not None else None,
    }
    table["after_stage_2_start_s"] = (
        round(returned - submitted - table["stage_2"]["from_s"], 2) if "stage_2" in table else None
    )
    table["no_task_running_s"] = round(  # the coordinator's own time: stitch, blends, decode set-up, mux
        returned - submitted - union_seconds([(t["start"], t["end"]) for t in trace]), 2
    )
    return table


def e2e_run(run: str, pool: Any, spec: dict, record: dict) -> dict:
    from cluster.coordinator import Coordinator
    from jobs.plan import plan_job
    from jobs.spec import validate_job

    plan = plan_job(validate_job(spec))
    out_dir = RUNS / "e2e" / run
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    decode_tiles = plan.decode.spatial_tiles * plan.decode.temporal_tiles
    log(
        f"e2e {run}: {spec['height']}x{spec['width']}x{spec['num_frames']}, {spec['steps']} stage-1 steps,",
        f"{len(plan.tiles)} stage-2 tile(s), {decode_tiles} decode tiles, {len(pool.workers)} worker(s)",
    )
    before = step_seconds(pool)
    submitted = time.time()
    [sidecar] = Coordinator(pool).run([plan], out_dir)
    returned = time.time()
    video = out_dir / sidecar["output"]["video"]
    peaks = [t["peak_vram_bytes"] for t in sidecar["trace"] if t.get("peak_vram_bytes")]
    result = {
        "pool": {
            "placement": pool.placement.mode,
            "gpus_per_worker": pool.placement.gpus,
            "workers": len(pool.workers),
        },
        "job": {k: spec[k] for k in ("height", "width", "num_frames", "recipe", "steps", *TILING)},
        "wall_s": round(returned - submitted, 2),
        "sidecar_total_s": round(sidecar["timings_s"]["total"], 2),
        "stages": stage_table(sidecar, submitted, returned),
        "step_seconds": steps_between(before, step_seconds(pool)),
        "task_seconds_by_kind": {k: round(v, 2) for k, v in sidecar["timings_s"].items()},
        "tasks_by_worker": {
            w: sum(1 for t in sidecar["trace"] if t["worker"] == w)
            for w in sorted({t["worker"] for t in sidecar["trace"]})
        },
        "parallelism": sorted({str(t.get("parallelism")) for t in sidecar["trace"]}),
        "peak_vram_gib": round(max(peaks) / GIB, 2) if peaks else None,
        "plan": {k: sidecar["plan"][k] for k in ("latents", "decode", "tasks")} | {"stage2_tiles": len(plan.tiles)},
        "media": sidecar["media"],
        "output_bytes": video.stat().st_size,
    }
    (OUT / f"farm_scaling_sidecar_{run}.json").write_text(json.dumps(sidecar, indent=1, default=str) + "\n")
    video.unlink()
    with REPORT_LOCK:
        record[run] = result
    s = result["stages"]
    log(
        f"e2e {run}: wall {result['wall_s']} s |",
        " ".join(f"{k} {v['wall_s']}" for k, v in s.items() if isinstance(v, dict) and "wall_s" in v),
        f"| mux close {s['mux']['close_s']}",
    )
    flush()
    return result


def ratios(a: dict, b: dict) -> dict:
    """a / b of the wall times both runs have (stage by stage): > 1 means b is faster."""
    out = {"wall": round(a["wall_s"] / b["wall_s"], 3)}
    for stage, row in a["stages"].items():
        other = b["stages"].get(stage)
        if isinstance(row, dict) and "wall_s" in row and other and other.get("wall_s"):
            out[stage] = round(row["wall_s"] / other["wall_s"], 3)
    if a["stages"].get("after_stage_2_start_s") and b["stages"].get("after_stage_2_start_s"):
        out["stage_2_to_done"] = round(a["stages"]["after_stage_2_start_s"] / b["stages"]["after_stage_2_start_s"], 3)
    return out


def phase_e2e(checkpoints: CheckpointSet, gpus: int) -> None:
    from cluster.service import resolve_placement
    from jobs.placement import REPLICA
    from jobs.spec import validate_job
    from ltx2.checkpoint import validate_checkpoint_set

    phase = REPORT.setdefault("e2e", {"runs": {}, "warmups": {}, "pools": {}})
    runs = phase["runs"]
    want = set(E2E_RUNS)
    # The gang's mode as `ltx2-farm render` resolves it, asked while every GPU is free (auto: at most GPUS).
    asked = {"mode": GANG, "gpus": gpus}
    gang = REPLICA
    if "gang" in want and gpus > 1:
        transformer = validate_checkpoint_set(checkpoints)["transformer"]
        gang = resolve_placement(validate_job(e2e_spec("gang", STEPS, asked)), transformer, "cpu" if SMOKE else None)
        phase["gang_placement"] = {"asked": asked, "chosen": {"mode": gang.mode, "gpus": gang.gpus}}
        log("gang placement", json.dumps(phase["gang_placement"]))
    if want & {"one_replica", "replicas_tiles"}:
        phase["pools"]["replicas"] = record = {}
        hashing = prehash(checkpoints, record)
        pool = start_pool(checkpoints, gpus, REPLICA, record)
        try:
            t = time.perf_counter()
            hashing.join()
            import ray

            ray.get([w.worker.model_hashes.remote() for w in pool.workers])  # each worker's digests: done
            record["digests_wait_s"] = round(time.perf_counter() - t, 1)
            flush()
            if WARMUP_STEPS:
                warm_each(pool, phase["warmups"])
            if "one_replica" in want:
                e2e_run("one_replica", some_workers(pool, [0]), e2e_spec("one_replica", STEPS), runs)
            if "replicas_tiles" in want and gpus > 1:
                e2e_run("replicas_tiles", pool, e2e_spec("replicas_tiles", TILE_STEPS), runs)
        finally:
            stop_pool(pool)
    if "gang" in want:
        if gang.is_gang:
            phase["pools"]["gang"] = record = {}
            hashing = prehash(checkpoints, record)  # a no-op when the replicas' run left the memo complete
            pool = start_pool(checkpoints, 1, gang, record)
            try:
                hashing.join()
                if WARMUP_STEPS:
                    e2e_run("gang_warmup", pool, e2e_spec("gang_warmup", WARMUP_STEPS, asked), phase["warmups"])
                e2e_run("gang", pool, e2e_spec("gang", STEPS, asked), runs)
            finally:
                stop_pool(pool)
        else:
            phase["gang_skipped"] = f"placement resolved to {gang.mode}: no gang on {gpus} GPU(s)"
    comparison = phase.setdefault("comparison", {})
    if "one_replica" in runs and "gang" in runs:
        comparison["one_replica_over_gang"] = ratios(runs["one_replica"], runs["gang"])
    if "one_replica" in runs and "replicas_tiles" in runs:
        comparison["one_replica_over_replicas_tiles"] = ratios(runs["one_replica"], runs["replicas_tiles"])
    log("e2e comparison", json.dumps(comparison))
    flush()


# --- phase throughput ----------------------------------------------------------------------------------------


def throughput_manifest(tag: str, steps: int, jobs: int) -> dict:
    return {
        "campaign": f"scaling-{tag}",
        "defaults": {
            "height": TH,
            "width": TW,
            "num_frames": TF,
            "frame_rate": 24,
            "recipe": T_RECIPE,
            "steps": steps,
        },
        "rows": [
            {"id": f"{tag}-{i}", "prompt": f"{PROMPTS[i % len(PROMPTS)]} (take {tag}-{i})", "seed": 100 + i}
            for i in range(jobs)
        ],
    }


def campaign_run(tag: str, pool: Any, jobs: int, record: dict) -> dict:
    """One campaign of `jobs` jobs through the store and `CampaignRunner` (what `campaign run` does)."""
    from cluster.campaign_manifest import parse_manifest
    from cluster.campaign_runner import CampaignRunner
    from cluster.campaign_store import Store

    folder = RUNS / "throughput" / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = parse_manifest(throughput_manifest(tag, T_STEPS, jobs), folder)
    store = Store(folder / "farm.db")
    try:
        store.submit(manifest.spec, manifest.jobs)
        log(f"throughput {tag}: {jobs} jobs {TH}x{TW}x{TF} {T_RECIPE} on {len(pool.workers)} replica(s)")
        before = step_seconds(pool)
        t = time.perf_counter()
        stats = CampaignRunner(store, pool, folder / "renders").run(until_idle=True)
        wall = time.perf_counter() - t
        steps = steps_between(before, step_seconds(pool))
    finally:
        store.close()
    sidecars = [json.loads(p.read_text()) for p in sorted((folder / "renders" / manifest.spec.campaign).glob("*.json"))]
    for p in (folder / "renders" / manifest.spec.campaign).glob("*.mp4"):
        p.unlink()
    stages = sorted({k for s in sidecars for k in s["timings_s"]})
    job_totals = [s["timings_s"]["total"] for s in sidecars]
    result = {
        "workers": len(pool.workers),
        "jobs": jobs,
        "job": {"height": TH, "width": TW, "num_frames": TF, "recipe": T_RECIPE, "steps": T_STEPS},
        "stats": stats,
        "wall_s": round(wall, 2),
        "jobs_per_hour": round(len(sidecars) / wall * 3600, 1),
        "jobs_by_worker": {
            n: sum(1 for s in sidecars if s["worker"]["name"] == n)
            for n in sorted({s["worker"]["name"] for s in sidecars})
        },
        "job_total_s": [round(x, 2) for x in job_totals],
        "median_stage_s": {
            k: round(statistics.median(s["timings_s"].get(k, 0.0) for s in sidecars), 3) for k in stages
        },
        "busy_fraction": round(sum(job_totals) / (wall * len(pool.workers)), 3),
        "step_seconds": steps,
    }
    record[tag] = result
    log(f"throughput {tag}: {result['wall_s']} s, {result['jobs_per_hour']} jobs/h, busy {result['busy_fraction']}")
    flush()
    return result


def phase_throughput(checkpoints: CheckpointSet, gpus: int) -> None:
    from jobs.placement import REPLICA
    from jobs.spec import validate_job

    jobs = int(os.environ.get("JOBS", JOBS_PER_GPU * gpus))
    phase = REPORT.setdefault("throughput", {"runs": {}, "pools": {}, "jobs": jobs})
    phase["pools"]["replicas"] = record = {}
    hashing = prehash(checkpoints, record)
    pool = start_pool(checkpoints, gpus, REPLICA, record)
    try:
        hashing.join()
        if WARMUP_STEPS:  # one whole job per worker (waits for its digests and its LoRA originals copy)
            manifest = throughput_manifest("warmup", WARMUP_STEPS, gpus)
            warmup = [
                validate_job({**manifest["defaults"], "name": row["id"], "prompt": row["prompt"], "seed": row["seed"]})
                for row in manifest["rows"]
            ]
            t = time.perf_counter()
            pool.render_all(warmup, str(RUNS / "throughput" / "warmup"))
            record["warmup_s"] = round(time.perf_counter() - t, 1)
            log(f"throughput warm-up: one job per worker, {record['warmup_s']} s")
        one = campaign_run("one_replica", some_workers(pool, [0]), jobs, phase["runs"])
        if gpus > 1:
            many = campaign_run("replicas", pool, jobs, phase["runs"])
            ratio = many["jobs_per_hour"] / one["jobs_per_hour"]
            phase["scaling"] = {
                "gpus": gpus,
                "ratio": round(ratio, 3),
                "efficiency": round(ratio / gpus, 3),
                "goal": 0.95,
                "met": ratio / gpus >= 0.95,
            }
            log("throughput scaling", json.dumps(phase["scaling"]))
    finally:
        stop_pool(pool)
    flush()


# --- main ----------------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:  # no git on the machine
        return None
    return out.stdout.strip() or None


def main() -> None:
    import ltx_pipelines  # noqa: F401  (before the boto3 stub, as in start_and_overhead)

    REPORT["info"] = info = {
        "smoke": SMOKE,
        "phases": PHASES,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "boto3": boto3_stub.stub_boto3_if_missing(),
        "date": os.environ.get("DATE"),
        "machine_clock": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": os.environ.get("COMMIT") or git_commit(),
        "cpus": os.cpu_count(),
        "e2e": {"size": [H, W, F], "steps": STEPS, "tile_steps": TILE_STEPS, "warmup_steps": WARMUP_STEPS, "gang": GANG}
        | TILING,
        "compile": os.environ.get("COMPILE", "auto"),
        "throughput": {"size": [TH, TW, TF], "recipe": T_RECIPE, "steps": T_STEPS},
    }
    checkpoints = checkpoint_set()
    log("checkpoints", json.dumps(REPORT["checkpoints"]))
    flush()
    import ray

    start_ray()
    info["ray"] = ray.__version__
    visible = int(ray.cluster_resources().get("GPU", 0))
    gpus = int(os.environ.get("GPUS", "2" if SMOKE else str(visible)))
    info.update(gpus_visible=visible, gpus=gpus, host=soh.host_memory())
    if not SMOKE and gpus > visible:
        raise SystemExit(f"GPUS={gpus}, but Ray sees {visible} GPU(s)")
    log("info", json.dumps(info))
    flush()
    try:
        for phase in PHASES:
            {"e2e": phase_e2e, "throughput": phase_throughput}[phase](checkpoints, gpus)
    finally:
        REPORT["total_s"] = round(time.perf_counter() - T_START, 1)
        flush()
        ray.shutdown()
    log("done")


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:
        REPORT["error"] = repr(e)
        log("ERROR", repr(e))
        flush()
        raise
