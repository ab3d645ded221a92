"""Broken checkpoint files are refused with a message naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from ltx2.checkpoint import CheckpointError, validate_checkpoint_set
from ltx2.models import load_resident_models


@pytest.fixture
def copy_of(tiny_set, tmp_path):
    """A private copy of the tiny set, safe to damage."""
    root = tmp_path / "set"
    shutil.copytree(Path(tiny_set.checkpoint).parent, root)
    base = Path(tiny_set.checkpoint).parent
    return replace(tiny_set, **{k: root / Path(v).relative_to(base) for k, v in tiny_set.__dict__.items()})


def _refused(paths, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_resident_models(paths, "cpu")
    return info.value


def test_missing_file(copy_of):
    Path(copy_of.spatial_upsampler).unlink()
    err = _refused(copy_of, "file not found")
    assert err.path == str(copy_of.spatial_upsampler)


def test_truncated_file(copy_of):
    path = Path(copy_of.checkpoint)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _refused(copy_of, "truncated")
    assert err.path == str(path)
    assert "bytes missing" in err.problem


def test_not_a_safetensors_file(copy_of):
    Path(copy_of.checkpoint).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    _refused(copy_of, "not a safetensors file")


def test_tiny_file(copy_of):
    Path(copy_of.distilled_lora).write_bytes(b"\x01\x02")
    _refused(copy_of, "not a safetensors file: only 2 bytes")


def test_header_not_json(copy_of):
    Path(copy_of.checkpoint).write_bytes((10).to_bytes(8, "little") + b"not json!!" + b"\0" * 32)
    _refused(copy_of, "header is not JSON")


def _resave(path: Path, drop: str | None = None, metadata: dict | None = None) -> None:
    tensors = load_file(str(path))
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(drop)}
    save_file(tensors, str(path), metadata=metadata)


def test_missing_config_metadata(copy_of):
    _resave(Path(copy_of.checkpoint), metadata={"format": "pt"})
    err = _refused(copy_of, "no 'config' in the safetensors metadata")
    assert "official checkpoint" in str(err)


def test_config_not_json(copy_of):
    _resave(Path(copy_of.checkpoint), metadata={"config": "{broken"})
    _refused(copy_of, "not valid JSON")


def test_not_an_audio_video_checkpoint(copy_of):
    _resave(Path(copy_of.checkpoint), metadata={"config": json.dumps({"transformer": {}})})
    _refused(copy_of, "lacks vae, audio_vae, vocoder")


def test_missing_tensors_leave_parameters_unloaded(copy_of, tiny_set):
    from safetensors import safe_open

    with safe_open(str(tiny_set.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    _resave(Path(copy_of.checkpoint), drop="model.diffusion_model.transformer_blocks.1.", metadata=metadata)
    err = _refused(copy_of, "transformer: .* parameters/buffers not found in the file")
    assert "transformer_blocks.1." in err.problem


def test_missing_vocoder_tensors(copy_of, tiny_set):
    from safetensors import safe_open

    with safe_open(str(tiny_set.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    _resave(Path(copy_of.checkpoint), drop="vocoder.", metadata=metadata)
    _refused(copy_of, "vocoder: ")


def test_gemma_folder_missing_tokenizer(copy_of):
    Path(copy_of.gemma_root, "tokenizer.model").unlink()
    err = _refused(copy_of, "file not found in the Gemma folder")
    assert err.path.endswith("tokenizer.model")


def test_gemma_folder_without_weights(copy_of):
    for shard in Path(copy_of.gemma_root).glob("model-*.safetensors"):
        shard.unlink()
    _refused(copy_of, "no model.*safetensors shards")


def test_lora_for_another_model(copy_of):
    import torch

    save_file(
        {
            "diffusion_model.not_a_layer.lora_A.weight": torch.zeros(2, 4),
            "diffusion_model.not_a_layer.lora_B.weight": torch.zeros(4, 2),
        },
        str(copy_of.distilled_lora),
    )
    _refused(copy_of, "LoRA targets not_a_layer.weight")


def test_valid_set_passes(tiny_set):
    config = validate_checkpoint_set(tiny_set)
    assert config["transformer"]["num_layers"] == 2
