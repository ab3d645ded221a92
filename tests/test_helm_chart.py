"""The Helm chart (deploy/helm/ltx2-farm), checked offline: `helm lint` and `helm template` over the chart's
defaults and every values file in its ci/ folder, every rendered object validated strictly (unknown fields
fail): core kinds against the Kubernetes JSON schemas (kubernetes-validate), KubeRay and prometheus-operator
kinds against their CRDs (read from ../shared/crds, never copied), the pod templates inside them both ways.
Then what the objects must say: restricted pods, Ray token auth, the pool that fits each GPU group, the
NetworkPolicies against the ports Ray is told to use, the campaign runner's command line run through its
shells. No cluster and no Ray: helm renders in a fraction of a second."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.nodes import ray_env

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "ltx2-farm"
CRDS = REPO.parent / "shared" / "crds"
K8S_VERSION = "1.31"  # the oldest Kubernetes the chart targets (Chart.yaml kubeVersion)
RELEASE = NAMESPACE = "ltx2-farm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
WITH_CRDS = ("--api-versions", "ray.io/v1/RayCronJob,monitoring.coreos.com/v1/PodMonitor")
RENDERS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "defaults, KubeRay and prometheus-operator APIs served": WITH_CRDS,
    **{path.stem: ("--values", str(path)) for path in CI_VALUES},
}
"""Every rendering the checks below run over: the chart's own values, then each ci/ values file."""
METRICS_PORT = 9464


def helm() -> str:
    local = REPO / ".tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    assert found, "helm is missing: `./farm test` installs it into .tools/bin"
    return found


def helm_template(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args], capture_output=True, text=True
    )


@functools.cache
def rendered_text(*args: str) -> str:
    result = helm_template(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rendered(*args: str) -> list[dict]:
    """A fresh copy of the objects `helm template` renders (tests may change them)."""
    return [d for d in yaml.safe_load_all(rendered_text(*args)) if d]


def values_file(tmp_path: Path, values: dict) -> tuple[str, str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return "--values", str(path)


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    return doc


def cluster(docs: list[dict]) -> dict:
    return one(docs, "RayCluster")


def embedded_rayjob(docs: list[dict]) -> dict | None:
    """The RayJob a CronJob creates each night, kept as JSON in a ConfigMap."""
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "rayjob.json" in d.get("data", {})]
    return json.loads(maps[0]["data"]["rayjob.json"]) if maps else None


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """The PodTemplateSpecs inside an object, named by where they are."""
    spec = doc.get("spec", {})
    match doc["kind"]:
        case "RayCluster":
            head = [("head", spec["headGroupSpec"]["template"])]
            return head + [(f"group {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
        case "RayJob":
            return [("submitter", spec["submitterPodTemplate"])]
        case "RayCronJob":
            return [("submitter", spec["jobTemplate"]["submitterPodTemplate"])]
        case "CronJob":
            return [("scheduler", spec["jobTemplate"]["spec"]["template"])]
        case "ConfigMap" if "rayjob.json" in doc.get("data", {}):
            return pod_templates(json.loads(doc["data"]["rayjob.json"]))
    return []


def as_pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}


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


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Validator:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"{path} is not beside the checkout")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # MBs of schemas
    [version] = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == api_version]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server, not the CRD
    return jsonschema.Draft7Validator(schema)


