"""Cold start, warm start and farm overhead of one whole job at the real 19B shape, on one GPU.

Real weights cannot be downloaded, so the script first writes a checkpoint set with the real LTX-2 19B
configs and seeded random weights, in the official on-disk format: the same keys, key layout, metadata
schema, Gemma folder layout and value rules as `ltx2/tiny.py` (which it imports for the tokenizer and the
JSON files), but streamed tensor by tensor from the GPU (the tiny writer builds each file in host memory,
twice the 43 GB checkpoint here). Then, in the same process:

1. cold start: files on disk -> `cluster.worker.RenderWorker(...)` (`ltx2.models.load_resident_models`)
   returns, every component timed separately (the page cache is dropped first where the kernel allows it);
2. job A, the first job on the fresh worker, and job B, a second job (new prompt and seed) on the same
   worker: wall time of `render_in_process(worker, job, out_dir)` (render, then publish into `out_dir`) split
   into time inside the transformer's forwards (hooks with `torch.cuda.synchronize()` on the 19B `LTXModel`)
   and everything else, by stage;
   for job B also `LOAD_COUNTER` before/after and the time from submit to the first denoising step.

Ray is not on the GPU machines: this is the in-process worker path; Ray object transfer is not included.
Since the worker hashes its model files in a background thread from its start (`RenderWorker.__init__`),
each `cached_file_sha256` call is also timed (file, seconds, start/end from the worker's creation) and the
job's wait for the digests is the `model_hashes` event. Likewise the worker's background copy of the weights
the distilled LoRA changes (`ResidentLoras.warm_originals`) is timed (`lora_originals_copy`), and so is the
first fusion's wait for it (a `wait for the LoRA originals copy` event, `lora_originals_wait_s`).

    OUT=$OUT python bench/start_and_overhead.py     # -> $OUT/start_and_overhead.json (+ log, sidecars)
    env: ROOT=/tmp/ltx2-real  STEPS=3  SIZE=704x1280x121  LORA_RANK=384  GEMMA_DIR=auto|<folder>
    SMOKE=1 OUT=/tmp/x python bench/start_and_overhead.py   # CPU plumbing check: 2 layers, 128x192x9
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import copy  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

T_TORCH = time.perf_counter()

from bench.boto3_stub import stub_boto3_if_missing  # noqa: E402
from ltx2 import tiny  # noqa: E402
from ltx2.checkpoint import CheckpointSet  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not SMOKE else "cpu")
OUT = Path(os.environ.get("OUT", "bench/results"))
ROOT = Path(os.environ.get("ROOT", "/tmp/ltx2-real"))
STEPS = int(os.environ.get("STEPS", "2" if SMOKE else "3"))
H, W, F = map(int, os.environ.get("SIZE", "128x192x9" if SMOKE else "704x1280x121").split("x"))
LORA_RANK = int(os.environ.get("LORA_RANK", "8" if SMOKE else "384"))
FP8 = os.environ.get("FP8") == "1"  # the worker's --fp8 (ltx2/fp8_linear.py)
FP8_ATTENTION = os.environ.get("FP8_ATTENTION") == "1"  # the worker's --fp8-attention (needs cudnn-frontend)
EXTRAPOLATE_STEPS = 40
GIB = 2**30

# --- the real configs -------------------------------------------------------------------------------------
# Transformer: the keys of the tiny config (the official metadata schema) with the 19B values: 48 blocks,
# video 32 x 128, audio 32 x 64, Gemma-3 captions (3840), text connectors 30 x 128 x 2 layers (ltx-core's
# defaults; 18.88 B parameters, DESIGN.md).
REAL_TRANSFORMER_CONFIG = copy.deepcopy(tiny.TINY_TRANSFORMER_CONFIG) | {
    "attention_head_dim": 128,
    "caption_channels": 3840,
    "cross_attention_dim": 4096,
    "num_attention_heads": 32,
    "num_layers": 2 if SMOKE else 48,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "connector_attention_head_dim": 128,
    "connector_num_attention_heads": 30,
    "connector_num_layers": 2,
    "connector_num_learnable_registers": 128,
}
# Video VAE of LTX-2.0 (the layout of diffusers' LTX-2.0 conversion, in ltx-core's block names): encoder
# 128 -> 2048 channels in 4 steps, decoder 1024 -> 128 through 3 residual depth-to-space x2 upsamplers.
REAL_VAE_CONFIG = copy.deepcopy(tiny.TINY_VAE_CONFIG) | {
    "encoder_blocks": [
        ["res_x", {"num_layers": 4}],
        ["compress_space_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_time_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
    ],
    "decoder_blocks": [
        ["res_x", {"num_layers": 5}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5}],
    ],
    "encoder_base_channels": 128,
    "decoder_base_channels": 128,
}
REAL_VAE_CONFIG.pop("spatial_padding_mode")  # ltx-core's defaults: zeros for the encoder, reflect for the decoder
REAL_AUDIO_VAE_CONFIG = copy.deepcopy(tiny.TINY_AUDIO_VAE_CONFIG)
REAL_AUDIO_VAE_CONFIG["model"]["params"]["ddconfig"] |= {"ch_mult": [1, 2, 4], "num_res_blocks": 2}
REAL_VOCODER_CONFIG = {  # HiFi-GAN, 16 kHz mel -> 24 kHz stereo
    "resblock": "1",
    "stereo": True,
    "upsample_rates": [6, 5, 2, 2, 2],
    "upsample_kernel_sizes": [16, 15, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "upsample_initial_channel": 1024,
    "output_sampling_rate": 24000,
}
REAL_UPSAMPLER_CONFIG = copy.deepcopy(tiny.TINY_UPSAMPLER_CONFIG) | {"mid_channels": 512, "num_blocks_per_stage": 4}


def real_ltx_config() -> dict:
    return {
        "transformer": REAL_TRANSFORMER_CONFIG,
        "vae": REAL_VAE_CONFIG,
        "audio_vae": REAL_AUDIO_VAE_CONFIG,
        "vocoder": REAL_VOCODER_CONFIG,
    }


def real_gemma_config() -> dict:
    """Gemma-3-12B-it as ltx-core hard-codes it (`GEMMA3_CONFIG_FOR_LTX`): 48 layers x 3840, 262k vocab."""
    from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX

    config = GEMMA3_CONFIG_FOR_LTX.to_dict()
    config["torch_dtype"] = "bfloat16"
    if SMOKE:
        config["text_config"]["num_hidden_layers"] = 2
        config["vision_config"]["num_hidden_layers"] = 1
    return config


# --- streamed writer in the official format ----------------------------------------------------------------


class Staging:
    """One pinned host buffer, reused for every tensor on its way from the GPU to the file."""

    def __init__(self, capacity: int) -> None:
        self.buf = torch.empty(capacity, dtype=torch.uint8, pin_memory=DEVICE.type == "cuda")


def _value(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """tiny._random_init's value rule (norm scales ~1, biases ~0, weights N(0, 1/fan_in)), on DEVICE, bf16."""
    leaf = name.rsplit(".", 1)[-1]
    if "std-of-means" in name:
        return torch.ones(shape, device=DEVICE, dtype=torch.bfloat16)
    noise = torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.float32)
    if name.endswith("lora_B.weight"):
        value = noise * 1e-3  # small deltas: stage 2 stays finite with random weights
    elif "mean-of-means" in name or leaf == "bias":
        value = noise * 0.01
    elif len(shape) <= 1:
        value = noise.mul_(0.01).add_(1.0)
    else:
        value = noise.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    return value.to(torch.bfloat16)


