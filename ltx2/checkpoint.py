"""The official LTX-2 checkpoint set on disk, and the checks that refuse a broken one before loading.

ltx-core's loader reads with `strict=False`: a missing tensor only logs a warning and leaves the model on
the meta device, a tensor of another shape fails only once the whole file is read, and tensors of blocks
the config does not build are dropped without a word. The farm checks every file up front from its header
alone (present, a complete and consistent safetensors file, carrying config metadata within the sizes an
LTX-2 model has, holding every tensor its config builds with the shape it builds: `ltx2.layout`) and, after
loading, that no parameter or buffer was left unloaded.

Nothing here maps a file or reads tensor data: a header is 8 bytes of length and that much JSON, read
with plain reads, so a 40 GB checkpoint is checked on a host that could not map it. This module needs
only the standard library (and platformdirs, for the cache folder), so job validation can use it without
importing torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on the JSON header; anything larger is not a safetensors file."""

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
"""Bytes per element of each safetensors dtype that PyTorch loads (`safetensors.torch`); any other is refused."""

_REDOWNLOAD = "re-download the file"


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
        audio VAE, vocoder and text projection, with its config in the safetensors metadata; any of the four
        official files (`CheckpointVariant`).
    gemma_root: the Gemma-3 folder (Hugging Face layout: config.json, model*.safetensors, tokenizer).
    spatial_upsampler: the x2 latent upsampler (e.g. ltx-2-spatial-upscaler-x2-1.0.safetensors).
    distilled_lora: the distilled LoRA a dev checkpoint's stage-2 refine and distilled recipe fuse; None with a
        distilled checkpoint, whose weights are already distilled (given anyway, it is checked, never fused).
    """

    checkpoint: Path
    gemma_root: Path
    spatial_upsampler: Path
    distilled_lora: Path | None = None

    def files(self) -> dict[str, Path]:
        """Every weight file of the set by role (Gemma shards included)."""
        files = {"checkpoint": Path(self.checkpoint), "spatial_upsampler": Path(self.spatial_upsampler)}
        if self.distilled_lora is not None:
            files["distilled_lora"] = Path(self.distilled_lora)
        for shard in gemma_weight_files(Path(self.gemma_root)):
            files[f"gemma/{shard.name}"] = shard
        return files


TRANSFORMER_PREFIX = "model.diffusion_model."
"""Where the official single file holds the transformer's tensors."""

FP8_DTYPE = "F8_E4M3"
"""The safetensors dtype of an official FP8 file's quantised weights (torch.float8_e4m3fn)."""

FP8_SCALES = (".weight_scale", ".input_scale")
"""The float32 scalars an official FP8 file stores beside each quantised weight (ltx-core's `FP8Linear`)."""

_WEIGHT_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class CheckpointVariant:
    """Which of Lightricks' single-file checkpoints a file is: dev or distilled, bf16 or FP8.

    `fp8` is read from the header: an FP8 file (ltx-2-19b-dev-fp8, ltx-2-19b-distilled-fp8) stores the linear
    weights of transformer blocks 1-42 as e4m3 with a float32 `weight_scale` and `input_scale` beside each, the
    format ltx-core's `FP8Linear` loads; `ltx2.layout` checks that layout tensor by tensor.
    `distilled` is read from the file name as Lightricks publishes it (`…-distilled…`): a dev and a distilled
    file hold the same tensors under the same config, and ltx-pipelines itself tells them apart only by the
    flag a file is given with (`--checkpoint-path` or `--distilled-checkpoint-path`).
    """

    distilled: bool = False
    fp8: bool = False

    @property
    def name(self) -> str:
        """ "dev", "dev FP8", "distilled" or "distilled FP8"."""
        return ("distilled" if self.distilled else "dev") + (" FP8" if self.fp8 else "")


def distilled_by_name(checkpoint: Path | str) -> bool:
    """Whether a checkpoint's file name is a distilled one's (ltx-2-19b-distilled.safetensors, …-distilled-fp8…)."""
    return "distilled" in Path(checkpoint).name.lower()


