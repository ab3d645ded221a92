"""Deployment artifacts, checked offline: the Dockerfile under hadolint, every rendered manifest against the
Kubernetes JSON schemas (strict: unknown fields and wrong types fail), and the committed manifests current."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cluster.deploy import DeployValues, render_all

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.31"  # the oldest Kubernetes the manifests target (CronJob timeZone is GA since 1.27)


def _values() -> DeployValues:
    return DeployValues.model_validate(yaml.safe_load((REPO / "deploy/k8s/values.yaml").read_text()))


def _documents() -> list[dict]:
    dashboard = (REPO / "deploy/grafana/ltx2farm-dashboard.json").read_text()
    return [d for docs in render_all(_values(), dashboard).values() for d in docs]


def _pod_templates(doc: dict) -> list[dict]:
    """Core PodTemplateSpecs inside KubeRay resources, wrapped as a `PodTemplate` Kubernetes can validate."""
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    else:
        templates = []
    return [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": t}
        for i, t in enumerate(templates)
    ]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(REPO / "deploy/docker/Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_manifests_validate_against_the_kubernetes_schemas():
    core = [d for d in _documents() if d["apiVersion"] in ("v1", "batch/v1", "rbac.authorization.k8s.io/v1")]
    assert {d["kind"] for d in core} == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "CronJob",
    }
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_pod_templates_inside_the_raycluster_validate_strictly():
    [cluster] = [d for d in _documents() if d["kind"] == "RayCluster"]
    templates = _pod_templates(cluster)
    assert len(templates) == 1 + len(_values().gpu_groups)
    for t in templates:
        kubernetes_validate.validate(t, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c["spec"]["containers"][0].update(imagePullPolicy=3), "imagePullPolicy"),
        (lambda c: c["spec"]["containers"][0].update(gpuCount=1), "gpuCount"),
        (lambda c: c["spec"].update(tolerations="all"), "tolerations"),
    ],
    ids=["wrong type", "unknown field", "list as a string"],
)
def test_the_validation_really_rejects_bad_manifests(mutate, error):
    [cluster] = [d for d in _documents() if d["kind"] == "RayCluster"]
    template = copy.deepcopy(_pod_templates(cluster)[1])
    mutate(template["template"])
    with pytest.raises(kubernetes_validate.ValidationError, match=error):
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_gpu_groups_reserve_gpus_tolerate_gpu_taints_and_size_shared_memory():
    [cluster] = [d for d in _documents() if d["kind"] == "RayCluster"]
    for group, values in zip(cluster["spec"]["workerGroupSpecs"], _values().gpu_groups, strict=True):
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == str(values.gpus_per_pod)
        assert group["rayStartParams"]["num-gpus"] == str(values.gpus_per_pod)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": values.shm}
        assert pod["nodeSelector"] == values.node_selector
        assert group["minReplicas"] <= group["maxReplicas"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no render work lands on the head


def test_committed_manifests_are_the_rendered_ones(tmp_path):
    from cluster.cli import main

    assert main(["deploy", "render", "--out", str(tmp_path)]) == 0
    for path in sorted(tmp_path.iterdir()):
        committed = REPO / "deploy/k8s/rendered" / path.name
        assert committed.read_text() == path.read_text(), f"re-run `ltx2-farm deploy render` ({path.name})"


def test_bad_values_are_refused_naming_the_field(tmp_path, capsys):
    from cluster.cli import main

    values = yaml.safe_load((REPO / "deploy/k8s/values.yaml").read_text())
    values["gpu_groups"][0]["gpus_per_pod"] = 0
    values["colour"] = "red"
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    assert main(["deploy", "render", "--values", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "gpu_groups.0.gpus_per_pod" in err and "colour" in err


@pytest.mark.parametrize("cache", ["emptyDir", "hostPath"])
def test_models_source_pulls_into_a_node_cache_before_the_worker_starts(cache):
    """With a manifest, worker pods mount no shared model volume: an init container runs `ltx2-farm models pull`
    into a node-local volume that the worker container then reads, at the same path, with the same memo."""
    data = yaml.safe_load((REPO / "deploy/k8s/values.yaml").read_text())
    data.update(models_source="s3://ltx2-models/ltx-2-19b/ltx2-models.json", model_cache={"kind": cache})
    values = DeployValues.model_validate(data)
    dashboard = (REPO / "deploy/grafana/ltx2farm-dashboard.json").read_text()
    [cluster] = render_all(values, dashboard)["raycluster.yaml"]
    for t in _pod_templates(cluster):
        kubernetes_validate.validate(t, K8S_VERSION, strict=True)
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v or v["name"] == "store" for v in head["volumes"])
    for group in cluster["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        [pull] = pod["initContainers"]
        [worker] = pod["containers"]
        assert pull["command"] == ["ltx2-farm", "models", "pull"]
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["LTX2_MODELS"] == values.models_source and "LTX2_CHECKPOINT" not in env
        assert {e["name"]: e.get("value") for e in pull["env"]} == env
        assert pull["volumeMounts"][0] in worker["volumeMounts"]  # the same cache, at the same path
        assert env["LTX2_FARM_HASH_CACHE"].startswith(pull["volumeMounts"][0]["mountPath"])
        [volume] = [v for v in pod["volumes"] if v["name"] == pull["volumeMounts"][0]["name"]]
        assert cache in volume and not any("persistentVolumeClaim" in v for v in pod["volumes"])