def safetensors_header(shapes: dict[str, tuple[int, ...]], metadata: dict) -> bytes:
    """Length and header of a file of bf16 `shapes` in name order (canonical JSON as tiny.save_file)."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in sorted(shapes):
        nbytes = 2 * math.prod(shapes[name])
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    canonical = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    canonical += b" " * (-len(canonical) % 8)
    return struct.pack("<Q", len(canonical)) + canonical


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict) -> dict:
    """The file `write_safetensors` writes, header only: truncated to its full size, no data written (a sparse
    file), for what reads headers alone (bench/header_check.py)."""
    header = safetensors_header(shapes, metadata)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + nbytes(shapes))
    return {"file": path.name, "bytes": path.stat().st_size, "tensors": len(shapes), "header_bytes": len(header)}


def write_safetensors(
    path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict, staging: Staging, seed: int
) -> dict:
    """Write bf16 random tensors into a safetensors file (canonical header as tiny.save_file); returns stats."""
    started = time.perf_counter()
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as f:
        f.write(safetensors_header(shapes, metadata))
        for name in sorted(shapes):
            flat = _value(name, shapes[name], gen).reshape(-1).view(torch.uint8)
            n = flat.numel()
            if n > staging.buf.numel():
                staging.buf = torch.empty(n, dtype=torch.uint8, pin_memory=DEVICE.type == "cuda")
            staging.buf[:n].copy_(flat)
            f.write(staging.buf[:n].numpy().data)
    os.replace(tmp, path)
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    log("wrote", path, f"{size / 1e9:.2f} GB in {seconds:.1f} s")
    return {
        "file": path.name,
        "bytes": size,
        "tensors": len(shapes),
        "seconds": round(seconds, 2),
        "gb_per_s": round(size / seconds / 1e9, 2),
    }


def _meta_state(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def ltx_checkpoint_shapes(config: dict, gemma_text: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the single-file checkpoint, keyed as the official file (and tiny.py) keys it."""
    from ltx2.layout import checkpoint_components, checkpoint_key

    shapes: dict[str, tuple[int, ...]] = {}
    for component in checkpoint_components(gemma_text["hidden_size"], gemma_text["num_hidden_layers"]):
        with torch.device("meta"):
            module = component.configurator.from_config(config)
        shapes |= {checkpoint_key(component, name): shape for name, shape in _meta_state(module).items()}
    return shapes


