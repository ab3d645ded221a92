"""Prometheus metrics of the farm (prometheus-client), served from one endpoint.

Workers come and go, so the farm does not ask Prometheus to discover them: each worker keeps its own
registry, and the coordinator's single endpoint collects every live worker's samples through Ray at
scrape time, adding bounded `node`, `worker` and `gpu` labels. One scrape target, no service-discovery
file, and a dead worker simply drops out. Names follow Prometheus conventions: `ltx2farm_` prefix, base
units, no job ids in labels; per-campaign series carry a `campaign` label whose values are bounded
(`FarmMetrics.campaign_label`).
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from jobs.schedule import CampaignState, blocked_reason

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

DEFAULT_ADDR = "127.0.0.1"
NODE_NAME_ENV = "LTX2_FARM_NODE_NAME"
"""Set by the deploy from the downward API (`spec.nodeName`): pods come and go, their Kubernetes node stays."""

MAX_CAMPAIGN_LABELS = 20
"""Campaign names are chosen by operators and a `--forever` runner meets new ones every night: at most this
many `campaign` label values at once; beyond them, series go to `campaign="other"`."""
CAMPAIGN_LABEL_IDLE_S = 3600.0
"""A campaign's label is given up (its series removed) once it has had no unfinished job for this long: many
scrapes have recorded its final values by then, and its slot goes to a newer campaign."""
OTHER_CAMPAIGNS = "other"
BUSY_STATES = ("queued", "running", "paused")


def node_name() -> str:
    """The `node` label: the Kubernetes node where the deploy says so (pod names change, nodes stay), else
    the host name."""
    return os.environ.get(NODE_NAME_ENV) or socket.gethostname()


def worker_slot(name: str) -> str:
    """The `worker` label: a replacement worker (`worker-0~3`) keeps its slot's name, so the label has one
    value per slot however often workers are replaced."""
    return name.split("~", 1)[0]


def build_versions() -> dict[str, str]:
    """Versions for `ltx2farm_build_info`, as installed (`unknown` where a distribution is missing)."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": version("ltx2-farm"),
        "ltx_core": version("ltx-core"),
        "torch": version("torch"),
        "ray": version("ray"),
    }


def check_address(addr: str, port: int) -> str | None:
    """Why ADDR:PORT is no address to listen on at all (a port out of range, a name that does not resolve), or
    None. Whether this machine can listen there only starting the endpoint tells (`listen_problem`)."""
    if not 0 <= port <= 65535:
        return f"--metrics-port {port}: give a port from 0 to 65535"
    try:
        socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        return f"--metrics-addr {addr!r}: not an IP address or a resolvable host name ({e})"
    return None


def listen_problem(addr: str, port: int, error: OSError) -> str:
    """The one line for an endpoint that could not listen on ADDR:PORT: the port, the reason and the fix."""
    fix = {
        errno.EADDRINUSE: "another process listens there; choose another port (0: any free port)",
        errno.EADDRNOTAVAIL: "not an address of this machine; give one of its own (default 127.0.0.1)",
        errno.EACCES: "ports below 1024 need root; choose a port above 1023",
    }.get(error.errno, "choose another address or port")
    return f"--metrics-addr {addr} --metrics-port {port}: cannot listen there ({error.strerror or error}): {fix}"


def _url_host(addr: str) -> str:
    try:
        return f"[{addr}]" if ipaddress.ip_address(addr).version == 6 else addr
    except ValueError:
        return addr


