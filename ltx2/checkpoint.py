"""The official LTX-2 checkpoint set on disk, and the checks that refuse a broken one before loading.

ltx-core's loader reads with `strict=False`: a missing tensor only logs a warning and leaves the model on
the meta device. The farm checks every file up front (present, a complete safetensors file, carrying the
config metadata it needs) and, after loading, that no parameter or buffer was left unloaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on the JSON header; anything larger is not a safetensors file."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, naming the file, what is wrong and how to fix it."""

    def __init__(self, path: Path | str, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # Rebuilt from its fields wherever Ray hands it (a worker's error reaches the head as this class).
        return type(self), (self.path, self.problem, self.fix)


@dataclass(frozen=True)
class CheckpointSet:
    """The files one LTX-2 render needs, as Lightricks publishes them.

    checkpoint: the single-file model (e.g. ltx-2-19b-dev.safetensors) holding transformer, video VAE,
        audio VAE, vocoder and text projection, with its config in the safetensors metadata.
    gemma_root: the Gemma-3 folder (Hugging Face layout: config.json, model*.safetensors, tokenizer).
    spatial_upsampler: the x2 latent upsampler (e.g. ltx-2-spatial-upscaler-x2-1.0.safetensors).
    distilled_lora: the distilled LoRA used by the stage-2 refine and the distilled recipe.
    """

    checkpoint: Path
    gemma_root: Path
    spatial_upsampler: Path
    distilled_lora: Path

    def files(self) -> dict[str, Path]:
        """Every weight file of the set by role (Gemma shards included)."""
        files = {
            "checkpoint": Path(self.checkpoint),
            "spatial_upsampler": Path(self.spatial_upsampler),
            "distilled_lora": Path(self.distilled_lora),
        }
        for shard in gemma_weight_files(Path(self.gemma_root)):
            files[f"gemma/{shard.name}"] = shard
        return files


def gemma_weight_files(gemma_root: Path) -> list[Path]:
    """The safetensors shards of a Gemma folder, sorted; an error if the folder has none."""
    if not gemma_root.is_dir():
        raise CheckpointError(gemma_root, "Gemma folder not found", "pass the folder of the Gemma-3 text encoder")
    shards = sorted(p for p in gemma_root.rglob("model*.safetensors"))
    if not shards:
        raise CheckpointError(gemma_root, "no model*.safetensors shards in the Gemma folder")
    return shards


def read_safetensors_header(path: Path) -> dict:
    """Parse and check a safetensors header without loading tensors.

    Refuses a missing file, a file that is not safetensors, and a truncated file (the header promises
    more bytes than the file holds).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found", "check the path, or download the file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"not a safetensors file: only {size} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0 or header_len > MAX_HEADER_BYTES or header_len + 8 > size:
            raise CheckpointError(path, "not a safetensors file (bad header length)", "re-download the file")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"not a safetensors file (header is not JSON: {e.msg})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "not a safetensors file (header is not a JSON object)")
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(path, f"not a safetensors file (tensor {name!r} has no data offsets)")
        data_end = max(data_end, offsets[1])
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise CheckpointError(
            path,
            f"truncated: {missing} bytes missing of {8 + header_len + data_end}",
            "the download or copy was cut short; fetch the file again",
        )
    try:  # safetensors' own checks: dtypes, shapes against offsets, overlapping or out-of-order tensors
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(path, f"not a valid safetensors file ({e})", "re-download the file") from None
    return header


def read_config_metadata(path: Path) -> dict:
    """The model config JSON that an official checkpoint carries in `metadata["config"]`."""
    header = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if "config" not in metadata:
        raise CheckpointError(
            path,
            "no 'config' in the safetensors metadata",
            "use the official checkpoint file; converted or re-saved files often drop the metadata",
        )
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata 'config' is not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, "metadata 'config' is not a JSON object")
    return config


def validate_checkpoint_set(paths: CheckpointSet) -> dict:
    """Check every file of the set before any model is built; return the main checkpoint's config."""
    config = read_config_metadata(Path(paths.checkpoint))
    missing_sections = [s for s in ("transformer", "vae", "audio_vae", "vocoder") if s not in config]
    if missing_sections:
        raise CheckpointError(
            paths.checkpoint,
            f"metadata config lacks {', '.join(missing_sections)}",
            "this is not an LTX-2 audio-video checkpoint",
        )
    read_config_metadata(Path(paths.spatial_upsampler))
    read_safetensors_header(Path(paths.distilled_lora))
    gemma_root = Path(paths.gemma_root)
    for shard in gemma_weight_files(gemma_root):
        read_safetensors_header(shard)
    for required in ("config.json", "tokenizer.model", "preprocessor_config.json"):
        if not (gemma_root / required).is_file():
            raise CheckpointError(
                gemma_root / required, "file not found in the Gemma folder", "copy the whole Gemma-3 repository folder"
            )
    return config


def require_fully_loaded(model: torch.nn.Module, source: Path | str, what: str) -> None:
    """Refuse a model that ltx-core's non-strict loader left (partly) on the meta device."""
    unloaded = [n for n, p in model.named_parameters() if p.is_meta]
    unloaded += [n for n, b in model.named_buffers() if b.is_meta]
    if unloaded:
        shown = ", ".join(unloaded[:5]) + (f" and {len(unloaded) - 5} more" if len(unloaded) > 5 else "")
        raise CheckpointError(
            source,
            f"{what}: {len(unloaded)} parameters/buffers not found in the file: {shown}",
            "the file is incomplete or belongs to a different model version",
        )


def file_sha256(path: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
    """SHA-256 of a file, cached beside nothing: callers cache per (path, size, mtime)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def hash_cache_file() -> Path:
    """The on-disk memo of file digests: LTX2_FARM_HASH_CACHE, else file-hashes.json in the farm's cache."""
    import os

    from ltx2.tiny import default_cache_dir

    return Path(os.environ.get("LTX2_FARM_HASH_CACHE") or default_cache_dir() / "file-hashes.json")


def cached_file_sha256(path: Path) -> str:
    """SHA-256 memoised per (path, size, mtime), in memory and on disk: 75 GB of model files are hashed once
    per machine (measured: 84 s on an H100 host), not once per worker process."""
    key = _memo_key(path)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    digest = _read_memo().get(json.dumps(key))
    if not isinstance(digest, str):
        digest = file_sha256(path)
        _write_memo(key, digest)
    _HASH_CACHE[key] = digest
    return digest


def remember_file_sha256(path: Path, digest: str) -> None:
    """Record the digest of a file just verified (a download hashed before its rename into place), so that
    the next `cached_file_sha256` of it, in any process on this machine, reads instead of hashing again."""
    key = _memo_key(path)
    _HASH_CACHE[key] = digest
    _write_memo(key, digest)


def _memo_key(path: Path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _read_memo() -> dict:
    try:
        memo = json.loads(hash_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(key: tuple[str, int, int], digest: str) -> None:
    import os

    memo_path = hash_cache_file()
    memo = _read_memo()
    memo[json.dumps(key)] = digest
    try:  # a read-only or full cache folder only costs the next process a re-hash
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
        os.replace(tmp, memo_path)
    except OSError:
        pass
