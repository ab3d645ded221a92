"""`ltx2-farm`: the command line of the render farm.

Subcommands validate jobs before anything heavy starts, show progress on long work, and print
machine-readable results with `--json`. Exit codes: `cluster.exit_codes` (one table for every command).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.exit_codes import ExitCode
from cluster.exit_codes import table as exit_code_table
from cluster.service import JobSource, UsageError, describe_adjustments, resolve_job_inputs
from jobs.examples import DEMO_JOB
from jobs.keys import DEFAULT_KEY_TEMPLATE
from jobs.spec import JobValidationError, validate_job
from jobs.text import printable

if TYPE_CHECKING:
    from cluster.worker_options import WorkerOptions

EPILOG = (
    """\
examples:
  ltx2-farm render --tiny                       render the embedded demo job on the demo model into ./renders/
  ltx2-farm render job.yaml --snap              render a job file, snapping sizes to valid values
  ltx2-farm render --prompt "waves at night" --duration 3 --height 512 --width 768
  ltx2-farm render --duration 30 --resolution 1920x1088 --workers 3
                                                a long, large job: temporal chunks + spatial tiles
  ltx2-farm plan job.yaml                       show the task graph (chunks, tiles, decode tiles)
  ltx2-farm validate job.yaml --json            check a job without rendering
  ltx2-farm models tiny                         generate the tiny test checkpoint set
  ltx2-farm models publish s3://bucket/ltx2     mirror a set (--tiny: the demo one) + its manifest
  ltx2-farm models pull s3://bucket/ltx2        fill this node's model cache ahead of time
  ltx2-farm examples demo/                      a conditioned campaign (image, keyframe, control,
                                                audio, LoRA rows) with its input files

model set (`render`, `campaign run`, `models check|publish`; flags, environment or config file):
  --tiny                                      the generated demo model: random weights, its output is noise
  --models            LTX2_MODELS             s3://…/ltx2-models.json (or its prefix) or a local manifest:
                                              every node fetches and verifies the set into its own cache
  --checkpoint        LTX2_CHECKPOINT         ltx-2-19b-dev.safetensors (config in its metadata), or its
                                              -dev-fp8, -distilled, -distilled-fp8 files
  --gemma-root        LTX2_GEMMA_ROOT         Gemma-3 folder (e.g. gemma-3-12b-it)
  --spatial-upsampler LTX2_SPATIAL_UPSAMPLER  ltx-2-spatial-upscaler-x2-1.0.safetensors
  --distilled-lora    LTX2_DISTILLED_LORA     ltx-2-19b-distilled-lora-384.safetensors (dev checkpoints)

settings: flags over environment over the config file (~/.config/ltx2-farm/config.toml, env LTX2_FARM_CONFIG);
the campaign store and the caches are per-user folders; `ltx2-farm config show` prints each value and its source