def checkpoint_variant(path: Path | str, header: Mapping[str, Any]) -> CheckpointVariant:
    """The variant of the checkpoint whose header `read_safetensors_header` returned; a transformer tensor of a
    dtype ltx-core's loaders do not read (packed 4-bit, int8, e5m2: an NVFP4 or third-party quantisation) is
    refused here, naming one."""
    fp8 = False
    for name, info in header.items():
        if not name.startswith(TRANSFORMER_PREFIX):
            continue
        dtype = info["dtype"]
        if dtype == FP8_DTYPE or name.endswith(FP8_SCALES):
            fp8 = True
        elif dtype not in _WEIGHT_DTYPES:
            raise CheckpointError(
                path,
                f"holds {dtype} tensors (e.g. {shown(name)}): not a format ltx-core 1.0.0 loads (bf16, or FP8 e4m3 "
                "weights with float32 scales)",
                "use one of Lightricks' LTX-2 files: ltx-2-19b-dev, -dev-fp8, -distilled or -distilled-fp8",
            )
    return CheckpointVariant(distilled=distilled_by_name(path), fp8=fp8)


def read_checkpoint_variant(path: Path | str) -> CheckpointVariant:
    """`checkpoint_variant` of the file at `path`, from its header."""
    return checkpoint_variant(path, read_safetensors_header(path))


def gemma_weight_files(gemma_root: Path) -> list[Path]:
    """The safetensors shards of a Gemma folder, sorted; an error if the folder has none."""
    if not gemma_root.is_dir():
        raise CheckpointError(gemma_root, "Gemma folder not found", "pass the folder of the Gemma-3 text encoder")
    shards = sorted(p for p in gemma_root.rglob("model*.safetensors"))
    if not shards:
        raise CheckpointError(gemma_root, "no model*.safetensors shards in the Gemma folder")
    return shards


