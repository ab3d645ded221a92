"""The conditioned campaign of docs/jobs.md, run as written: `examples`, `campaign submit`, `campaign run`."""

from __future__ import annotations

import json
import os

from cluster.campaign_store import Store
from tests.test_cli import run


def test_conditioned_example_campaign_runs_on_the_local_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("LTX2_FARM_DB", str(tmp_path / "farm.db"))
    monkeypatch.setenv("LTX2_FARM_CONTROL_DIR", str(tmp_path / "controls"))
    written = run("examples", str(tmp_path / "demo"), "--json")
    assert written.returncode == 0, written.stderr
    manifest = json.loads(written.stdout)["manifest"]
    submitted = run("campaign", "submit", manifest, "--json")
    assert submitted.returncode == 0, submitted.stderr
    ran = run("campaign", "run", "--tiny", "--workers", "2", "--out", str(tmp_path / "out"), "--json")
    assert ran.returncode == 0, ran.stderr
    store = Store(tmp_path / "farm.db")
    jobs = {j["id"]: j for j in store.jobs("conditioned-demo")}
    assert {j["state"] for j in jobs.values()} == {"done"}, {k: (j["state"], j["error"]) for k, j in jobs.items()}
    assert set(jobs) == {"product", "storyboard", "edges", "depth", "voice", "branded"}
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "out" / "conditioned-demo").glob("*.json")]
    by_kind = {
        "image": [d for d in sidecars if d["job"]["images"]],
        "control": [d for d in sidecars if d["job"]["control"]],
        "audio": [d for d in sidecars if d["job"]["audio"]],
        "lora": [d for d in sidecars if d["job"]["loras"]],
    }
    assert [len(v) for v in by_kind.values()] == [2, 2, 1, 1]
    assert by_kind["audio"][0]["media"]["audio_codec"] == "flac"  # the WAV track carried losslessly
    assert os.path.exists(by_kind["control"][0]["job"]["control"]["reference"])
