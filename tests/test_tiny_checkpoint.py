"""The tiny checkpoint set: official format, loaded by the official loaders, deterministic, cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from ltx2.checkpoint import read_config_metadata
from ltx2.tiny import ensure_tiny_checkpoint_set, write_tiny_checkpoint_set


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_tiny_checkpoint_set(tmp_path / "a", seed=3)
    # A second process: hash-ordered structures (e.g. the safetensors metadata map) differ between processes.
    code = (
        "from pathlib import Path; from ltx2.tiny import write_tiny_checkpoint_set; "
        f"write_tiny_checkpoint_set(Path({str(tmp_path / 'b')!r}), seed=3)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    c = write_tiny_checkpoint_set(tmp_path / "c", seed=4)
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert files_a == files_b
    assert Path(a.checkpoint).read_bytes() != Path(c.checkpoint).read_bytes()
    assert Path(a.gemma_root, "tokenizer.model").stat().st_size > 0


def test_generated_once_then_cached(tmp_path):
    first = ensure_tiny_checkpoint_set(tmp_path, seed=1)
    mtime = Path(first.checkpoint).stat().st_mtime_ns
    second = ensure_tiny_checkpoint_set(tmp_path, seed=1)
    assert second == first
    assert Path(second.checkpoint).stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny-tmp")] == []


def test_official_key_layout_and_metadata(tiny_set):
    config = read_config_metadata(tiny_set.checkpoint)
    assert set(config) == {"transformer", "vae", "audio_vae", "vocoder"}
    with safe_open(str(tiny_set.checkpoint), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "vae", "audio_vae", "vocoder", "text_embedding_projection"}
    assert any(k.startswith("model.diffusion_model.transformer_blocks.1.") for k in keys)
    assert "model.diffusion_model.video_embeddings_connector.learnable_registers" in keys
    assert metadata["model_version"].startswith("2.0")
    gemma_cfg = json.loads(Path(tiny_set.gemma_root, "config.json").read_text())
    assert config["transformer"]["caption_channels"] == gemma_cfg["text_config"]["hidden_size"]
    with safe_open(str(next(Path(tiny_set.gemma_root).glob("model-*.safetensors"))), framework="pt") as f:
        assert any(k.startswith("language_model.model.layers.") for k in f.keys())
    with safe_open(str(tiny_set.distilled_lora), framework="pt") as f:
        assert all(k.startswith("diffusion_model.transformer_blocks.") for k in f.keys())


def test_every_parameter_loaded_by_official_loaders(resident):
    components = {
        "transformer": resident.transformer,
        "video_encoder": resident.video_encoder,
        "video_decoder": resident.video_decoder,
        "audio_decoder": resident.audio_decoder,
        "vocoder": resident.vocoder,
        "upsampler": resident.upsampler,
        "text_encoder": resident.text_encoder,
        "embeddings_processor": resident.embeddings_processor,
    }
    for name, module in components.items():
        tensors = list(module.parameters()) + list(module.buffers())
        assert tensors, name
        assert not any(t.is_meta for t in tensors), name
        assert all(torch.isfinite(t.float()).all() for t in tensors if t.is_floating_point()), name


def test_model_ledger_of_ltx_pipelines_loads_the_tiny_checkpoint(tiny_set):
    """The unmodified official ModelLedger reads the same files (everything but the Gemma-12B-sized parts)."""
    from ltx_pipelines.utils.model_ledger import ModelLedger

    ledger = ModelLedger(
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
        checkpoint_path=str(tiny_set.checkpoint),
        spatial_upsampler_path=str(tiny_set.spatial_upsampler),
    )
    for build in (
        ledger.transformer,
        ledger.video_decoder,
        ledger.video_encoder,
        ledger.audio_decoder,
        ledger.vocoder,
        ledger.spatial_upsampler,
    ):
        model = build()
        assert not any(p.is_meta for p in model.parameters()), build.__name__


def test_text_encoder_pads_to_1024_tokens_and_projects(resident):
    with torch.inference_mode():
        hidden, mask = resident.text_encoder.encode("a fox in the snow")
        out = resident.embeddings_processor.process_hidden_states(hidden, mask)
    assert mask.shape == (1, 1024)
    assert 0 < int(mask.sum()) < 1024
    width = resident.config["transformer"]["caption_channels"]
    assert out.video_encoding.shape == (1, 1024, width)
    assert out.audio_encoding.shape == (1, 1024, width)
