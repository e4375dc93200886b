"""One installed namespace and its layers: the wheel holds `avemo` alone, the commands run from a folder that
has its own train.py / model.py / pipeline/ / shards/, and the import contract and type check pass on the
layout as installed (tests/stage_tree.py copies the package-dir mapping into a real tree, which import-linter
and mypy can read; they cannot follow an editable install's import hook)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import background_result

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _staged(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    subprocess.run([sys.executable, str(REPO / "tests" / "stage_tree.py"), str(REPO), str(stage)], check=True)
    shutil.copyfile(REPO / "pyproject.toml", stage / "pyproject.toml")
    return stage


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.unit
def test_import_contract_holds(tmp_path):
    stage = _staged(tmp_path)
    result = _run([str(BIN / "lint-imports"), str(stage / "pyproject.toml")], stage, PYTHONPATH=str(stage))
    assert result.returncode == 0 and "2 kept, 0 broken" in result.stdout, result.stdout + result.stderr


@pytest.mark.unit
def test_import_contract_catches_an_upward_import(tmp_path):
    """The contract can fail: the base layer importing the training loop breaks it."""
    stage = _staged(tmp_path)
    errors = stage / "avemo" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport avemo.train.loop  # noqa\n")
    result = _run([str(BIN / "lint-imports"), str(stage / "pyproject.toml")], stage, PYTHONPATH=str(stage))
    assert result.returncode != 0 and "avemo.core.errors -> avemo.train.loop" in result.stdout, result.stdout


@pytest.mark.unit
def test_import_contract_keeps_inference_off_the_training_package(tmp_path):
    """Inference reads a model through avemo.model (inputs, checkpoints), never through avemo.train: a
    predict-only install or runtime must not need the training loop's loaders, trackers and optimisers."""
    stage = _staged(tmp_path)
    predict = stage / "avemo" / "inference" / "predict.py"
    predict.write_text(predict.read_text() + "\nimport avemo.train.data  # noqa\n")
    result = _run([str(BIN / "lint-imports"), str(stage / "pyproject.toml")], stage, PYTHONPATH=str(stage))
    assert result.returncode != 0 and "avemo.inference.predict -> avemo.train.data" in result.stdout, result.stdout


def type_check_command(folder: Path) -> tuple[list[str], Path, dict[str, str]]:
    """mypy over the tree staged in `folder`: (argv, cwd, extra environment)."""
    stage = _staged(folder)
    return [sys.executable, "-m", "mypy", "-p", "avemo"], stage, {"MYPYPATH": str(stage)}


def test_type_check_passes(tmp_path):
    # started in the background when collection ended (conftest.start_background); here if it was not
    result = background_result("mypy")
    if result is None:
        cmd, cwd, env = type_check_command(tmp_path)
        done = _run(cmd, cwd, **env)
        result = done.returncode, done.stdout + done.stderr
    code, out = result
    assert code == 0, out[-3000:]


def test_wheel_installs_one_top_level_package_with_its_configs(tmp_path):
    result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("avemo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["avemo"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"avemo"}
    for member in ("avemo/py.typed", "avemo/configs/meld.yaml", "avemo/configs/demo.yaml",
                   "avemo/pipeline/build.py", "avemo/train/loop.py", "avemo/model/net.py", "avemo/shards/format.py"):
        assert member in names, member
    # installed from the wheel (no checkout beside it): bundled configs by name, the command, the namespace
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import avemo, avemo.pipeline.build\nfrom avemo.core.config import read_yaml_section\n"
            "print(avemo.__file__, avemo.pipeline.build.__file__, read_yaml_section('meld', 'train')['optim']['epochs'])")
    result = _run([sys.executable, "-c", code], tmp_path, PYTHONPATH=str(site))
    files = result.stdout.split()
    assert result.returncode == 0 and all(f.startswith(str(site)) for f in files[:2]) and int(files[2]) > 0, result
    result = _run([sys.executable, "-m", "avemo", "train", "--help"], tmp_path, PYTHONPATH=str(site))
    assert result.returncode == 0 and "usage: avemo train" in result.stdout


@pytest.fixture
def users_folder(tmp_path) -> Path:
    from conftest import make_users_folder
    return make_users_folder(tmp_path / "project")


@pytest.mark.unit
def test_commands_run_beside_a_users_own_modules(users_folder):
    from avemo import __version__
    for args, expect in ((["--help"], "usage: avemo"), (["train", "--help"], "usage: avemo train"),
                         (["build-shards", "--help"], "usage: avemo build-shards"),
                         (["--version"], f"avemo {__version__}")):
        result = _run([sys.executable, "-m", "avemo", *args], users_folder)
        assert result.returncode == 0 and expect in result.stdout, (args, result.stdout, result.stderr)

