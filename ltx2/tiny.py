"""A tiny LTX-2 checkpoint set in exactly the official on-disk format.

Model weights cannot be downloaded where the tests run, so the farm generates a checkpoint set with the
official keys, the official metadata schema and tiny sizes: the single-file LTX-2 checkpoint (transformer,
video VAE, audio VAE, vocoder and text projection, config in the safetensors metadata), a Gemma-3 folder
in the Hugging Face layout with a SentencePiece tokenizer trained locally, the spatial latent upsampler
and the distilled LoRA. Everything is built by ltx-core's own configurators from the config, so the files
load through the same code as the real 19B set. Same seed, byte-identical files; cached on disk.

Lightricks publishes the single-file checkpoint in four variants (dev, dev FP8, distilled, distilled FP8):
`ensure_tiny_checkpoint_variant` derives the tiny file of each from the tiny dev one, in the official layout
(`write_tiny_variant`), beside the tiny set, which it leaves as it is.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save

from ltx2.checkpoint import CheckpointSet, default_cache_dir

TINY_VERSION = "tiny-2"
"""Bump when the tiny configs or the generator change: the cache key includes it."""

GEMMA_HIDDEN = 64
"""Width of the tiny Gemma-3 text model (the real one is 3840)."""

TINY_TRANSFORMER_CONFIG: dict = {
    "_class_name": "AVTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 32,
    "attention_type": "default",
    "caption_channels": GEMMA_HIDDEN,
    "cross_attention_dim": 64,
    "double_self_attention": False,
    "dropout": 0.0,
    "in_channels": 128,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "num_attention_heads": 2,
    "num_embeds_ada_norm": 1000,
    "num_layers": 2,
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "out_channels": 128,
    "upcast_attention": False,
    "use_linear_projection": False,
    "qk_norm": "rms_norm",
    "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048],
    "timestep_scale_multiplier": 1000,
    "av_ca_timestep_scale_multiplier": 1000.0,
    "causal_temporal_positioning": True,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 16,
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_cross_attention_dim": 32,
    "audio_positional_embedding_max_pos": [20],
    "av_cross_ada_norm": True,
    "use_embeddings_connector": True,
    "connector_attention_head_dim": 32,
    "connector_num_attention_heads": 2,
    "connector_num_layers": 1,
    "connector_positional_embedding_max_pos": [4096],
    "connector_num_learnable_registers": 128,
    "use_middle_indices_grid": True,
    "rope_type": "split",
    "frequencies_precision": "float64",
}

TINY_VAE_CONFIG: dict = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "encoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 2}],
        ["compress_time_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 1}],
    ],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_space", {"multiplier": 2}],
        ["compress_time", {"multiplier": 2}],
        ["compress_all", {"multiplier": 1}],
        ["compress_all", {"multiplier": 2}],
    ],
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": False,
    "normalize_latent_channels": False,
    "encoder_base_channels": 16,
    "decoder_base_channels": 16,
    "spatial_padding_mode": "zeros",
}

TINY_AUDIO_VAE_CONFIG: dict = {
    "model": {
        "params": {
            "ddconfig": {
                "double_z": True,
                "mel_bins": 64,
                "z_channels": 8,
                "resolution": 256,
                "downsample_time": False,
                "in_channels": 2,
                "out_ch": 2,
                "ch": 128,
                "ch_mult": [1, 1, 1],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "mid_block_add_attention": False,
                "norm_type": "pixel",
                "causality_axis": "height",
            },
            "sampling_rate": 16000,
        }
    },
    "preprocessing": {
        "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
        "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000},
    },
}

TINY_VOCODER_CONFIG: dict = {
    "resblock": "1",
    "stereo": True,
    "upsample_rates": [6, 5, 2, 2, 2],
    "upsample_kernel_sizes": [12, 11, 4, 4, 4],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "upsample_initial_channel": 32,
    "output_sampling_rate": 24000,
}

TINY_UPSAMPLER_CONFIG: dict = {
    "_class_name": "LatentUpsampler",
    "in_channels": 128,
    "mid_channels": 32,
    "num_blocks_per_stage": 1,
    "dims": 3,
    "spatial_upsample": True,
    "temporal_upsample": False,
    "spatial_scale": 2.0,
    "rational_resampler": False,
}

TINY_GEMMA_CONFIG: dict = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 5,
    "eoi_token_index": 6,
    "eos_token_id": [1, 7],
    "image_token_index": 4,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 4,
    "model_type": "gemma3",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": GEMMA_HIDDEN,
        "intermediate_size": 128,
        "max_position_embeddings": 2048,
        "model_type": "gemma3_text",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "query_pre_attn_scalar": 32,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rope_theta": 1000000,
        "sliding_window": 64,
        "vocab_size": 512,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.57.6",
    "vision_config": {
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "image_size": 56,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 2,
        "num_channels": 3,
        "num_hidden_layers": 1,
        "patch_size": 14,
        "vision_use_head": False,
    },
}

GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image_soft_token>", "<start_of_image>", "<end_of_image>"]
"""Ids 0..6 in the tiny vocabulary, in the roles the real Gemma-3 tokenizer gives them."""

DISTILLED_LORA_RANK = 4

# Text the tiny tokenizer is trained on: enough to give it real sub-word pieces.
_TOKENIZER_CORPUS = """
A red fox runs through fresh snow in a quiet forest at dawn, its breath steaming in the cold air.
Waves crash against black rocks under a stormy sky while seagulls cry above the water.
A chef slices vegetables in a busy kitchen; pans sizzle and a timer rings in the background.
A vintage car drives down a coastal road at sunset with music playing from the radio.
Close-up of a hummingbird hovering near a purple flower, wings buzzing softly.
A crowded city street at night, neon signs reflect on wet pavement, people talk and laugh.
An astronaut floats inside a space station, checking instruments as alarms beep quietly.
Children play football in a dusty field; a whistle blows and the crowd cheers.
Rain falls on a tin roof while a cat sleeps beside a warm fireplace.
A drone shot over green mountains, a river winding through the valley below, wind rushing.
""".strip()


def tiny_ltx_config() -> dict:
    """The full checkpoint config (metadata["config"]) of the tiny model, in the official schema."""
    return {
        "transformer": copy.deepcopy(TINY_TRANSFORMER_CONFIG),
        "vae": copy.deepcopy(TINY_VAE_CONFIG),
        "audio_vae": copy.deepcopy(TINY_AUDIO_VAE_CONFIG),
        "vocoder": copy.deepcopy(TINY_VOCODER_CONFIG),
    }


def _fingerprint(seed: int) -> str:
    payload = json.dumps(
        {
            "version": TINY_VERSION,
            "seed": seed,
            "ltx": tiny_ltx_config(),
            "upsampler": TINY_UPSAMPLER_CONFIG,
            "gemma": TINY_GEMMA_CONFIG,
            "lora_rank": DISTILLED_LORA_RANK,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ensure_tiny_checkpoint_set(cache_dir: Path | None = None, seed: int = 0) -> CheckpointSet:
    """Return the tiny checkpoint set for `seed`, generating it once into the cache.

    Generation writes into a temporary folder and renames it into place, so a crash or a concurrent
    generator never leaves a half-written set behind.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / f"tiny-{_fingerprint(seed)}"
    checkpoint_set = tiny_checkpoint_set_at(root)
    if (root / "COMPLETE").exists():
        return checkpoint_set
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".tiny-tmp-") as tmp:
        write_tiny_checkpoint_set(Path(tmp) / "set", seed=seed)
        (Path(tmp) / "set" / "COMPLETE").write_text(TINY_VERSION + "\n")
        try:
            os.rename(Path(tmp) / "set", root)
        except OSError:
            if not (root / "COMPLETE").exists():  # lost a race to a generator that failed: surface it
                raise
    return checkpoint_set


