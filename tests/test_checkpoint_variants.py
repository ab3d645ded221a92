"""Every official LTX-2 checkpoint file ltx-core 1.0.0 loads (dev, dev FP8, distilled, distilled FP8) is recognised
from its header and loads through `ltx2.models.load_resident_models` with ltx-core's own loading code; each renders a
tiny job on the CPU. The tiny files are written as the official ones are (`ltx2.tiny.write_tiny_variant`).

The FP8 bound. An FP8 layer rounds its weight and its input to e4m3, each scaled per tensor so that its largest
magnitude is 448. Rounding to nearest moves a normal e4m3 value by at most 2^-4 of itself (3 mantissa bits) and a
subnormal one (below 2^-6 once scaled) by at most 2^-10 once scaled (half its step, 2^-9); the matmul accumulates in
float32, and the output and its bias are rounded to bf16 (2^-8 of the value each). So for y = W x + b:
    |y_fp8 - y| <= |W| e_x + e_w |x| + e_w e_x + 2^-7 (|y| + |b| + that sum),
with e_w = 2^-4 |W| + 2^-10 amax(W) / 448 and e_x likewise, elementwise: every FP8 layer of an FP8 file is held to it
against the bf16 layer it came from. Two renders on FP8 layers whose weights are the same bits run the same kernels on
the same numbers, and their bound is zero: the tiny FP8 file holds exactly ltx-core's per-tensor quantisation of the
bf16 file's weights (what `--fp8` computes at load), so its render and the `--fp8` render of the bf16 file must agree
bit for bit. An FP8 file quantised by another tool differs from `--fp8` by at most one e4m3 step per weight, within
the bound above per layer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cluster.requests import render_request
from cluster.worker_options import WorkerOptions
from jobs.spec import JobValidationError, validate_for_model, validate_job
from ltx2.checkpoint import (
    CheckpointError,
    CheckpointVariant,
    read_checkpoint_variant,
    read_safetensors_header,
    validate_checkpoint_set,
)
from ltx2.configure import configure
from ltx2.fp8_linear import FP8, ScaledMMFp8Linear, apply_fp8_linears, bitwise_equal
from ltx2.models import load_resident_models
from ltx2.render import Renderer
from ltx2.tiny import ensure_tiny_checkpoint_variant
from tests.conftest import CACHE

VARIANTS = {
    "dev": CheckpointVariant(distilled=False, fp8=False),
    "dev-fp8": CheckpointVariant(distilled=False, fp8=True),
    "distilled": CheckpointVariant(distilled=True, fp8=False),
    "distilled-fp8": CheckpointVariant(distilled=True, fp8=True),
}

JOB = {"prompt": "a red fox runs through fresh snow", "seed": 5, "height": 64, "width": 64, "num_frames": 9}
CFG_ONLY = {"stg": 0.0, "modality": 1.0}
TWO_STAGE = {**JOB, "recipe": "two_stage", "steps": 2, "video_guidance": CFG_ONLY, "audio_guidance": CFG_ONLY}
"""Two guided passes a step (conditional, unconditional): the cheapest guided stage 1."""
DISTILLED = {**JOB, "recipe": "distilled"}

LAYERS_PER_BLOCK = 28
"""Linear layers of a block (video, audio and cross-modal attention, two feed-forwards): all FP8 in an FP8 file's
blocks 1-42; the tiny model's block 1."""


@pytest.fixture(scope="module")
def sets():
    return {variant: ensure_tiny_checkpoint_variant(variant, CACHE) for variant in VARIANTS}


def _loaded(checkpoints, fp8_flag: bool = False):
    """A CPU worker's models as `RenderWorker` configures them (`--fp8` when `fp8_flag`)."""
    models = load_resident_models(checkpoints, "cpu")
    return configure(models, WorkerOptions(device="cpu", fp8=fp8_flag).speed("cpu"))


@pytest.fixture(scope="module")
def fp8_file(sets):
    return _loaded(sets["dev-fp8"])


@pytest.fixture(scope="module")
def bf16_file_with_fp8_flag(sets):
    return _loaded(sets["dev"], fp8_flag=True)


@pytest.fixture(scope="module")
def distilled_file(sets):
    return _loaded(sets["distilled"])


@pytest.fixture(scope="module")
def encodings(fp8_file):
    """The job's prompt and negative prompt encoded once: the variants share Gemma and the text projection (the
    FP8 policy quantises transformer blocks only, the distilled LoRA targets them only)."""
    renderer = Renderer(fp8_file.models)
    request = render_request(validate_job(TWO_STAGE), fp8_file.models.num_layers)
    return {text: renderer.prompts.get(text) for text in (request.prompt, request.negative_prompt)}


