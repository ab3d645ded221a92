"""The tensors an LTX-2 checkpoint must hold, derived from its config by ltx-core's own configurators, and the
check of a file's header against them.

ltx-core builds each component from the config on the meta device and fills it from the file with
`load_state_dict(strict=False)`: a tensor of another shape fails only once the whole file is read (tens of seconds at
19B, as a traceback), a missing one leaves the model on the meta device, and the tensors of blocks the config does not
build are dropped without a word (a later LoRA check then blames the LoRA). Here each component is built the same way,
on the meta device (no memory, and a fraction of a second for the 19B transformer: bench/README.md), and its state dict
is compared with the header's names, passed through the same key ops, and shapes: before any module is built for real or
any tensor read.

Keys the file holds that no component reads are allowed: the published files carry some that ltx-core
ignores (`vae.per_channel_statistics.channel` and `mean-of-stds`, the `scaled_fp8` marker of FP8 files), and
the loader skips them. What is refused is a tensor of a block the config does not build (a
`transformer_blocks.47` when the config says 40 layers): the file and its config disagree on the model.

An FP8 file's transformer is built as ltx-core's FP8 loading builds it (`FP8_TRANSFORMER`: its module op swaps
the quantised layers for `FP8Linear`, its key op transposes their e4m3 weights), so the check also holds each
tensor's dtype to it: e4m3 exactly where an `FP8Linear` weight is, never elsewhere.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ltx_core.loader.module_ops import ModuleOps
from ltx_core.loader.sd_ops import SDKeyValueOperation, SDOps
from ltx_core.model.audio_vae import (
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    VOCODER_COMFY_KEYS_FILTER,
    AudioDecoderConfigurator,
    AudioEncoderConfigurator,
    VocoderConfigurator,
)
from ltx_core.model.model_protocol import ModelConfigurator
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from ltx_core.model.video_vae import (
    VAE_DECODER_COMFY_KEYS_FILTER,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.quantization import FP8_PREPARE_MODULE_OPS, FP8_TRANSPOSE_SD_OPS
from ltx_core.text_encoders.gemma import EMBEDDINGS_PROCESSOR_KEY_OPS, GEMMA_LLM_KEY_OPS, GEMMA_MODEL_OPS

from ltx2.checkpoint import FP8_DTYPE, TRANSFORMER_PREFIX, CheckpointError, shown, summarize, tensor_shapes
from ltx2.text_encoder import embeddings_processor_configurator, gemma_text_encoder_configurator


@dataclass(frozen=True)
class Component:
    """One model ltx-core builds from a checkpoint file: its configurator, and the key ops that pick its
    tensors out of the file and name them as the model does."""

    what: str
    configurator: type[ModelConfigurator]
    key_ops: SDOps | None = None
    file_prefix: str | None = ""
    """Where its tensors lie in the official file: `file_prefix` + the model's name (None: under several
    roots, `checkpoint_key`). What the key ops undo."""
    module_ops: tuple[ModuleOps, ...] = ()
    """ltx-core's module ops the builder applies to the meta model before loading (those that change its
    tensors; the tokenizer's and image processor's are the loader's alone)."""


TRANSFORMER = Component("transformer", LTXModelConfigurator, LTXV_MODEL_COMFY_RENAMING_MAP, TRANSFORMER_PREFIX)
FP8_TRANSFORMER = Component(
    "transformer",
    LTXModelConfigurator,
    SDOps(  # chained as ltx-pipelines' `ModelLedger.transformer` chains a quantisation policy's key ops
        name=f"sd_ops_chain_{LTXV_MODEL_COMFY_RENAMING_MAP.name}+{FP8_TRANSPOSE_SD_OPS.name}",
        mapping=(*LTXV_MODEL_COMFY_RENAMING_MAP.mapping, *FP8_TRANSPOSE_SD_OPS.mapping),
    ),
    TRANSFORMER_PREFIX,
    module_ops=(FP8_PREPARE_MODULE_OPS,),
)
"""The transformer of an FP8 file, built with the key and module ops of ltx-core's `fp8_scaled_mm` quantisation
policy (`QuantizationPolicy.fp8_scaled_mm()` itself refuses to be made without TensorRT-LLM, whose kernels its
layers call: `ltx2.fp8_linear` runs the same layers on `torch._scaled_mm`)."""
UPSAMPLER = Component("spatial upsampler", LatentUpsamplerConfigurator)


