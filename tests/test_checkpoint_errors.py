"""Broken checkpoint files are refused with a message naming the file and the problem."""

from __future__ import annotations

import json
import shutil
import sys
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


def test_a_missing_block_is_found_from_the_header(copy_of, tiny_set):
    from safetensors import safe_open

    with safe_open(str(tiny_set.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    _resave(Path(copy_of.checkpoint), drop="model.diffusion_model.transformer_blocks.1.", metadata=metadata)
    err = _refused(copy_of, "its tensors do not match its config \\(1 difference\\)")
    assert "transformer_blocks.1.*: 72 of its 72 tensors (transformer) not in the file" in err.problem


def test_missing_vocoder_tensors(copy_of, tiny_set):
    from safetensors import safe_open

    with safe_open(str(tiny_set.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    _resave(Path(copy_of.checkpoint), drop="vocoder.", metadata=metadata)
    _refused(copy_of, r"\(vocoder\) not in the file")


def test_missing_gemma_tensors_are_found_from_the_shard_headers(copy_of):
    shard = next(Path(copy_of.gemma_root).glob("model-*.safetensors"))
    _resave(shard, drop="language_model.model.layers.1.", metadata={"format": "pt"})
    err = _refused(copy_of, "layers.1.*: 13 of its 13 tensors \\(Gemma text encoder\\) not in the file")
    assert err.path == str(copy_of.gemma_root) and "Gemma-3 repository folder" in err.fix


def test_a_transposed_gemma_tensor(copy_of):
    shard = next(Path(copy_of.gemma_root).glob("model-*.safetensors"))
    name = "language_model.model.layers.0.mlp.down_proj.weight"
    tensors, _ = _tensors_and_metadata(shard)
    assert tuple(tensors[name].shape) == (64, 128)
    tensors[name] = tensors[name].t().contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    err = _refused(copy_of, f"{name}: shape \\[128, 64\\] in the file, \\[64, 128\\] expected by its config")
    assert err.path == str(copy_of.gemma_root)


def test_an_absurd_gemma_depth(copy_of):
    """transformers would build whatever config.json says: a billion layers are refused first."""
    path = Path(copy_of.gemma_root, "config.json")
    config = json.loads(path.read_text())
    config["text_config"]["num_hidden_layers"] = 10**9
    path.write_text(json.dumps(config))
    err = _refused(copy_of, "config text_config.num_hidden_layers is 1000000000: allowed is a whole number from 1")
    assert err.path == str(path)


def test_what_loading_leaves_on_the_meta_device_is_refused():
    """The net behind the header checks: a model the non-strict loader left (partly) on the meta device."""
    import torch

    from ltx2.checkpoint import require_fully_loaded

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    unloaded = r"vocoder: 2 parameters/buffers not found in the file: 1\.weight, 1\.bias"
    with pytest.raises(CheckpointError, match=unloaded):
        require_fully_loaded(model, "x.safetensors", "vocoder")
    require_fully_loaded(model[:1], "x.safetensors", "vocoder")


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


# --- the header against the tensors its config builds (ltx2.layout), before any module is built ----------


def _tensors_and_metadata(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _rewrite(path: Path, tensors=None, config=None) -> None:
    """Write `path` again with safetensors: `tensors(dict)` edits the tensors, `config(dict)` the config."""
    found, metadata = _tensors_and_metadata(path)
    if tensors is not None:
        tensors(found)
    if config is not None:
        edited = json.loads(metadata["config"])
        config(edited)
        metadata = {**metadata, "config": json.dumps(edited)}
    save_file(found, str(path), metadata=metadata)


def _validate_refuses(paths, match: str) -> CheckpointError:
    """Refused by the check that runs before anything is built (`validate_checkpoint_set` loads nothing)."""
    with pytest.raises(CheckpointError, match=match) as info:
        validate_checkpoint_set(paths)
    assert "\n" not in str(info.value)
    return info.value


A2V_Q = "model.diffusion_model.transformer_blocks.0.audio_to_video_attn.to_q.weight"


def test_a_transposed_weight_is_found_from_the_header(copy_of, capsys):
    """Same element count, transposed: ltx-core would only fail once every tensor is read, as a traceback."""
    from cluster.cli import main

    def transpose(t: dict) -> None:
        assert tuple(t[A2V_Q].shape) == (32, 64)
        t[A2V_Q] = t[A2V_Q].t().contiguous()

    _rewrite(Path(copy_of.checkpoint), tensors=transpose)
    err = _validate_refuses(copy_of, "its tensors do not match its config \\(1 difference\\)")
    assert err.path == str(copy_of.checkpoint)
    assert f"{A2V_Q}: shape [64, 32] in the file, [32, 64] expected by its config" in err.problem
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in copy_of.__dict__.items()]
    assert main(["models", "check", *flags]) == 2
    out = capsys.readouterr().err
    assert out.startswith("error:") and "[64, 32] in the file" in out and "Traceback" not in out
    assert out.count("\n") == 1


def test_a_renamed_tensor_is_named_missing(copy_of):
    renamed = A2V_Q.replace("to_q", "to_query")
    _rewrite(Path(copy_of.checkpoint), tensors=lambda t: t.update({renamed: t.pop(A2V_Q)}))
    err = _validate_refuses(copy_of, "not in the file")
    assert "transformer_blocks.0.audio_to_video_attn.to_q.weight (transformer) not in the file" in err.problem


def test_a_missing_tensor_of_the_text_projection(copy_of):
    _rewrite(Path(copy_of.checkpoint), tensors=lambda t: t.pop("text_embedding_projection.aggregate_embed.weight"))
    err = _validate_refuses(copy_of, "not in the file")
    assert "feature_extractor.aggregate_embed.weight (text embeddings processor) not in the file" in err.problem


def test_keys_no_model_reads_are_allowed_and_ignored(copy_of):
    """Published files carry tensors ltx-core does not read (the VAE's `channel` and `mean-of-stds`
    statistics, the `scaled_fp8` marker of FP8 files); the official loader skips them, so does the check,
    and the set loads."""
    import torch

    def add(t: dict) -> None:
        t["vae.per_channel_statistics.channel"] = torch.arange(128)
        t["vae.per_channel_statistics.mean-of-stds"] = torch.ones(128, dtype=torch.bfloat16)
        t["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
        t[A2V_Q.replace(".weight", ".unused_extra")] = torch.zeros(3)

    _rewrite(Path(copy_of.checkpoint), tensors=add)
    assert validate_checkpoint_set(copy_of)["transformer"]["num_layers"] == 2
    models = load_resident_models(copy_of, "cpu")
    assert models.num_layers == 2


def test_blocks_the_config_does_not_build_are_refused_naming_the_checkpoint(copy_of):
    """A config of 1 layer over a file of 2: ltx-core built 1 block and dropped the second without a word,
    and the distilled LoRA (for 2 blocks) was then blamed. The checkpoint is named instead."""
    _rewrite(Path(copy_of.checkpoint), config=lambda c: c["transformer"].update(num_layers=1))
    err = _validate_refuses(copy_of, "in the file, but its config builds 1 transformer_blocks")
    assert err.path == str(copy_of.checkpoint)
    assert "model.diffusion_model.transformer_blocks.1.* (72 tensors)" in err.problem


def test_a_config_that_ltx_core_cannot_build(copy_of):
    _rewrite(Path(copy_of.checkpoint), config=lambda c: c["transformer"].update(rope_type="spiral"))
    err = _validate_refuses(copy_of, "its config does not build the transformer")
    assert "ValueError" in err.problem and "spiral" in err.problem


def _set(config: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    if value is _DELETE:
        config.pop(leaf)
    else:
        config[leaf] = value


_DELETE = object()

ABSURD_CONFIGS = [
    ("a billion layers", "transformer.num_layers", 10**9, "1000000000", "a whole number from 1 to 128"),
    ("a billion heads", "transformer.num_attention_heads", 10**9, "1000000000", "from 1 to 256"),
    ("huge head dim", "transformer.attention_head_dim", 2**40, "1099511627776", "from 1 to 1024"),
    ("negative channels", "transformer.in_channels", -128, "-128", "from 1 to 4096"),
    ("layers as text", "transformer.num_layers", "48", '"48"', "a whole number"),
    ("layers as a float", "transformer.num_layers", 2.0, "2.0", "a whole number"),
    ("layers as a boolean", "transformer.num_layers", True, "true", "a whole number"),
    ("two positions for video", "transformer.positional_embedding_max_pos", [20, 2048], "[20, 2048]", "a list of 3"),
    ("a position range of 0", "transformer.audio_positional_embedding_max_pos", [0], "[0]", "numbers, each from 1"),
    ("theta as text", "transformer.positional_embedding_theta", "big", '"big"', "a number from 1 to 1e+09"),
    ("flag as text", "transformer.apply_gated_attention", "yes", '"yes"', "true or false"),
    ("no caption width", "transformer.caption_channels", _DELETE, "missing", "a whole number from 1 to 65536"),
    ("zero latent channels", "vae.latent_channels", 0, "0", "from 1 to 4096"),
    (
        "a billion VAE layers",
        "vae.encoder_blocks",
        [["res_x", {"num_layers": 10**9}]],
        '[["res_x", {"num_layers": 1000000000}]]',
        "[name, layers] blocks",
    ),
    ("huge audio width", "audio_vae.model.params.ddconfig.ch_mult", [1, 10**6], "[1, 1000000]", "each from 1 to 64"),
    ("negative vocoder width", "vocoder.upsample_initial_channel", -1, "-1", "from 1 to 65536"),
    ("text in dilations", "vocoder.resblock_dilation_sizes", [[1, 3, "5"]], '[[1, 3, "5"]]', "lists of whole"),
    ("VAE section as text", "vae", "none", '"none"', "not an object"),
]


@pytest.mark.parametrize(
    ("case", "key", "value", "shown", "allowed"), ABSURD_CONFIGS, ids=[c[0] for c in ABSURD_CONFIGS]
)
def test_absurd_config_values_are_refused_before_anything_is_built(copy_of, case, key, value, shown, allowed):
    """Each names the key, the value and what is allowed; and no component was built, even on the meta
    device (a billion layers would never finish)."""
    from ltx2 import layout

    _rewrite(Path(copy_of.checkpoint), config=lambda c: _set(c, key, value))
    builds = layout._layout.cache_info().misses
    err = _validate_refuses(copy_of, "config ")
    assert err.path == str(copy_of.checkpoint)
    assert f"config {key} is {shown}" in err.problem, case
    assert allowed in err.problem, case
    assert layout._layout.cache_info().misses == builds


def test_a_null_the_loader_falls_back_from_is_accepted(copy_of):
    """ltx-core reads the audio VAE's mel bins as `ddconfig.mel_bins or mel.n_mel_channels`: null is valid."""
    _rewrite(Path(copy_of.checkpoint), config=lambda c: _set(c, "audio_vae.model.params.ddconfig.mel_bins", None))
    assert validate_checkpoint_set(copy_of)["audio_vae"]["model"]["params"]["ddconfig"]["mel_bins"] is None


def test_a_missing_config_section(copy_of):
    _rewrite(Path(copy_of.checkpoint), config=lambda c: c.pop("vocoder"))
    _validate_refuses(copy_of, "metadata config lacks vocoder")


def test_an_absurd_upsampler_config(copy_of):
    path = Path(copy_of.spatial_upsampler)
    _rewrite(path, config=lambda c: c.update(num_blocks_per_stage=10**9))
    err = _validate_refuses(copy_of, "config num_blocks_per_stage is 1000000000: allowed is a whole number from 1 to")
    assert err.path == str(path)


def test_an_absurd_gemma_width(copy_of):
    """The Gemma folder's width sizes the checkpoint's text projection: bounded too."""
    path = Path(copy_of.gemma_root, "config.json")
    config = json.loads(path.read_text())
    config["text_config"]["hidden_size"] = -64
    path.write_text(json.dumps(config))
    err = _validate_refuses(copy_of, "config text_config.hidden_size is -64")
    assert err.path == str(path)


# --- LoRA files: from their headers, against the model their config builds ------------------------------


def _lora(path: Path, tensors: dict) -> Path:
    save_file(tensors, str(path))
    return path


def test_a_distilled_lora_for_another_width_is_refused_with_its_path(copy_of):
    import torch

    _lora(
        Path(copy_of.distilled_lora),
        {
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4),
        },
    )
    err = _validate_refuses(copy_of, "lora_B x lora_A is")
    assert err.path == str(copy_of.distilled_lora)
    assert "transformer_blocks.0.attn1.to_q.weight: lora_B x lora_A is [32, 32], the model's weight is [64, 64]" in (
        err.problem
    )


def test_a_lora_with_half_a_pair(copy_of):
    import torch

    _lora(
        Path(copy_of.distilled_lora),
        {"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64)},
    )
    err = _validate_refuses(copy_of, "has no lora_B.weight beside it")
    assert err.path == str(copy_of.distilled_lora)


def test_a_name_with_a_newline_keeps_the_message_on_one_line(copy_of):
    import torch

    _lora(Path(copy_of.distilled_lora), {"diffusion_model.evil\nline.lora_A.weight": torch.zeros(4, 64)})
    err = _validate_refuses(copy_of, "has no lora_B.weight beside it")  # (and asserts one line)
    assert '"evil\\nline.lora_A.weight"' in err.problem


def test_a_lora_whose_factors_differ_in_rank(copy_of):
    import torch

    _lora(
        Path(copy_of.distilled_lora),
        {
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 8),
        },
    )
    _validate_refuses(copy_of, r"lora_A \[4, 64\] and lora_B \[64, 8\] are not two factors of one rank")


def test_a_resident_worker_refuses_a_lora_that_does_not_fit_from_its_header(resident, tmp_path):
    import torch

    from ltx2.lora import LoraSpec

    path = _lora(
        tmp_path / "wide.safetensors",
        {
            "diffusion_model.transformer_blocks.1.ff.net.0.proj.lora_A.weight": torch.zeros(4, 128),
            "diffusion_model.transformer_blocks.1.ff.net.0.proj.lora_B.weight": torch.zeros(256, 4),
        },
    )
    with pytest.raises(CheckpointError, match=r"lora_B x lora_A is \[256, 128\], the model's weight is \[256, 64\]"):
        resident.loras.check([LoraSpec(str(path))])
    assert str(path) not in resident.loras._files  # refused from the header: never loaded


def test_a_job_lora_that_does_not_fit_is_refused_before_any_worker_starts(tmp_path, capsys):
    import torch
    import yaml

    from cluster.cli import main
    from tests.conftest import SMALL_JOB

    _lora(
        tmp_path / "style.safetensors",
        {
            "diffusion_model.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(4, 4096),
            "diffusion_model.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.zeros(64, 4),
        },
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**SMALL_JOB, "loras": [{"path": "style.safetensors"}]}))
    assert main(["validate", str(job)]) == 0  # a well-formed LoRA: which model it fits is not known here
    capsys.readouterr()
    ray_before = _ray_running()
    assert main(["render", "--tiny", str(job), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "style.safetensors") in err and "the model's weight is [64, 64]" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert _ray_running() == ray_before  # no cluster was started for it


def test_a_40_gb_file_is_checked_without_mapping_it(tmp_path):
    """The header check reads the header and nothing else. Under a 1 GiB address-space limit it checks a
    40 GB file (sparse: no data written), which safetensors' own open, mapping the whole file, cannot: it
    fails with the `Cannot allocate memory` of a host short of memory."""
    import struct
    import subprocess
    import sys

    path = tmp_path / "ltx-2-19b-dev.safetensors"
    data = 40 * 2**30
    header = {"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [data // 2], "data_offsets": [0, data]}}
    raw = json.dumps(header).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + data)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        "if sys.argv[2] == 'farm':\n"
        "    from ltx2.checkpoint import read_safetensors_header\n"
        "    print(read_safetensors_header(sys.argv[1])['w']['shape'])\n"
        "else:\n"
        "    from safetensors import safe_open\n"
        "    safe_open(sys.argv[1], framework='numpy')\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "OPENBLAS_NUM_THREADS": "1"}

    def run(reader: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", code, str(path), reader]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=repo)

    farm = run("farm")
    assert farm.returncode == 0, farm.stderr
    assert farm.stdout.strip() == f"[{data // 2}]"
    mapped = run("safetensors")
    assert mapped.returncode != 0 and "Cannot allocate memory" in mapped.stderr, mapped.stderr


def test_a_job_lora_made_for_the_model_passes_the_head_check(tiny_set, tmp_path):
    from cluster.inputs import resolve_inputs
    from cluster.requests import check_job_loras
    from jobs.spec import validate_job
    from ltx2.tiny import write_tiny_lora
    from tests.conftest import SMALL_JOB

    write_tiny_lora(tmp_path / "style.safetensors", tiny_set.checkpoint, targets="ff")
    job = validate_job({**SMALL_JOB, "loras": [{"path": str(tmp_path / "style.safetensors")}]})
    check_job_loras(resolve_inputs(job, [tmp_path], tmp_path), validate_checkpoint_set(tiny_set))


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
