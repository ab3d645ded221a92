"""`jobs/` is the pure core: importing it, every module of it, loads no library the farm reads or writes files,
talks to the network, or computes with; those belong to the shells (`cluster/`) and the model layer (`ltx2/`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FORBIDDEN = (
    "sqlite3",  # the campaign store (cluster/campaign_store.py)
    "yaml",  # manifests and job files (cluster/campaign_manifest.py)
    "torch",
    "safetensors",
    "numpy",
    "ray",
    "boto3",  # S3 (cluster/storage.py)
    "botocore",
    "s3transfer",
    "urllib3",
    "requests",
    "http.client",
    "urllib.request",
    "av",  # PyAV: media files (ltx2/media.py)
    "cv2",  # OpenCV: control passes (ltx2/control.py)
    "PIL",  # input images (cluster/inputs.py)
    "cluster",  # the shells sit above the core: the core never calls back into them
    "ltx2",
)
"""Not here: standard-library modules that pydantic itself loads (`socket`, `shutil`, `tempfile`, `csv`, through
`importlib.metadata`), which say nothing about what the core does."""

REPO = Path(__file__).resolve().parent.parent

# In a fresh interpreter: import `jobs` and then each of its modules (found by pkgutil, so a new one is covered),
# recording after each import which forbidden modules it newly loaded.
PROBE = """
import importlib, json, pkgutil, sys
forbidden = tuple(sys.argv[1:])
def loaded():
    return {f for f in forbidden if any(m == f or m.startswith(f + ".") for m in sys.modules)}
import jobs
found = {"jobs": sorted(loaded())}
for module in pkgutil.walk_packages(jobs.__path__, "jobs."):
    before = loaded()
    importlib.import_module(module.name)
    found[module.name] = sorted(loaded() - before)
print(json.dumps(found))
"""


def test_the_core_imports_no_io_library():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    argv = [sys.executable, "-c", PROBE, *FORBIDDEN]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"importing the core failed:\n{result.stderr}"
    found = json.loads(result.stdout)
    assert {"jobs.spec", "jobs.plan", "jobs.schedule", "jobs.windows", "jobs.keys", "jobs.fallback"} <= set(found)
    offenders = {module: libraries for module, libraries in found.items() if libraries}
    assert not offenders, (
        f"the pure core (jobs/) loads I/O libraries: {offenders}; move that code to the shells (cluster/) or the "
        "model layer (ltx2/)"
    )
