"""The deploy's metrics path, checked offline: the RayJob starts the farm's endpoint on the head pod's IP, workers
learn their Kubernetes node, Prometheus-operator scrapes the head's endpoint, and the KubeRay and
prometheus-operator manifests validate strictly against their CRDs (read from ../shared/crds, never copied)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.deploy import METRICS_PORT, DeployValues, render_all

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO.parent / "shared" / "crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
}


def _documents() -> dict[str, list[dict]]:
    values = DeployValues.model_validate(yaml.safe_load((REPO / "deploy/k8s/values.yaml").read_text()))
    return render_all(values, (REPO / "deploy/grafana/ltx2farm-dashboard.json").read_text())


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as strict JSON Schema: unknown fields fail where the API server would prune
    them (listed properties, no x-kubernetes-preserve-unknown-fields); int-or-string takes either."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def _validator(kind: str, api_version: str) -> jsonschema.Validator:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"{path} is not beside the checkout")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 3 MB of schemas
    [version] = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == api_version]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server, not the CRD
    return jsonschema.Draft7Validator(schema)


def test_kuberay_and_prometheus_operator_manifests_validate_against_their_crds():
    docs = [d for docs in _documents().values() for d in docs if d["kind"] in CRD_FILES]
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "PodMonitor", "RayCluster", "RayJob"]
    for doc in docs:
        errors = [
            f"{list(e.absolute_path)}: {e.message}" for e in _validator(doc["kind"], doc["apiVersion"]).iter_errors(doc)
        ]
        assert not errors, (doc["kind"], errors[:5])


def test_the_crd_check_rejects_an_unknown_field():
    [monitor, _] = _documents()["podmonitor.yaml"]
    monitor["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    assert not _validator("PodMonitor", monitor["apiVersion"]).is_valid(monitor)


def _fake_cli(tmp_path: Path) -> Path:
    """An `ltx2-farm` that prints its arguments, one a line, to see what the head's shell runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ltx2-farm"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\necho ---\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_the_rayjob_runs_the_campaign_with_its_metrics_on_the_head_pods_address(tmp_path):
    [job] = _documents()["rayjob-campaign.yaml"]
    entrypoint = job["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's shell line (`ray job submit … -- ENTRYPOINT ; fi`):
    # that shell must see one command, no `;` or `$` of its own; `ray job submit` re-quotes the words it got
    # (shlex.join) and Ray runs them through a shell on the head, in the head container's environment.
    words = shlex.split(entrypoint)
    assert words[:2] == ["sh", "-c"] and len(words) == 3
    env = {"PATH": f"{_fake_cli(tmp_path)}:{os.environ['PATH']}", "LTX2_FARM_METRICS_ADDR": "10.4.2.17"}
    ran = subprocess.run(shlex.join(words), shell=True, env=env, capture_output=True, text=True, check=True).stdout
    submit, run, _ = ran.split("---\n")
    assert submit.split()[:2] == ["campaign", "submit"]
    run_args = run.split()
    assert run_args[:2] == ["campaign", "run"] and "--forever" in run_args
    assert run_args[run_args.index("--metrics-addr") + 1] == "10.4.2.17"
    assert run_args[run_args.index("--metrics-port") + 1] == str(METRICS_PORT)


def test_the_cronjob_recreates_exactly_the_rayjob():
    [job] = _documents()["rayjob-campaign.yaml"]
    cron = next(d for d in _documents()["cronjob-overnight.yaml"] if d["kind"] == "CronJob")
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = container["command"][2]
    echoed = subprocess.run(
        script.split(" | kubectl create")[0].split(" && ", 1)[1], shell=True, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(echoed) == job


def test_the_head_serves_the_farm_endpoint_and_workers_learn_their_node():
    [cluster] = _documents()["raycluster.yaml"]
    head_group = cluster["spec"]["headGroupSpec"]
    [head] = head_group["template"]["spec"]["containers"]
    env = {e["name"]: e for e in head["env"]}
    assert env["LTX2_FARM_METRICS_ADDR"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert {"name": "metrics", "containerPort": METRICS_PORT} in head["ports"]
    # Ray's own metrics agent on the head must not take the farm's port
    assert head_group["rayStartParams"]["metrics-export-port"] != str(METRICS_PORT)
    for group in cluster["spec"]["workerGroupSpecs"]:
        [worker] = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in worker["env"]}
        assert env["LTX2_FARM_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    farm, ray_agents = _documents()["podmonitor.yaml"]
    assert (
        farm["spec"]["selector"]["matchLabels"]["component"]
        == head_group["template"]["metadata"]["labels"]["component"]
    )
    [endpoint] = farm["spec"]["podMetricsEndpoints"]
    assert (
        endpoint["port"] == "metrics" and {"targetLabel": "job", "replacement": "ltx2farm"} in endpoint["relabelings"]
    )
    assert ray_agents["spec"]["selector"]["matchLabels"]["component"] == "ray-worker"