exit codes (every command):
"""
    + exit_code_table()
    + "\n"
)

JOB_FLAGS = {
    "chunk_seconds": float,
    "chunk_overlap": float,
    "tile_pixels": int,
    "tile_overlap": int,
    "anchor_colors": bool,
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "height": int,
    "width": int,
    "num_frames": int,
    "duration": float,
    "frame_rate": float,
    "recipe": str,
    "steps": int,
    "name": str,
}


def add_metrics_flags(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--metrics-port", type=int, help=f"serve Prometheus metrics on ADDR:PORT {when}")
    parser.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="address the metrics endpoint listens on (env LTX2_FARM_METRICS_ADDR; default 127.0.0.1: this machine "
        "only); a deploy gives the pod's IP so that Prometheus on another node can scrape it",
    )


def start_metrics(args: argparse.Namespace):  # -> cluster.metrics.MetricsServer | None
    """The endpoint `--metrics-port` asks for, listening from now on, before any work: None without a port. It
    holds its port while the models load, so nothing started meanwhile (Ray's processes pick ports too) can take
    it; an address this machine cannot listen on (a typo, another host's IP, a port in use) is a usage error now,
    not a crash after the models have loaded. The caller closes it; `attach` gives it the worker pool."""
    from cluster.metrics import DEFAULT_ADDR, MetricsServer, check_address, listen_problem

    addr = farm_settings(args).metrics_addr or DEFAULT_ADDR  # the flag, LTX2_FARM_METRICS_ADDR or the config file
    if args.metrics_port is None:
        if args.metrics_addr is not None:
            raise UsageError("--metrics-addr needs --metrics-port PORT (0: any free port)")
        return None
    problem = check_address(addr, args.metrics_port)
    if problem:
        raise UsageError(problem)
    try:
        server = MetricsServer(None, port=args.metrics_port, addr=addr)
    except OSError as error:
        raise UsageError(listen_problem(addr, args.metrics_port, error)) from None
    if not getattr(args, "json", False):
        sys.stderr.write(f"metrics at {server.url}\n")
    return server


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model-set flags (`cluster.model_choice`), the same on every command that loads a model."""
    from cluster.model_choice import MODEL_FILES
    from cluster.settings import FarmSettings, env_name

    group = parser.add_argument_group("model set (one is needed: --tiny, --models, or the four files)")
    group.add_argument(
        "--tiny", action="store_true", help="the generated demo model: random weights, its output is noise"
    )
    for name in MODEL_FILES:
        flag = name.replace("_", "-")
        group.add_argument(
            f"--{flag}", dest=name, metavar="PATH", help=f"(env {env_name(FarmSettings.model_fields[name])})"
        )
    group.add_argument(
        "--models",
        metavar="SOURCE",
        help="instead of the four files: a model-set manifest, s3://… or a local path, that every node resolves "
        "into its own cache (env LTX2_MODELS)",
    )
    add_cache_flag(group)


def add_cache_flag(parser: Any) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the farm's cache: the tiny model, staging, digests (env LTX2_FARM_CACHE; default: per-user)",
    )


def farm_settings(args: argparse.Namespace):  # -> cluster.settings.FarmSettings
    """This command's settings: its flags over the environment over the config file (`cluster.settings`), loaded
    once per command, with where each came from (`setting_origins`), before the command sets any variable."""
    from cluster.settings import flag_values, load_settings, setting_origins

    if getattr(args, "settings", None) is None:
        args.settings = load_settings(flag_values(args))
        args.setting_origins = setting_origins(flag_values(args))
    return args.settings


def setting_origins(args: argparse.Namespace) -> dict[str, str]:
    """Where each of this command's settings came from (`cluster.settings.setting_origins`)."""
    farm_settings(args)
    return args.setting_origins


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="job file (YAML or JSON); default: the embedded demo job")
    group = parser.add_argument_group("job fields (override the file)")
    group.add_argument("--prompt")
    group.add_argument("--negative-prompt", dest="negative_prompt")
    group.add_argument("--seed", type=int)
    group.add_argument("--resolution", metavar="WxH", help="output size, e.g. 1920x1088 (sets --width/--height)")
    group.add_argument("--height", type=int, help="pixels, multiple of 64")
    group.add_argument("--width", type=int, help="pixels, multiple of 64")
    group.add_argument("--frames", dest="num_frames", type=int, help="8k+1 frames (e.g. 121)")
    group.add_argument("--duration", type=float, help="seconds (instead of --frames)")
    group.add_argument("--fps", dest="frame_rate", type=float)
    group.add_argument("--recipe", choices=["two_stage", "distilled"])
    group.add_argument("--steps", type=int, help="stage-1 steps of the two_stage recipe")
    group.add_argument("--name", help="output file stem")
    group.add_argument("--chunk-seconds", dest="chunk_seconds", type=float, help="longest stage-1 chunk (≤ 20 s)")
    group.add_argument("--chunk-overlap", dest="chunk_overlap", type=float, help="seconds shared by chunks")
    group.add_argument("--tile-pixels", dest="tile_pixels", type=int, help="largest stage-2 tile side")
    group.add_argument("--tile-overlap", dest="tile_overlap", type=int, help="stage-2 tile overlap in pixels")
    group.add_argument(
        "--anchor-colors",
        dest="anchor_colors",
        action="store_true",
        default=None,
        help="match each chunk's colour statistics to the first chunk's",
    )
    group.add_argument(
        "--placement",
        choices=["auto", "replica", "sequence", "guidance", "sharded"],
        help="GPUs per model copy: replica (1 GPU), or a gang: sequence / guidance / sharded (see --gpus)",
    )
    group.add_argument("--gpus", type=int, help="GPUs per gang (2, 4, 8; sequence and sharded need a divisor of 32)")
    group.add_argument(
        "--image",
        action="append",
        metavar="PATH[@FRAME][:STRENGTH]",
        help="conditioning image (repeatable): frame 0 = image-to-video, another frame = keyframe",
    )
    group.add_argument(
        "--lora", action="append", metavar="PATH[:STRENGTH]", help="LoRA fused into the model (repeatable)"
    )
    group.add_argument("--audio", metavar="PATH[@START]", help="sound track the video follows (audio-to-video)")
    group.add_argument(
        "--control",
        metavar="KIND:PATH",
        help="IC-LoRA control: canny:source.mp4 (edges traced by the farm), depth:pass.mp4 or pose:pass.mp4",
    )
    group.add_argument("--control-lora", metavar="PATH[:STRENGTH]", help="the IC-LoRA trained for --control")
    parser.add_argument(
        "--snap", action="store_true", help="move invalid sizes/frame counts to the nearest valid value and say so"
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compiled transformer blocks (torch.compile): faster forwards on GPUs, after a compile of each new shape "
        "once per worker; default on for GPU replica workers, off on the CPU and for gangs (bench/README.md)",
    )
    parser.add_argument(
        "--fp8-attention",
        action="store_true",
        help="the video self-attention in FP8 through cuDNN (Hopper GPUs; pip install '.[fp8]'): faster forwards on "
        "H100/H200, outputs change more than compiling changes them; replicas only (bench/README.md)",
    )
    parser.add_argument(
        "--fa4-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 attention through FlashAttention-4's kernel (Hopper/Blackwell GPUs; pip install '.[fa4]'): "
        "faster than cuDNN's on long video sequences; default on for GPU replica workers where it is installed "
        "(bench/README.md)",
    )
    parser.add_argument(
        "--batched-passes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a guided step's passes (cond, uncond, STG, modality) as one batched forward where the video is short "
        "(stage 1 of a two-stage job, up to 4096 video tokens, 6144 with --fp8 --fp8-attention): faster steps for "
        "some more memory; default on for GPU replica workers (bench/README.md)",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="the transformer's linear layers in FP8 (ltx-core's scaled-FP8 format, torch._scaled_mm; GPUs with FP8 "
        "tensor cores: L4, L40S, H100, H200, B200): about half the weights (~19 GB at 19B) and faster matmuls, "
        "outputs change by the FP8 rounding; replicas only",
    )
    parser.add_argument(
        "--fp8-all-blocks",
        action="store_true",
        help="with --fp8 (implied): blocks 0 and 43-47 in FP8 too, which the official FP8 policy keeps in bf16: "
        "a few percent faster per forward, its error on real weights not measured (bench/README.md)",
    )


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    """The pool's `cluster.worker_options.WorkerOptions` from `render`'s or `campaign run`'s flags (`--device`,
    `add_speed_flags`): made once, here, and handed whole to the executor."""
    from cluster.worker_options import SPEED_CHOICES, WorkerOptions

    return WorkerOptions(device=args.device, **{name: getattr(args, name) for name in SPEED_CHOICES})


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """How much a command that loads models shows on stderr besides its result (`cluster.console`)."""
    parser.add_argument("--quiet", action="store_true", help="no progress and no notes: errors and the result only")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="the libraries' own log lines and warnings too (transformers, Ray); env LTX2_FARM_VERBOSE=1",
    )


