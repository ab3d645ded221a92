"""Sample media in real formats (PNG, H.264 MP4, WAV) and the conditioned-campaign example built on them.

`ltx2-farm examples DIR` writes a manifest with an image-to-video row, a keyframe row, canny and depth
control rows, an audio-to-video row and a LoRA row, plus every file they need, for the tiny model: the
example of docs/jobs.md ("Conditioned jobs") runs as written on any machine.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml
from PIL import Image

AUDIO_RATE = 24000


def write_picture(
    path: Path, height: int = 150, width: int = 220, color: tuple[int, int, int] = (250, 250, 20)
) -> Path:
    """A gradient with a solid square: structure the VAE and the resize-and-crop policy can be checked on."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[height // 4 : height * 3 // 5, width // 4 : width * 11 // 20] = color
    Image.fromarray(rgb).save(path)
    return Path(path)


def write_clip(path: Path, frames: int, height: int = 128, width: int = 192) -> Path:
    """An H.264 clip: a bright square moving right over a gradient (a source for canny edges)."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 60)], axis=-1).astype(np.uint8)
            left = 10 + 4 * i
            rgb[40:90, left : left + 50] = 240
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def write_track(path: Path, seconds: float, codec: str = "pcm_s16le") -> Path:
    """A stereo track (two tones and a click train) at 24 kHz: WAV (pcm_s16le) or AAC in an M4A."""
    n = int(seconds * AUDIO_RATE)
    t = np.arange(n) / AUDIO_RATE
    left = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.2 * (np.arange(n) % 4800 < 40)
    right = 0.25 * np.sin(2 * np.pi * 523 * t)
    samples = np.stack([left, right]).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=AUDIO_RATE)
        stream.layout = "stereo"
        for start in range(0, n, 1024):
            chunk = samples[:, start : start + 1024]
            if codec == "pcm_s16le":
                packed = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
            else:
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


CONDITIONED_MANIFEST = {
    "campaign": "conditioned-demo",
    "defaults": {"height": 128, "width": 192, "duration": 1, "frame_rate": 24, "recipe": "distilled"},
    "rows": [
        {"id": "product", "prompt": "A yellow box turns on a table, a soft hum", "images": [{"path": "product.png"}]},
        {
            "id": "storyboard",
            "prompt": "The box slides to the left edge",
            "images": [{"path": "product.png"}, {"path": "ending.png", "frame": 16, "strength": 0.9}],
        },
        {
            "id": "edges",
            "prompt": "A white card glides right over a sunset gradient",
            "control": {"kind": "canny", "path": "source.mp4", "lora": "ic-canny.safetensors"},
        },
        {
            "id": "depth",
            "prompt": "A block drifts in front of a wall",
            "control": {"kind": "depth", "path": "depth.mp4", "lora": "ic-depth.safetensors", "strength": 0.9},
        },
        {"id": "voice", "prompt": "A singer in a small club, warm light", "audio": {"path": "voice.wav"}},
        {
            "id": "branded",
            "prompt": "A bottle on wet stone, rain on glass",
            "loras": [{"path": "style.safetensors", "strength": 0.8}],
        },
    ],
}


def write_conditioned_example(folder: Path, checkpoint: Path) -> Path:
    """Every input of the conditioned example (tiny LoRAs for `checkpoint`'s model) and its manifest."""
    from ltx2.tiny import write_tiny_lora

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_picture(folder / "product.png")
    write_picture(folder / "ending.png", color=(30, 200, 240))
    write_clip(folder / "source.mp4", 40)
    write_clip(folder / "depth.mp4", 40)
    write_track(folder / "voice.wav", 1.5)
    write_tiny_lora(folder / "style.safetensors", checkpoint, seed=11, targets="ff")
    write_tiny_lora(folder / "ic-canny.safetensors", checkpoint, seed=12, targets="attn1")
    write_tiny_lora(folder / "ic-depth.safetensors", checkpoint, seed=13, targets="attn1")
    manifest = folder / "conditioned.yaml"
    manifest.write_text(yaml.safe_dump(CONDITIONED_MANIFEST, sort_keys=False))
    return manifest