def lora_shapes(checkpoint_shapes: dict[str, tuple[int, ...]], rank: int) -> dict[str, tuple[int, ...]]:
    """The distilled LoRA's tensors: every 2-D block weight, ComfyUI names (as tiny._write_lora)."""
    shapes = {}
    for key, shape in checkpoint_shapes.items():
        name = key.removeprefix("model.diffusion_model.")
        if name.startswith("transformer_blocks.") and name.endswith(".weight") and len(shape) == 2:
            prefix = "diffusion_model." + name.removesuffix(".weight")
            shapes[f"{prefix}.lora_A.weight"] = (rank, shape[1])
            shapes[f"{prefix}.lora_B.weight"] = (shape[0], rank)
    return shapes


def gemma_shapes(gemma_config: dict) -> dict[str, tuple[int, ...]]:
    """Gemma-3 tensors under the Hub's keys (`tiny.gemma_hub_key`), tied lm_head left out."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(copy.deepcopy(gemma_config)))
    return {hub: shape for name, shape in _meta_state(model).items() if (hub := tiny.gemma_hub_key(name)) is not None}


def nbytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(2 * math.prod(s) for s in shapes.values())


def free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def write_real_checkpoint_set(root: Path, report: dict) -> CheckpointSet:
    """Generate the set; the Gemma folder goes to /dev/shm when the disk cannot hold everything."""
    config, gemma_config = real_ltx_config(), real_gemma_config()
    ckpt_shapes = ltx_checkpoint_shapes(config, gemma_config["text_config"])
    up_shapes = {}
    from ltx_core.model.upsampler import LatentUpsamplerConfigurator

    with torch.device("meta"):
        up_shapes = _meta_state(LatentUpsamplerConfigurator.from_config(REAL_UPSAMPLER_CONFIG))
    g_shapes = gemma_shapes(gemma_config)
    rank = LORA_RANK
    disk_free = free_bytes(root)
    main_bytes = nbytes(ckpt_shapes) + nbytes(up_shapes)
    gemma_bytes = nbytes(g_shapes)
    margin = 2 * GIB
    gemma_dir = os.environ.get("GEMMA_DIR", "auto")
    if gemma_dir == "auto":
        fits = main_bytes + nbytes(lora_shapes(ckpt_shapes, rank)) + gemma_bytes + margin <= disk_free
        gemma_root = root / "gemma-3-12b-it" if fits else Path("/dev/shm/ltx2-real/gemma-3-12b-it")
    else:
        gemma_root = Path(gemma_dir)
    on_disk_budget = disk_free - margin - main_bytes - (gemma_bytes if gemma_root.is_relative_to(root) else 0)
    while rank > 8 and nbytes(lora_shapes(ckpt_shapes, rank)) > on_disk_budget:
        rank //= 2
    if not gemma_root.is_relative_to(root) and free_bytes(gemma_root.parent) < gemma_bytes + GIB:
        os.system(f"mount -o remount,size={int((gemma_bytes + 4 * GIB) / GIB)}G /dev/shm")
    paths = CheckpointSet(
        checkpoint=root / "ltx-2-19b-dev.safetensors",
        gemma_root=gemma_root,
        spatial_upsampler=root / "ltx-2-spatial-upscaler-x2-1.0.safetensors",
        distilled_lora=root / f"ltx-2-19b-distilled-lora-{rank}.safetensors",
    )
    gen = report.setdefault("generate", {})
    gen.update(
        disk_free_gb_before=round(disk_free / 1e9, 1),
        shm_free_gb=round(free_bytes(Path("/dev/shm")) / 1e9, 1) if Path("/dev/shm").exists() else None,
        gemma_root=str(gemma_root),
        gemma_on=("disk" if gemma_root.is_relative_to(root) else "/dev/shm (RAM)"),
        lora_rank=rank,
        lora_rank_official=384,
        files=[],
    )
    staging = Staging(64 * 2**20)
    started = time.perf_counter()
    metadata = {"config": json.dumps(config), "model_version": "2.0.0-bench-random"}
    gen["files"].append(write_safetensors(paths.checkpoint, ckpt_shapes, metadata, staging, seed=1))
    flush(report)
    gen["files"].append(
        write_safetensors(paths.spatial_upsampler, up_shapes, {"config": json.dumps(REAL_UPSAMPLER_CONFIG)}, staging, 2)
    )
    gen["files"].append(
        write_safetensors(paths.distilled_lora, lora_shapes(ckpt_shapes, rank), {"format": "pt"}, staging, 3)
    )
    flush(report)
    write_gemma_folder(gemma_root, gemma_config, g_shapes, staging, gen)
    gen["seconds"] = round(time.perf_counter() - started, 1)
    gen["total_gb"] = round(sum(f["bytes"] for f in gen["files"]) / 1e9, 2)
    del staging
    return paths


def write_gemma_folder(
    root: Path, config: dict, shapes: dict, staging: Staging | None, gen: dict, shard_gb: float = 5.0
) -> None:
    """The Hugging Face Gemma-3 folder: ~5 GB shards + index, config, preprocessor config, tokenizer (without
    `staging`, shards of headers only: `write_header_only`)."""
    root.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    for name in sorted(shapes):
        if shards[-1] and nbytes(shards[-1]) + nbytes({name: shapes[name]}) > shard_gb * 1e9:
            shards.append({})
        shards[-1][name] = shapes[name]
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        if staging is None:
            gen["files"].append(write_header_only(root / file, shard, {"format": "pt"}))
        else:
            gen["files"].append(write_safetensors(root / file, shard, {"format": "pt"}, staging, seed=10 + i))
        weight_map |= {k: file for k in shard}
    tiny.write_gemma_files_besides_weights(root, config, weight_map, nbytes(shapes))


# --- measurement ------------------------------------------------------------------------------------------

REPORT: dict = {}
LOG: list[str] = []


def log(*parts: object) -> None:
    line = f"[{time.perf_counter() - T_START:7.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def flush(report: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "start_and_overhead.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (OUT / "start_and_overhead.log").write_text("\n".join(LOG) + "\n")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def module_gib(module: torch.nn.Module) -> float:
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for b in module.buffers())
    return round(total / GIB, 2)


def host_memory() -> dict:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        if key in ("MemTotal", "MemAvailable", "Cached", "Shmem"):
            info[key] = round(int(value.split()[0]) / 2**20, 1)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            info["process_rss"] = round(int(line.split()[1]) / 2**20, 1)
    return {k + "_gib": v for k, v in info.items()}


def drop_page_cache() -> dict:
    started = time.perf_counter()
    os.sync()
    synced = time.perf_counter() - started
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        dropped = True
    except OSError as e:
        dropped = f"no ({e})"
    return {"sync_s": round(synced, 1), "dropped": dropped, "host_after": host_memory()}


def cold_start(paths: CheckpointSet) -> object:
    """RenderWorker(...) from files on disk, each component's build timed (the farm's code, unmodified)."""
    import ltx2.lora as ll
    import ltx2.models as lm

    components: list[dict] = []
    original_build, original_validate = lm._build, lm.validate_checkpoint_set

    def timed_build(builder, source, what, device, dtype):
        sync()
        t = time.perf_counter()
        module = original_build(builder, source, what, device, dtype)
        sync()
        components.append({"component": what, "seconds": round(time.perf_counter() - t, 2), "gib": module_gib(module)})
        log("loaded", components[-1])
        return module

    def timed_validate(p):
        t = time.perf_counter()
        config = original_validate(p)
        components.append(
            {"component": "validate checkpoint set (headers)", "seconds": round(time.perf_counter() - t, 2)}
        )
        return config

    lm._build, lm.validate_checkpoint_set = timed_build, timed_validate
    ll.LoraFusion.__post_init__ = timed(
        "LoraFusion init (LoRA file read + key check)", ll.LoraFusion.__post_init__, device_sync=False
    )
    if hasattr(ll, "load_lora"):  # the LoRA file is read lazily, at the first fuse
        original_load = ll.load_lora

        def timed_load(path):
            return timed(f"read LoRA file {Path(path).name}", original_load, device_sync=False)(path)

        ll.load_lora = timed_load

    if hasattr(ll.ResidentLoras, "warm_originals"):  # the background copy of the originals (from cd9e32d)
        original_warm = ll.ResidentLoras.warm_originals

        def timed_warm(self):
            t = time.perf_counter()
            original_warm(self)
            thread = self._warming
            LORA_WARM.update(thread=thread.name, start_s=round(t - T_WORKER[0], 2))
            original_join = thread.join

            def waited_join(timeout=None):  # ResidentLoras.use joins it before the first weight change
                t0 = time.perf_counter()
                running = thread.is_alive()
                original_join(timeout)
                EVENTS.append(
                    {
                        "event": "wait for the LoRA originals copy (ResidentLoras.use joins it)",
                        "stage": CURRENT["stage"],
                        "seconds": round(time.perf_counter() - t0, 3),
                        "copy_running_at_join": running,
                        "at_s": round(t0 - T_WORKER[0], 2),
                    }
                )

            thread.join = waited_join

            def watch() -> None:
                original_join()
                end = time.perf_counter()
                LORA_WARM.update(
                    end_s=round(end - T_WORKER[0], 2),
                    seconds=round(end - t, 2),
                    tensors=len(self._originals),
                    gib=round(sum(v.nbytes for v in self._originals.values()) / GIB, 2),
                    pinned=all(v.is_pinned() for v in self._originals.values()) if DEVICE.type == "cuda" else None,
                    host_after=host_memory(),
                )

            threading.Thread(target=watch, name="bench-watch-lora-originals", daemon=True).start()

        ll.ResidentLoras.warm_originals = timed_warm

    REPORT["info"]["boto3"] = stub_boto3_if_missing()
    import cluster.worker as cw
    from cluster.worker import RenderWorker
    from cluster.worker_options import WorkerOptions
    from ltx2.models import LOAD_COUNTER

    original_sha = cw.cached_file_sha256

    def timed_sha(path):
        t = time.perf_counter()
        digest = original_sha(path)
        end = time.perf_counter()
        HASHES.append(
            {
                "file": Path(path).name,
                "thread": threading.current_thread().name,
                "seconds": round(end - t, 3),
                "start_s": round(t - T_WORKER[0], 2),
                "end_s": round(end - T_WORKER[0], 2),
            }
        )
        return digest

    cw.cached_file_sha256 = timed_sha

    t_imports = time.perf_counter()
    cold = REPORT.setdefault("cold_start", {})
    cold["import_cluster_worker_s"] = round(t_imports - T_AFTER_GEN, 2)  # ltx_core already imported by the generator
    if DEVICE.type == "cuda":
        t = time.perf_counter()
        torch.cuda.init()
        torch.zeros(1, device=DEVICE)
        sync()
        cold["cuda_context_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    T_WORKER[0] = t
    worker = RenderWorker(paths, WorkerOptions(device=str(DEVICE), fp8=FP8, fp8_attention=FP8_ATTENTION))
    sync()
    cold["render_worker_init_s"] = round(time.perf_counter() - t, 2)
    cold["load_resident_models_s"] = round(worker.models.load_seconds, 2)
    cold["speed_options"] = dataclasses.asdict(worker.speed)  # what the worker chose: FA4 only where it imports
    cold["components"] = components
    cold["lora_events_during_load"] = list(EVENTS)
    cold["load_counter_after"] = LOAD_COUNTER["loads"]
    cold["gpu_allocated_gib"] = round(torch.cuda.memory_allocated() / GIB, 2) if DEVICE.type == "cuda" else None
    cold["host_after"] = host_memory()
    cold["resident_gib_by_component"] = {
        "transformer": module_gib(worker.models.transformer),
        "text_encoder": module_gib(worker.models.text_encoder),
        "embeddings_processor": module_gib(worker.models.embeddings_processor),
        "video_encoder": module_gib(worker.models.video_encoder),
        "video_decoder": module_gib(worker.models.video_decoder),
        "audio_decoder": module_gib(worker.models.audio_decoder),
        "vocoder": module_gib(worker.models.vocoder),
        "upsampler": module_gib(worker.models.upsampler),
    }
    EVENTS.clear()
    return worker


CURRENT: dict = {"stage": "submit"}
LORA_WARM: dict = {}  # the background copy of the originals the distilled LoRA changes (s from worker creation)
HASHES: list[dict] = []  # every cached_file_sha256 call (the worker's background thread included)
T_WORKER = [0.0]  # perf_counter when RenderWorker(...) was called
EVENTS: list[dict] = []
FORWARDS: list[dict] = []
STEPS_DONE: list[dict] = []


def timed(name: str, fn, device_sync: bool = True):
    """`fn` wrapped to record each call's time as an event `name` of the current stage (`EVENTS`).
    `device_sync=False` for host work, such as the writer thread's, which runs while the GPU works."""

    def wrapper(*args, **kwargs):
        if device_sync:
            sync()
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        if device_sync:
            sync()
        EVENTS.append({"event": name, "stage": CURRENT["stage"], "seconds": round(time.perf_counter() - t, 3)})
        return result

    return wrapper


