"""Which model set a command renders with: one resolver for `render`, `campaign run`, `models check` and
`models publish`.

A model set is given one of three ways: `--tiny` (the generated demo set, random weights: its output is noise),
a model-set manifest (`--models`, LTX2_MODELS: every node resolves it into its own cache, `cluster.model_store`),
or the four official files (`--checkpoint`, `--gemma-root`, `--spatial-upsampler`, `--distilled-lora`, or their
LTX2_* variables). The manifest and the files are settings (`cluster.settings`: flag, environment or config
file); `--tiny` is asked for on the command line only. Nothing given is an error, never a silent fallback to
random weights. Every problem is found before anything heavy is imported, so it is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.service import UsageError
from cluster.settings import FarmSettings, env_name, flag_name

MODEL_FILES = ("checkpoint", "gemma_root", "spatial_upsampler", "distilled_lora")
"""The four files of an official set, by their settings' names."""

OPTIONAL_FILES = ("distilled_lora",)
"""Files a set may leave out: a distilled checkpoint needs no distilled LoRA (a dev one does: the set's header check
says so, `ltx2.checkpoint`)."""

TINY_NOTE = "note: --tiny: the demo model has random weights: its output is noise"


def _named(name: str, origins: Mapping[str, str]) -> str:
    """A setting as a person gave it: its flag, with where it came from unless that was the flag."""
    flag = flag_name(FarmSettings.model_fields[name])
    where = origins.get(name, flag)
    return flag if where == flag else f"{flag} (from {where})"


def model_problem(settings: FarmSettings, origins: Mapping[str, str], tiny: bool) -> str | None:
    """What is wrong with the model set given (one line naming the fix), or None. `origins`: where each setting
    came from (`cluster.settings.setting_origins`). `--tiny` wins over a model set from the environment or the
    config file, as any flag does; with a model flag beside it, the command is ambiguous."""
    given = [name for name in ("models", *MODEL_FILES) if getattr(settings, name)]
    if tiny:
        flagged = [name for name in given if origins.get(name) == flag_name(FarmSettings.model_fields[name])]
        if flagged:
            return f"--tiny and {_named(flagged[0], origins)} both name a model set: give one"
        return None
    if not given:
        return (
            "no model given: --tiny renders with the demo model (random weights: its output is noise); a real model "
            "is --models SOURCE, or --checkpoint, --gemma-root, --spatial-upsampler and --distilled-lora, as flags, "
            "environment (LTX2_MODELS, LTX2_CHECKPOINT, ...) or config file (`ltx2-farm config show`)"
        )
    files = [name for name in MODEL_FILES if getattr(settings, name)]
    if settings.models and files:
        return (
            f"model set: {_named('models', origins)} and {_named(files[0], origins)} both given: give the manifest "
            "or the four files, not both"
        )
    missing = [
        FarmSettings.model_fields[name]
        for name in MODEL_FILES
        if not getattr(settings, name) and name not in OPTIONAL_FILES
    ]
    if files and missing:
        wanted = ", ".join(f"{flag_name(field)} (or {env_name(field)})" for field in missing)
        return (
            f"model files: also give {wanted}; a real render needs them all (and --distilled-lora with a dev "
            "checkpoint)"
        )
    return None


def resolve_models(settings: FarmSettings, origins: Mapping[str, str], tiny: bool, storage: Any = None):
    """The model set given (`model_problem` first, a `UsageError` if any): the tiny set (generated once into the
    farm's cache), a manifest read once here (`cluster.model_store.ModelSet`: workers resolve it on their own
    nodes; `storage`: the S3 options to read it with), or the four local files (`ltx2.checkpoint.CheckpointSet`)."""
    problem = model_problem(settings, origins, tiny)
    if problem:
        raise UsageError(problem)
    if tiny:
        from ltx2.tiny import ensure_tiny_checkpoint_set

        return ensure_tiny_checkpoint_set(settings.cache_dir)
    if settings.models:
        from cluster.model_store import read_model_set

        return read_model_set(settings.models, storage)
    from ltx2.checkpoint import CheckpointSet

    return CheckpointSet(**{name: Path(getattr(settings, name)) for name in MODEL_FILES if getattr(settings, name)})
