"""The alerting rules, checked and unit-tested by promtool (Debian's prometheus package, installed by ./farm
test): each rule fires on its fault and stays silent while a campaign waits for its window, while the worker
group is scaled to zero and on a night with no campaign (deploy/prometheus/alerts_test.yaml). Every rule has
a description and a runbook section that exists."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

ALERTS = REPO / "deploy/helm/ltx2-farm/files/alerts.yaml"
ALERTS_TEST = REPO / "deploy/prometheus/alerts_test.yaml"
PROMETHEUS_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
SEVERITIES = ("critical", "warning", "info")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is installed by ./farm test (Debian's prometheus package)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_rule_fires_on_its_fault_and_stays_silent_on_ordinary_days():
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {
        check["alertname"] for t in tests for check in t["alert_rule_test"] if check.get("exp_alerts")
    }  # every rule has a test in which it fires...
    assert fired == {r["alert"] for r in rules()}
    for day in ("window", "scales to zero", "no campaign"):  # ...and each ordinary day checks every rule
        [scenario] = [t for t in tests if day in t["name"]]
        checks = scenario["alert_rule_test"]
        assert not any(c["exp_alerts"] for c in checks), scenario["name"]
        assert {c["alertname"] for c in checks} == fired, scenario["name"]


def test_promtool_test_rules_fails_a_rule_that_fires_on_a_window_wait(tmp_path):
    """The ordinary days are able to fail: the stalled-queue rule without its held jobs fires while a campaign
    waits for its window, and promtool says so."""
    text = ALERTS.read_text()
    held = "            - sum by (namespace, instance) (ltx2farm_queue_held)\n"
    assert held in text
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "alerts.yaml").write_text(text.replace(held, ""))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yaml").write_text(
        ALERTS_TEST.read_text().replace("../helm/ltx2-farm/files/alerts.yaml", "../rules/alerts.yaml")
    )
    result = promtool("test", "rules", str(tmp_path / "tests" / "alerts_test.yaml"))
    assert result.returncode != 0
    assert "a campaign waits all day for its window" in result.stdout + result.stderr


def test_the_local_prometheus_loads_the_same_rules():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yaml" in result.stdout and f"SUCCESS: {len(rules())} rules found" in result.stdout
    [path] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    assert (PROMETHEUS_CONFIG.parent / path).resolve() == ALERTS


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_rule_has_a_severity_a_description_and_a_runbook_section(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"] and len(annotations["description"]) > len(annotations["summary"])
    document, _, anchor = annotations["runbook_url"].partition("#")
    assert anchor == rule["alert"].lower()
    runbooks = REPO / document
    assert runbooks.is_file(), annotations["runbook_url"]
    assert anchor in github_anchors(runbooks.read_text()), f"no section {rule['alert']} in {document}"


def test_every_runbook_section_is_an_alert():
    """No runbook left for a rule that is gone: the sections of docs/runbooks.md are the rules."""
    text = (REPO / "docs/runbooks.md").read_text()
    sections = re.findall(r"^## (\S+)$", text, flags=re.MULTILINE)
    assert sections == [r["alert"] for r in rules()]
    for section in text.split("\n## ")[1:]:
        assert all(f"**{part}.**" in section for part in ("Meaning", "Check", "Fix")), section.splitlines()[0]