def problems(doc: dict) -> list[str]:
    """Every way `doc` fails its schema (strict), and the pod templates inside it the core schema."""
    if doc["kind"] in CRD_FILES:
        found = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(doc["kind"], doc["apiVersion"]).iter_errors(doc)
        ]
    else:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            found = []
        except kubernetes_validate.ValidationError as e:
            found = [str(e)]
    rayjob = embedded_rayjob([doc]) if doc["kind"] == "ConfigMap" else None
    if rayjob:
        found += problems(rayjob)
    for where, template in pod_templates(doc):
        try:
            kubernetes_validate.validate(as_pod_template(template), K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            found.append(f"{where}: {e}")
    return found


# --- helm itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.stem if p else "defaults")
def test_helm_lint_passes(values):
    args = ["--values", str(values)] if values else []
    result = subprocess.run(
        [helm(), "lint", str(CHART), "--strict", "--namespace", NAMESPACE, *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ci_folder_has_each_case():
    assert {p.stem for p in CI_VALUES} == {
        "minimal-values",
        "multi-gpu-values",
        "scale-to-zero-values",
        "air-gapped-values",
    }


def test_bad_values_are_refused_by_the_schema_naming_the_field(tmp_path):
    values = yaml.safe_load((CHART / "ci" / "multi-gpu-values.yaml").read_text())
    values["gpuGroups"][1]["gpusPerPod"] = 0
    values["colour"] = "red"
    values["campaign"]["placement"] = "everywhere"
    result = helm_template(*values_file(tmp_path, values))
    assert result.returncode != 0
    assert "/gpuGroups/1/gpusPerPod" in result.stderr
    assert "colour" in result.stderr
    assert "/campaign/placement" in result.stderr


def test_the_chart_is_the_farms_version_on_the_images_ray():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    [ray_pin] = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("ray==")]
    assert cluster(rendered())["spec"]["rayVersion"] == ray_pin.removeprefix("ray==")


# --- every object, strictly ----------------------------------------------------------------------------------


@pytest.mark.parametrize("render", RENDERS, ids=list(RENDERS))
def test_every_object_validates_strictly(render):
    docs = rendered(*RENDERS[render])
    for doc in docs:
        assert not problems(doc), (doc["kind"], doc["metadata"]["name"], problems(doc)[:5])


KINDS = [
    "RayCluster",
    "RayJob",
    "RayCronJob",
    "CronJob",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "PodMonitor",
    "PrometheusRule",
]


def test_the_renders_cover_every_kind():
    assert {d["kind"] for args in RENDERS.values() for d in rendered(*args)} == set(KINDS)


def _first(kind: str) -> dict:
    """The first object of `kind` in the renderings, a copy."""
    return next(d for args in RENDERS.values() for d in rendered(*args) if d["kind"] == kind)


def _misspell(doc: dict) -> str:
    """Renames one field of the object's spec (or of the object, or its metadata, for kinds without one) to a
    misspelling."""
    target = doc["spec"] if isinstance(doc.get("spec"), dict) else doc
    fields = [k for k in target if k not in ("apiVersion", "kind", "metadata")]
    if not fields:  # a ServiceAccount: nothing but metadata
        target, fields = doc["metadata"], ["namespace"]
    key = fields[0]
    target[key[:-1] + key[-1] * 2] = target.pop(key)
    return key[:-1] + key[-1] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_misspelt_field_fails_in_each_kind(kind):
    doc = _first(kind)
    assert not problems(doc)
    misspelt = _misspell(doc)
    assert any(misspelt in p for p in problems(doc)), problems(doc)


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob", "RayCronJob", "CronJob", "ConfigMap"])
def test_a_misspelt_field_inside_an_embedded_pod_template_fails(kind):
    doc = next(d for args in RENDERS.values() for d in rendered(*args) if d["kind"] == kind and pod_templates(d))
    if kind == "ConfigMap":  # the CronJob's RayJob, as JSON
        rayjob = json.loads(doc["data"]["rayjob.json"])
        rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
        doc["data"]["rayjob.json"] = json.dumps(rayjob)
    else:
        _, template = pod_templates(doc)[-1]
        template["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    assert any("imagePulPolicy" in p for p in problems(doc)), problems(doc)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c["spec"]["containers"][0].update(imagePullPolicy=3), "imagePullPolicy"),
        (lambda c: c["spec"]["containers"][0].update(gpuCount=1), "gpuCount"),
        (lambda c: c["spec"].update(tolerations="all"), "tolerations"),
    ],
    ids=["wrong type", "unknown field", "list as a string"],
)
def test_the_core_schema_really_rejects_bad_pod_templates(mutate, error):
    _, template = pod_templates(cluster(rendered()))[1]
    mutate(template)
    with pytest.raises(kubernetes_validate.ValidationError, match=error):
        kubernetes_validate.validate(as_pod_template(template), K8S_VERSION, strict=True)


def test_no_yaml_anchors_or_aliases_in_the_output():
    for args in RENDERS.values():
        for event in yaml.parse(rendered_text(*args)):
            assert not isinstance(event, yaml.AliasEvent)
            assert getattr(event, "anchor", None) is None, event


# --- pods ----------------------------------------------------------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(pod: dict, extra_containers: list[dict] = ()) -> list[str]:
    """What keeps a pod spec from the Kubernetes "restricted" Pod Security Standard, and containers without
    requests and limits."""
    found = []
    pod_context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(field)
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {set(volume) - {'name'}}")
    containers = [*pod.get("initContainers", []), *pod["containers"], *extra_containers]
    for c in containers:
        context = c.get("securityContext", {})
        name = c.get("name", "autoscaler")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if context.get("capabilities", {}).get("drop") != ["ALL"] or set(
            context.get("capabilities", {}).get("add", [])
        ) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities")
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        for bound in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})):
                found.append(f"{name}: resources.{bound}")
    return found