def start_workers(args: argparse.Namespace, checkpoints: Any, placement: Any, backend: str = "ray") -> Any:
    """The workers (an `Executor` of `backend`) that `render`'s or `campaign run`'s flags ask for (`--workers`,
    `--device`, speed flags)."""
    from cluster.executor import start_executor

    return start_executor(backend, checkpoints, args.workers, placement, worker_options(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltx2-farm",
        description="Render farm for LTX-2 (video with synchronized audio) on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    render = command("render", "render a job (default: the embedded demo) into ./renders/ (--tiny: the demo model)")
    _add_job_flags(render)
    add_model_flags(render)
    render.add_argument("--out", default="renders", help="output folder (default: ./renders)")
    render.add_argument("--device", choices=["cuda", "cpu"], help="default: a GPU if there is one, else the CPU")
    render.add_argument("--address", help="join this Ray cluster (env RAY_ADDRESS); implies --executor ray")
    render.add_argument(
        "--executor",
        choices=["auto", "local", "ray"],
        default="auto",
        help="where the workers run: in this process (local: one machine, no cluster to start) or as Ray actors "
        "(ray: an embedded cluster, or the one --address names; gangs need it); auto: ray with --address or a gang, "
        "else local",
    )
    add_output_flags(render)
    add_speed_flags(render)
    add_metrics_flags(render, "while rendering")
    render.add_argument(
        "--workers",
        type=int,
        default=1,
        help="render workers (one GPU each; CPU workers when Ray sees no GPU); default 1",
    )
    storage = render.add_argument_group("upload (default: keep the files in --out only)")
    storage.add_argument(
        "--output",
        metavar="URL",
        help="s3://bucket/prefix or a folder; or the MP4 itself (s3://bucket/dir/long.mp4, long.mp4: its sidecar "
        "long.json beside it; a file there is never replaced); files stay in --out until confirmed",
    )
    storage.add_argument(
        "--key-template",
        help=f"object key under a folder or prefix; fields {{job}} (<name>-<hash>-seed<seed>) {{name}} {{seed}} "
        f"{{hash}} {{ext}}; default {DEFAULT_KEY_TEMPLATE}",
    )
    storage.add_argument("--endpoint-url", help="S3-compatible endpoint (env AWS_ENDPOINT_URL)")
    storage.add_argument("--region", help="S3 region (env AWS_DEFAULT_REGION)")
    storage.add_argument("--addressing-style", choices=["auto", "path", "virtual"], default="auto")
    storage.add_argument("--profile", help="AWS profile (credentials come from boto3's standard chain)")

    plan = command("plan", "show how a job is split into tasks (chunks, tiles, decode tiles)")
    _add_job_flags(plan)

    validate = command("validate", "check a job without rendering")
    _add_job_flags(validate)

    from cluster.campaign_cli import add_campaign_parser

    add_campaign_parser(sub, EPILOG)
    from cluster.config_cli import add_config_parser

    add_config_parser(sub)

    examples = sub.add_parser(
        "examples",
        help="write the conditioned-campaign example: image, keyframe, control, audio and LoRA rows + their files",
    )
    examples.add_argument("folder", help="where to write conditioned.yaml and its input files")
    add_cache_flag(examples)  # the tiny model: the example's LoRAs are made for it
    examples.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="model files: generate the tiny set, check a set")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    tiny = models_sub.add_parser("tiny", help="generate (or find cached) the tiny official-format checkpoint set")
    add_cache_flag(tiny)
    tiny.add_argument("--json", action="store_true")
    check = models_sub.add_parser("check", help="check every file of a checkpoint set and load it once")
    add_model_flags(check)
    check.add_argument("--json", action="store_true")
    publish = models_sub.add_parser(
        "publish", help="upload a set (--tiny: the demo one) and its manifest (ltx2-models.json) for `models pull`"
    )
    publish.add_argument("destination", metavar="DEST", help="s3://bucket/prefix (or a folder)")
    add_model_flags(publish)
    publish.add_argument("--endpoint-url", help="S3-compatible endpoint (env AWS_ENDPOINT_URL)")
    publish.add_argument("--json", action="store_true")
    pull = models_sub.add_parser(
        "pull", help="fetch and verify a set into this node's model cache (what workers do on first use)"
    )
    pull.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="s3://…/ltx2-models.json, its prefix, or a local manifest (env LTX2_MODELS)",
    )
    pull.add_argument(
        "--cache-dir", dest="model_cache", metavar="DIR", help="the node's model cache (env LTX2_FARM_MODEL_CACHE)"
    )
    pull.add_argument("--endpoint-url", help="S3-compatible endpoint (env AWS_ENDPOINT_URL)")
    pull.add_argument("--json", action="store_true")
    return parser


