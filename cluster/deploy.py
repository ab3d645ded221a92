"""Kubernetes manifests for the farm on KubeRay, rendered from one values file. Pure: dicts in, dicts out.

Users set the image, the GPU worker groups (GPU type, node selector, tolerations, replica bounds), the
bucket and the overnight schedule in `deploy/k8s/values.yaml`; `ltx2-farm deploy render` writes:

- `raycluster.yaml`: a KubeRay `RayCluster`: a CPU head (the farm's coordinator runs there) and one GPU
  worker group per GPU type, autoscaling bounds, /dev/shm sized for the object store, the model files: a
  read-only volume (`models_claim`), or with `models_source` a node-local cache that an init container
  fills with `ltx2-farm models pull` before Ray starts;
- `rayjob-campaign.yaml`: a `RayJob` that runs `ltx2-farm campaign run` on that cluster, serving the farm's
  metrics on the head pod's IP;
- `cronjob-overnight.yaml`: a `CronJob` (with its ServiceAccount and RBAC) that submits the RayJob on the
  schedule, for overnight windows;
- `podmonitor.yaml`: Prometheus-operator `PodMonitor`s: the farm's endpoint on the head (every worker's
  series, as job `ltx2farm`) and Ray's own metrics on the worker pods;
- `grafana-dashboard.yaml`: the Grafana dashboard as a ConfigMap for Grafana's sidecar;
- `store-pvc.yaml`: the volume holding the campaign store (SQLite) across coordinator restarts.

Helm and Kustomize are not available where the farm's CI runs, so the values are applied here, in code
that the tests can render and validate offline against the Kubernetes schemas.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RAY_VERSION = "2.60.0"
METRICS_PORT = 9464
"""The `metrics` port: the farm's endpoint on the head, Ray's own metrics agent on the worker pods."""
RAY_HEAD_METRICS_PORT = 8080
"""Ray's own metrics agent on the head, away from METRICS_PORT where the farm's endpoint listens."""
PROMETHEUS_JOB = "ltx2farm"
"""The scrape job's name, as in deploy/prometheus/prometheus.yml: the alerts select it."""
STORE_PATH = "/var/lib/ltx2-farm"
MODELS_PATH = "/models"
MODEL_CACHE_PATH = "/var/cache/ltx2-farm"


class GpuGroup(BaseModel):
    """One worker group: one GPU type."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    gpus_per_pod: int = Field(1, ge=1, le=8)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(4, ge=1)
    cpu: str = "8"
    memory: str = "96Gi"
    shm: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )


class ModelCache(BaseModel):
    """The node-local volume that a worker pod's init container fills with the model set."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["emptyDir", "hostPath"] = Field(
        "emptyDir",
        description="emptyDir: the pod's own (fetched again when the pod is replaced); hostPath: the node's, kept "
        "across pods (the folder must be writable by uid 1000)",
    )
    host_path: str = Field(MODEL_CACHE_PATH, description="the folder on the node, for hostPath")
    size_limit: str = Field("200Gi", description="emptyDir limit: the set plus one file in flight")