class UploadMetrics:
    """Uploads, counted by the node that makes them (a worker uploads its own outputs, the head those it holds)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Counter(
            "ltx2farm_upload_bytes", "Bytes of outputs uploaded (uploads that succeeded)", registry=registry
        )
        self.failures = Counter(
            "ltx2farm_upload_failures",
            "Uploads of an output that ended in an error (the uploader's retries spent, or refused at once)",
            registry=registry,
        )
        self.seconds = Histogram(
            "ltx2farm_upload_seconds",
            "Seconds to upload one output (all its files), uploads that succeeded",
            buckets=TASK_BUCKETS,
            registry=registry,
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
            "ltx2farm_step_seconds",
            "Seconds of one denoising step, by stage",
            ["stage"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.task_seconds = Histogram(
            "ltx2farm_task_seconds",
            "Seconds of one task on this worker, by stage (whatever its outcome)",
            ["stage"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "ltx2farm_task_outcomes", "Tasks this worker ended, by stage and outcome", ["stage", "outcome"], registry=r
        )
        self.model_load_seconds = Gauge(
            "ltx2farm_model_load_seconds",
            "Seconds this worker took from its checkpoint files to a ready model",
            registry=r,
        )
        self.lora_set_changes = Counter(
            "ltx2farm_lora_set_changes",
            "Times this worker's model switched to another job LoRA set (a LoRA pool built or rebuilt)",
            registry=r,
        )
        self._lora_set_changes_seen = 0
        self.oom_fallbacks = Counter(
            "ltx2farm_oom_fallbacks", "Jobs this worker ran on a rung of the OOM ladder", ["rung"], registry=r
        )
        self.gpu_seconds = Counter(
            "ltx2farm_gpu_seconds",
            "Seconds this worker spent in tasks on its device (the GPU, or a CPU worker's CPU); not the mux, host work",
            registry=r,
        )
        self.vram: dict[str, Gauge] = {}
        """Made by the first sample on a GPU: a CPU worker has no GPU memory to report, and zeros would read
        as an empty GPU."""
        self._vram_lock = threading.Lock()  # two scrapes at once must not register the gauges twice

    def count_lora_set_changes(self, total: int) -> None:
        """Bring the counter up to the resident model's running total of LoRA set switches."""
        if total > self._lora_set_changes_seen:
            self.lora_set_changes.inc(total - self._lora_set_changes_seen)
            self._lora_set_changes_seen = total

    def sample_vram(self, device: object) -> None:
        import torch

        if getattr(device, "type", "cpu") != "cuda":
            return
        with self._vram_lock:
            if not self.vram:
                self.vram = {
                    name: Gauge(f"ltx2farm_vram_{name}_bytes", text, registry=self.registry)
                    for name, text in (
                        ("allocated", "GPU memory held by tensors now, bytes (torch.cuda.memory_allocated)"),
                        ("reserved", "GPU memory held by PyTorch's caching allocator now, bytes"),
                        (
                            "peak",
                            "Peak GPU memory held by tensors, bytes (reset as each coordinated task starts)",
                        ),
                        ("total", "GPU memory of the device, bytes"),
                    )
                }
        self.vram["allocated"].set(torch.cuda.memory_allocated(device))
        self.vram["reserved"].set(torch.cuda.memory_reserved(device))
        self.vram["peak"].set(torch.cuda.max_memory_allocated(device))
        self.vram["total"].set(torch.cuda.get_device_properties(device).total_memory)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class FarmMetrics:
    """What the coordinator measures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "ltx2farm_queue_depth",
            "Work waiting for a worker: queued jobs (campaign run) or ready tasks of running jobs (render)",
            ["priority"],
            registry=registry,
        )
        self.jobs = Gauge(
            "ltx2farm_jobs",
            "Jobs by campaign and state (render: no campaign)",
            ["campaign", "state"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "ltx2farm_job_seconds",
            "End-to-end job latency, seconds: from the farm taking the job (claimed from its campaign's queue, or "
            "handed to render) to its output published",
            ["campaign"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.video_seconds = Counter(
            "ltx2farm_video_seconds", "Seconds of video in published outputs", ["campaign"], registry=registry
        )
        self.queue_held = Gauge(
            "ltx2farm_queue_held",
            "Queued jobs that may not start now: their campaign waits for its window or not_before, is paused or "
            "suspended, or has spent its budget or reached its failure cap",
            registry=registry,
        )
        self.kept_task_bytes = Gauge(
            "ltx2farm_kept_task_bytes",
            "Bytes of task results kept on the head's disk for unfinished jobs (what a restarted job resumes from)",
            registry=registry,
        )
        self.tasks_resumed = Counter(
            "ltx2farm_tasks_resumed",
            "Tasks not run again because their kept results were read back (a job resumed after its coordinator died)",
            registry=registry,
        )
        self.workers = Gauge(
            "ltx2farm_workers",
            "Render workers (or gangs) ready for work: the pool's slots less those whose replacement is starting",
            registry=registry,
        )
        self.workers_desired = Gauge(
            "ltx2farm_workers_desired",
            "Render workers (or gangs) the pool keeps (its slots, those being replaced included); 0 until it started",
            registry=registry,
        )
        self.build_info = Gauge(
            "ltx2farm_build_info",
            "Versions of the farm and of what renders with it; always 1",
            list(build_versions()),
            registry=registry,
        )
        self.build_info.labels(**build_versions()).set(1)
        self._lock = threading.Lock()
        self._campaigns: dict[str, float] = {}  # label value -> when it was last used (monotonic)
        self._jobs_set: set[tuple[str, str]] = set()

    def campaign_label(self, name: str, touch: bool = True) -> str:
        """The `campaign` label value for a campaign: its name while it holds one of `MAX_CAMPAIGN_LABELS`
        slots, else `other`. A slot idle for `CAMPAIGN_LABEL_IDLE_S` goes to the next campaign, its series
        removed. `render` jobs have no campaign: the empty value, which Prometheus stores as no label."""
        if not name:
            return ""
        with self._lock:
            now = time.monotonic()
            if name not in self._campaigns and len(self._campaigns) >= MAX_CAMPAIGN_LABELS:
                stale, used = min(self._campaigns.items(), key=lambda item: item[1])
                if now - used < CAMPAIGN_LABEL_IDLE_S:
                    return OTHER_CAMPAIGNS
                self._forget(stale)
            if touch or name not in self._campaigns:
                self._campaigns[name] = now
            return name

    def _forget(self, label: str) -> None:
        del self._campaigns[label]
        for metric in (self.job_seconds, self.video_seconds):
            metric.remove(label)
        for key in [k for k in self._jobs_set if k[0] == label]:
            self.jobs.remove(*key)
            self._jobs_set.discard(key)

    def set_queue(self, campaigns: Sequence[CampaignState], now: dt.datetime) -> None:
        """Queued jobs, and those of them held back by their campaign (`jobs.schedule.blocked_reason`): a campaign
        waiting for its window is not a stalled queue."""
        self.queue_depth.labels("normal").set(sum(c.queued for c in campaigns))
        self.queue_held.set(sum(c.queued for c in campaigns if blocked_reason(c, now) is not None))

    def published(self, seconds: float, video_seconds: float, campaign: str = "") -> None:
        """A job's output is where it goes: its end-to-end latency and its seconds of video."""
        label = self.campaign_label(campaign)
        self.job_seconds.labels(label).observe(seconds)
        self.video_seconds.labels(label).inc(video_seconds)

    def set_jobs(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Jobs by state for each campaign (name -> state -> count). Campaigns with no unfinished job get a
        series only while they still hold a label (finished before this runner started: none)."""
        totals: dict[tuple[str, str], int] = {}
        for name, states in counts.items():
            busy = any(states.get(s, 0) for s in BUSY_STATES)
            if not busy and name and name not in self._campaigns:
                continue
            label = self.campaign_label(name, touch=busy)
            for state, n in states.items():
                totals[(label, state)] = totals.get((label, state), 0) + n
        with self._lock:
            for key in self._jobs_set - totals.keys():  # e.g. `other` once its campaigns are done
                if key[0] in self._campaigns or key[0] == OTHER_CAMPAIGNS:
                    self.jobs.labels(*key).set(0)
            for key, n in totals.items():
                self.jobs.labels(*key).set(n)
            self._jobs_set |= totals.keys()


class WorkerCollector(Collector):
    """Collects every live worker's metrics at scrape time and labels them with node, worker and gpu."""

    def __init__(self, fetch: Callable[[], list[tuple[dict[str, str], str]]]) -> None:
        self._fetch = fetch

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for labels, text in self._fetch():
            if "worker" in labels:
                labels = {**labels, "worker": worker_slot(labels["worker"])}
            for family in text_string_to_metric_families(text):
                metric = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    metric.add_sample(sample.name, {**sample.labels, **labels}, sample.value)
        yield from merged.values()


SCRAPE_TIMEOUT_S = 5.0
"""How long a scrape waits for a worker's metrics; a worker slower than that drops out of that scrape."""


class MetricsServer:
    """The farm's one HTTP endpoint (127.0.0.1 unless told otherwise: a deploy binds the pod's address).

    Started before the workers exist (`executor=None`, then `attach`), so that its port is held from the first
    moment: nothing the farm starts meanwhile (Ray's processes pick ports too) can take it while the models load.
    """

    def __init__(self, executor: Any | None, port: int = 0, addr: str = DEFAULT_ADDR) -> None:
        self.registry = CollectorRegistry()
        self.farm = FarmMetrics(self.registry)
        self.head_registry = CollectorRegistry()
        self.uploads = UploadMetrics(self.head_registry)
        """The head's own uploads (outputs it holds), labelled like a worker's so both add up in one series."""
        head = ({"node": node_name(), "worker": "head"}, self.head_registry)
        self._fetch: Callable[[], list[tuple[dict[str, str], str]]] = list
        self.registry.register(WorkerCollector(lambda: [(head[0], generate_latest(head[1]).decode()), *self._fetch()]))
        if executor is not None:
            self.attach(executor)
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.addr, self.port = self._server.server_address[:2]
        self.url = f"http://{_url_host(self.addr)}:{self.port}/metrics"

    def attach(self, executor: Any) -> None:
        """Serve the metrics of `executor`'s workers (`Executor.metrics_texts`) from now on."""
        self._fetch = lambda: executor.metrics_texts(SCRAPE_TIMEOUT_S)
        self.farm.workers.set_function(lambda: len(executor.workers) - len(executor.starting))
        self.farm.workers_desired.set_function(lambda: len(executor.workers))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def worker_labels(device: object, name: str) -> dict[str, str]:
    """Bounded identity labels of a worker: its node, its slot and, on a GPU, the GPU's index."""
    labels = {"node": node_name(), "worker": worker_slot(name)}
    if getattr(device, "type", "cpu") == "cuda":
        index = getattr(device, "index", None)
        labels["gpu"] = str(index if index is not None else 0)
    return labels