def tiny_checkpoint_set_at(root: Path) -> CheckpointSet:
    """The file layout of a generated set (names as in the official Hugging Face repositories)."""
    return CheckpointSet(
        checkpoint=root / "ltx-2-19b-dev-tiny.safetensors",
        gemma_root=root / "gemma-3-tiny-it",
        spatial_upsampler=root / "ltx-2-spatial-upscaler-x2-tiny.safetensors",
        distilled_lora=root / "ltx-2-19b-distilled-lora-tiny.safetensors",
    )


def write_tiny_checkpoint_set(root: Path, seed: int = 0) -> CheckpointSet:
    """Generate every file of the tiny set into `root` (deterministic for a given seed)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = tiny_checkpoint_set_at(root)
    generator = torch.Generator().manual_seed(seed)
    transformer_sd = _write_ltx_checkpoint(paths.checkpoint, generator)
    _write_upsampler(paths.spatial_upsampler, generator)
    _write_distilled_lora(paths.distilled_lora, transformer_sd, generator)
    _write_gemma_folder(paths.gemma_root, generator)
    return paths


def _random_init(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Materialise a meta-built module with seeded random weights and return its state dict (CPU, contiguous).

    Norm scales start at one and biases near zero, and everything else is a small normal draw, so that
    activations stay finite through the tiny network.
    """
    module = module.to_empty(device="cpu")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in sorted(module.state_dict().items()):
        leaf = name.rsplit(".", 1)[-1]
        if not tensor.is_floating_point():
            value = tensor.clone()
        elif "std-of-means" in name:
            value = torch.ones(tensor.shape)
        elif "mean-of-means" in name or leaf == "bias":
            value = torch.randn(tensor.shape, generator=generator) * 0.01
        elif tensor.dim() <= 1:
            value = 1.0 + torch.randn(tensor.shape, generator=generator) * 0.01
        else:
            fan_in = max(1, tensor[0].numel())
            value = torch.randn(tensor.shape, generator=generator) / fan_in**0.5
        state[name] = value.to(tensor.dtype if tensor.is_floating_point() else value.dtype).contiguous()
    return state


