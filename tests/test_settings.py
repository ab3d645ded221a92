"""The farm's settings (`cluster.settings`): flags over the environment over the config file, `config show`, the
per-user campaign store, and the model set a render needs (`cluster.model_choice`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.settings import FarmSettings, env_name, load_settings, setting_origins
from tests.conftest import CACHE

TINY_JOB = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}
NO_MODEL = (
    "error: no model given: --tiny renders with the demo model (random weights: its output is noise); a real model "
    "is --models SOURCE, or --checkpoint, --gemma-root, --spatial-upsampler and --distilled-lora, as flags, "
    "environment (LTX2_MODELS, LTX2_CHECKPOINT, ...) or config file (`ltx2-farm config show`)\n"
)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Per-user folders of this test alone, and none of the settings' variables set."""
    for field in FarmSettings.model_fields.values():
        monkeypatch.delenv(env_name(field), raising=False)
    for name in ("config", "data", "cache"):
        monkeypatch.setenv(f"XDG_{name.upper()}_HOME", str(tmp_path / name))
    return tmp_path


def _config_file(home: Path, text: str) -> Path:
    path = home / "config" / "ltx2-farm" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_flag_wins_over_the_environment_which_wins_over_the_config_file(home, monkeypatch, capsys):
    file = _config_file(home, 'db = "/file/farm.db"\naddress = "10.0.0.1:6379"\nendpoint_url = "http://file:9000"\n')
    monkeypatch.setenv("LTX2_FARM_DB", "/env/farm.db")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    flags = {"db": "/flag/farm.db", "models": None}
    settings = load_settings(flags)
    assert (settings.db, settings.address, settings.endpoint_url) == (
        Path("/flag/farm.db"),
        "10.0.0.2:6379",
        "http://file:9000",
    )
    origins = setting_origins(flags)
    assert (origins["db"], origins["address"], origins["endpoint_url"]) == ("--db", "RAY_ADDRESS", str(file))
    assert origins["models"] == origins["cache_dir"] == "default"

    assert main(["config", "show", "--json", "--db", "/flag/farm.db"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config_file"] == str(file) and shown["config_file_exists"] is True
    rows = shown["settings"]
    assert rows["db"] == {"value": "/flag/farm.db", "source": "--db", "flag": "--db", "env": "LTX2_FARM_DB"}
    assert rows["address"]["value"] == "10.0.0.2:6379" and rows["address"]["source"] == "RAY_ADDRESS"
    assert rows["endpoint_url"] == {
        "value": "http://file:9000",
        "source": str(file),
        "flag": "--endpoint-url",
        "env": "AWS_ENDPOINT_URL",
    }
    assert main(["config", "show"]) == 0  # without the flag: the environment's
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"config file: {file}"
    assert "db                 /env/farm.db  (LTX2_FARM_DB)" in lines
    assert f"endpoint_url       http://file:9000  ({file})" in lines
    assert "models             -  (default)" in lines


def test_the_defaults_are_per_user_folders(home, capsys):
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config_file"] == str(home / "config" / "ltx2-farm" / "config.toml")
    assert shown["config_file_exists"] is False
    assert shown["settings"]["db"]["value"] == str(home / "data" / "ltx2-farm" / "farm.db")
    assert shown["settings"]["cache_dir"]["value"] == str(home / "cache" / "ltx2-farm")
    assert {row["source"] for row in shown["settings"].values()} == {"default"}
    assert not (home / "data").exists()  # shown, not made


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cache = '/x'\n", "unknown setting 'cache' (settings: db, cache_dir,"),
        ("db = \n", "cannot read it as TOML"),
        ("db = 5\n", ": db: Input is not a valid path"),
    ],
    ids=["unknown key", "not TOML", "wrong type"],
)
def test_a_bad_config_file_is_one_line_naming_it(home, capsys, text, words):
    file = _config_file(home, text)
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config file {file}") and words in err and err.count("\n") == 1, err


def _in_fresh_interpreter(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`main(argv)` in a new interpreter that prints its exit code and which heavy stacks it imported."""
    code = (
        "import sys; from cluster.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, [m for m in ('torch', 'ray') if m in sys.modules])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "argv",
    [["render", "--prompt", "waves", "--out", "out"], ["campaign", "run", "--workers", "1"], ["models", "check"]],
    ids=["render", "campaign run", "models check"],
)
def test_no_model_given_is_one_line_before_anything_starts(home, argv):
    """Without --tiny, a model flag, its variable or the config file, a command that needs a model says so in one
    line with exit code 2: torch and Ray never imported, no store made, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in {env_name(f) for f in FarmSettings.model_fields.values()}}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = _in_fresh_interpreter(argv, home, env)
    assert result.stdout.splitlines()[-1] == "2 []", result.stdout + result.stderr
    assert result.stderr == NO_MODEL
    assert not (home / "out").exists() and not (home / "data").exists()


def test_tiny_is_the_demo_model_and_says_its_output_is_noise(home, monkeypatch, capsys):
    from cluster import cli
    from cluster.model_choice import TINY_NOTE

    monkeypatch.setenv("LTX2_FARM_CACHE", str(CACHE))  # the tiny set the session generated
    args = cli.build_parser().parse_args(["render", "--tiny"])
    checkpoints = cli.resolve_checkpoints(args)
    assert checkpoints.checkpoint.parent.parent == CACHE and checkpoints.checkpoint.is_file()
    assert capsys.readouterr().err == TINY_NOTE + "\n"
    assert TINY_NOTE == "note: --tiny: the demo model has random weights: its output is noise"
    quiet = cli.build_parser().parse_args(["render", "--tiny", "--json"])
    assert cli.resolve_checkpoints(quiet) == checkpoints and capsys.readouterr().err == ""  # stdout is the JSON

    monkeypatch.setenv("LTX2_CHECKPOINT", "/models/ltx-2-19b-dev.safetensors")  # a flag wins over a variable
    assert cli.resolve_checkpoints(cli.build_parser().parse_args(["render", "--tiny", "--json"])) == checkpoints
    both = cli.build_parser().parse_args(["render", "--tiny", "--checkpoint", "x.safetensors"])
    with pytest.raises(cli.UsageError, match="--tiny and --checkpoint both name a model set: give one"):
        cli.resolve_checkpoints(both)


def _manifest(folder: Path, name: str = "spring") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"campaign": name, "defaults": TINY_JOB, "rows": [{"id": "a", "prompt": "rain"}]}))
    return path