def checkpoint_components(gemma_hidden_size: int, gemma_layers: int, fp8: bool = False) -> tuple[Component, ...]:
    """What the farm builds from the single-file LTX-2 checkpoint (`fp8`: an FP8 file's); the text projection is
    sized by the Gemma folder (`ltx2.text_encoder`)."""
    return (
        FP8_TRANSFORMER if fp8 else TRANSFORMER,
        Component("video VAE encoder", VideoEncoderConfigurator, VAE_ENCODER_COMFY_KEYS_FILTER, "vae.encoder."),
        Component("video VAE decoder", VideoDecoderConfigurator, VAE_DECODER_COMFY_KEYS_FILTER, "vae.decoder."),
        Component(
            "audio VAE encoder", AudioEncoderConfigurator, AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER, "audio_vae.encoder."
        ),
        Component(
            "audio VAE decoder", AudioDecoderConfigurator, AUDIO_VAE_DECODER_COMFY_KEYS_FILTER, "audio_vae.decoder."
        ),
        Component("vocoder", VocoderConfigurator, VOCODER_COMFY_KEYS_FILTER, "vocoder."),
        Component(
            "text embeddings processor",
            embeddings_processor_configurator(gemma_hidden_size, gemma_layers),
            EMBEDDINGS_PROCESSOR_KEY_OPS,
            None,
        ),
    )


@functools.lru_cache(maxsize=4)
def _gemma_component(config_json: str) -> Component:
    return Component(
        "Gemma text encoder",
        gemma_text_encoder_configurator(json.loads(config_json)),
        GEMMA_LLM_KEY_OPS,
        module_ops=(GEMMA_MODEL_OPS,),
    )


def gemma_component(gemma_config: Mapping[str, Any]) -> Component:
    """The Gemma-3 text encoder a Gemma folder's `config.json` describes, read from the folder's shards (one
    component per config, so the memo of built layouts recognises it)."""
    return _gemma_component(json.dumps(gemma_config, sort_keys=True))


_PROCESSOR_ROOTS = {
    "feature_extractor.": "text_embedding_projection.",
    "video_connector.": "model.diffusion_model.video_embeddings_connector.",
    "audio_connector.": "model.diffusion_model.audio_embeddings_connector.",
}


def checkpoint_key(component: Component, name: str) -> str:
    """The key under which the official single file holds `component`'s tensor `name` (how the tiny set and
    header-only fakes are written). The video and audio VAEs' encoder and decoder share one copy of their
    latent statistics, under the VAE's root."""
    if component.file_prefix is None:
        for model_root, file_root in _PROCESSOR_ROOTS.items():
            if name.startswith(model_root):
                return file_root + name.removeprefix(model_root)
        raise ValueError(f"no place in the checkpoint for {component.what} tensor {name}")
    if ".per_channel_statistics." in f".{name}":
        return f"{component.file_prefix.split('.')[0]}.{name}"
    return component.file_prefix + name


