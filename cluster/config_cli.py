"""`ltx2-farm config show`: each setting's value and where it came from (`cluster.settings`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cluster.exit_codes import ExitCode
from jobs.text import printable


def add_config_parser(sub: Any) -> None:
    from cluster.settings import FarmSettings, env_name, flag_name

    config = sub.add_parser(
        "config",
        help="the farm's settings: flags over environment over the config file",
        description="Settings come from their flag, else their environment variable, else the config file "
        "(~/.config/ltx2-farm/config.toml, or $XDG_CONFIG_HOME/ltx2-farm/config.toml, or LTX2_FARM_CONFIG), else "
        'their default. The config file is TOML with the names below as keys, e.g. db = "/srv/farm/farm.db".',
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="each setting, its value and where it came from")
    for name, field in FarmSettings.model_fields.items():  # its flags override here too: what a command would use
        show.add_argument(
            flag_name(field), dest=name, metavar="VALUE", help=f"{field.description} (env {env_name(field)})"
        )
    show.add_argument("--json", action="store_true")


def cmd_config(args: argparse.Namespace) -> int:
    from cluster.cli import farm_settings, setting_origins
    from cluster.settings import FarmSettings, config_file, env_name, flag_name

    settings = farm_settings(args)
    origins = setting_origins(args)
    file = config_file()
    rows = {
        name: {
            "value": None if getattr(settings, name) is None else str(getattr(settings, name)),
            "source": origins[name],
            "flag": flag_name(field),
            "env": env_name(field),
        }
        for name, field in FarmSettings.model_fields.items()
    }
    if args.json:
        print(json.dumps({"config_file": str(file), "config_file_exists": file.is_file(), "settings": rows}, indent=2))
        return ExitCode.OK
    width = max(len(name) for name in rows)
    lines = [f"config file: {file}{'' if file.is_file() else ' (none)'}"]
    for name, row in rows.items():
        value = row["value"] if row["value"] is not None else "-"
        lines.append(f"{name:<{width}}  {value}  ({row['source']})")
    print(printable("\n".join(lines), keep_newlines=True))
    return ExitCode.OK