def _render(configured, job: dict, encodings: dict):
    models = configured.models
    renderer = Renderer(models)
    for text, contexts in encodings.items():
        renderer.prompts.put(text, contexts.video, contexts.audio)
    output = renderer.render(render_request(validate_job(job), models.num_layers))
    assert renderer.prompts.encodes == 0
    assert output.video.shape == (9, 64, 64, 3) and output.video.dtype == torch.uint8
    assert output.audio is not None and torch.isfinite(output.audio).all()
    return output


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_official_variant_is_recognised_from_its_header(sets, variant):
    checkpoints = sets[variant]
    assert read_checkpoint_variant(checkpoints.checkpoint) == VARIANTS[variant]
    assert (checkpoints.distilled_lora is None) == VARIANTS[variant].distilled  # a distilled file needs none
    assert validate_checkpoint_set(checkpoints)["transformer"]["num_layers"] == 2
    header = read_safetensors_header(checkpoints.checkpoint)
    fp8 = sorted(name for name, info in header.items() if name != "__metadata__" and info["dtype"] == "F8_E4M3")
    if not VARIANTS[variant].fp8:
        assert fp8 == []
        return
    # as Lightricks' FP8 files: e4m3 [out, in] weights of the quantised blocks, a float32 scalar pair beside each
    assert len(fp8) == LAYERS_PER_BLOCK and all(
        n.startswith("model.diffusion_model.transformer_blocks.1.") for n in fp8
    )
    for name in fp8:
        layer = name.removesuffix(".weight")
        assert header[f"{layer}.weight_scale"]["dtype"] == header[f"{layer}.input_scale"]["dtype"] == "F32"
        assert header[f"{layer}.weight_scale"]["shape"] == header[f"{layer}.input_scale"]["shape"] == []
    q = "model.diffusion_model.transformer_blocks.1.attn1.to_q"
    assert header[f"{q}.weight"]["shape"] == header[q.replace("blocks.1", "blocks.0") + ".weight"]["shape"]
    assert header[q.replace("blocks.1", "blocks.0") + ".weight"]["dtype"] == "BF16"  # block 0 stays bf16


def test_an_fp8_file_loads_as_the_fp8_quantised_bf16_file(fp8_file, bf16_file_with_fp8_flag):
    """ltx-core's FP8 loading (its `FP8Linear` layers, weights transposed by its key op) run by the farm's layer:
    every tensor, layout included, is the one `--fp8` makes of the bf16 file."""
    loaded = fp8_file.models.transformer.velocity_model
    quantised = bf16_file_with_fp8_flag.models.transformer.velocity_model
    swapped = [name for name, module in loaded.named_modules() if type(module) is ScaledMMFp8Linear]
    assert len(swapped) == LAYERS_PER_BLOCK and fp8_file.speed.fp8  # the options say what the layers are
    assert swapped == [name for name, module in quantised.named_modules() if type(module) is ScaledMMFp8Linear]
    ours, theirs = _state(loaded), _state(quantised)
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype and tensor.stride() == theirs[name].stride(), name
        assert bitwise_equal(tensor, theirs[name]), name
    assert sum(t.dtype == FP8 for t in ours.values()) == LAYERS_PER_BLOCK


def test_each_fp8_layer_is_within_the_e4m3_bound_of_its_bf16_layer(fp8_file, sets):
    """The bound of the module docstring, layer by layer, against the dev file's bf16 layers."""
    bf16 = dict(load_resident_models(sets["dev"], "cpu").transformer.velocity_model.named_modules())
    generator = torch.Generator().manual_seed(0)
    errors = []
    for name, layer in fp8_file.models.transformer.velocity_model.named_modules():
        if type(layer) is not ScaledMMFp8Linear:
            continue
        linear = bf16[name]
        x = torch.randn(16, layer.in_features, generator=generator).to(torch.bfloat16)
        with torch.inference_mode():
            y = layer(x).float()
        w, xf = linear.weight.float(), x.float()
        b = linear.bias.float() if linear.bias is not None else torch.zeros(linear.out_features)
        exact = xf @ w.t() + b
        e_w = 2**-4 * w.abs() + 2**-10 * w.abs().max() / 448
        e_x = 2**-4 * xf.abs() + 2**-10 * xf.abs().max() / 448
        bound = e_x @ w.abs().t() + xf.abs() @ e_w.t() + e_x @ e_w.t()
        bound = bound + 2**-7 * (exact.abs() + b.abs() + bound)
        assert ((y - exact).abs() <= bound).all(), name
        errors.append(((y - exact).abs() / bound).max().item())
    assert len(errors) == LAYERS_PER_BLOCK and max(errors) > 0  # FP8 ran: not the bf16 numbers


