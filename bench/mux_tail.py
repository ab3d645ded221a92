"""The MP4's tail: what the host still encodes after the last decode run, with and without PyAV's colour conversion.

At 704×1280×121 the tiled decode's last run is 41 frames, final only when the decode ends; encoding them and
closing the MP4 is most of a lone job's time outside the models (bench/README.md). This times that tail with
rgb24 frames (PyAV converts each to yuv420p with swscale in the calling thread, as `ltx2.media.Mp4Writer` does)
against yuv420p frames converted beforehand on the GPU (BT.601 limited range, 2×2 chroma means), twice each.

    python bench/mux_tail.py        # prints ms per frame and seconds; needs a GPU for the converted frames
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltx2.media import X264_PRESET, X264_THREADS

H, W, N = 704, 1280, 41


def yuv420p_on_gpu(frames: torch.Tensor) -> np.ndarray:
    """uint8 [n, h, w, 3] RGB on the GPU -> [n, h * 3 / 2, w] yuv420p planes on the host."""
    f = frames.float()
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    n = frames.shape[0]
    y = (0.2568 * r + 0.5041 * g + 0.0979 * b + 16).round().clamp(0, 255).to(torch.uint8)
    u = (-0.1482 * r - 0.2910 * g + 0.4392 * b + 128).view(n, H // 2, 2, W // 2, 2).mean((2, 4))
    v = (0.4392 * r - 0.3678 * g - 0.0714 * b + 128).view(n, H // 2, 2, W // 2, 2).mean((2, 4))
    planes = [p.round().clamp(0, 255).to(torch.uint8).reshape(n, -1) for p in (u, v)]
    return torch.cat([y.reshape(n, -1), *planes], 1).view(n, H * 3 // 2, W).cpu().numpy()


def encode(frames: np.ndarray, fmt: str) -> str:
    container = av.open("/tmp/mux_tail.mp4", "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.options = {"crf": "18", "preset": X264_PRESET}  # the writer's settings (`ltx2.media.Mp4Writer`)
    stream.codec_context.thread_type = X264_THREADS
    started = time.perf_counter()
    for i, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(array, format=fmt)
        frame.pts = i
        container.mux(stream.encode(frame))
    added = time.perf_counter()
    container.mux(stream.encode(None))
    container.close()
    return f"add {(added - started) / N * 1e3:.2f} ms/frame, with close {time.perf_counter() - started:.3f} s"


def main() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (N, H, W, 3), dtype=np.uint8)  # noise, as random weights give
    started = time.perf_counter()
    for array in rgb:
        av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
    print(f"swscale rgb24->yuv420p alone: {(time.perf_counter() - started) / N * 1e3:.2f} ms/frame")
    on_gpu = torch.from_numpy(rgb).cuda()
    yuv420p_on_gpu(on_gpu)
    torch.cuda.synchronize()
    started = time.perf_counter()
    yuv = yuv420p_on_gpu(on_gpu)
    print(f"GPU conversion + copy to the host: {(time.perf_counter() - started) / N * 1e3:.2f} ms/frame")
    for name, frames, fmt in [("rgb24", rgb, "rgb24"), ("yuv420p", yuv, "yuv420p")] * 2:
        print(name, encode(frames, fmt))
    print("cores", os.cpu_count())


if __name__ == "__main__":
    main()
