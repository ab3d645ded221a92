"""The farm's settings in one place: where the store and caches live, which model set renders, which Ray cluster
and S3 endpoint a command uses.

Each setting comes from, first to last: its command-line flag, its environment variable (the names the farm, Ray
and boto3 already read: LTX2_FARM_DB, RAY_ADDRESS, AWS_ENDPOINT_URL, ...), the config file
(`~/.config/ltx2-farm/config.toml`, under XDG_CONFIG_HOME where set; LTX2_FARM_CONFIG names another), then its
default. The store and the caches default to per-user folders (XDG_DATA_HOME and XDG_CACHE_HOME on Linux, through
platformdirs), so a command finds the same store from any folder. `ltx2-farm config show` prints each value and
where it came from.

The command line loads the settings once and sets LTX2_FARM_CACHE from them for the command's run: the code that
reads the farm's cache on its own (`ltx2.checkpoint.default_cache_dir`: staging, digests, input caches) and the
workers it starts see the same folder as the command.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cluster.service import UsageError
from ltx2.checkpoint import user_cache_dir

APP = "ltx2-farm"
CONFIG_ENV = "LTX2_FARM_CONFIG"
CACHE_ENV = "LTX2_FARM_CACHE"


def config_file() -> Path:
    """The config file: LTX2_FARM_CONFIG, else `config.toml` in the per-user config folder (it need not exist)."""
    return Path(os.environ.get(CONFIG_ENV) or platformdirs.user_config_path(APP) / "config.toml")


def default_store() -> Path:
    """The campaign store when none is given: `farm.db` in the per-user data folder."""
    return platformdirs.user_data_path(APP) / "farm.db"


def _setting(default: Any, flag: str, env: str, description: str, **kwargs: Any) -> Any:
    extra = {"flag": flag, "env": env}
    if callable(default):
        return Field(default_factory=default, description=description, json_schema_extra=extra, **kwargs)
    return Field(default, description=description, json_schema_extra=extra, **kwargs)


class FarmSettings(BaseSettings):
    """The settings a command runs with (field names are the config file's keys)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    db: Path = _setting(default_store, "--db", "LTX2_FARM_DB", "campaign store (SQLite)")
    cache_dir: Path = _setting(
        user_cache_dir, "--cache-dir", CACHE_ENV, "the farm's cache: tiny model, staging, digests"
    )
    models: str | None = _setting(None, "--models", "LTX2_MODELS", "model-set manifest (s3://…, or a local path)")
    checkpoint: Path | None = _setting(None, "--checkpoint", "LTX2_CHECKPOINT", "LTX-2 checkpoint file")
    gemma_root: Path | None = _setting(None, "--gemma-root", "LTX2_GEMMA_ROOT", "Gemma-3 folder")
    spatial_upsampler: Path | None = _setting(
        None, "--spatial-upsampler", "LTX2_SPATIAL_UPSAMPLER", "spatial upsampler file"
    )
    distilled_lora: Path | None = _setting(None, "--distilled-lora", "LTX2_DISTILLED_LORA", "distilled LoRA file")
    address: str | None = _setting(None, "--address", "RAY_ADDRESS", "Ray cluster to join (none: start one here)")
    endpoint_url: str | None = _setting(None, "--endpoint-url", "AWS_ENDPOINT_URL", "S3-compatible endpoint")
    metrics_addr: str | None = _setting(
        None, "--metrics-addr", "LTX2_FARM_METRICS_ADDR", "address the metrics endpoint listens on (none: 127.0.0.1)"
    )

    @field_validator("db", "cache_dir", mode="after")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().absolute()  # what it means from here, as printed, whichever folder runs next

    @field_validator("checkpoint", "gemma_root", "spatial_upsampler", "distilled_lora", mode="after")
    @classmethod
    def _home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return tuple(source for _kind, source in _sources(init_settings))

    def environment(self) -> dict[str, str]:
        """The variables that carry these settings to code reading them on its own (and the workers it starts)."""
        return {CACHE_ENV: str(self.cache_dir)}


class NamedEnvironment(PydanticBaseSettingsSource):
    """Each setting from its own environment variable (its `env`); an empty variable is not set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return os.environ.get(env_name(field)) or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _key, _complex = self.get_field_value(field, name)
            if value is not None:
                found[name] = value
        return found


def env_name(field: FieldInfo) -> str:
    return field.json_schema_extra["env"]  # type: ignore[index]


def flag_name(field: FieldInfo) -> str:
    return field.json_schema_extra["flag"]  # type: ignore[index]


def _sources(init: PydanticBaseSettingsSource) -> tuple[tuple[str, PydanticBaseSettingsSource], ...]:
    """Where settings come from, first to last (the first that gives a setting wins), each with its kind."""
    return (
        ("flag", init),
        ("environment", NamedEnvironment(FarmSettings)),
        ("config file", TomlConfigSettingsSource(FarmSettings, config_file())),
    )


def load_settings(flags: Mapping[str, Any] | None = None) -> FarmSettings:
    """The settings: `flags` (a setting's name and the value its flag was given; None: not given) over the
    environment over the config file over the defaults. A bad config file or value is a `UsageError` naming it."""
    given = _given(flags)
    try:
        return FarmSettings(**given)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as error:
        raise UsageError(f"config file {config_file()}: cannot read it as TOML ({error})") from None
    except ValidationError as error:
        raise UsageError(_validation_message(error, given)) from None


def setting_origins(flags: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Where each setting's value comes from: its flag ("--db"), its variable ("LTX2_FARM_DB"), the config file
    (its path) or "default"; the same sources, in the same order, as `load_settings`."""
    origins: dict[str, str] = {}
    for kind, source in _sources(InitSettingsSource(FarmSettings, _given(flags))):
        for name in source():
            if name in FarmSettings.model_fields and name not in origins:
                origins[name] = _origin(kind, name)
    return {name: origins.get(name, "default") for name in FarmSettings.model_fields}


def _given(flags: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (flags or {}).items() if k in FarmSettings.model_fields and v is not None}


def _origin(kind: str, name: str) -> str:
    field = FarmSettings.model_fields[name]
    return {"flag": flag_name(field), "environment": env_name(field), "config file": str(config_file())}[kind]


def flag_values(args: Any) -> dict[str, Any]:
    """The settings' flags as parsed (an argparse namespace: each setting's flag has the setting's name)."""
    return {name: getattr(args, name, None) for name in FarmSettings.model_fields}


def _validation_message(error: ValidationError, given: Mapping[str, Any]) -> str:
    """One line: each bad value with where it came from, or the config file's unknown keys."""
    try:
        origins = setting_origins(given)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        origins = {}
    problems = []
    for e in error.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            known = ", ".join(FarmSettings.model_fields)
            problems.append(f"config file {config_file()}: unknown setting {name!r} (settings: {known})")
        else:
            where = origins.get(name, name)
            where = f"config file {where}: {name}" if where == str(config_file()) else where
            problems.append(f"{where}: {e['msg']} (got {e['input']!r})")
    return "; ".join(problems)


@contextmanager
def exported(settings: FarmSettings) -> Iterator[None]:
    """This process's environment carries `settings.environment()` while the block runs, then is as it was."""
    values = settings.environment()
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