@pytest.mark.parametrize("render", RENDERS, ids=list(RENDERS))
def test_every_pod_meets_the_restricted_profile_with_requests_and_limits(render):
    docs = rendered(*RENDERS[render])
    templates = [(d["kind"], where, t) for d in docs for where, t in pod_templates(d)]
    assert templates
    for kind, where, template in templates:
        extra = [cluster(docs)["spec"]["autoscalerOptions"]] if where == "head" else []
        assert not restricted_problems(template["spec"], extra), (
            kind,
            where,
            restricted_problems(template["spec"], extra),
        )
    head = cluster(docs)["spec"]["headGroupSpec"]["template"]["spec"]
    assert any(v["name"] == "store" for v in head["volumes"])
    assert head["securityContext"]["fsGroup"] == head["securityContext"]["runAsUser"]  # the store is writable


def test_the_restricted_check_can_fail():
    _, template = pod_templates(cluster(rendered()))[0]
    pod = template["spec"]
    assert not restricted_problems(pod)
    del pod["containers"][0]["securityContext"]["capabilities"]
    pod["containers"][0]["resources"]["limits"].pop("memory")
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_problems(pod)) == 3


def test_gpu_groups_reserve_gpus_tolerate_gpu_taints_and_size_shared_memory():
    values = yaml.safe_load((CHART / "ci" / "multi-gpu-values.yaml").read_text())
    ray = cluster(rendered("--values", str(CHART / "ci" / "multi-gpu-values.yaml")))
    for group, wanted in zip(ray["spec"]["workerGroupSpecs"], values["gpuGroups"], strict=True):
        pod = group["template"]["spec"]
        [worker] = pod["containers"]
        for bound in ("requests", "limits"):
            assert worker["resources"][bound]["nvidia.com/gpu"] == str(wanted["gpusPerPod"])
            assert worker["resources"][bound]["memory"] == wanted["resources"][bound]["memory"]
        assert group["rayStartParams"]["num-gpus"] == str(wanted["gpusPerPod"])
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": wanted["shmSize"]}
        assert pod.get("nodeSelector", {}) == wanted.get("nodeSelector", {})
        assert pod.get("affinity", values.get("affinity", {})) == wanted.get("affinity", values.get("affinity", {}))
        assert pod["priorityClassName"] == wanted.get("priorityClassName", values["priorityClassName"])
        assert group["minReplicas"] <= group["maxReplicas"] == wanted["maxReplicas"]
        assert pod["automountServiceAccountToken"] is False
    head = ray["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no render work lands on the head
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_pod_settings_for_every_pod_and_extra_volumes_in_the_ray_containers():
    docs = rendered("--values", str(CHART / "ci" / "multi-gpu-values.yaml"))
    for doc in docs:
        for where, template in pod_templates(doc):
            assert template["metadata"]["labels"]["team"] == "video", where
            assert template["metadata"]["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
            assert template["spec"]["priorityClassName"] in ("batch", "batch-low"), where
    for where, template in pod_templates(cluster(docs)):
        [ray] = template["spec"]["containers"]
        assert {"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True} in ray["volumeMounts"], where
        assert {"name": "prompts", "configMap": {"name": "prompt-library"}} in template["spec"]["volumes"], where


@pytest.mark.parametrize("cache", ["emptyDir", "ephemeral", "hostPath"])
def test_a_model_set_manifest_is_pulled_into_a_node_cache_before_the_worker_starts(cache, tmp_path):
    """With a manifest, worker pods mount no shared model volume: an init container runs `ltx2-farm models pull`
    into a node-local volume that the worker container then reads, at the same path, with the same memo."""
    source = "s3://ltx2-models/ltx-2-19b/ltx2-models.json"
    docs = rendered(*values_file(tmp_path, {"models": {"source": source, "modelCache": {"kind": cache}}}))
    ray = cluster(docs)
    assert not problems(ray)
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v or v["name"] == "store" for v in head["volumes"])
    for group in ray["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        [pull] = pod["initContainers"]
        [worker] = pod["containers"]
        assert pull["command"] == ["ltx2-farm", "models", "pull"]
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["LTX2_MODELS"] == source and "LTX2_CHECKPOINT" not in env
        assert {e["name"]: e.get("value") for e in pull["env"]} == env
        assert pull["envFrom"] == worker["envFrom"]  # the bucket's credentials
        assert pull["volumeMounts"][0] in worker["volumeMounts"]  # the same cache, at the same path
        assert env["LTX2_FARM_HASH_CACHE"].startswith(pull["volumeMounts"][0]["mountPath"])
        [volume] = [v for v in pod["volumes"] if v["name"] == pull["volumeMounts"][0]["name"]]
        assert cache in volume and not any("persistentVolumeClaim" in v for v in pod["volumes"])
    if cache != "hostPath":  # the one kind outside the restricted profile (the values say so)
        assert not restricted_problems(pod)


def test_models_on_a_claim_are_mounted_read_only_where_the_farm_looks():
    ray = cluster(rendered())
    for where, template in pod_templates(ray):
        [container] = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LTX2_CHECKPOINT"].startswith("/models/"), where
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"], where
        [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "models"]
        assert volume["persistentVolumeClaim"] == {"claimName": "ltx2-models", "readOnly": True}


# --- images ------------------------------------------------------------------------------------------------


def _containers(docs: list[dict]) -> list[dict]:
    return [
        c
        for d in docs
        for _, t in pod_templates(d)
        for c in [*t["spec"].get("initContainers", []), *t["spec"]["containers"]]
    ]


def test_an_air_gapped_cluster_pulls_every_image_by_digest_from_its_registry():
    values = yaml.safe_load((CHART / "ci" / "air-gapped-values.yaml").read_text())
    docs = rendered("--values", str(CHART / "ci" / "air-gapped-values.yaml"))
    images = {c["image"] for c in _containers(docs)}
    assert images == {
        f"{values['image']['repository']}@{values['image']['digest']}",
        f"{values['scheduler']['image']['repository']}@{values['scheduler']['image']['digest']}",
    }
    for doc in docs:
        for where, template in pod_templates(doc):
            assert template["spec"]["imagePullSecrets"] == [{"name": "internal-registry"}], where
    env = {e["name"]: e.get("value") for e in _containers([cluster(docs)])[-1]["env"]}
    assert env["AWS_ENDPOINT_URL"] == values["storage"]["endpointUrl"] and env["HF_HUB_OFFLINE"] == "1"


def test_images_are_tagged_without_a_digest():
    images = {c["image"] for c in _containers(rendered())}
    assert images == {"ghcr.io/example/ltx2-farm:0.1.0", "registry.k8s.io/kubectl:v1.31.2"}


# --- the campaign runner -------------------------------------------------------------------------------------


def _fake_cli(tmp_path: Path) -> Path:
    """An `ltx2-farm` that prints its arguments, one a line, to see what the head's shell runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ltx2-farm"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\necho ---\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_entrypoint(entrypoint: str, tmp_path: Path) -> list[list[str]]:
    # KubeRay pastes the entrypoint into the submitter's shell line (`ray job submit … -- ENTRYPOINT ; fi`):
    # that shell must see one command, no `;` or `$` of its own; `ray job submit` re-quotes the words it got
    # (shlex.join) and Ray runs them through a shell on the head, in the head container's environment.
    words = shlex.split(entrypoint)
    assert words[:2] == ["sh", "-c"] and len(words) == 3
    env = {"PATH": f"{_fake_cli(tmp_path)}:{os.environ['PATH']}", "LTX2_FARM_METRICS_ADDR": "10.4.2.17"}
    ran = subprocess.run(shlex.join(words), shell=True, env=env, capture_output=True, text=True, check=True).stdout
    return [call.split() for call in ran.split("---\n")[:-1]]


def test_the_always_on_runner_submits_the_manifest_and_serves_metrics_on_the_head_pods_address(tmp_path):
    docs = rendered("--values", str(CHART / "ci" / "scale-to-zero-values.yaml"))
    job = one(docs, "RayJob")
    submit, run = _run_entrypoint(job["spec"]["entrypoint"], tmp_path)
    manifest = one(docs, "ConfigMap", "-campaign")
    assert submit == ["campaign", "submit", "/etc/ltx2-farm/campaign/campaign.yaml"]
    assert (
        yaml.safe_load(manifest["data"]["campaign.yaml"])
        == yaml.safe_load((CHART / "ci" / "scale-to-zero-values.yaml").read_text())["campaign"]["manifest"]
    )
    head = cluster(docs)["spec"]["headGroupSpec"]["template"]["spec"]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == "campaign"]
    assert mount["mountPath"] == "/etc/ltx2-farm/campaign"
    assert {"name": "campaign", "configMap": {"name": manifest["metadata"]["name"]}} in head["volumes"]
    assert run[:2] == ["campaign", "run"] and "--forever" in run
    assert "activeDeadlineSeconds" not in job["spec"]
    assert run[run.index("--workers") + 1] == "16" and run[run.index("--placement") + 1] == "replica"
    assert run[run.index("--metrics-addr") + 1] == "10.4.2.17"
    assert run[run.index("--metrics-port") + 1] == str(METRICS_PORT)
    assert run[run.index("--out") + 1].startswith("/var/lib/ltx2-farm/")  # on the store volume
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster(docs)["metadata"]["name"]}


def test_the_overnight_runner_runs_the_queue_until_nothing_can_start_on_the_pools_shape(tmp_path):
    docs = rendered("--values", str(CHART / "ci" / "multi-gpu-values.yaml"))
    cron = one(docs, "RayCronJob")
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("0 20 * * 1-5", "Europe/Paris")
    _, run = _run_entrypoint(cron["spec"]["jobTemplate"]["entrypoint"], tmp_path)
    assert "--forever" not in run  # the RayJob ends when the night's work does, and the next night starts afresh
    # and is stopped before the next night's starts: one runner per store (the RayCronJob has no concurrency
    # policy); weeknights at 20:00 are 24 hours apart
    assert cron["spec"]["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600
    assert run[run.index("--placement") + 1] == "sharded" and run[run.index("--gpus") + 1] == "4"
    assert not [d for d in docs if d["kind"] in ("RayJob", "CronJob")]  # one runner, never two on one store


def test_the_cronjob_creates_exactly_the_rayjob_the_raycronjob_would():
    ci = str(CHART / "ci" / "multi-gpu-values.yaml")
    by_kuberay = one(rendered("--values", ci), "RayCronJob")["spec"]["jobTemplate"]
    docs = rendered("--values", ci, "--set", "campaign.scheduler=CronJob")
    rayjob = embedded_rayjob(docs)
    assert rayjob["spec"] == by_kuberay
    cron = one(docs, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [delete], [create] = pod["initContainers"], pod["containers"]
    assert delete["args"][:3] == ["delete", "rayjob", rayjob["metadata"]["name"]]
    assert f"--namespace={rayjob['metadata']['namespace']}" in delete["args"]
    [mount] = [m for m in create["volumeMounts"] if m["name"] == "rayjob"]
    assert f"--filename={mount['mountPath']}/rayjob.json" in create["args"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Europe/Paris"
    role = one(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "list", "watch", "create", "delete"]}
    ]
    assert pod["serviceAccountName"] == role["metadata"]["name"] == one(docs, "RoleBinding")["subjects"][0]["name"]


def test_the_raycronjob_is_chosen_where_kuberay_serves_it():
    assert {d["kind"] for d in rendered()} & {"RayCronJob", "CronJob"} == {"CronJob"}
    assert {d["kind"] for d in rendered(*WITH_CRDS)} & {"RayCronJob", "CronJob"} == {"RayCronJob"}


def test_scaling_to_zero():
    docs = rendered("--values", str(CHART / "ci" / "scale-to-zero-values.yaml"))
    spec = cluster(docs)["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]


# --- where the pool fits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_gb", [24, 40, 48, 68, 80])
def test_a_group_takes_only_a_pool_it_can_hold_by_the_farms_own_rule(memory_gb, tmp_path):
    """The chart refuses a bf16 replica pool on a group whose GPUs cannot hold the model set, and names the
    sharded gang that fits: the same answer as the farm's `auto` placement (jobs/placement.py)."""
    from jobs.placement import PlacementError, PlacementSpec, choose_placement

    try:
        farm = choose_placement(
            PlacementSpec(mode="auto"),
            video_tokens=0,
            guided_passes=1,
            gpu_memory_bytes=memory_gb * 10**9,
            free_gpus=8,
            queued_jobs=100,
        )
    except PlacementError:
        farm = None
    group = {"name": "cards", "gpuMemoryGB": memory_gb, "gpusPerPod": 8, "maxReplicas": 2}
    result = helm_template(*values_file(tmp_path, {"gpuGroups": [group]}))
    if farm is not None and farm.mode == "replica":
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert (
        f"gpuGroups cards: the pool's bf16 replicas need about 68 GB on each GPU, more than this group's {memory_gb} GB"
        in result.stderr
    )
    if farm is None:
        assert "leave this group out" in result.stderr
        return
    assert farm.mode == "sharded" and f"campaign.gpusPerGang: {farm.gpus}" in result.stderr
    fixed = {"gpuGroups": [group], "campaign": {"placement": "sharded", "gpusPerGang": farm.gpus}}
    assert helm_template(*values_file(tmp_path, fixed)).returncode == 0


def test_the_charts_model_size_is_the_farms():
    from jobs.placement import LTX2_BF16_TRANSFORMER_BYTES, RESIDENT_OVERHEAD_BYTES

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f"ternary 21600 {LTX2_BF16_TRANSFORMER_BYTES // 10**6} $c.fp8" in helpers
    assert f"add $rankMB {RESIDENT_OVERHEAD_BYTES // 10**6}" in helpers
    assert math.ceil((LTX2_BF16_TRANSFORMER_BYTES + RESIDENT_OVERHEAD_BYTES) / 1e9) == 68  # the message's number


@pytest.mark.parametrize(
    ("campaign", "error"),
    [
        ({"fp8": True}, "the pool's FP8 replicas need about 52 GB"),
        ({"placement": "sharded", "gpusPerGang": 2}, "the pool's sharded gangs of 2 need about 49 GB"),
        ({"placement": "sharded", "gpusPerGang": 8}, "a gang of 8 GPUs runs on one node, and this group's pods have 4"),
        ({"placement": "sharded", "gpusPerGang": 4, "workers": 3}, "hold at most 2 workers of 4 GPU(s)"),
        ({"placement": "guidance", "gpusPerGang": 8}, "a guidance gang takes at most 4 GPUs"),
        ({"placement": "sharded", "gpusPerGang": 4, "fp8": True}, "campaign.fp8 runs on replicas only"),
        ({"gpusPerGang": 2}, "campaign.gpusPerGang (2) is for gangs"),
    ],
    ids=["fp8", "2 shards", "gang wider than a pod", "more workers than room", "guidance", "fp8 gang", "gang size"],
)
def test_a_48_gb_group_refuses_pools_it_cannot_hold(campaign, error, tmp_path):
    l40s = {"name": "l40s", "gpuMemoryGB": 48, "gpusPerPod": 4, "maxReplicas": 2}
    result = helm_template(*values_file(tmp_path, {"gpuGroups": [l40s], "campaign": campaign}))
    assert result.returncode != 0 and error in result.stderr, result.stderr


# --- Ray: token auth, dashboard, ports -------------------------------------------------------------------------


@pytest.mark.parametrize("render", ["defaults", "air-gapped-values"])
def test_ray_token_auth_from_one_secret_everywhere(render):
    docs = rendered(*RENDERS[render])
    spec = cluster(docs)["spec"]
    secret = spec["authOptions"]["secretName"]
    assert spec["authOptions"]["mode"] == "token"  # KubeRay puts it in every Ray container and uses it itself
    generated = [d for d in docs if d["kind"] == "Secret"]
    if render == "defaults":
        [made] = generated
        assert made["metadata"]["name"] == secret and len(made["data"]["auth_token"]) > 64
        assert made["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert not generated and secret == "ltx2-farm-ray-token"
    submitters = [c for d in docs if "RayJob" in d["kind"] or d["kind"] == "ConfigMap" for c in _containers([d])]
    assert submitters
    for container in submitters:
        env = {e["name"]: e for e in container["env"]}
        assert set(ray_env("token")) <= set(env)  # the variables the node harness sets, the same names
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": "auth_token"}}


def test_the_dashboard_listens_on_the_pods_address_only():
    for args in RENDERS.values():
        assert "0.0.0.0" not in rendered_text(*args)
        head = cluster(rendered(*args))["spec"]["headGroupSpec"]
        [container] = head["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        # Kubernetes expands $(POD_IP) in the container's command line, where KubeRay puts rayStartParams
        assert head["rayStartParams"]["dashboard-host"] == "$(POD_IP)"
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        probe = container["readinessProbe"]["httpGet"]  # the kubelet probes the pod's address
        assert probe["path"] == "/api/gcs_healthz" and probe["port"] == "dashboard"


def _ports(rules: list[dict]) -> set[int]:
    """Every TCP port a NetworkPolicy's rules let in, ranges expanded."""
    return {n for rule in rules for p in rule["ports"] for n in range(p["port"], p.get("endPort", p["port"]) + 1)}


def _ray_ports(params: dict[str, str]) -> set[int]:
    ports = {
        int(v) for k, v in params.items() if k.endswith("-port") and k not in ("min-worker-port", "max-worker-port")
    }
    return ports | set(range(int(params["min-worker-port"]), int(params["max-worker-port"]) + 1))


def test_network_policies_let_in_exactly_what_ray_kuberay_and_prometheus_use():
    docs = rendered("--values", str(CHART / "ci" / "air-gapped-values.yaml"))
    spec = cluster(docs)["spec"]
    head_params = spec["headGroupSpec"]["rayStartParams"]
    head_policy = one(docs, "NetworkPolicy", "-head")["spec"]
    workers_policy = one(docs, "NetworkPolicy", "-workers")["spec"]
    head_labels = spec["headGroupSpec"]["template"]["metadata"]["labels"]
    worker_labels = spec["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    submitter_labels = embedded_rayjob(docs)["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert head_policy["podSelector"]["matchLabels"].items() <= head_labels.items()
    assert workers_policy["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert not workers_policy["podSelector"]["matchLabels"].items() <= head_labels.items()

    cluster_rule, dashboard_rule, metrics_rule = head_policy["ingress"]
    # the cluster's own pods (workers, the submitter) reach every port Ray's head processes listen on
    [peers] = cluster_rule["from"]
    assert peers["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert peers["podSelector"]["matchLabels"].items() <= submitter_labels.items()
    gcs = next(
        p["containerPort"]
        for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "gcs-server"
    )
    metrics = {int(head_params["metrics-export-port"]), METRICS_PORT}
    assert _ports([cluster_rule]) == (_ray_ports(head_params) - metrics) | {gcs}
    # KubeRay (and the bastion the values name) reach only the dashboard; Prometheus only the metrics ports
    assert _ports([dashboard_rule]) == {int(head_params["dashboard-port"])}
    assert [p["namespaceSelector"]["matchLabels"] for p in dashboard_rule["from"]] == [
        {"kubernetes.io/metadata.name": "ray-system"},
        {"kubernetes.io/metadata.name": "bastion"},
    ]
    assert _ports([metrics_rule]) == metrics
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]

    workers_rule, workers_metrics = workers_policy["ingress"]
    for group in spec["workerGroupSpecs"]:
        params = group["rayStartParams"]
        assert _ports([workers_rule]) == _ray_ports(params) - {int(params["metrics-export-port"])}
        assert _ports([workers_metrics]) == {int(params["metrics-export-port"])}
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in workers_rule["from"]] == [
        "ray-head",
        "ray-worker",
    ]
    clients = one(docs, "NetworkPolicy", "-clients")["spec"]
    assert clients["ingress"] == [] and clients["podSelector"]["matchExpressions"][0]["values"] == [
        "campaign-submitter",
        "scheduler",
    ]


# --- monitoring ----------------------------------------------------------------------------------------------


def test_the_head_serves_the_farm_endpoint_and_workers_learn_their_node():
    docs = rendered(*WITH_CRDS)
    spec = cluster(docs)["spec"]
    head_group = spec["headGroupSpec"]
    [head] = head_group["template"]["spec"]["containers"]
    env = {e["name"]: e for e in head["env"]}
    assert env["LTX2_FARM_METRICS_ADDR"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert {"name": "farm-metrics", "containerPort": METRICS_PORT} in head["ports"]
    # Ray's own metrics agent on the head must not take the farm's port
    assert head_group["rayStartParams"]["metrics-export-port"] != str(METRICS_PORT)
    for group in spec["workerGroupSpecs"]:
        [worker] = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in worker["env"]}
        assert env["LTX2_FARM_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert {"name": "metrics", "containerPort": int(group["rayStartParams"]["metrics-export-port"])} in worker[
            "ports"
        ]
    farm = one(docs, "PodMonitor", RELEASE)
    ray = one(docs, "PodMonitor", "-ray")
    assert farm["spec"]["selector"]["matchLabels"].items() <= head_group["template"]["metadata"]["labels"].items()
    [endpoint] = farm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "farm-metrics"
    assert {"targetLabel": "job", "replacement": "ltx2farm"} in endpoint["relabelings"]  # what the alerts select
    [ray_endpoint] = ray["spec"]["podMetricsEndpoints"]
    assert ray_endpoint["port"] == "metrics"
    assert ray["spec"]["selector"]["matchExpressions"][0]["values"] == ["ray-head", "ray-worker"]


def test_the_alert_rules_and_the_dashboard_come_from_the_charts_files_unchanged():
    docs = rendered(*WITH_CRDS)
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    assert re.search(r"\{\{ \$labels\.\w+ \}\}", json.dumps(rules))  # Prometheus' templates, not Helm's
    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["ltx2farm-dashboard.json"] == (CHART / "files" / "ltx2farm-dashboard.json").read_text()


def test_monitoring_objects_follow_the_cluster_or_the_values():
    def kinds(*args: str) -> set[str]:
        return {d["kind"] for d in rendered(*args)} & {"PodMonitor", "PrometheusRule"}

    assert kinds() == set()  # no prometheus-operator: nothing it would refuse
    assert kinds(*WITH_CRDS) == {"PodMonitor", "PrometheusRule"}
    assert kinds("--values", str(CHART / "ci" / "air-gapped-values.yaml"), *WITH_CRDS) == set()


def test_the_store_outlives_the_release():
    claim = one(rendered(), "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    head = cluster(rendered())["spec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in head["volumes"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["LTX2_FARM_DB"] == "/var/lib/ltx2-farm/campaigns.db"