def install_job_probes(worker) -> None:
    """Hooks and wrappers that observe the farm's own code paths (nothing in them changes what runs)."""
    import cluster.worker as cw
    import ltx2.lora as ll
    import ltx2.render as lr
    import ltx2.stages as ls

    velocity = worker.models.transformer.velocity_model

    def pre(module, args, kwargs):
        sync()
        CURRENT["fwd_start"] = time.perf_counter()

    def post(module, args, kwargs, output):
        sync()
        end = time.perf_counter()
        FORWARDS.append(
            {"stage": CURRENT["stage"], "start": CURRENT["fwd_start"], "seconds": end - CURRENT["fwd_start"]}
        )

    velocity.register_forward_pre_hook(pre, with_kwargs=True)
    velocity.register_forward_hook(post, with_kwargs=True)

    class StageTimer(lr._Timer):
        def __enter__(self) -> None:
            super().__enter__()
            CURRENT["stage"] = self._name

        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            CURRENT["stage"] = "after_" + self._name

    lr._Timer = StageTimer

    ll.LoraFusion.fuse = timed("lora fuse", ll.LoraFusion.fuse)
    # the pieces of a stage around its steps (stage 2 sets up at full resolution, then restores in background)
    ll.ResidentLoras.use = timed("ResidentLoras.use (LoRA state for the stage; fuse included)", ll.ResidentLoras.use)
    ll.ResidentLoras.restore_in_background = timed(  # host time only: its copies overlap the decode by design
        "ResidentLoras.restore_in_background (enqueue, host)", ll.ResidentLoras.restore_in_background, False
    )
    ls.image_conditionings = timed("image_conditionings", ls.image_conditionings)
    ls.stage1_chunk = timed("stage1_chunk (stage 1, its steps included)", ls.stage1_chunk)
    lr.Renderer._refine = timed("Renderer._refine (stage 2's steps)", lr.Renderer._refine)
    blocking_unfuse = timed("lora unfuse", ll.LoraFusion.unfuse)
    plain_unfuse = ll.LoraFusion.unfuse

    def unfuse(self, stream=None):
        if stream is None:
            return blocking_unfuse(self)
        EVENTS.append({"event": "lora unfuse (background restore, enqueued)", "stage": CURRENT["stage"], "seconds": 0})
        return plain_unfuse(self, stream=stream)  # no sync here: it overlaps the decode by design

    ll.LoraFusion.unfuse = unfuse
    plain_prefetch = ll.ResidentLoras.prefetch

    def prefetch(self, *args, **kwargs):
        t = time.perf_counter()
        copied = plain_prefetch(self, *args, **kwargs)
        free = round(torch.cuda.mem_get_info()[0] / 2**30, 1) if torch.cuda.is_available() else None
        event = f"lora prefetch to the GPU ({copied / 2**30:.1f} GiB started; {free} GiB free after)"
        EVENTS.append({"event": event, "stage": CURRENT["stage"], "seconds": round(time.perf_counter() - t, 3)})
        return copied

    ll.ResidentLoras.prefetch = prefetch
    writer = cw.Mp4Writer
    writer.add_frames = timed("MP4 encode of one run of frames (during the decode)", writer.add_frames, False)
    writer.close = timed("MP4 close (last frames, AAC, move into place)", writer.close, False)
    cw.probe_mp4 = timed("probe_mp4 (read the MP4 back)", cw.probe_mp4, False)
    cw.validate_for_model = timed("validate_for_model", cw.validate_for_model)
    cw.TensorDigest.update = timed("content hash (a run of frames, or the waveform)", cw.TensorDigest.update, False)
    worker.model_hashes = timed("model_hashes (SHA-256 of every model file)", worker.model_hashes)
    on_step = worker._on_step

    def counted_step(stage: str, step: int, total: int, seconds: float = 0.0) -> None:
        STEPS_DONE.append({"stage": stage, "step": step, "total": total, "seconds": seconds, "at": time.perf_counter()})
        on_step(stage, step, total, seconds)

    worker._on_step = counted_step