class DeployValues(BaseModel):
    """Everything a platform engineer sets, in one place."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("ltx2-farm", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "ltx2-farm"
    image: str = "ghcr.io/example/ltx2-farm:0.1.0"
    gpu_groups: list[GpuGroup] = Field(default_factory=lambda: [GpuGroup(name="h100")])
    models_claim: str = Field("ltx2-models", description="PVC with the checkpoint set (read-only)")
    models_source: str | None = Field(
        None,
        description="s3://…/ltx2-models.json (`ltx2-farm models publish`): each worker node pulls the set into "
        "model_cache instead of mounting models_claim",
    )
    model_cache: ModelCache = Field(default_factory=ModelCache)
    store_size: str = "10Gi"
    campaign_manifest: str = Field("/campaigns/campaign.yaml", description="manifest path inside the head pod")
    bucket_secret: str = Field("ltx2-farm-s3", description="Secret with AWS_* variables for the bucket")
    endpoint_url: str | None = None
    schedule: str = Field("0 20 * * 1-5", description="cron: when the overnight RayJob is submitted")
    time_zone: str = "Europe/Paris"
    workers: int = Field(4, ge=1)
    placement: str = Field("replica", pattern=r"^(replica|sequence|guidance|sharded)$")
    gpus_per_gang: int | None = None


def _labels(v: DeployValues, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ltx2-farm", "app.kubernetes.io/instance": v.name, "component": component}


def _model_env(v: DeployValues) -> list[dict[str, Any]]:
    if v.models_source:
        env = [
            {"name": "LTX2_MODELS", "value": v.models_source},
            {"name": "LTX2_FARM_MODEL_CACHE", "value": f"{MODEL_CACHE_PATH}/models"},
            # the digests the init container verified are the workers' memo: no second hashing of 40 GB
            {"name": "LTX2_FARM_HASH_CACHE", "value": f"{MODEL_CACHE_PATH}/file-hashes.json"},
        ]
    else:
        env = [
            {"name": "LTX2_CHECKPOINT", "value": f"{MODELS_PATH}/ltx-2-19b-dev.safetensors"},
            {"name": "LTX2_GEMMA_ROOT", "value": f"{MODELS_PATH}/gemma-3-12b-it"},
            {"name": "LTX2_SPATIAL_UPSAMPLER", "value": f"{MODELS_PATH}/ltx-2-spatial-upscaler-x2-1.0.safetensors"},
            {"name": "LTX2_DISTILLED_LORA", "value": f"{MODELS_PATH}/ltx-2-19b-distilled-lora-384.safetensors"},
        ]
    env.append({"name": "LTX2_FARM_DB", "value": f"{STORE_PATH}/campaigns.db"})
    if v.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": v.endpoint_url})
    return env


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _container(v: DeployValues, name: str, resources: dict[str, Any], mounts: list[dict[str, Any]]) -> dict:
    return {
        "name": name,
        "image": v.image,
        "imagePullPolicy": "IfNotPresent",
        # the Kubernetes node labels the series of the workers (and the head's own) on it: pods come and go
        "env": [*_model_env(v), _field_env("LTX2_FARM_NODE_NAME", "spec.nodeName")],
        "envFrom": [{"secretRef": {"name": v.bucket_secret, "optional": True}}],
        "resources": resources,
        "volumeMounts": mounts,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False},
    }


def _pod(v: DeployValues, container: dict, volumes: list[dict], **extra: Any) -> dict:
    return {
        "metadata": {"labels": _labels(v, container["name"])},
        "spec": {"containers": [container], "volumes": volumes, **extra},
    }


def _model_cache_volume(v: DeployValues) -> dict[str, Any]:
    if v.model_cache.kind == "hostPath":
        return {"name": "model-cache", "hostPath": {"path": v.model_cache.host_path, "type": "DirectoryOrCreate"}}
    return {"name": "model-cache", "emptyDir": {"sizeLimit": v.model_cache.size_limit}}


def _models_pull(v: DeployValues) -> dict[str, Any]:
    """The init container that fills the node's model cache before the worker starts: the workers then find
    every file there, verified (the same `ltx2-farm models pull` an operator runs by hand)."""
    pull = _container(
        v,
        "models-pull",
        {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
        [{"name": "model-cache", "mountPath": MODEL_CACHE_PATH}],
    )
    del pull["ports"]
    pull["command"] = ["ltx2-farm", "models", "pull"]  # the source is LTX2_MODELS
    return pull


def ray_cluster(v: DeployValues) -> dict:
    models = {"name": "models", "persistentVolumeClaim": {"claimName": v.models_claim, "readOnly": True}}

    # with a manifest the head reads only it (the workers fetch the files): no model volume anywhere
    def model_mounts() -> list[dict[str, Any]]:  # fresh dicts: shared ones would come out as YAML anchors
        return [] if v.models_source else [{"name": "models", "mountPath": MODELS_PATH, "readOnly": True}]

    head_mounts = [*model_mounts(), {"name": "store", "mountPath": STORE_PATH}]
    head = _container(
        v,
        "ray-head",
        {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
        head_mounts,
    )
    # the farm's endpoint listens on the pod's IP, where Prometheus on another node reaches it (the entrypoint
    # passes it to `campaign run`)
    head["env"].append(_field_env("LTX2_FARM_METRICS_ADDR", "status.podIP"))
    head["ports"] += [
        {"name": "gcs", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
    ]
    groups = []
    for g in v.gpu_groups:
        gpu = {"cpu": g.cpu, "memory": g.memory, "nvidia.com/gpu": str(g.gpus_per_pod)}
        worker = _container(
            v,
            "ray-worker",
            {"requests": gpu, "limits": gpu},
            [
                *(model_mounts() or [{"name": "model-cache", "mountPath": MODEL_CACHE_PATH}]),
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
        )
        shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": g.shm}}
        extra: dict[str, Any] = {"nodeSelector": g.node_selector, "tolerations": g.tolerations}
        if v.models_source:
            extra["initContainers"] = [_models_pull(v)]
        model_volume = _model_cache_volume(v) if v.models_source else models
        groups.append(
            {
                "groupName": g.name,
                "replicas": g.min_replicas,
                "minReplicas": g.min_replicas,
                "maxReplicas": g.max_replicas,
                "rayStartParams": {"num-gpus": str(g.gpus_per_pod), "metrics-export-port": str(METRICS_PORT)},
                "template": _pod(v, worker, [model_volume, shm], **extra),
            }
        )
    store = {"name": "store", "persistentVolumeClaim": {"claimName": f"{v.name}-store"}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": v.name, "namespace": v.namespace, "labels": _labels(v, "cluster")},
        "spec": {
            "rayVersion": RAY_VERSION,
            "enableInTreeAutoscaling": True,
            "headGroupSpec": {
                "rayStartParams": {
                    "num-cpus": "0",
                    "dashboard-host": "0.0.0.0",
                    "metrics-export-port": str(RAY_HEAD_METRICS_PORT),
                },
                "template": _pod(v, head, [store] if v.models_source else [models, store]),
            },
            "workerGroupSpecs": groups,
        },
    }


def campaign_entrypoint(v: DeployValues) -> str:
    """The RayJob's entrypoint. KubeRay pastes it unquoted into the submitter pod's shell command line, and Ray
    runs what `ray job submit` got through a shell on the head: one `sh -c` word, single-quoted, keeps the `;`
    and `$LTX2_FARM_METRICS_ADDR` (the head pod's IP, set from the downward API in the head container) for
    the head's shell."""
    args = ["ltx2-farm", "campaign", "run", "--forever", "--workers", str(v.workers), "--placement", v.placement]
    if v.gpus_per_gang:
        args += ["--gpus", str(v.gpus_per_gang)]
    args += ["--out", f"{STORE_PATH}/renders", "--metrics-port", str(METRICS_PORT)]
    run = f'{shlex.join(args)} --metrics-addr "$LTX2_FARM_METRICS_ADDR"'
    submit = shlex.join(["ltx2-farm", "campaign", "submit", v.campaign_manifest])
    return shlex.join(["sh", "-c", f"{submit} ; exec {run}"])


def ray_job(v: DeployValues) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"{v.name}-campaign", "namespace": v.namespace, "labels": _labels(v, "campaign")},
        "spec": {
            "entrypoint": campaign_entrypoint(v),
            "clusterSelector": {"ray.io/cluster": v.name},
            "shutdownAfterJobFinishes": False,
            "submissionMode": "K8sJobMode",
        },
    }


