"""GPU smoke run of the foundation: tiny checkpoint set → resident models on CUDA → both recipes → MP4.

Then, on a second worker with eager blocks, the OOM ladder's CPU-offload rung (blocks streamed from pinned
host memory, `ltx2/offload.py`): its render must equal the same worker's plain render bit for bit; and the
FP8-weights rung must render (its numbers differ by the weights' rounding); with FP8_ATTENTION=1 a worker
with FP8 cuDNN attention must render too; a compiled worker with FP8 matmuls (--fp8) must render the same
two-stage job twice alike.

Run on the lent GPU machine with `PYTHONPATH=.` (no Ray there: the worker class runs in-process).
Prints one JSON line per render and writes the MP4s and sidecars under $OUT (or ./renders-gpu).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ltx_pipelines  # noqa: F401  (before the boto3 stub, as start_and_overhead.py says)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boto3_stub import stub_boto3_if_missing

stub_boto3_if_missing()  # the GPU image has no boto3; these renders write local files only

from cluster.worker import RenderWorker, render_in_process  # noqa: E402
from cluster.worker_options import WorkerOptions  # noqa: E402
from jobs.spec import validate_job  # noqa: E402
from ltx2.tiny import ensure_tiny_checkpoint_set  # noqa: E402

JOB = {
    "prompt": "a red fox in the snow, a raven calls",
    "seed": 10,
    "height": 256,
    "width": 384,
    "duration": 2.0,
    "steps": 8,
}


def main() -> None:
    out = Path(os.environ.get("OUT", "renders-gpu"))
    started = time.perf_counter()
    paths = ensure_tiny_checkpoint_set(out / "cache")
    generated = time.perf_counter() - started
    worker = RenderWorker(paths, WorkerOptions(device="cuda" if torch.cuda.is_available() else "cpu"))
    print(
        json.dumps(
            {
                "device": worker.info().device,
                "gpu": worker.info().gpu,
                "generate_s": generated,
                "load_s": worker.models.load_seconds,
            }
        )
    )
    results = []
    # two-stage twice in a row: the second starts on weights restored in the background after the first's
    # stage 2 (ltx2/lora.py restore_in_background), then a distilled job, then two-stage again
    for recipe in ("two_stage", "two_stage", "distilled", "two_stage"):
        job = validate_job({**JOB, "recipe": recipe})
        sidecar = render_in_process(worker, job, out / "renders").document
        results.append(sidecar)
        print(
            json.dumps(
                {
                    "recipe": recipe,
                    "timings_s": sidecar["timings_s"],
                    "media": sidecar["media"],
                    "content": sidecar["content_sha256"],
                    "loads": sidecar["worker"]["loads"],
                }
            )
        )
    assert results[0]["content_sha256"] == results[1]["content_sha256"] == results[3]["content_sha256"], (
        "the same job must render the same, whatever ran before it"
    )
    mp4s = [r["output"]["sha256"] for r in results]
    print(json.dumps({"same_mp4_bytes": mp4s[0] == mp4s[1] == mp4s[3]}))
    assert mp4s[0] == mp4s[1] == mp4s[3], "the same frames must give the same MP4 bytes"
    labels, text = worker.metrics_text()  # what the head's endpoint relabels and serves for this worker
    vram = [line for line in text.splitlines() if line.startswith("ltx2farm_vram_")]
    print(json.dumps({"metrics_labels": labels, "vram_series": vram}))
    if worker.device.startswith("cuda"):
        assert labels.get("gpu") == "0", labels
        allocated = [float(v.split()[-1]) for v in vram if v.startswith("ltx2farm_vram_allocated_bytes")]
        assert allocated and allocated[0] > 0, vram
    print(json.dumps({"compile": worker.info().compile, "fa4_attention": worker.info().fa4_attention}))

    # two jobs in flight on one worker (as the campaign runner keeps it): the second's model work runs
    # while the first muxes; the outputs must equal the sequential ones
    from concurrent.futures import ThreadPoolExecutor

    jobs = [validate_job({**JOB, "recipe": "two_stage", "seed": seed}) for seed in (10, 11)]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda j: render_in_process(worker, j, out / "in_flight").document, jobs))
    overlap = both[1]["timeline_unix"]["model_start"] - both[0]["timeline_unix"]["mux_end"]
    same = both[0]["content_sha256"] == results[0]["content_sha256"]
    print(json.dumps({"in_flight_equal": same, "overlap_s": overlap}))
    assert both[0]["content_sha256"] == results[0]["content_sha256"]

    eager = RenderWorker(paths, WorkerOptions(device=worker.device, compile=False), name="eager")
    job = validate_job({**JOB, "recipe": "two_stage"})  # the first render's job, on eager blocks
    # rungs are cumulative: the offload and FP8 rungs also decode in the smallest tiles, so the render they
    # are compared with is the smallest-tiles rung's (same decode tiles, model resident and exact)
    plain = render_in_process(eager, job.with_fallback("smallest_tiles"), out / "eager").document
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    streamed = render_in_process(eager, job.with_fallback("offload_transformer"), out / "streamed").document
    print(
        json.dumps(
            {
                "streamed_equals_plain": streamed["content_sha256"] == plain["content_sha256"],
                "compiled_equals_eager_audio": plain["content_sha256"]["audio_waveform"]
                == results[0]["content_sha256"]["audio_waveform"],
                "block_loads": eager.streaming.loads,
                "streamed_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                "timings_s": {"plain": plain["timings_s"], "streamed": streamed["timings_s"]},
            }
        )
    )
    assert streamed["content_sha256"] == plain["content_sha256"], "streamed blocks must not change the numbers"
    assert eager.streaming.loads > 0
    # the rung above: FP8 weights
    fp8 = render_in_process(eager, job.with_fallback("fp8_weights"), out / "fp8").document
    print(
        json.dumps(
            {
                "fp8_rung_rendered": fp8["media"]["frames"],
                "fp8_equals_plain": fp8["content_sha256"] == plain["content_sha256"],
                "fp8_device_bytes": eager.fp8_weights.device_bytes(),
                "streaming_after_fp8": eager.streaming.active,
            }
        )
    )
    assert eager.fp8_weights.active and not eager.streaming.active

    if os.environ.get("FP8_ATTENTION") == "1":  # needs nvidia-cudnn-frontend importable (pip install '.[fp8]')
        fast = RenderWorker(paths, WorkerOptions(device=worker.device, fp8_attention=True), name="fp8-attention")
        rendered = render_in_process(fast, job, out / "fp8_attention").document
        print(
            json.dumps(
                {
                    "fp8_attention_frames": rendered["media"]["frames"],
                    "fp8_attention_equals_compiled": rendered["content_sha256"] == results[0]["content_sha256"],
                    "timings_s": rendered["timings_s"],
                    "worker": {k: rendered["worker"][k] for k in ("compile", "fp8_attention")},
                }
            )
        )
        assert rendered["media"]["frames"] == results[0]["media"]["frames"]

    # FP8 matmuls (--fp8, ltx2/fp8_linear.py) in a compiled worker: a two-stage job fuses the distilled LoRA
    # into the FP8 weights for stage 2 and restores them after, so the same job twice renders the same
    fp8_attention = os.environ.get("FP8_ATTENTION") == "1"
    quick = RenderWorker(paths, WorkerOptions(device=worker.device, fp8=True, fp8_attention=fp8_attention), name="fp8")
    twice = [render_in_process(quick, job, out / f"fp8_matmuls_{i}").document for i in range(2)]
    print(
        json.dumps(
            {
                "fp8_matmuls_frames": twice[0]["media"]["frames"],
                "fp8_matmuls_repeat_equal": twice[0]["content_sha256"] == twice[1]["content_sha256"],
                "fp8_matmuls_equal_compiled": twice[0]["content_sha256"] == results[0]["content_sha256"],
                "timings_s": twice[1]["timings_s"],
                "worker": {k: twice[0]["worker"][k] for k in ("compile", "fp8", "fp8_attention")},
            }
        )
    )
    assert twice[0]["content_sha256"] == twice[1]["content_sha256"], "FP8 LoRA fusion must restore exactly"
    print("OK")


if __name__ == "__main__":
    main()
