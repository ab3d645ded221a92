"""Time of the farm's check of a checkpoint set (`ltx2.checkpoint.validate_checkpoint_set`: every header read,
config bounds, every tensor compared with what the config builds on the meta device) on the tiny set and on
a header-only fake of the real 19B set.

The fake holds every file of the real set (the 19B single-file checkpoint, the x2 upsampler, the rank-384
distilled LoRA, Gemma-3-12B's ~5 GB shards) with a header of the real size: names and shapes from the real
configs of bench/start_and_overhead.py, nothing written after the headers, each file truncated to its full
size (sparse: 40 GB apparent, a few MB on disk). The check reads no tensor, so the missing data changes
nothing it does. For comparison, what the check did before: safetensors' `safe_open` of each file (which
maps it). CPU only.

    python bench/header_check.py     # -> $OUT/header_check.json (OUT default bench/results); ROOT=/tmp/ltx2-fake
    env: REPEAT=5
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import start_and_overhead as real
from ltx2 import layout
from ltx2.checkpoint import CheckpointSet, read_safetensors_header, validate_checkpoint_set
from ltx2.tiny import ensure_tiny_checkpoint_set

OUT = Path(os.environ.get("OUT", "bench/results"))
ROOT = Path(os.environ.get("ROOT", "/tmp/ltx2-fake"))
REPEAT = int(os.environ.get("REPEAT", "5"))


def fake_real_set(root: Path) -> tuple[CheckpointSet, list[dict]]:
    """The real set's files as headers of their real size (`write_header_only`)."""
    from ltx_core.model.upsampler import LatentUpsamplerConfigurator

    root.mkdir(parents=True, exist_ok=True)
    config, gemma_config = real.real_ltx_config(), real.real_gemma_config()
    paths = CheckpointSet(
        checkpoint=root / "ltx-2-19b-dev.safetensors",
        gemma_root=root / "gemma-3-12b-it",
        spatial_upsampler=root / "ltx-2-spatial-upscaler-x2-1.0.safetensors",
        distilled_lora=root / "ltx-2-19b-distilled-lora-384.safetensors",
    )
    checkpoint = real.ltx_checkpoint_shapes(config, gemma_config["text_config"])
    with torch.device("meta"):
        upsampler = real._meta_state(LatentUpsamplerConfigurator.from_config(real.REAL_UPSAMPLER_CONFIG))
    metadata = {"config": json.dumps(config), "model_version": "2.0.0-bench-header-only"}
    files = [
        real.write_header_only(paths.checkpoint, checkpoint, metadata),
        real.write_header_only(paths.spatial_upsampler, upsampler, {"config": json.dumps(real.REAL_UPSAMPLER_CONFIG)}),
        real.write_header_only(paths.distilled_lora, real.lora_shapes(checkpoint, 384), {"format": "pt"}),
    ]
    gen: dict = {"files": files}
    real.write_gemma_folder(paths.gemma_root, gemma_config, real.gemma_shapes(gemma_config), None, gen)
    return paths, gen["files"]


def weight_files(paths: CheckpointSet) -> list[Path]:
    return [Path(p) for p in paths.files().values()]


def timed(fn, repeat: int = REPEAT, before=None) -> dict:
    seconds = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4), "runs": repeat}


def measure(name: str, paths: CheckpointSet) -> dict:
    from safetensors import safe_open

    files = weight_files(paths)
    report: dict = {
        "files": {
            p.name: {"bytes": p.stat().st_size, "disk_bytes": p.stat().st_blocks * 512, "header_bytes": None}
            for p in files
        }
    }
    for p in files:
        with p.open("rb") as f:
            report["files"][p.name]["header_bytes"] = int.from_bytes(f.read(8), "little")
    report["read_headers"] = timed(lambda: [read_safetensors_header(p) for p in files])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report["check_cold"] = timed(lambda: validate_checkpoint_set(paths), before=layout._layout.cache_clear)
    report["check_peak_rss_growth_mb"] = round(
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
    )
    report["check_warm"] = timed(lambda: validate_checkpoint_set(paths))
    gemma_text = json.loads((Path(paths.gemma_root) / "config.json").read_text())["text_config"]
    config = json.loads(read_safetensors_header(paths.checkpoint)["__metadata__"]["config"])
    builds = {}
    gemma = layout.gemma_component(json.loads((Path(paths.gemma_root) / "config.json").read_text()))
    components = layout.checkpoint_components(gemma_text["hidden_size"], gemma_text["num_hidden_layers"])
    for component in (*components, gemma):
        builds[component.what] = timed(
            lambda c=component: layout.build_layout("bench", c, config), before=layout._layout.cache_clear
        )
    report["meta_build"] = builds

    def safe_open_each() -> None:
        for p in files:
            with safe_open(str(p), framework="pt"):
                pass

    try:
        report["previous_safe_open_each"] = timed(safe_open_each)
    except (RuntimeError, OSError) as error:  # a host that cannot map the file: what the header check avoids
        report["previous_safe_open_each"] = {"error": str(error)}
    print(name, json.dumps({k: v for k, v in report.items() if k != "files"}), flush=True)
    return report


def main() -> None:
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "torch": torch.__version__},
    }
    report["tiny"] = measure("tiny", ensure_tiny_checkpoint_set())
    started = time.perf_counter()
    paths, files = fake_real_set(ROOT)
    report["real_size_fake_written_s"] = round(time.perf_counter() - started, 1)
    report["real_size_fake"] = measure("real-size fake", paths)
    report["real_size_fake"]["written"] = files
    report["machine"]["loadavg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "header_check.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