def bench_job(tag: str, prompt: str, seed: int):
    from jobs.spec import validate_job

    return validate_job(
        {
            "name": f"bench-{tag}",
            "prompt": prompt,
            "seed": seed,
            "height": H,
            "width": W,
            "num_frames": F,
            "frame_rate": 24,
            "recipe": "two_stage",
            "steps": STEPS,
        }
    )


def run_pipelined(worker, count: int, prompt: str, out_dir: Path) -> dict:
    """`count` warm jobs sent at once, `JOBS_PER_WORKER` of them in flight (as the campaign runner keeps a
    worker): each job's model work (its sidecar's timeline) follows the last one's, and its mux, probe,
    hashes and sidecar run meanwhile. The GPU period per job in steady state is the time from one job's
    model start to the next one's; what of it is not forwards (or the VAE decode) is the farm's share."""
    from cluster.worker import JOBS_PER_WORKER, render_in_process

    FORWARDS.clear()
    EVENTS.clear()
    CURRENT["stage"] = "pipelined"
    slots = threading.Semaphore(JOBS_PER_WORKER)
    sidecars: list = [None] * count
    errors: list = []

    def one(i: int) -> None:
        with slots:
            try:
                sidecars[i] = render_in_process(worker, bench_job(f"P{i}", prompt, 20 + i), out_dir).document
            except BaseException as e:  # reported, not swallowed
                errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    sync()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
        time.sleep(0.05)  # in order, as a runner submits them
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        return {"errors": errors}
    phases = sorted((d["timeline_unix"]["model_start"], d["timeline_unix"]["model_end"]) for d in sidecars)
    periods = [b[0] - a[0] for a, b in itertools.pairwise(phases)]
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(phases)]
    per_job_forward = sum(f["seconds"] for f in FORWARDS) / count
    per_job_decode = statistics.median(d["timings_s"]["decode"] for d in sidecars)
    period = statistics.median(periods) if periods else wall
    farm = period - per_job_forward - per_job_decode
    return {
        "jobs": count,
        "in_flight": JOBS_PER_WORKER,
        "wall_s": round(wall, 3),
        "gpu_period_per_job_s": round(period, 3),
        "gaps_between_model_work_s": [round(g, 3) for g in gaps],
        "forward_per_job_s": round(per_job_forward, 3),
        "decode_per_job_s": round(per_job_decode, 3),
        "mux_per_job_s": [round(d["timings_s"]["mux"], 3) for d in sidecars],
        "non_forward_non_decode_per_job_s": round(farm, 3),
        "non_forward_non_decode_fraction": round(farm / period, 4),
        "non_forward_fraction_decode_counted_as_overhead": round((period - per_job_forward) / period, 4),
        "events": EVENTS[:],
        "timelines": [d["timeline_unix"] for d in sidecars],
        "sidecar_timings_s": [d["timings_s"] for d in sidecars],
    }