@dataclass(frozen=True)
class Layout:
    """A component as its config builds it: what `load_state_dict` fills, and what the checks need."""

    tensors: Mapping[str, tuple[int, ...]]
    """Every parameter and persistent buffer, by name, with its shape."""
    lists: Mapping[str, int]
    """Every ModuleList and Sequential by name, with its length: where a file can hold blocks it does not build."""
    linears: Mapping[str, tuple[int, int]]
    """The weight of every linear layer, name -> (out features, in features): what a LoRA may target."""
    fp8: frozenset[str] = frozenset()
    """The tensors built as e4m3 (an FP8 file's quantised weights): the only ones a file may hold in FP8."""


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """`{"<layer>.weight": (out, in)}` for every linear layer of `model`, from the layers' own sizes (an FP8
    layer stores its weight transposed, a sharded one holds a slice: their sizes are the layer's)."""
    return {
        f"{name}.weight": (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
    }


def build_layout(source: Path | str, component: Component, config: Mapping[str, Any]) -> Layout:
    """The layout of `component` as `config` builds it on the meta device (memoised per config); a config
    that does not build is refused naming `source`."""
    try:
        return _layout(component, json.dumps(config, sort_keys=True))
    except CheckpointError:
        raise
    except Exception as error:  # any failure to build from this config is the config's: one line, no traceback
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            source,
            f"its config does not build the {component.what} ({type(error).__name__}: {detail})",
            "the config metadata is damaged or not an LTX-2 config: use the official file",
        ) from None


@functools.lru_cache(maxsize=16)
def _layout(component: Component, config_json: str) -> Layout:
    with torch.device("meta"):
        model = component.configurator.from_config(json.loads(config_json))
    for op in component.module_ops:  # as the builder does, before it loads
        if op.matcher(model):
            model = op.mutator(model)
    state = {name: t for name, t in model.state_dict().items() if t.is_meta}
    return Layout(  # what loading must fill: the tensors still on the meta device (module ops make some real)
        tensors={name: tuple(t.shape) for name, t in state.items()},
        lists={
            name: len(module)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.ModuleList | torch.nn.Sequential)
        },
        linears=linear_shapes(model),
        fp8=frozenset(name for name, t in state.items() if t.dtype == torch.float8_e4m3fn),
    )


def transformer_targets(
    config: Mapping[str, Any], source: Path | str = "checkpoint config"
) -> dict[str, tuple[int, int]]:
    """The linear weights of the transformer `config` builds: what a job's LoRAs are checked against."""
    return dict(build_layout(source, TRANSFORMER, config).linears)