def test_an_fp8_file_renders_what_the_fp8_flag_renders_of_the_bf16_file(fp8_file, bf16_file_with_fp8_flag, encodings):
    """Same FP8 weights, same kernels: the FP8 bound between the two renders is zero (module docstring)."""
    from_file = _render(fp8_file, TWO_STAGE, encodings)
    from_flag = _render(bf16_file_with_fp8_flag, TWO_STAGE, encodings)
    assert torch.equal(from_file.video, from_flag.video)
    assert torch.equal(from_file.audio, from_flag.audio)


def test_a_distilled_file_renders_the_distilled_recipe_with_no_lora(distilled_file, sets, encodings):
    """A distilled file's weights are the dev file's with the distilled LoRA fused (how the tiny one is made, and
    what that LoRA is): its distilled recipe fuses nothing, as ltx-pipelines' `DistilledPipeline` loads no LoRA."""
    models = distilled_file.models
    assert models.variant == VARIANTS["distilled"] and models.loras.distilled_lora is None
    dev = load_resident_models(sets["dev"], "cpu")
    dev.loras.use((), distilled=True)  # the dev file's distilled recipe: the worker's own fusion
    ours, fused = _state(models.transformer.velocity_model), _state(dev.transformer.velocity_model)
    assert all(torch.equal(tensor, fused[name]) for name, tensor in ours.items())
    _render(distilled_file, DISTILLED, encodings)
    assert models.loras.fuses == 0 and models.loras.state.distilled  # the recipe ran, nothing was fused
    assert ours.keys() == _state(models.transformer.velocity_model).keys()


def test_a_distilled_fp8_file_renders_the_distilled_recipe(distilled_file, sets, encodings):
    configured = _loaded(sets["distilled-fp8"])
    models = configured.models
    assert models.variant == VARIANTS["distilled-fp8"] and models.loras.distilled_lora is None
    quantised = load_resident_models(sets["distilled"], "cpu").transformer.velocity_model
    apply_fp8_linears(quantised)  # `--fp8` on the distilled bf16 file
    ours, theirs = _state(models.transformer.velocity_model), _state(quantised)
    assert ours.keys() == theirs.keys() and all(bitwise_equal(t, theirs[n]) for n, t in ours.items())
    _render(configured, DISTILLED, encodings)
    assert models.loras.fuses == 0


def test_the_two_stage_recipe_on_a_distilled_file_is_refused_before_any_compute(sets, distilled_file):
    """ltx-pipelines runs a distilled file in its distilled pipelines only; guidance and the distilled LoRA on top of
    distilled weights is neither, so the farm refuses it: on the head (from the file name, which a manifest keeps),
    and in a worker's stage 1 should a job reach it unchecked."""
    from cluster.model_store import build_model_set, distilled_checkpoint
    from ltx2 import stages
    from ltx2.render import default_audio_guidance, default_video_guidance

    job = validate_job(TWO_STAGE)
    name = Path(sets["distilled-fp8"].checkpoint).name
    assert distilled_checkpoint(sets["distilled-fp8"]) == name
    assert distilled_checkpoint(build_model_set(sets["distilled-fp8"], lambda p: f"s3://models/{p}")) == name
    assert distilled_checkpoint(sets["dev-fp8"]) is None
    with pytest.raises(JobValidationError) as refused:
        validate_for_model(job, 2, "job.yaml", 2, distilled_checkpoint=name)
    assert refused.value.problems[0].field == "recipe"
    assert f"needs a dev checkpoint, and {name} is a distilled one" in str(refused.value)
    assert "use recipe: distilled" in str(refused.value)
    validate_for_model(validate_job(DISTILLED), 2, "job.yaml", 2, distilled_checkpoint=name)
    with pytest.raises(JobValidationError, match="needs a dev checkpoint"):
        stages.stage_1_denoiser(
            distilled_file.models, "two_stage", 2, default_video_guidance(2), default_audio_guidance(2), None, None
        )


def test_a_dev_file_without_its_distilled_lora_is_refused_naming_the_flag(sets):
    with pytest.raises(CheckpointError) as refused:
        validate_checkpoint_set(replace(sets["dev-fp8"], distilled_lora=None))
    err = refused.value
    assert err.path == str(sets["dev-fp8"].checkpoint) and "\n" not in str(err)
    assert "a dev FP8 checkpoint, and no distilled LoRA is given" in err.problem
    assert "--distilled-lora" in err.fix


def test_the_cli_checks_a_distilled_fp8_set_without_a_distilled_lora(sets, capsys):
    from cluster.cli import main

    checkpoints = sets["distilled-fp8"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in checkpoints.__dict__.items() if v is not None]
    assert main(["models", "check", *flags]) == 0
    assert "checkpoint set OK: a distilled FP8 checkpoint" in capsys.readouterr().out