def run_job(worker, tag: str, prompt: str, seed: int, out_dir: Path) -> dict:
    from ltx2.models import LOAD_COUNTER

    FORWARDS.clear()
    EVENTS.clear()
    STEPS_DONE.clear()
    CURRENT["stage"] = "submit"
    retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0) if DEVICE.type == "cuda" else 0
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loads_before = LOAD_COUNTER["loads"]
    sync()
    t_submit = time.perf_counter()
    job = bench_job(tag, prompt, seed)
    t_valid = time.perf_counter()
    hashes_before = len(HASHES)
    from cluster.worker import render_in_process

    sidecar = render_in_process(worker, job, out_dir).document
    sync()
    t_end = time.perf_counter()
    wall = t_end - t_submit
    forward_s = sum(f["seconds"] for f in FORWARDS)
    by_stage: dict[str, dict] = {}
    for f in FORWARDS:
        entry = by_stage.setdefault(f["stage"], {"forwards": 0, "forward_s": 0.0})
        entry["forwards"] += 1
        entry["forward_s"] += f["seconds"]
    timings = sidecar["timings_s"]
    stages = {}
    for stage in ("text_encode", "stage_1", "upsample", "stage_2", "decode", "audio", "mux"):
        fwd = by_stage.get(stage, {}).get("forward_s", 0.0)
        stages[stage] = {
            "wall_s": round(timings.get(stage, 0.0), 3),
            "forward_s": round(fwd, 3),
            "forwards": by_stage.get(stage, {}).get("forwards", 0),
            "non_forward_s": round(timings.get(stage, 0.0) - fwd, 3),
        }
    in_stages = sum(timings.get(s, 0.0) for s in stages)
    stages["outside the renderer (validation, hashes, probe, sidecar)"] = {
        "wall_s": round(wall - in_stages, 3),
        "forward_s": 0.0,
        "non_forward_s": round(wall - in_stages, 3),
    }
    s1_steps = [s for s in STEPS_DONE if s["stage"] == "stage_1"]
    first_fwd = FORWARDS[0]["start"] if FORWARDS else None
    result = {
        "job": {"prompt": prompt, "seed": seed, "size": [H, W, F], "recipe": "two_stage", "steps": STEPS},
        "wall_s": round(wall, 3),
        "validate_job_s": round(t_valid - t_submit, 4),
        "forward_s": round(forward_s, 3),
        "non_forward_s": round(wall - forward_s, 3),
        "non_forward_fraction": round((wall - forward_s) / wall, 4),
        "forwards": len(FORWARDS),
        "stages": stages,
        "events": EVENTS[:],
        "submit_s_after_worker_created": round(t_submit - T_WORKER[0], 2),
        "file_hashes_during_job": HASHES[hashes_before:],
        "lora_originals_wait_s": round(sum(e["seconds"] for e in EVENTS if e["event"].startswith("wait for")), 3),
        "submit_to_first_forward_s": round(first_fwd - t_submit, 3) if first_fwd else None,
        "submit_to_first_step_done_s": round(s1_steps[0]["at"] - t_submit, 3) if s1_steps else None,
        "stage_1_step_s": [round(s["seconds"], 3) for s in s1_steps],
        "stage_2_step_s": [round(s["seconds"], 3) for s in STEPS_DONE if s["stage"] == "stage_2"],
        "load_counter_before": loads_before,
        "load_counter_after": LOAD_COUNTER["loads"],
        "sidecar_timings_s": timings,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if DEVICE.type == "cuda" else None,
        # cudaMalloc failures the caching allocator recovered from by freeing its cache (slow: syncs, frees)
        "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries_before
        if DEVICE.type == "cuda"
        else None,
        "media": sidecar.get("media"),
        "output_bytes": sidecar.get("output", {}).get("bytes"),
    }
    result["extrapolated_40_steps"] = extrapolate(result, by_stage)
    (OUT / f"sidecar_{tag}.json").write_text(json.dumps(sidecar, indent=1, default=str) + "\n")
    return result