CONFLICTING_FLAGS = (
    ("num_frames", "duration", "both set the video's length: give one of them"),
    ("resolution", "height", "both set the height: give --resolution WxH alone, or --width and --height"),
    ("resolution", "width", "both set the width: give --resolution WxH alone, or --width and --height"),
    ("region", "output", None),
    ("profile", "output", None),
)
"""Flags that must not meet (a message), or whose first needs the second (None): either way one of them would be
dropped without a word. A flag on top of a job file's field is no conflict: the flag wins, as documented."""


def _flag(dest: str) -> str:
    return {"num_frames": "--frames"}.get(dest, f"--{dest.replace('_', '-')}")


def refuse_conflicting_flags(args: argparse.Namespace) -> None:
    for first, second, why in CONFLICTING_FLAGS:
        a, b = getattr(args, first, None), getattr(args, second, None)
        if why is not None and a is not None and b is not None:
            raise UsageError(f"{_flag(first)} {_shown(a)} and {_flag(second)} {_shown(b)} {why}")
        if why is None and a is not None and b is None:
            raise UsageError(
                f"{_flag(first)} {a} only applies to an upload: give {_flag(second)} s3://… too, or drop it"
            )


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_job_mapping(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The job as a mapping: the file (or the demo), with command-line fields on top."""
    refuse_conflicting_flags(args)
    if args.job:
        from cluster.campaign_manifest import read_mapping_file

        data, source = read_mapping_file(Path(args.job), "job file", UsageError), args.job
    elif args.prompt is not None:
        data, source = {}, "command line"
    else:
        data, source = dict(DEMO_JOB), "embedded demo job"
    for field in JOB_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            data[field] = value
    placement = {"mode": getattr(args, "placement", None), "gpus": getattr(args, "gpus", None)}
    if any(v is not None for v in placement.values()):
        merged = dict(data.get("placement") or {})
        merged.update({k: v for k, v in placement.items() if v is not None})
        data["placement"] = merged
    for flag, field, parse in (("image", "images", _image_flag), ("lora", "loras", _lora_flag)):
        given = getattr(args, flag, None)
        if given:
            data[field] = [*data.get(field, []), *(parse(value) for value in given)]
    if getattr(args, "audio", None):
        path, at, start = args.audio.rpartition("@")
        try:
            data["audio"] = {"path": path, "start": float(start)} if at else {"path": args.audio}
        except ValueError:
            raise UsageError(f"--audio {args.audio!r}: the part after '@' is a start time in seconds") from None
    if getattr(args, "control", None) or getattr(args, "control_lora", None):
        data["control"] = _control_flags(args.control, args.control_lora)
    if getattr(args, "resolution", None):
        try:
            width, height = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            raise UsageError(f"--resolution {args.resolution!r}: write it as WIDTHxHEIGHT, e.g. 1920x1088") from None
        data["width"], data["height"] = width, height
    if args.duration is not None:
        data.pop("num_frames", None)
    if getattr(args, "num_frames", None) is not None:
        data.pop("duration", None)
    return data, source


def _split_strength(flag: str, value: str, example: str) -> tuple[str, float | None]:
    """'path:0.8' → ('path', 0.8); a path without ':NUMBER' keeps its colons."""
    head, sep, tail = value.rpartition(":")
    if not sep or not head:
        return value, None
    try:
        return head, float(tail)
    except ValueError:
        raise UsageError(f"--{flag} {value!r}: the part after the last ':' is a strength, e.g. {example}") from None


def _image_flag(value: str) -> dict[str, Any]:
    path, strength = _split_strength("image", value, "--image shot.png@0:0.9")
    entry: dict[str, Any] = {"path": path}
    if "@" in path:
        path, _, frame = path.rpartition("@")
        if not frame.isdigit():
            raise UsageError(f"--image {value!r}: the part after '@' is a frame index, e.g. --image key.png@48")
        entry = {"path": path, "frame": int(frame)}
    if strength is not None:
        entry["strength"] = strength
    return entry


def _lora_flag(value: str) -> dict[str, Any]:
    path, strength = _split_strength("lora", value, "--lora style.safetensors:0.8")
    return {"path": path} if strength is None else {"path": path, "strength": strength}


def _control_flags(control: str | None, lora: str | None) -> dict[str, Any]:
    kind, _, path = (control or "").partition(":")
    if kind not in ("canny", "depth", "pose") or not path:
        raise UsageError(f"--control {control!r}: write it as KIND:PATH with KIND canny, depth or pose")
    if not lora:
        raise UsageError("--control needs --control-lora PATH[:STRENGTH]: the IC-LoRA trained for that control")
    lora_path, strength = _split_strength("control-lora", lora, "--control-lora ic-canny.safetensors:0.9")
    entry: dict[str, Any] = {"kind": kind, "path": path, "lora": lora_path}
    if strength is not None:
        entry["lora_strength"] = strength
    return entry


def job_source(args: argparse.Namespace) -> JobSource:
    """The job the flags give: its fields (`load_job_mapping`), where they came from, the folder its relative
    input paths are read from (the job file's, else the working directory) and `--snap`."""
    data, source = load_job_mapping(args)
    base = Path(args.job).resolve().parent if getattr(args, "job", None) else Path.cwd()
    return JobSource(data, source, base, args.snap)


def check_model_choice(args: argparse.Namespace) -> None:
    """A missing or ambiguous model set refused in one line (`cluster.model_choice.model_problem`), before anything
    starts; `resolve_checkpoints` checks the same when it runs."""
    from cluster.model_choice import model_problem

    problem = model_problem(farm_settings(args), setting_origins(args), bool(getattr(args, "tiny", False)))
    if problem:
        raise UsageError(problem)


def resolve_checkpoints(args: argparse.Namespace):  # -> CheckpointSet | ModelSet
    """The model set the flags, environment or config file give (`cluster.model_choice`): four local files, a
    manifest (read once here, handed to the workers, who resolve it on their own nodes), or with `--tiny` the demo
    set, said so on stderr."""
    from cluster.model_choice import TINY_NOTE, resolve_models

    tiny = bool(getattr(args, "tiny", False))
    models = resolve_models(farm_settings(args), setting_origins(args), tiny, _model_storage(args))
    if tiny and not getattr(args, "json", False):
        sys.stderr.write(TINY_NOTE + "\n")  # kept with --quiet: the output is noise, whatever else is shown
    return models


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(printable(human, keep_newlines=True))


def _problem_payload(e: JobValidationError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": "invalid job",
        "source": e.source,
        "problems": [
            {"field": p.field, "value": p.value, "problem": p.problem, "nearest": p.nearest} for p in e.problems
        ],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    from jobs.plan import plan_job

    given = job_source(args)
    job = validate_job(given.fields, snap=given.snap, source=given.origin)
    plan_job(job)  # what only the plan can tell (prompts per chunk, keyframes in a chunked job)
    job = resolve_job_inputs(job, given)
    payload = {
        "ok": True,
        "source": given.origin,
        "job": job.spec.model_dump(mode="json"),
        "num_frames": job.num_frames,
        "adjustments": [{"field": a.field, "value": a.value, "note": a.problem} for a in job.adjustments],
    }
    _emit(
        args,
        payload,
        f"{describe_adjustments(job)}{given.origin}: valid ({job.num_frames} frames, "
        f"{job.spec.width}x{job.spec.height} @ {job.spec.frame_rate:g} fps, {job.spec.recipe})",
    )
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    from jobs.plan import describe, plan_job

    data, source = load_job_mapping(args)
    job = validate_job(data, snap=args.snap, source=source)
    plan = plan_job(job)
    _emit(args, {"ok": True, "source": source, **plan.summary()}, describe_adjustments(job) + describe(plan))
    return ExitCode.OK


def cmd_render(args: argparse.Namespace) -> int:
    metrics = start_metrics(args)  # first: its port is held before anything else starts
    try:
        return _render(args, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _render(args: argparse.Namespace, metrics: Any) -> int:
    from cluster.service import OutputRequest, RenderRequest, RenderWatch, presigned_links, render

    settings = farm_settings(args)
    output = OutputRequest(
        Path(args.out).absolute(),  # the paths printed (and in --json) say where from any folder
        args.output,
        args.key_template,
        endpoint_url=settings.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        profile=args.profile,
    )
    from cluster.console import Screen, StageProgress, draws_bars

    request = RenderRequest(job_source(args), output, args.workers, args.executor, settings.address, args.device)
    watch = RenderWatch()
    if not (args.quiet or args.json):
        screen = Screen(sys.stderr)
        stages = StageProgress(screen, draws_bars(sys.stderr))
        waits = UploadWaitLines(screen.line)
        watch = RenderWatch(note=screen.line, progress=stages.show, upload_wait=waits, stopped=stages.close)
    result = render(request, lambda: resolve_checkpoints(args), partial(start_workers, args), metrics, watch)
    sidecar = result.document
    media = sidecar["media"]
    summary = (
        f"({media['width']}x{media['height']}, {media['frames']} frames @ {media['fps']:g} fps, "
        f"audio {media['audio_codec']} {media['sample_rate']} Hz x{media['channels']}, "
        f"{sidecar['timings_s']['total']:.1f} s)"
    )
    payload: dict[str, Any] = {"ok": True, **sidecar}
    lines = []
    if result.paths is not None:
        payload.update(video=str(result.paths.video), sidecar=str(result.paths.sidecar))
        lines += [f"wrote {result.paths.video}  {summary}", f"sidecar {result.paths.sidecar}"]
    if result.objects:
        links = presigned_links(output, result.objects)
        payload["upload"] = [
            {
                "key": o.key,
                "bytes": o.bytes,
                "etag": o.etag,
                "url": o.url,
                "verified": o.verified,
                "presigned_url": link,
            }
            for o, link in zip(result.objects, links, strict=True)
        ]
        if result.paths is None:
            lines.append(f"rendered {summary}")
        for u in payload["upload"]:
            done = "kept (already there)" if u["verified"] == "kept" else "uploaded"
            lines.append(f"{done} {u['url']}\n  link: {u['presigned_url']}")
    _emit(args, payload, "\n".join(lines))
    return ExitCode.OK


UPLOAD_WAIT_LINE_S = 10.0
"""At most one line this often while an upload waits out an outage (its retries back off to every 30 s)."""


class UploadWaitLines:
    """Says through `write` (`cluster.console.Screen.line`: above a progress bar) that an upload waits out an
    outage (`cluster.storage.UploadWait`): at its first retry, when the reason changes, and then every
    `UPLOAD_WAIT_LINE_S`, so an hour of retries is never an hour of silence. Called from any thread (a campaign's
    publishing threads)."""

    def __init__(self, write: Any) -> None:
        self._write = write
        self._shown: dict[str, tuple[float, str]] = {}  # local file -> when its last line was shown, and why
        self._lock = threading.Lock()

    def __call__(self, wait: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._shown.get(wait.path)
            if last is not None and last[1] == wait.reason and now - last[0] < UPLOAD_WAIT_LINE_S:
                return
            self._shown[wait.path] = (now, wait.reason)
        self._write(wait.line())


def cmd_examples(args: argparse.Namespace) -> int:
    from ltx2.samples import write_conditioned_example
    from ltx2.tiny import ensure_tiny_checkpoint_set

    checkpoints = ensure_tiny_checkpoint_set(farm_settings(args).cache_dir)
    manifest = write_conditioned_example(Path(args.folder), checkpoints.checkpoint)
    files = sorted(str(p) for p in Path(args.folder).iterdir())
    _emit(
        args,
        {"ok": True, "manifest": str(manifest), "files": files},
        f"wrote {manifest} and its inputs; run it with:\n"
        f"  ltx2-farm campaign submit {manifest}\n  ltx2-farm campaign run --tiny --workers 2\n"
        "(its LoRAs are made for the demo model, whose random weights render noise)",
    )
    return ExitCode.OK


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "tiny":
        from ltx2.tiny import ensure_tiny_checkpoint_set

        paths = ensure_tiny_checkpoint_set(farm_settings(args).cache_dir)
        files = {k: str(v) for k, v in paths.__dict__.items()}
        _emit(args, {"ok": True, **files}, "\n".join(f"{k}: {v}" for k, v in files.items()))
        return ExitCode.OK
    if args.models_command in ("publish", "pull"):
        return _cmd_models_store(args)
    from cluster.model_store import local_checkpoint_set

    checkpoints = local_checkpoint_set(resolve_checkpoints(args))
    from ltx2.models import load_resident_models

    models = load_resident_models(checkpoints, "cpu")
    payload = {
        "ok": True,
        "checkpoint_variant": models.variant.name,
        "load_seconds": models.load_seconds,
        "num_layers": models.num_layers,
        "files": {k: str(v) for k, v in checkpoints.files().items()},
    }
    _emit(
        args,
        payload,
        f"checkpoint set OK: a {models.variant.name} checkpoint, every parameter loaded ({models.num_layers} "
        f"transformer blocks, {models.load_seconds:.1f} s)",
    )
    return ExitCode.OK


def _model_storage(args: argparse.Namespace):  # -> StorageOptions
    from cluster.storage import StorageOptions

    return StorageOptions(endpoint_url=farm_settings(args).endpoint_url, addressing_style="path")


def _cmd_models_store(args: argparse.Namespace) -> int:
    from cluster import model_store

    if args.models_command == "publish":
        local = model_store.local_checkpoint_set(resolve_checkpoints(args))  # --models: mirror another set
        models, url = model_store.publish_model_set(local, args.destination, _model_storage(args))
        size = sum(f.size for f in models.files())
        _emit(
            args,
            {"ok": True, "manifest": url, "files": len(models.files()), "bytes": size},
            f"published {len(models.files())} files ({size / 1e9:.2f} GB) and {url}\n"
            f"  every node: --models {url}  (or LTX2_MODELS)",
        )
        return ExitCode.OK
    source = args.source or farm_settings(args).models
    if not source:
        raise UsageError("models pull: give the manifest (s3://…/ltx2-models.json, its prefix, a path) or LTX2_MODELS")
    models = model_store.read_model_set(source, _model_storage(args))

    def progress(f: Any, downloaded: bool) -> None:
        if not args.json:
            sys.stderr.write(
                f"{'downloaded' if downloaded else 'verified'} {printable(f.path)} ({f.size / 1e6:.1f} MB)\n"
            )

    cache = Path(args.model_cache) if args.model_cache else None
    result = model_store.pull_model_set(models, cache, progress, _model_storage(args))
    files = {k: str(v) for k, v in result.checkpoints.__dict__.items() if v is not None}
    payload = {
        "ok": True,
        **files,
        "set_id": models.set_id(),
        "downloaded": list(result.downloaded),
        "reused": list(result.reused),
        "bytes_downloaded": result.bytes_downloaded,
        "seconds": round(result.seconds, 3),
    }
    human = "\n".join(f"{k}: {v}" for k, v in files.items())
    human += (
        f"\n{len(result.downloaded)} file(s) downloaded ({result.bytes_downloaded / 1e9:.2f} GB), "
        f"{len(result.reused)} already here, {result.seconds:.1f} s"
    )
    _emit(args, payload, human)
    return ExitCode.OK


REPORTED_ERRORS = (
    ("ltx2.checkpoint", "CheckpointError", ExitCode.INVALID_INPUT),
    ("cluster.executor", "CapacityError", ExitCode.INVALID_INPUT),
    ("jobs.placement", "PlacementError", ExitCode.INVALID_INPUT),
    ("jobs.keys", "DestinationError", ExitCode.INVALID_INPUT),
    ("cluster.storage", "UploadError", ExitCode.UPLOAD_FAILED),
    ("cluster.campaign_manifest", "ManifestError", ExitCode.INVALID_INPUT),
    ("cluster.storage", "InputFetchError", ExitCode.INVALID_INPUT),
    ("cluster.output_files", "DiskFullError", ExitCode.INVALID_INPUT),
    ("cluster.campaign_store", "NotFound", ExitCode.NOT_FOUND),
    ("cluster.campaign_store", "StateError", ExitCode.INVALID_INPUT),
    ("cluster.campaign_cli", "NoStore", ExitCode.NOT_FOUND),
)
"""Errors (besides UsageError) whose message says what to fix: printed alone (or as JSON), with their exit code.
Named, not imported: importing cluster.executor, ltx2.checkpoint or cluster.storage costs torch, Ray and boto3
(seconds: bench/README.md) before a missing job file could be reported; a class whose module was never imported
cannot have been raised."""


def _reported_code(error: BaseException) -> ExitCode | None:
    """The exit code of an error whose message says it all, or None (a bug: its traceback is shown)."""
    if isinstance(error, UsageError):
        return ExitCode.INVALID_INPUT
    for module, name, code in REPORTED_ERRORS:
        if module in sys.modules and isinstance(error, getattr(sys.modules[module], name)):
            return code
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cluster.console import quiet_libraries

    quiet_libraries(getattr(args, "verbose", False))  # before any library loads
    try:
        from cluster.campaign_cli import cmd_campaign
        from cluster.config_cli import cmd_config
        from cluster.settings import exported

        commands = {
            "render": cmd_render,
            "plan": cmd_plan,
            "validate": cmd_validate,
            "models": cmd_models,
            "examples": cmd_examples,
            "campaign": cmd_campaign,
            "config": cmd_config,
        }
        with exported(farm_settings(args)):
            return commands[args.command](args)
    except JobValidationError as e:
        if getattr(args, "json", False):
            print(json.dumps(_problem_payload(e), indent=2, default=str))
        print(f"error: {printable(e, keep_newlines=True)}", file=sys.stderr)
        snapped = [p.field for p in e.problems if p.snaps]
        if snapped and hasattr(args, "snap"):  # commands that take --snap (a campaign manifest's rows do not)
            print(f"  --snap moves {', '.join(snapped)} to their nearest valid values and says so", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except KeyboardInterrupt as e:  # its text, where a command gave one, says what was kept and where
        message = f"interrupted: {printable(e)}" if str(e) else "interrupted"
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": message}, indent=2))
        print(message, file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as e:
        code = _reported_code(e)
        if code is None:
            raise
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(e)}, indent=2))
        print(f"error: {printable(e, keep_newlines=True)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