def _write_ltx_checkpoint(path: Path, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from ltx2.layout import TRANSFORMER, checkpoint_components, checkpoint_key

    config = tiny_ltx_config()
    gemma_text = TINY_GEMMA_CONFIG["text_config"]
    components = checkpoint_components(gemma_text["hidden_size"], gemma_text["num_hidden_layers"])
    with torch.device("meta"):
        parts = [(component, component.configurator.from_config(config)) for component in components]

    tensors: dict[str, torch.Tensor] = {}
    transformer_sd: dict[str, torch.Tensor] = {}
    for component, module in parts:
        state = _random_init(module, generator)
        tensors.update({checkpoint_key(component, name): value for name, value in state.items()})
        if component == TRANSFORMER:
            transformer_sd = state
    metadata = {"config": json.dumps(config), "model_version": f"2.0.0-{TINY_VERSION}"}
    save_file(_bf16(tensors), str(path), metadata=metadata)
    return transformer_sd


def save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` with a canonical header.

    safetensors serialises the metadata map in hash order, which varies between processes; re-emitting
    the header with sorted keys (data offsets unchanged) makes the same tensors give the same bytes.
    """
    blob = save(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    canonical = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    canonical += b" " * (-len(canonical) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(canonical)) + canonical + blob[8 + header_len :])


def _bf16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official checkpoints store floating weights in bfloat16."""
    return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in sorted(tensors.items())}


def _write_upsampler(path: Path, generator: torch.Generator) -> None:
    from ltx_core.model.upsampler import LatentUpsamplerConfigurator

    with torch.device("meta"):
        upsampler = LatentUpsamplerConfigurator.from_config(TINY_UPSAMPLER_CONFIG)
    state = _random_init(upsampler, generator)
    save_file(_bf16(state), str(path), metadata={"config": json.dumps(TINY_UPSAMPLER_CONFIG)})


def _write_distilled_lora(path: Path, transformer_sd: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """A LoRA over every 2-D linear weight of the transformer blocks, keyed as the official LoRA files are."""
    shapes = {name: tuple(weight.shape) for name, weight in transformer_sd.items()}
    _write_lora(path, shapes, DISTILLED_LORA_RANK, generator, lambda name: True)


def _write_lora(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    rank: int,
    generator: torch.Generator,
    select: Callable[[str], bool],
    scale: float = 0.05,
    metadata: dict[str, str] | None = None,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(shapes.items()):
        if not name.startswith("transformer_blocks.") or not name.endswith(".weight") or len(shape) != 2:
            continue
        if not select(name):
            continue
        prefix = "diffusion_model." + name.removesuffix(".weight")  # ComfyUI names, as published LoRAs use
        out_features, in_features = shape
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * scale
    save_file(_bf16(tensors), str(path), metadata={"format": "pt", **(metadata or {})})


def write_tiny_lora(
    path: Path,
    checkpoint: Path,
    seed: int = 1,
    rank: int = 4,
    targets: str = "attn",
    scale: float = 0.2,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A style-LoRA (or IC-LoRA, with its `reference_downscale_factor` metadata) stand-in for the tiny model:
    rank `rank` on the block weights whose names contain `targets` (e.g. 'attn' or 'ff'), shapes read from
    `checkpoint`'s header (no weights loaded)."""
    from ltx2.checkpoint import read_safetensors_header

    prefix = "model.diffusion_model."
    shapes = {
        name.removeprefix(prefix): tuple(entry["shape"])
        for name, entry in read_safetensors_header(checkpoint).items()
        if name.startswith(prefix) and isinstance(entry, dict) and "shape" in entry
    }
    generator = torch.Generator().manual_seed(seed)
    _write_lora(Path(path), shapes, rank, generator, lambda n: targets in n, scale, metadata)
    return Path(path)


def _write_gemma_folder(root: Path, generator: torch.Generator) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    root.mkdir(parents=True, exist_ok=True)
    config = Gemma3Config.from_dict(copy.deepcopy(TINY_GEMMA_CONFIG))
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(config)
    state = _random_init(model, generator)
    hub_state = {hub: value for name, value in state.items() if (hub := gemma_hub_key(name)) is not None}
    shard = "model-00001-of-00001.safetensors"
    hub_state = _bf16(hub_state)
    save_file(hub_state, str(root / shard), metadata={"format": "pt"})
    write_gemma_files_besides_weights(
        root, TINY_GEMMA_CONFIG, {k: shard for k in hub_state}, sum(t.nbytes for t in hub_state.values())
    )


_GEMMA_HUB_PREFIXES = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
}


def gemma_hub_key(name: str) -> str | None:
    """The key under which the Hugging Face repository of Gemma-3 stores transformers' parameter `name`: the
    repository keeps the pre-4.52 key layout, which ltx-core's key ops expect. None for the LM head, which is tied
    to the token embedding and not stored."""
    if name == "lm_head.weight":
        return None
    for prefix, hub_prefix in _GEMMA_HUB_PREFIXES.items():
        if name.startswith(prefix):
            return hub_prefix + name.removeprefix(prefix)
    raise RuntimeError(f"unexpected Gemma key {name}")  # pragma: no cover


def write_gemma_files_besides_weights(root: Path, config: dict, weight_map: dict[str, str], total_size: int) -> None:
    """A Hugging Face Gemma-3 folder's files other than its weight shards: the shards' index (`weight_map`: key ->
    shard file, `total_size` in bytes), `config`, the image preprocessor's config sized from it, and the tokenizer.
    The real tokenizer (262k pieces) cannot be downloaded: a SentencePiece BPE is trained here with Gemma's special
    tokens, at the tiny vocabulary, so its ids lie inside a larger model's embedding table too."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    _write_json(root / "model.safetensors.index.json", index)
    _write_json(root / "config.json", config)
    image_size = config["vision_config"]["image_size"]
    _write_json(
        root / "preprocessor_config.json",
        {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": config["mm_tokens_per_image"],
            "image_std": [0.5, 0.5, 0.5],
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": image_size, "width": image_size},
        },
    )
    _write_tokenizer(root, vocab_size=TINY_GEMMA_CONFIG["text_config"]["vocab_size"])


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(root: Path, vocab_size: int) -> None:
    """Train a SentencePiece BPE model like Gemma's (byte fallback, same special tokens) and convert it."""
    import sentencepiece as spm
    from transformers import GemmaTokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_CORPUS.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=GEMMA_SPECIAL_TOKENS[4:],
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    (root / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = GemmaTokenizerFast(
        vocab_file=str(root / "tokenizer.model"),
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    tokenizer.save_pretrained(str(root))


# --- the other official checkpoint variants ------------------------------------------------------------------

TINY_VARIANTS = ("dev-fp8", "distilled", "distilled-fp8")
"""The official single-file variants besides dev, as their file names spell them (ltx-2-19b-<variant>)."""

TINY_VARIANTS_VERSION = "variants-1"
"""Bump when `write_tiny_variant` changes: the variants' cache folder includes it (the tiny set's does not)."""

FP8_INPUT_SCALE = 1.0
"""What the tiny FP8 files store as each layer's static `input_scale`. The official files store a calibrated
activation scale there, for TensorRT-LLM's static input quantiser; the farm quantises each input with its own
amax instead (`ltx2.fp8_linear`) and never reads it, so the tiny file holds the tensor (name, dtype, shape: what
the loader and the header check see) with a placeholder value."""


def ensure_tiny_checkpoint_variant(variant: str, cache_dir: Path | None = None, seed: int = 0) -> CheckpointSet:
    """The tiny set for `seed` with its checkpoint replaced by the tiny `variant` file ("dev" gives the set itself),
    generated once into a folder beside the set's; a distilled variant's set has no distilled LoRA."""
    base = ensure_tiny_checkpoint_set(cache_dir, seed)
    if variant == "dev":
        return base
    if variant not in TINY_VARIANTS:
        raise ValueError(f"tiny variant {variant!r}: one of dev, {', '.join(TINY_VARIANTS)}")
    set_root = Path(base.checkpoint).parent
    path = set_root.with_name(f"{set_root.name}-{TINY_VARIANTS_VERSION}") / f"ltx-2-19b-{variant}-tiny.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            write_tiny_variant(base, variant, tmp)
            os.replace(tmp, path)  # whole or not at all, whichever of concurrent generators wins
        finally:
            tmp.unlink(missing_ok=True)
    distilled = variant.startswith("distilled")
    return replace(base, checkpoint=path, distilled_lora=None if distilled else base.distilled_lora)


def write_tiny_variant(base: CheckpointSet, variant: str, path: Path) -> None:
    """The tiny `variant` checkpoint derived from the tiny dev one of `base`, written to `path`.

    distilled: the dev weights with the distilled LoRA fused at strength 1, by ltx-core's `apply_loras` in bf16 (the
        same call, weight by weight, a worker makes to fuse it): "a LoRA version of the distilled model" is how
        Lightricks describes that LoRA, and the tiny distilled file is what it makes of the dev one.
    -fp8: as Lightricks' FP8 files store the transformer: the linear weights of the layers ltx-core's FP8 policy
        quantises (every block but 0 and 43-47; here block 1) as e4m3 [out, in], each with a float32 scalar
        `weight_scale` (ltx-core's per-tensor quantiser, `quantize_weight_to_fp8_per_tensor`) and `input_scale`
        (`FP8_INPUT_SCALE`) beside it; every other tensor as in the bf16 file.
    The metadata (config, model version) is the dev file's: the variants share the config.
    """
    from ltx_core.loader import LoraStateDictWithStrength, StateDict, apply_loras
    from ltx_core.quantization.fp8_scaled_mm import quantize_weight_to_fp8_per_tensor
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ltx2.checkpoint import TRANSFORMER_PREFIX, read_config_metadata
    from ltx2.layout import FP8_TRANSFORMER, build_layout
    from ltx2.lora import load_lora

    tensors = load_file(str(base.checkpoint))
    with safe_open(str(base.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    if variant.startswith("distilled"):
        lora = load_lora(str(base.distilled_lora))  # as a worker reads it: ComfyUI names mapped to ltx-core's
        factors = [LoraStateDictWithStrength(lora, 1.0)]
        for key in sorted(lora.sd):
            if key.endswith(".lora_A.weight"):
                name = key.removesuffix(".lora_A.weight") + ".weight"
                weight = tensors[TRANSFORMER_PREFIX + name]
                one = StateDict(sd={name: weight}, device=weight.device, size=weight.nbytes, dtype={weight.dtype})
                tensors[TRANSFORMER_PREFIX + name] = apply_loras(one, factors, dtype=weight.dtype).sd[name]
    if variant.endswith("fp8"):
        quantised = build_layout(path, FP8_TRANSFORMER, read_config_metadata(base.checkpoint)).fp8
        for name in sorted(quantised):
            key = TRANSFORMER_PREFIX + name
            weight, scale = quantize_weight_to_fp8_per_tensor(tensors[key])
            layer = key.removesuffix(".weight")
            tensors[key] = weight.t().contiguous()  # [out, in] on disk; ltx-core's key op transposes it at load
            tensors[f"{layer}.weight_scale"] = scale.to(torch.float32).contiguous()
            tensors[f"{layer}.input_scale"] = torch.tensor(FP8_INPUT_SCALE, dtype=torch.float32)
    save_file(dict(sorted(tensors.items())), str(path), metadata=metadata)