def overnight_cronjob(v: DeployValues) -> list[dict]:
    """A CronJob that (re)creates the campaign RayJob on schedule, with the RBAC it needs."""
    account = f"{v.name}-scheduler"
    meta = {"namespace": v.namespace, "labels": _labels(v, "scheduler")}
    rayjob = json.dumps(ray_job(v))
    script = (
        f"kubectl delete rayjob {v.name}-campaign --namespace {v.namespace} --ignore-not-found && "
        f"echo {shlex.quote(rayjob)} | kubectl create -f -"
    )
    container = {
        "name": "submit",
        "image": "bitnami/kubectl:1.31",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account, **meta},
            "rules": [
                {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "list", "create", "delete"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account, **meta},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": v.namespace}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": f"{v.name}-overnight", **meta},
            "spec": {
                "schedule": v.schedule,
                "timeZone": v.time_zone,
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 2,
                        "template": {
                            "spec": {
                                "serviceAccountName": account,
                                "restartPolicy": "OnFailure",
                                "containers": [container],
                            }
                        },
                    }
                },
            },
        },
    ]


def pod_monitors(v: DeployValues) -> list[dict]:
    """The farm's endpoint on the head pod, which carries every worker's series (job `ltx2farm`, as the alerts
    expect), and Ray's own metrics agents on the worker pods (their `metrics` port too)."""

    def monitor(name: str, component: str, relabelings: list[dict[str, Any]]) -> dict:
        endpoint: dict[str, Any] = {"port": "metrics", "interval": "15s"}
        if relabelings:
            endpoint["relabelings"] = relabelings
        return {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": name, "namespace": v.namespace, "labels": _labels(v, "monitoring")},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/instance": v.name, "component": component}},
                "podMetricsEndpoints": [endpoint],
            },
        }

    return [
        monitor(v.name, "ray-head", [{"targetLabel": "job", "replacement": PROMETHEUS_JOB}]),
        monitor(f"{v.name}-ray", "ray-worker", []),
    ]


def dashboard_configmap(v: DeployValues, dashboard_json: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{v.name}-dashboard",
            "namespace": v.namespace,
            "labels": {**_labels(v, "monitoring"), "grafana_dashboard": "1"},
        },
        "data": {"ltx2farm-dashboard.json": dashboard_json},
    }


def store_claim(v: DeployValues) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{v.name}-store", "namespace": v.namespace, "labels": _labels(v, "store")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": v.store_size}}},
    }


def render_all(v: DeployValues, dashboard_json: str) -> dict[str, list[dict]]:
    """File name → the documents it holds."""
    return {
        "raycluster.yaml": [ray_cluster(v)],
        "rayjob-campaign.yaml": [ray_job(v)],
        "cronjob-overnight.yaml": overnight_cronjob(v),
        "podmonitor.yaml": pod_monitors(v),
        "grafana-dashboard.yaml": [dashboard_configmap(v, dashboard_json)],
        "store-pvc.yaml": [store_claim(v)],
    }


def write_all(v: DeployValues, dashboard: Path, out: Path) -> list[Path]:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in render_all(v, dashboard.read_text()).items():
        path = out / name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        written.append(path)
    return written