_TORCH_DTYPES = {FP8_DTYPE: torch.float8_e4m3fn, "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _through(ops: SDOps | None, name: str, shape: tuple[int, ...], dtype: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name in the model, shape) of a file's tensor (of safetensors `dtype`) as the loader hands it to
    `load_state_dict`; [] when the key ops do not read it."""
    if ops is None:
        return [(name, shape)]
    mapped = ops.apply_to_key(name)
    if mapped is None:
        return []
    if not any(isinstance(op, SDKeyValueOperation) for op in ops.mapping):
        return [(mapped, shape)]
    # a key-value op may rename, reshape or (FP8 weights) transpose by dtype: run it on no data of that dtype
    value = torch.empty(shape, device="meta", dtype=_TORCH_DTYPES.get(dtype, torch.float32))
    return [(key, tuple(v.shape)) for key, v in ops.apply_to_key_value(mapped, value)]


def _dtype_problem(name: str, dtype: str, fp8_wanted: bool, what: str) -> str | None:
    """Why a file's tensor of safetensors `dtype` cannot fill a tensor built in e4m3 (`fp8_wanted`) or not."""
    if fp8_wanted and dtype != FP8_DTYPE:
        return f"{shown(name)}: {dtype} in the file, {FP8_DTYPE} expected (an FP8 {what} quantises this layer)"
    if not fp8_wanted and dtype.startswith("F8_"):
        return f"{shown(name)}: {dtype} in the file, where ltx-core's FP8 loading keeps the {what} layer in bf16"
    return None


def _unbuilt_block(name: str, lists: Mapping[str, int]) -> tuple[str, str, int] | None:
    """(`<list>.<index>`, list, its length) when `name` lies in an entry of a list past its end."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:i])
        if owner in lists:
            index = parts[i]
            if index.isdigit() and int(index) >= lists[owner]:
                return f"{owner}.{index}", owner, lists[owner]
            return None
    return None


def _entry(name: str, lists: Mapping[str, int]) -> str | None:
    """`<list>.<index>` of the outermost list entry `name` lies in, or None."""
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if ".".join(parts[:i]) in lists:
            return ".".join(parts[: i + 1])
    return None


def _missing(what: str, names: Sequence[str], layout: Layout) -> list[str]:
    """One message per missing tensor, or per block when several of one block are missing."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_entry(name, layout.lists) or name, []).append(name)
    messages = []
    for key, group in groups.items():
        if len(group) == 1:
            messages.append(f"{group[0]} ({what}) not in the file")
        else:
            total = sum(1 for name in layout.tensors if name.startswith(key + "."))
            messages.append(f"{key}.*: {len(group)} of its {total} tensors ({what}) not in the file")
    return messages


def tensor_problems(
    header: Mapping[str, Any], config: Mapping[str, Any], components: Sequence[Component], source: Path | str
) -> tuple[list[str], dict[str, Layout]]:
    """Every difference between a file's header and the tensors its config builds, one message each (shape
    differences first, then tensors missing, then blocks the config does not build), and the layouts."""
    shapes = tensor_shapes(header)
    dtypes = {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}
    layouts = {c.what: build_layout(source, c, config) for c in components}
    mismatched: list[str] = []
    missing: list[str] = []
    used: set[str] = set()
    unread: dict[str, list[tuple[str, str]]] = {}
    for component in components:
        layout = layouts[component.what]
        given: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, shape in shapes.items():
            for mapped, mapped_shape in _through(component.key_ops, name, shape, dtypes[name]):
                given[mapped] = (name, mapped_shape)
        for mapped, (name, shape) in given.items():
            wanted = layout.tensors.get(mapped)
            if wanted is None:
                unread.setdefault(name, []).append((component.what, mapped))
                continue
            used.add(name)
            dtype_problem = _dtype_problem(name, dtypes[name], mapped in layout.fp8, component.what)
            if dtype_problem is not None:
                mismatched.append(dtype_problem)
            elif shape != wanted:
                expected = f"{list(wanted)} expected by its config"
                mismatched.append(f"{shown(name)}: shape {list(shape)} in the file, {expected}")
        missing += _missing(component.what, [m for m in layout.tensors if m not in given], layout)
    unbuilt: dict[str, int] = {}
    for name, readers in unread.items():
        if name in used:
            continue
        for what, mapped in readers:
            block = _unbuilt_block(mapped, layouts[what].lists)
            if block is not None:
                entry, owner, length = block
                prefix = name[: len(name) - len(mapped)] if name.endswith(mapped) else ""
                text = f"{shown(prefix + entry)}.*: in the file, but its config builds {length} {owner} ({what})"
                unbuilt[text] = unbuilt.get(text, 0) + 1
                break
    extra = [text.replace(".*:", f".* ({count} tensors):", 1) for text, count in unbuilt.items()]
    return list(dict.fromkeys(mismatched + missing + extra)), layouts


CHECKPOINT_FIX = (
    "the file and its config metadata disagree: re-download the official file; a converted or edited file must "
    "keep the config it was saved with"
)


def check_tensors(
    path: Path | str,
    header: Mapping[str, Any],
    config: Mapping[str, Any],
    components: Sequence[Component],
    fix: str = CHECKPOINT_FIX,
) -> dict[str, Layout]:
    """Refuse a file whose header does not hold exactly the tensors its config builds (`tensor_problems`),
    naming the first few differences; return the components' layouts by name."""
    problems, layouts = tensor_problems(header, config, components, path)
    if problems:
        count = f"{len(problems)} difference{'s' if len(problems) > 1 else ''}"
        raise CheckpointError(
            path,
            f"its tensors do not match its config ({count}): {summarize(problems)}",
            fix,
        )
    return layouts