def extrapolate(result: dict, by_stage: dict) -> dict:
    """An EXTRAPOLATION to 40 stage-1 steps from the steps run: each extra step adds one step's forwards and
    the measured per-step non-forward time (median step time minus its forwards); the range's upper end
    counts all of stage 1's non-forward time as per-step."""
    s1 = result["stages"]["stage_1"]
    fwd_per_step = s1["forward_s"] / STEPS
    steps = result["stage_1_step_s"][1:] or result["stage_1_step_s"]
    per_step_other = max(0.0, statistics.median(steps) - fwd_per_step) if steps else 0.0
    once = sum(e["seconds"] for e in result["events"] if e["stage"] == "stage_1")  # LoRA unfuse: once a job
    upper_other = max(per_step_other, (s1["non_forward_s"] - once) / STEPS)
    extra = EXTRAPOLATE_STEPS - STEPS
    fwd = result["forward_s"] + extra * fwd_per_step
    out = {"label": "EXTRAPOLATION (not measured)", "stage_1_forward_per_step_s": round(fwd_per_step, 3)}
    for key, other in (("low", per_step_other), ("high", upper_other)):
        non = result["non_forward_s"] + extra * other
        out[key] = {
            "stage_1_non_forward_per_step_s": round(other, 4),
            "wall_s": round(fwd + non, 1),
            "forward_s": round(fwd, 1),
            "non_forward_s": round(non, 1),
            "non_forward_fraction": round(non / (fwd + non), 4),
        }
    return out