def read_safetensors_header(path: Path | str) -> dict:
    """The header of a safetensors file (tensor name -> {dtype, shape, data_offsets}, and `__metadata__`),
    read with plain reads and checked as safetensors checks a file before it maps one, and more.

    Refused: a missing, unreadable or empty file; a length field of 0, past the end of the file or over
    `MAX_HEADER_BYTES`; a header that is not UTF-8 JSON holding one object (NaN, a name given twice or
    nesting beyond Python's recursion limit included); metadata that is not string -> string; a tensor
    without a known dtype, a shape of whole numbers and two data offsets, or whose dtype size x shape is
    not the byte length of its offsets; tensors that overlap or leave a gap; and a file shorter (truncated)
    or longer than its tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a safetensors file", "give the .safetensors file itself")
    if not path.is_file():
        raise CheckpointError(path, "file not found", "check the path, or download the file")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(path, f"not a safetensors file: only {size} bytes")
            (header_len,) = struct.unpack("<Q", head)
            if header_len == 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    path,
                    f"not a safetensors file (bad header length: {header_len} bytes, in a file of {size}; "
                    f"safetensors allows at most {MAX_HEADER_BYTES})",
                    _REDOWNLOAD,
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(
            path, f"cannot read it ({e.strerror or type(e).__name__})", "check its permissions"
        ) from None
    header = _parse_header(path, raw)
    spans = sorted((_tensor_span(path, name, info), name) for name, info in header.items() if name != "__metadata__")
    end = 0
    for (begin, stop), name in spans:
        if begin != end:
            raise CheckpointError(
                path,
                f"not a valid safetensors file (tensor {_short(name)} starts at byte {begin} of the data, where the "
                f"tensors before it end at {end}: overlapping tensors, or a gap)",
                _REDOWNLOAD,
            )
        end = stop
    if 8 + header_len + end > size:
        missing = 8 + header_len + end - size
        raise CheckpointError(
            path,
            f"truncated: {missing} bytes missing of {8 + header_len + end}",
            "the download or copy was cut short; fetch the file again",
        )
    if 8 + header_len + end < size:
        raise CheckpointError(
            path,
            f"not a valid safetensors file ({size - 8 - header_len - end} bytes after the last tensor)",
            _REDOWNLOAD,
        )
    return header


class _NotSafetensorsJson(Exception):
    """What the JSON parser's hooks raise: a header safetensors would not accept."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:  # Python keeps the last silently; a header naming a tensor twice is ambiguous
            raise _NotSafetensorsJson(f"names {_short(key)} twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> None:
    raise _NotSafetensorsJson(f"holds {name}, which JSON does not have")


def _parse_header(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise CheckpointError(path, "not a safetensors file (header is not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"not a safetensors file (header is not JSON: {e.msg})") from None
    except _NotSafetensorsJson as e:
        raise CheckpointError(path, f"not a valid safetensors file (header {e})", _REDOWNLOAD) from None
    except RecursionError:
        raise CheckpointError(path, "not a safetensors file (header nests too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "not a safetensors file (header is not a JSON object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(
            path,
            f"not a valid safetensors file (__metadata__ is {_short(metadata)}, not a map of strings)",
            _REDOWNLOAD,
        )
    return header


def _whole(value: Any) -> bool:
    return type(value) is int  # JSON true/false parse as bool, a subclass of int: not a size


def _tensor_span(path: Path, name: str, info: Any) -> tuple[int, int]:
    """The [begin, end) byte range of one tensor's data, checked against its dtype and shape."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(path, f"not a valid safetensors file (tensor {_short(name)} {why})", _REDOWNLOAD)

    if not isinstance(info, dict):
        raise bad(f"is described by {_short(info)}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise bad(f"has dtype {_short(dtype)}, none of {', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_whole(d) and d >= 0 for d in shape):
        raise bad(f"has shape {_short(shape)}, not a list of whole numbers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) and o >= 0 for o in offsets)):
        raise bad(f"has data_offsets {_short(offsets)}, not two byte positions")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != nbytes:
        raise bad(f"is {dtype} {_short(shape)}: {nbytes} bytes, but its data_offsets {offsets} hold {end - begin}")
    return begin, end


def _short(value: Any, limit: int = 80) -> str:
    """`value` as JSON (its type shows: "48" is text, 48 a number), cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(name: str) -> str:
    """A name read from a file as a message shows it: as it is when printable and short, else JSON-quoted and
    cut (a tensor name holding a newline must not break the one-line error)."""
    return name if name.isprintable() and len(name) <= 200 else _short(name, 200)


def tensor_shapes(header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a header `read_safetensors_header` returned."""
    return {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}


def summarize(problems: Sequence[str], shown: int = 3) -> str:
    """The first `shown` problems on one line, and how many more there are."""
    text = "; ".join(problems[:shown])
    return text + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")


def read_config_metadata(path: Path | str) -> dict:
    """The model config JSON that an official checkpoint carries in `metadata["config"]`."""
    return config_metadata(path, read_safetensors_header(path))


def config_metadata(path: Path | str, header: Mapping[str, Any]) -> dict:
    """`metadata["config"]` of a header `read_safetensors_header` returned, as a JSON object."""
    metadata = header.get("__metadata__") or {}
    if "config" not in metadata:
        raise CheckpointError(
            path,
            "no 'config' in the safetensors metadata",
            "use the official checkpoint file; converted or re-saved files often drop the metadata",
        )
    try:
        config = json.loads(metadata["config"], parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata 'config' is not valid JSON ({e.msg})") from None
    except (_NotSafetensorsJson, RecursionError) as e:
        raise CheckpointError(path, f"metadata 'config' is not valid JSON ({e or 'nests too deeply'})") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, "metadata 'config' is not a JSON object")
    return config


# --- config bounds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """A config value ltx-core reads to build a model, and what it may be.

    Checked before any module is built: ltx-core builds whatever the config says (`num_layers` 1e9 is a
    billion blocks, a string where a size belongs fails deep in torch). The ranges hold every released
    LTX-2 model (19B: 48 blocks, 32 heads x 128, text width 3840) and the tiny set, with room to spare;
    beyond them the header check (`ltx2.layout`) compares the sizes with the file's tensors.
    """

    key: str
    """Dotted path inside the config, e.g. `transformer.num_layers`."""
    low: float
    high: float
    kind: str = "int"
    """`int`; `number` (int or float); `ints`: a list of ints; `numbers`: a list of numbers; `int lists`: a
    list of lists of ints; `bool` (low and high unused); `blocks`: a video-VAE block list ([name, layers or
    {num_layers, multiplier…}]). A key given as null counts as not given: ltx-core reads some with a fallback
    (`mel_bins or n_mel_channels`), and where it has none, building from the null fails in one line."""
    length: tuple[int, int] = (1, 16)
    """How many entries a list may have."""
    required: bool = False
    """Whether ltx-core has no default for it (building without it fails)."""

    def describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "blocks":
            return (
                f"a list of at most {self.length[1]} [name, layers] blocks, layers a whole number from 1 to "
                f"{_BLOCK_LAYERS}, multipliers from 1 to {_BLOCK_MULTIPLIER}"
            )
        what = "a whole number" if self.kind != "number" else "a number"
        span = f"from {self.low:g} to {self.high:g}"
        if self.kind == "ints":
            return f"a list of {_count(self.length)} whole numbers, each {span}"
        if self.kind == "numbers":
            return f"a list of {_count(self.length)} numbers, each {span}"
        if self.kind == "int lists":
            return f"a list of {_count(self.length)} lists of whole numbers, each {span}"
        return f"{what} {span}"

    def fits(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "number":
            return (_whole(value) or isinstance(value, float)) and self.low <= value <= self.high
        if self.kind == "int":
            return _whole(value) and self.low <= value <= self.high
        if self.kind == "blocks":
            return _fits_list(value, self.length) and all(_vae_block(b) for b in value)
        inner = Bound(self.key, self.low, self.high, {"int lists": "ints", "numbers": "number"}.get(self.kind, "int"))
        return _fits_list(value, self.length) and all(inner.fits(v) for v in value)


_BLOCK_LAYERS = 32
_BLOCK_MULTIPLIER = 16


def _count(length: tuple[int, int]) -> str:
    return str(length[0]) if length[0] == length[1] else f"{length[0]} to {length[1]}"


def _fits_list(value: Any, length: tuple[int, int]) -> bool:
    return isinstance(value, list) and length[0] <= len(value) <= length[1]


def _vae_block(block: Any) -> bool:
    """One entry of `vae.encoder_blocks`/`decoder_blocks`: [name, layers] or [name, {params}]."""
    if not (isinstance(block, list) and len(block) == 2 and isinstance(block[0], str)):
        return False
    params = block[1]
    if _whole(params):
        return 1 <= params <= _BLOCK_LAYERS
    if not isinstance(params, dict):
        return False
    sizes = {"num_layers": _BLOCK_LAYERS, "multiplier": _BLOCK_MULTIPLIER, "attention_head_dim": 1024}
    for key, value in params.items():
        if key in sizes and not (_whole(value) and 1 <= value <= sizes[key]):
            return False
        if key in ("inject_noise", "residual") and not isinstance(value, bool):
            return False
    return True


def _sizes(prefix: str, high: int, *keys: str) -> tuple[Bound, ...]:
    return tuple(Bound(prefix + key, 1, high) for key in keys)


def _flags(prefix: str, *keys: str) -> tuple[Bound, ...]:
    return tuple(Bound(prefix + key, 0, 0, "bool") for key in keys)


_T = "transformer."
_TRANSFORMER_BOUNDS = (
    Bound(_T + "num_layers", 1, 128),
    *_sizes(_T, 256, "num_attention_heads", "audio_num_attention_heads", "connector_num_attention_heads"),
    *_sizes(_T, 256, "audio_connector_num_attention_heads"),
    *_sizes(_T, 1024, "attention_head_dim", "audio_attention_head_dim", "connector_attention_head_dim"),
    *_sizes(_T, 1024, "audio_connector_attention_head_dim"),
    *_sizes(_T, 64, "connector_num_layers", "audio_connector_num_layers"),
    *_sizes(_T, 4096, "in_channels", "out_channels", "audio_in_channels", "audio_out_channels"),
    *_sizes(_T, 65536, "cross_attention_dim", "audio_cross_attention_dim"),
    Bound(_T + "positional_embedding_max_pos", 1, 1_000_000, "numbers", (3, 3)),
    Bound(_T + "audio_positional_embedding_max_pos", 1, 1_000_000, "numbers", (1, 1)),
    Bound(_T + "connector_positional_embedding_max_pos", 1, 1_000_000, "numbers", (1, 1)),
    Bound(_T + "positional_embedding_theta", 1, 1e9, "number"),
    Bound(_T + "timestep_scale_multiplier", 1e-3, 1e6, "number"),
    Bound(_T + "av_ca_timestep_scale_multiplier", 1e-3, 1e6, "number"),
    Bound(_T + "norm_eps", 0, 0.1, "number"),
    *_flags(_T, "apply_gated_attention", "cross_attention_adaln", "caption_proj_before_connector"),
    *_flags(_T, "connector_apply_gated_attention"),
)

_V = "vae."
_VAE_BOUNDS = (
    Bound(_V + "dims", 2, 3),
    *_sizes(_V, 64, "in_channels", "out_channels", "patch_size"),
    *_sizes(_V, 4096, "latent_channels", "decoder_base_channels"),
    Bound(_V + "encoder_blocks", 0, 0, "blocks", (0, 32)),
    Bound(_V + "decoder_blocks", 0, 0, "blocks", (0, 32)),
    *_flags(_V, "timestep_conditioning", "causal_decoder"),
)

_A = "audio_vae.model.params.ddconfig."
_AUDIO_VAE_BOUNDS = (
    *_sizes(_A, 4096, "ch", "z_channels", "mel_bins"),
    *_sizes(_A, 64, "in_channels", "out_ch", "num_res_blocks"),
    Bound(_A + "resolution", 1, 65536),
    Bound(_A + "ch_mult", 1, 64, "ints", (1, 16)),
    Bound(_A + "attn_resolutions", 1, 65536, "ints", (0, 16)),
    Bound(_A + "dropout", 0, 1, "number"),
    *_flags(_A, "double_z", "mid_block_add_attention", "resamp_with_conv"),
    Bound("audio_vae.model.params.sampling_rate", 1, 1_000_000),
    *_sizes("audio_vae.preprocessing.stft.", 65536, "hop_length", "filter_length"),
    *_flags("audio_vae.preprocessing.stft.", "causal"),
    Bound("audio_vae.preprocessing.mel.n_mel_channels", 1, 4096),
    Bound("audio_vae.variables.mel_bins", 1, 4096),
)


def _vocoder_bounds(prefix: str) -> tuple[Bound, ...]:
    return (
        Bound(prefix + "upsample_initial_channel", 1, 65536),
        Bound(prefix + "upsample_rates", 1, 64, "ints"),
        Bound(prefix + "upsample_kernel_sizes", 1, 256, "ints"),
        Bound(prefix + "resblock_kernel_sizes", 1, 256, "ints"),
        Bound(prefix + "resblock_dilation_sizes", 1, 256, "int lists"),
        Bound(prefix + "output_sampling_rate", 1, 1_000_000),
        *_flags(prefix, "use_tanh_at_final", "use_bias_at_final"),
    )


_BWE_BOUNDS = tuple(
    Bound("vocoder.bwe." + key, 1, high, required=True)
    for key, high in (
        ("n_fft", 65536),
        ("hop_length", 65536),
        ("num_mels", 4096),
        ("input_sampling_rate", 1_000_000),
        ("output_sampling_rate", 1_000_000),
    )
)

LTX_SECTIONS = ("transformer", "vae", "audio_vae", "vocoder")

UPSAMPLER_BOUNDS = (
    Bound("in_channels", 1, 4096),
    Bound("mid_channels", 1, 65536),
    Bound("num_blocks_per_stage", 1, 64),
    Bound("dims", 2, 3),
    Bound("spatial_scale", 1, 16, "number"),
    *_flags("", "spatial_upsample", "temporal_upsample", "rational_resampler"),
)
"""What ltx-core's `LatentUpsamplerConfigurator` reads from the upsampler file's config."""

GEMMA_BOUNDS = (
    *_sizes("text_config.", 65536, "hidden_size", "sliding_window"),
    *_sizes("text_config.", 262144, "intermediate_size"),
    *_sizes("text_config.", 256, "num_hidden_layers", "num_attention_heads", "num_key_value_heads"),
    *_sizes("text_config.", 1024, "head_dim"),
    Bound("text_config.vocab_size", 1, 1_048_576),
    Bound("text_config.max_position_embeddings", 1, 10_000_000),
    *_sizes("vision_config.", 65536, "hidden_size"),
    *_sizes("vision_config.", 262144, "intermediate_size"),
    *_sizes("vision_config.", 256, "num_hidden_layers", "num_attention_heads"),
    *_sizes("vision_config.", 16, "num_channels"),
    *_sizes("vision_config.", 2048, "image_size", "patch_size"),
    Bound("mm_tokens_per_image", 1, 65536),
)
"""What transformers reads from the Gemma folder's config.json to build Gemma-3 (12B: 48 layers x 3840, 16
heads x 256, 262k vocabulary; SigLIP 27 x 1152 at 896 px), its width and depth also sizing the checkpoint's
text projection (`ltx2.text_encoder`)."""


def ltx_config_bounds(config: Mapping[str, Any]) -> tuple[Bound, ...]:
    """The bounds of an LTX-2 checkpoint config: the keys ltx-core's configurators read for the transformer
    (and its text connectors), the video VAE, the audio VAE and the vocoder (its LTX-2.3 form with a
    bandwidth extender included)."""
    transformer = config.get("transformer")
    before_connector = isinstance(transformer, dict) and transformer.get("caption_proj_before_connector") is True
    caption = (Bound(_T + "caption_channels", 1, 65536, required=not before_connector),)
    vocoder = config.get("vocoder")
    if isinstance(vocoder, dict) and "bwe" in vocoder:
        vocoders = _vocoder_bounds("vocoder.vocoder.") + _vocoder_bounds("vocoder.bwe.") + _BWE_BOUNDS
    else:
        vocoders = _vocoder_bounds("vocoder.")
    return _TRANSFORMER_BOUNDS + caption + _VAE_BOUNDS + _AUDIO_VAE_BOUNDS + vocoders


_MISSING = object()


def _config_value(config: Mapping[str, Any], key: str) -> tuple[Any, str | None]:
    """(the value at dotted `key`, or _MISSING; the dotted path of a level that is not an object, or None)."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            return _MISSING, ".".join(parts[:depth])
        if part not in node:
            return _MISSING, None
        node = node[part]
    return node, None


def config_problems(config: Any, bounds: Sequence[Bound], sections: Sequence[str] = ()) -> list[str]:
    """Every way `config` falls outside `bounds` (a section or level that is not an object, a required key
    missing, a value of another type or out of range), one message each, naming the key, the value and
    what is allowed."""
    if not isinstance(config, dict):
        return [f"config is {_short(config)}, not a JSON object"]
    problems = [
        f"config {s} is {_short(config[s])}, not an object"
        for s in sections
        if s in config and not isinstance(config[s], dict)
    ]
    for bound in bounds:
        value, not_object = _config_value(config, bound.key)
        if not_object is not None:
            parent, _ = _config_value(config, not_object)
            problems.append(f"config {not_object} is {_short(parent)}, not an object")
        elif value is _MISSING or value is None:
            if bound.required:
                problems.append(f"config {bound.key} is missing: it must be {bound.describe()}")
        elif not bound.fits(value):
            problems.append(f"config {bound.key} is {_short(value)}: allowed is {bound.describe()}")
    return list(dict.fromkeys(problems))


_CONFIG_FIX = "the config metadata is damaged or not an LTX-2 config: use the official file"


def check_ltx_config(source: Path | str, config: Mapping[str, Any]) -> None:
    """Refuse an LTX-2 checkpoint config that lacks a section or has a value outside `ltx_config_bounds`."""
    missing = [s for s in LTX_SECTIONS if s not in config]
    if missing:
        raise CheckpointError(
            source, f"metadata config lacks {', '.join(missing)}", "this is not an LTX-2 audio-video checkpoint"
        )
    problems = config_problems(config, ltx_config_bounds(config), LTX_SECTIONS)
    if problems:
        raise CheckpointError(source, summarize(problems), _CONFIG_FIX)


def check_config(source: Path | str, config: Any, bounds: Sequence[Bound]) -> None:
    """Refuse a config (an upsampler's, a Gemma folder's) with a value outside `bounds`."""
    problems = config_problems(config, bounds)
    if problems:
        raise CheckpointError(source, summarize(problems), _CONFIG_FIX)


# --- LoRA files ----------------------------------------------------------------------------------------------

LORA_A = ".lora_A.weight"
LORA_B = ".lora_B.weight"
NO_LORA_PAIRS = "holds no lora_A/lora_B weight pairs; is it a LoRA?"
LORA_FIX = "use a LoRA trained for this model version"


def lora_problems(
    shapes: Mapping[str, Sequence[int]], targets: Mapping[str, tuple[int, int]] | None = None
) -> list[str]:
    """What keeps a LoRA's factors from fusing with ltx-core's arithmetic (weight += B @ A x strength), by
    tensor name: no pairs at all, a lora_A without its lora_B or the reverse (ltx-core skips such a half
    without a word), factors that are not matrices of one rank; and with `targets` (the model's linear
    weights, name -> (out, in), names as ltx-core maps the LoRA's), a weight the model lacks or a product
    B @ A of another shape than the weight."""
    problems: list[str] = []
    halves = {n[: -len(LORA_A)] for n in shapes if n.endswith(LORA_A)}
    halves |= {n[: -len(LORA_B)] for n in shapes if n.endswith(LORA_B)}
    for prefix in sorted(halves):
        a, b = shapes.get(prefix + LORA_A), shapes.get(prefix + LORA_B)
        if a is None or b is None:
            present, absent = (LORA_A, LORA_B) if b is None else (LORA_B, LORA_A)
            problems.append(f"{shown(prefix + present)} has no {absent.strip('.')} beside it")
        elif len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problems.append(f"{shown(prefix)}: lora_A {list(a)} and lora_B {list(b)} are not two factors of one rank")
        elif targets is not None:
            target = prefix + ".weight"
            if target not in targets:
                problems.append(f"LoRA targets {shown(target)}, which the model does not have")
            elif (b[0], a[1]) != tuple(targets[target]):
                problems.append(
                    f"{target}: lora_B x lora_A is {[b[0], a[1]]}, the model's weight is {list(targets[target])}"
                )
    if not halves:
        problems.append(NO_LORA_PAIRS)
    return problems


def check_lora_header(
    path: Path | str,
    targets: Mapping[str, tuple[int, int]] | None = None,
    rename: Callable[[str], str | None] = lambda name: name,
) -> dict:
    """Refuse a LoRA file from its header alone: not safetensors, or `lora_problems` (names passed through
    `rename`, as the loader maps them; a name it maps to None is not read). Returns the header."""
    header = read_safetensors_header(path)
    shapes = {}
    for name, shape in tensor_shapes(header).items():
        mapped = rename(name)
        if mapped is not None:
            shapes[mapped] = shape
    problems = lora_problems(shapes, targets)
    if problems:
        raise CheckpointError(path, summarize(problems), LORA_FIX)
    return header


# --- the whole set -------------------------------------------------------------------------------------------


def read_gemma_config(gemma_root: Path | str) -> dict:
    """The `config.json` of a Gemma-3 folder (the multimodal `Gemma3ForConditionalGeneration` config),
    checked where it sizes the checkpoint's text projection."""
    path = Path(gemma_root) / "config.json"
    try:
        config = json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise CheckpointError(
            path, "file not found in the Gemma folder", "copy the whole Gemma-3 repository folder"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, _NotSafetensorsJson, RecursionError) as e:
        raise CheckpointError(path, f"not a readable JSON config ({type(e).__name__})", "copy it again") from None
    check_config(path, config, GEMMA_BOUNDS)
    return config


def validate_checkpoint_set(paths: CheckpointSet) -> dict:
    """Check every file of the set before any model is built, from headers alone (no file is mapped or its
    tensors read); return the main checkpoint's config."""
    from ltx2 import layout  # ltx-core's configurators: torch and ltx-core, which job validation does without
    from ltx2.lora import check_lora_file

    checkpoint = Path(paths.checkpoint)
    header = read_safetensors_header(checkpoint)
    config = config_metadata(checkpoint, header)
    check_ltx_config(checkpoint, config)
    variant = checkpoint_variant(checkpoint, header)
    if paths.distilled_lora is None and not variant.distilled:
        raise CheckpointError(
            checkpoint,
            f"a {variant.name} checkpoint, and no distilled LoRA is given: its stage-2 refine and distilled recipe "
            "fuse it",
            "give --distilled-lora (LTX2_DISTILLED_LORA), e.g. ltx-2-19b-distilled-lora-384.safetensors",
        )
    gemma_root = Path(paths.gemma_root)
    shards = gemma_weight_files(gemma_root)
    for required in ("config.json", "tokenizer.model", "preprocessor_config.json"):
        if not (gemma_root / required).is_file():
            raise CheckpointError(
                gemma_root / required, "file not found in the Gemma folder", "copy the whole Gemma-3 repository folder"
            )
    gemma_config = read_gemma_config(gemma_root)
    text = gemma_config.get("text_config", {})
    components = layout.checkpoint_components(
        text.get("hidden_size", 3840), text.get("num_hidden_layers", 48), fp8=variant.fp8
    )
    layouts = layout.check_tensors(checkpoint, header, config, components)
    shard_of: dict[str, Path] = {}
    gemma_header: dict = {}
    for shard in shards:
        for name, info in read_safetensors_header(shard).items():
            if name == "__metadata__":
                continue
            if name in shard_of:  # the loader would keep whichever shard it read last
                raise CheckpointError(shard, f"tensor {_short(name)} is also in {shard_of[name].name}", _REDOWNLOAD)
            shard_of[name] = shard
            gemma_header[name] = info
    gemma_fix = "its shards and config.json disagree: copy the whole Gemma-3 repository folder again"
    layout.check_tensors(gemma_root, gemma_header, {}, (layout.gemma_component(gemma_config),), gemma_fix)
    upsampler = Path(paths.spatial_upsampler)
    upsampler_header = read_safetensors_header(upsampler)
    upsampler_config = config_metadata(upsampler, upsampler_header)
    check_config(upsampler, upsampler_config, UPSAMPLER_BOUNDS)
    layout.check_tensors(upsampler, upsampler_header, upsampler_config, (layout.UPSAMPLER,))
    if paths.distilled_lora is not None:
        check_lora_file(paths.distilled_lora, layouts["transformer"].linears)
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


def default_cache_dir() -> Path:
    """The farm's cache (generated checkpoint sets, node caches, digests): $LTX2_FARM_CACHE, else the per-user
    cache folder (`user_cache_dir`)."""
    return Path(os.environ.get("LTX2_FARM_CACHE") or user_cache_dir())


def user_cache_dir() -> Path:
    """The per-user cache folder of the farm: `ltx2-farm` in XDG_CACHE_HOME (~/.cache) on Linux, the platform's
    own elsewhere; the same from any working directory."""
    import platformdirs

    return platformdirs.user_cache_path("ltx2-farm")


def hash_cache_file() -> Path:
    """The on-disk memo of file digests: LTX2_FARM_HASH_CACHE, else file-hashes.json in the farm's cache."""
    return Path(os.environ.get("LTX2_FARM_HASH_CACHE") or default_cache_dir() / "file-hashes.json")


def cached_file_sha256(path: Path) -> str:
    """SHA-256 memoised per (path, size, mtime), in memory and on disk: 75 GB of model files (over a minute of
    hashing: bench/README.md) are hashed once per machine, not once per worker process."""
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
