"""The image's Dockerfile, checked without building an image: its base pinned by digest, a non-root user, the
farm and its deploy files in it, and its install instruction run as written in a virtualenv of its own, whose
`ltx2-farm --help` (the image's entrypoint and command) must work from the installed copy. (hadolint:
tests/test_deploy.py.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO

DOCKERFILE = REPO / "deploy/docker/Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) in order: comment lines dropped, continued lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def arguments(name: str) -> list[str]:
    return [args for instruction, args in instructions(DOCKERFILE) if instruction == name]


def test_docker_base_is_pinned_and_the_farm_runs_as_a_user_of_its_own():
    [base] = arguments("FROM")
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", base), base  # exact tag and digest
    user = arguments("USER")[-1]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:"), user  # numeric: runAsNonRoot can check it
    assert arguments("ENTRYPOINT") == ['["ltx2-farm"]']
    copied = {Path(source).name for args in arguments("COPY") for source in shlex.split(args)[:-1]}
    packages = {"ltx2", "cluster", "jobs"}  # pyproject.toml's [tool.setuptools.packages.find] include
    assert packages | {"pyproject.toml", "constraints.txt", "deploy"} <= copied


def test_docker_install_instruction_gives_a_working_entrypoint(tmp_path):
    """The image's install step, in a virtualenv built as the image builds its own (`python -m venv`) but seeing
    the dependencies this test environment already has (`./farm` installed them from the same constraints.txt):
    downloading PyTorch and the rest again would take minutes. So this checks what the image's build adds: that
    the files the Dockerfile copies make an installable farm, that the install instruction works as written,
    and that the installed `ltx2-farm` (not this checkout) answers `--help`. pip fetches only the build backend
    (setuptools, pyproject.toml's build requirement), in an isolated build as in the image."""
    steps = instructions(DOCKERFILE)
    [install] = [i for i, (name, args) in enumerate(steps) if name == "RUN" and "pip install" in args]
    context = tmp_path / "opt-ltx2-farm"  # the image's WORKDIR for what it copies
    context.mkdir()
    for name, args in steps[:install]:
        if name == "COPY":
            *sources, destination = shlex.split(args)
            for source in sources:
                target = context / destination / (Path(source).name if destination.endswith("/") else "")
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(REPO / source, target)
    [image_env] = arguments("ENV")
    settings = dict(pair.split("=", 1) for pair in shlex.split(image_env))
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    [site_packages] = venv.glob("lib/python*/site-packages")
    (site_packages / "farm-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({k: v for k, v in settings.items() if k.startswith(("PIP_", "PYTHON"))})
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    assert settings["PATH"].startswith(settings["VIRTUAL_ENV"] + "/bin:")  # as the image puts its venv first
    result = subprocess.run(
        ["/bin/sh", "-c", steps[install][1]], cwd=context, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    home = tmp_path / "home"  # the image's WORKDIR when it runs: not the checkout, not the copied files
    home.mkdir()
    [entrypoint] = arguments("ENTRYPOINT")
    [command] = arguments("CMD")
    program, *args = json.loads(entrypoint) + json.loads(command)
    ran = subprocess.run([venv / "bin" / program, *args], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.startswith("usage: ltx2-farm"), ran.stdout + ran.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import cluster.cli; print(cluster.cli.__file__)"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(site_packages), where.stdout + where.stderr