def test_the_store_is_per_user_and_said_once(home, monkeypatch, capsys):
    """No --db, no LTX2_FARM_DB: `farm.db` in the per-user data folder, the same from any folder, named once on
    stderr ("store: …"), never in --json output; nothing is made in the working folders."""
    store = home / "data" / "ltx2-farm" / "farm.db"
    for folder in ("a", "b"):
        (home / folder).mkdir()
    monkeypatch.chdir(home / "a")
    assert main(["campaign", "submit", str(_manifest(home))]) == 0
    out, err = capsys.readouterr()
    assert err == f"store: {store}\n" and out == "spring: 1 job(s) queued, 0 already known\n"
    assert store.is_file()
    monkeypatch.chdir(home / "b")
    assert main(["campaign", "status", "spring"]) == 0
    out, err = capsys.readouterr()
    assert err == f"store: {store}\n" and out.startswith("spring (active): ")
    assert main(["campaign", "status", "spring", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["campaign"] == "spring"
    assert list((home / "a").iterdir()) == list((home / "b").iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [["status"], ["status", "spring"], ["list"], ["logs", "spring"], ["pause", "spring"], ["retry-failed", "spring"]],
    ids=lambda argv: " ".join(argv),
)
def test_a_missing_store_is_said_not_made(home, capsys, argv):
    missing = home / "elsewhere" / "farm.db"
    assert main(["campaign", "--db", str(missing), *argv]) == 5
    err = capsys.readouterr().err
    assert err == (
        f"error: no campaign store at {missing}: nothing was submitted to it (`ltx2-farm campaign submit` makes it), "
        "or the store is elsewhere: give it with --db or LTX2_FARM_DB (`ltx2-farm config show`)\n"
    )
    assert not missing.parent.exists()
    assert main(["campaign", *argv, "--json"]) == 5  # the per-user default: not there either
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert not (home / "data").exists()


def test_db_is_accepted_before_or_after_the_action(home, capsys):
    db = home / "mine.db"
    assert main(["campaign", "submit", str(_manifest(home)), "--db", str(db)]) == 0
    assert db.is_file() and capsys.readouterr().err == ""  # the command line named the store: not said again
    assert main(["campaign", "status", "spring", "--db", str(db), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert main(["campaign", "--db", str(db), "status", "spring", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == after and after["jobs"]["queued"] == 1
    assert not (home / "data").exists()  # the default store was never touched


def test_campaign_status_json_names_outputs_by_absolute_paths(home):
    """`campaign run --out out` in one folder, `campaign status --json` in another: the output paths it prints are
    absolute and name the files."""
    env = {**os.environ, "LTX2_FARM_CACHE": str(CACHE), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "cluster.cli", "campaign"]
    for folder in ("runner", "reader"):
        (home / folder).mkdir()
    submitted = subprocess.run([*cli, "submit", str(_manifest(home))], env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    ran = subprocess.run(
        [*cli, "run", "--tiny", "--workers", "1", "--out", "out", "--json"],
        env=env,
        cwd=home / "runner",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    status = subprocess.run(
        [*cli, "status", "spring", "--json"], env=env, cwd=home / "reader", capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    [output] = json.loads(status.stdout)["outputs"]
    video, sidecar = Path(output["video"]), Path(output["sidecar"])
    assert video.is_absolute() and video.parent == home / "runner" / "out" / "spring"
    assert video.is_file() and sidecar.is_file()