def _edited(source: Path, folder: Path, edit) -> Path:
    """A copy of the checkpoint `source` in `folder` with `edit(tensors)` applied (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    edit(tensors)
    path = folder / source.name
    save_file(tensors, str(path), metadata=metadata)
    return path


Q1 = "model.diffusion_model.transformer_blocks.1.attn1.to_q"
Q0 = "model.diffusion_model.transformer_blocks.0.attn1.to_q"


def _drop_scale(t: dict) -> None:
    del t[f"{Q1}.weight_scale"]


def _fp8_in_a_bf16_layer(t: dict) -> None:
    t[f"{Q0}.weight"] = t[f"{Q0}.weight"].to(FP8)


def _bf16_in_an_fp8_layer(t: dict) -> None:
    t[f"{Q1}.weight"] = t[f"{Q1}.weight"].to(torch.bfloat16)


def _e5m2(t: dict) -> None:
    t[f"{Q1}.weight"] = t[f"{Q1}.weight"].to(torch.float32).to(torch.float8_e5m2)


def _packed_4bit(t: dict) -> None:  # an NVFP4-style layer: two 4-bit values a byte, a second scale
    t[f"{Q1}.weight"] = torch.zeros(64, 32, dtype=torch.uint8)
    t[f"{Q1}.weight_scale_2"] = torch.ones((), dtype=torch.float32)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_drop_scale, "transformer_blocks.1.attn1.to_q.weight_scale (transformer) not in the file"),
        (_fp8_in_a_bf16_layer, f"{Q0}.weight: F8_E4M3 in the file, where ltx-core's FP8 loading keeps the transformer"),
        (_bf16_in_an_fp8_layer, f"{Q1}.weight: BF16 in the file, F8_E4M3 expected (an FP8 transformer quantises"),
        (_e5m2, "holds F8_E5M2 tensors (e.g. " + Q1),
        (_packed_4bit, "holds U8 tensors (e.g. " + Q1),
    ],
)
def test_an_fp8_file_off_the_official_layout_is_refused_in_one_line(sets, tmp_path, edit, problem):
    """From the header alone, before anything is built, naming the file, the tensor and the fix."""
    path = _edited(Path(sets["dev-fp8"].checkpoint), tmp_path, edit)
    with pytest.raises(CheckpointError) as refused:
        validate_checkpoint_set(replace(sets["dev-fp8"], checkpoint=path))
    err = refused.value
    assert err.path == str(path) and problem in err.problem and err.fix
    assert "\n" not in str(err)


def test_a_truncated_fp8_file_is_refused_naming_it(sets, tmp_path):
    data = Path(sets["distilled-fp8"].checkpoint).read_bytes()
    path = tmp_path / Path(sets["distilled-fp8"].checkpoint).name
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(CheckpointError, match="truncated") as refused:
        validate_checkpoint_set(replace(sets["distilled-fp8"], checkpoint=path))
    assert refused.value.path == str(path) and "fetch the file again" in refused.value.fix


def test_a_campaign_on_a_distilled_file_fails_its_two_stage_jobs_at_their_claim(sets, tmp_path):
    """No attempt on a worker (no retry, no worker blamed): the runner knows the pool's checkpoint."""
    from cluster.campaign_manifest import parse_manifest
    from cluster.campaign_runner import CampaignRunner
    from cluster.campaign_store import Store
    from cluster.local_executor import LocalExecutor

    checkpoints = sets["distilled"]
    pool = LocalExecutor(checkpoints, num_workers=1)
    try:
        store = Store(tmp_path / "db")
        manifest = parse_manifest({"campaign": "c", "defaults": JOB, "rows": [{"id": "guided", "recipe": "two_stage"}]})
        store.submit(manifest.spec, manifest.jobs)
        stats = CampaignRunner(
            store, pool, tmp_path / "out", distilled_checkpoint=Path(checkpoints.checkpoint).name
        ).run()
        assert stats["failed"] == 1 and stats.get("retried", 0) == 0
        (job,) = store.jobs("c")
        assert job["state"] == "failed" and "needs a dev checkpoint" in job["error"]
        assert job["error"].startswith("recipe: 'two_stage' needs a dev checkpoint")
        assert not list((tmp_path / "out").rglob("*.mp4"))
    finally:
        pool.shutdown()


def test_a_distilled_set_s_manifest_has_no_distilled_lora_and_a_dev_one_needs_it(sets, tmp_path):
    from cluster.model_store import build_model_set, parse_model_set

    distilled = build_model_set(sets["distilled"], lambda p: f"s3://models/{p}").to_json()
    assert "distilled_lora" not in distilled
    assert parse_model_set(distilled, str(tmp_path / "ltx2-models.json")).distilled_lora is None
    dev = build_model_set(sets["dev-fp8"], lambda p: f"s3://models/{p}").to_json()
    del dev["distilled_lora"]
    with pytest.raises(CheckpointError, match="distilled_lora missing: a dev checkpoint's recipes fuse"):
        parse_model_set(dev, str(tmp_path / "ltx2-models.json"))
