"""Prometheus metrics of the farm (prometheus-client), served from one endpoint.

Workers come and go, so the farm does not ask Prometheus to discover them: each worker keeps its own
registry, and the coordinator's single endpoint collects every live worker's samples through Ray at
scrape time, adding bounded `node` and `gpu` labels. One scrape target, no service-discovery file, and a
dead worker simply drops out. Names follow Prometheus conventions: `ltx2farm_` prefix, base units,
no job ids in labels.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

STAGES = ("text_encode", "stage_1", "upsample", "stage_2", "decode", "audio", "mux", "upload")
KIND_TO_STAGE = {
    "encode": "text_encode",
    "stage1": "stage_1",
    "upsample": "upsample",
    "stage2_init": "stage_2",
    "stage2": "stage_2",
    "decode": "decode",
    "audio": "audio",
    "audio_encode": "audio_encode",
    "render": "stage_1",
}
OUTCOMES = ("ok", "oom", "error", "retried", "preempted")
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class UploadMetrics:
    """Uploads, counted by the node that makes them (a worker uploads its own outputs, the head those it holds)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Counter("ltx2farm_upload_bytes", "Bytes uploaded", registry=registry)
        self.failures = Counter("ltx2farm_upload_failures", "Uploads that failed", registry=registry)
        self.seconds = Histogram(
            "ltx2farm_upload_seconds", "Upload of one output (all its files)", buckets=TASK_BUCKETS, registry=registry
        )

    def count(self, size: int, seconds: float, ok: bool) -> None:
        if ok:
            self.bytes.inc(size)
            self.seconds.observe(seconds)
        else:
            self.failures.inc()


class WorkerMetrics:
    """What one render worker measures; read by the coordinator's endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.uploads = UploadMetrics(r)
        self.count_upload = self.uploads.count
        self.step_seconds = Histogram(
            "ltx2farm_step_seconds", "Denoising step latency", ["stage"], buckets=STEP_BUCKETS, registry=r
        )
        self.task_seconds = Histogram(
            "ltx2farm_task_seconds", "Task duration by stage", ["stage"], buckets=TASK_BUCKETS, registry=r
        )
        self.outcomes = Counter("ltx2farm_task_outcomes", "Task outcomes", ["stage", "outcome"], registry=r)
        self.model_load_seconds = Gauge("ltx2farm_model_load_seconds", "Checkpoint to ready", registry=r)
        self.lora_set_changes = Counter(
            "ltx2farm_lora_set_changes",
            "Times this worker's model switched to another job LoRA set (a LoRA pool built or rebuilt)",
            registry=r,
        )
        self._lora_set_changes_seen = 0
        self.oom_fallbacks = Counter(
            "ltx2farm_oom_fallbacks", "Jobs this worker ran on a rung of the OOM ladder", ["rung"], registry=r
        )
        self.gpu_seconds = Counter("ltx2farm_gpu_seconds", "Seconds of GPU (or CPU worker) time used", registry=r)
        self.vram = {
            name: Gauge(f"ltx2farm_vram_{name}_bytes", f"GPU memory {name}", registry=r)
            for name in ("allocated", "reserved", "peak", "total")
        }

    def count_lora_set_changes(self, total: int) -> None:
        """Bring the counter up to the resident model's running total of LoRA set switches."""
        if total > self._lora_set_changes_seen:
            self.lora_set_changes.inc(total - self._lora_set_changes_seen)
            self._lora_set_changes_seen = total

    def sample_vram(self, device: object) -> None:
        import torch

        if getattr(device, "type", "cpu") != "cuda":
            return
        self.vram["allocated"].set(torch.cuda.memory_allocated(device))
        self.vram["reserved"].set(torch.cuda.memory_reserved(device))
        self.vram["peak"].set(torch.cuda.max_memory_allocated(device))
        self.vram["total"].set(torch.cuda.get_device_properties(device).total_memory)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class FarmMetrics:
    """What the coordinator measures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge("ltx2farm_queue_depth", "Tasks waiting for a worker", ["priority"], registry=registry)
        self.jobs = Gauge("ltx2farm_jobs", "Jobs by state", ["state"], registry=registry)
        self.job_seconds = Histogram(
            "ltx2farm_job_seconds", "End-to-end job latency", buckets=JOB_BUCKETS, registry=registry
        )
        self.video_seconds = Counter("ltx2farm_video_seconds", "Seconds of video generated", registry=registry)
        self.workers = Gauge("ltx2farm_workers", "Live render workers", registry=registry)


class WorkerCollector(Collector):
    """Collects every live worker's metrics at scrape time and labels them with node and gpu."""

    def __init__(self, fetch: Callable[[], list[tuple[dict[str, str], str]]]) -> None:
        self._fetch = fetch

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for labels, text in self._fetch():
            for family in text_string_to_metric_families(text):
                metric = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    metric.add_sample(sample.name, {**sample.labels, **labels}, sample.value)
        yield from merged.values()


def pool_fetcher(pool: object, timeout_s: float = 5.0) -> Callable[[], list[tuple[dict[str, str], str]]]:
    """Reads `metrics_text()` of every worker of a `WorkerPool`; unreachable workers are skipped."""
    import ray

    def fetch() -> list[tuple[dict[str, str], str]]:
        out = []
        for handle in list(getattr(pool, "workers", [])):
            try:
                labels, text = ray.get(handle.actor.metrics_text.remote(), timeout=timeout_s)
            except Exception:  # a dead or busy-beyond-timeout worker drops out of this scrape
                continue
            out.append((labels, text))
        return out

    return fetch


class MetricsServer:
    """The farm's one HTTP endpoint (127.0.0.1 unless told otherwise)."""

    def __init__(self, pool: object | None, port: int = 0, addr: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        self.farm = FarmMetrics(self.registry)
        self.head_registry = CollectorRegistry()
        self.uploads = UploadMetrics(self.head_registry)
        """The head's own uploads (outputs it holds), labelled like a worker's so both add up in one series."""
        head = ({"node": socket.gethostname(), "gpu": "head"}, self.head_registry)
        fetch = pool_fetcher(pool) if pool is not None else list
        self.registry.register(WorkerCollector(lambda: [(head[0], generate_latest(head[1]).decode()), *fetch()]))
        if pool is not None:
            self.farm.workers.set_function(lambda: len(getattr(pool, "workers", [])))
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        self.url = f"http://{addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def worker_labels(device: object, name: str) -> dict[str, str]:
    """Bounded identity labels of a worker: its node and its GPU (or the worker slot on CPU)."""
    index = getattr(device, "index", None)
    gpu = str(index if index is not None else 0) if getattr(device, "type", "cpu") == "cuda" else name
    return {"node": socket.gethostname(), "gpu": gpu}
