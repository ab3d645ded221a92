"""MP4 mux time of one job's output by libx264 preset: `ltx2.media.write_mp4` (the farm's writer, AAC audio
included) on 121 frames of 704x1280 uint8, crf 18, with the writer's preset swapped after it opens the stream.

The video is a smooth synthetic pattern, not white noise: drifting sinusoids plus bilinearly upsampled random
fields at three scales (random-ish texture that an encoder can still predict), 5 s of stereo tones at 24 kHz.

    OUT=$OUT python bench/mux_presets.py    # -> $OUT/mux_presets.json
    env: SIZE=704x1280x121  PRESETS=medium,fast,veryfast,ultrafast  CRF=18  REPS=1
    THREADS=SLICE,FRAME (PyAV's thread_type for libx264: sliced or frame threads; the writer's default first)
    THREAD_COUNTS=writer,0,8,16 (libx264's thread count: `writer` keeps the writer's, 0 is FFmpeg's auto, which
    follows the host's CPUs). X264_PARAMS=writer,mbtree=1 (`writer` keeps the writer's x264-params).
    Each run records the file's SHA-256: the same frames give the same bytes only at the same thread count and
    without x264's macroblock tree.
    CONTENT=pattern,noise (noise: uniform random pixels, the worst case, like a random-weight model's output)
    HASH_ROOT=<folder>[:<folder>...]: also time `cached_file_sha256` of every *.safetensors under it in this new process
    (the on-disk digest memo written by an earlier process).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

import ltx2.media as media

OUT = Path(os.environ.get("OUT", "bench/results"))
H, W, N = map(int, os.environ.get("SIZE", "704x1280x121").split("x"))
PRESETS = os.environ.get("PRESETS", "medium,fast,veryfast,ultrafast").split(",")
THREADS = os.environ.get("THREADS", "SLICE").split(",")
THREAD_COUNTS = os.environ.get("THREAD_COUNTS", "writer").split(",")
X264_PARAMS = os.environ.get("X264_PARAMS", "writer").split(",")
CONTENT = os.environ.get("CONTENT", "pattern").split(",")
CRF = int(os.environ.get("CRF", "18"))
REPS = int(os.environ.get("REPS", "1"))
FPS = 24.0
SAMPLE_RATE = 24000


def pattern() -> torch.Tensor:
    """uint8 [N, H, W, 3]: drifting sinusoids + smooth random fields (seeded)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(N, dtype=torch.float32).view(N, 1, 1)
    y = torch.arange(H, dtype=torch.float32).view(1, H, 1)
    x = torch.arange(W, dtype=torch.float32).view(1, 1, W)
    channels = []
    for c, (fx, fy, ft) in enumerate(((1 / 37, 1 / 53, 0.11), (1 / 61, 1 / 29, -0.07), (1 / 45, 1 / 45, 0.05))):
        channels.append(60 * torch.sin(x * fx + y * fy + t * ft + c))
    base = torch.stack(channels, dim=-1)  # [N, H, W, 3]
    texture = torch.zeros(N, 3, H, W)
    for cells, amp in ((128, 50.0), (32, 20.0), (8, 5.0)):  # coarse -> fine random fields (cell px), drifting
        keys = torch.randn(N // 8 + 2, 3, H // cells + 2, W // cells + 2, generator=gen)
        field = F.interpolate(
            keys.permute(1, 0, 2, 3).unsqueeze(0),
            size=(N, H + 2 * cells, W + 2 * cells),
            mode="trilinear",
            align_corners=False,
        )[0].permute(1, 0, 2, 3)
        shift = torch.arange(N) % (2 * cells)  # slow pan
        for i in range(N):
            s = int(shift[i])
            texture[i] += amp * field[i, :, s // 2 : s // 2 + H, s : s + W]
    video = 128 + base + texture.permute(0, 2, 3, 1)
    return video.clamp(0, 255).to(torch.uint8)


def noise() -> torch.Tensor:
    """uint8 [N, H, W, 3] of uniform random pixels (seeded): nothing for the encoder to predict."""
    return torch.randint(0, 256, (N, H, W, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def audio() -> torch.Tensor:
    samples = int(N / FPS * SAMPLE_RATE)
    tt = torch.arange(samples, dtype=torch.float32) / SAMPLE_RATE
    return torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * tt), 0.3 * torch.sin(2 * torch.pi * 330 * tt)])


def main() -> None:
    report: dict = {
        "date": os.environ.get("DATE", "2026-11-25"),
        "commit": os.environ.get("COMMIT"),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        ),
        "size": [H, W, N],
        "crf": CRF,
        "audio": f"AAC stereo {SAMPLE_RATE} Hz (the writer's)",
        "av": __import__("av").__version__,
        "writer": {"threads": media.X264_THREADS, "count": media.X264_THREAD_COUNT, "x264_params": media.X264_PARAMS},
    }
    t = time.perf_counter()
    videos, track = {name: {"pattern": pattern, "noise": noise}[name]() for name in CONTENT}, audio()
    report["pattern_s"] = round(time.perf_counter() - t, 2)
    original_init = media.Mp4Writer.__init__
    current = {"preset": "medium", "threads": "SLICE", "count": "writer", "params": "writer"}

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._video.options = dict(self._video.options, preset=current["preset"])
        self._video.codec_context.thread_type = current["threads"]  # before the first frame opens the codec
        if current["params"] != "writer":
            self._video.options = dict(self._video.options, **{"x264-params": current["params"]})
        if current["count"] != "writer":
            self._video.codec_context.thread_count = int(current["count"])

    media.Mp4Writer.__init__ = init
    out_dir = Path("/tmp/mux_presets")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    runs = [
        (r, c, p, th, n, x)
        for r in range(REPS)
        for c in CONTENT
        for p in PRESETS
        for th in THREADS
        for n in THREAD_COUNTS
        for x in X264_PARAMS
    ]
    for rep, content, preset, threads, count, params in runs:
        current.update(preset=preset, threads=threads, count=count, params=params)
        path = out_dir / f"{preset}.mp4"
        t = time.perf_counter()
        media.write_mp4(path, videos[content], FPS, track, SAMPLE_RATE, crf=CRF)
        seconds = time.perf_counter() - t
        info = media.probe_mp4(path)
        row = {
            "content": content,
            "threads": threads,
            "thread_count": count,
            "x264_params": params,
            "preset": preset,
            "rep": rep,
            "seconds": round(seconds, 3),
            "bytes": path.stat().st_size,
            "frames": info.frames,
            "audio_codec": info.audio_codec,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["runs"] = rows
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mux_presets.json").write_text(json.dumps(report, indent=1) + "\n")  # before the optional step below
    hash_root = os.environ.get("HASH_ROOT")
    if hash_root:
        from ltx2.checkpoint import cached_file_sha256, hash_cache_file

        files = sorted(f for root in hash_root.split(":") for f in Path(root).rglob("*.safetensors"))
        t = time.perf_counter()
        for f in files:
            cached_file_sha256(f)
        report["digest_memo_new_process"] = {
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "seconds": round(time.perf_counter() - t, 3),
            "memo": str(hash_cache_file()),
        }
        print(json.dumps(report["digest_memo_new_process"]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mux_presets.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