def main() -> None:
    global T_AFTER_GEN
    info = {
        "device": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "date": os.environ.get("DATE", "2026-11-25"),
        "commit": os.environ.get("COMMIT"),
        "machine_clock": time.strftime("%Y-%m-%d %H:%M:%S"),
        "smoke": SMOKE,
        "size": [H, W, F],
        "steps": STEPS,
        "import_torch_s": round(T_TORCH - T_START, 2),
        "host": host_memory(),
    }
    try:
        import ltx_core

        info["ltx_core"] = getattr(ltx_core, "__version__", None) or "1.0.0 (wheel)"
    except Exception as e:  # pragma: no cover
        info["ltx_core"] = repr(e)
    REPORT["info"] = info
    REPORT["configs"] = {"ltx": real_ltx_config(), "upsampler": REAL_UPSAMPLER_CONFIG, "gemma": real_gemma_config()}
    log("info", json.dumps(info))
    paths = write_real_checkpoint_set(ROOT, REPORT)
    log("generated", json.dumps({k: v for k, v in REPORT["generate"].items() if k != "files"}))
    flush(REPORT)
    torch.cuda.empty_cache()
    budget_s = float(os.environ.get("DROP_CACHES_UNTIL_S", "240"))  # past this, keep the cache (10-minute calls)
    elapsed = time.perf_counter() - T_START
    if DEVICE.type == "cuda" and os.environ.get("DROP_CACHES", "1") == "1" and elapsed < budget_s:
        REPORT["page_cache"] = drop_page_cache()
    else:
        REPORT["page_cache"] = {"dropped": False, "why": f"elapsed {elapsed:.0f} s (limit {budget_s:.0f} s) or off"}
    log("page cache", REPORT["page_cache"])
    T_AFTER_GEN = time.perf_counter()
    worker = cold_start(paths)
    log("cold start", json.dumps({k: v for k, v in REPORT["cold_start"].items() if k != "components"}))
    flush(REPORT)
    install_job_probes(worker)
    renders = ROOT / "renders"
    REPORT["job_A_first"] = run_job(
        worker, "A", "A red fox trots through fresh snow at dawn; snow crunches, a raven calls.", 10, renders
    )
    log("job A", json.dumps({k: REPORT["job_A_first"][k] for k in ("wall_s", "forward_s", "non_forward_fraction")}))
    flush(REPORT)
    REPORT["job_B_warm"] = run_job(
        worker, "B", "Waves crash against black rocks under a stormy sky while seagulls cry.", 11, renders
    )
    log(
        "job B",
        json.dumps(
            {
                k: REPORT["job_B_warm"][k]
                for k in (
                    "wall_s",
                    "forward_s",
                    "non_forward_fraction",
                    "submit_to_first_forward_s",
                    "load_counter_before",
                    "load_counter_after",
                )
            }
        ),
    )
    flush(REPORT)
    count = int(os.environ.get("PIPELINED_JOBS", "4"))
    if count > 1:
        prompt = "Waves crash against black rocks under a stormy sky while seagulls cry."
        REPORT["pipelined_warm"] = run_pipelined(worker, count, prompt, renders)
        log(
            "pipelined",
            json.dumps(
                {
                    k: v
                    for k, v in REPORT["pipelined_warm"].items()
                    if k not in ("events", "timelines", "sidecar_timings_s")
                }
            ),
        )
    REPORT["lora_originals_copy"] = dict(LORA_WARM)
    REPORT["file_hashes_all"] = HASHES[:]
    REPORT["total_script_s"] = round(time.perf_counter() - T_START, 1)
    flush(REPORT)
    log("done")


T_AFTER_GEN = T_START

if __name__ == "__main__":
    try:
        main()
    except BaseException as e:
        REPORT["error"] = repr(e)
        log("ERROR", repr(e))
        flush(REPORT)
        raise
