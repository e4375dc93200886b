"""The CLI teaches its settings: --print-config on every command (YAML that --config reads back, help per key),
docs/config.md generated from the config classes, key=value anywhere among the flags, fast --help, --version."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, command

pytestmark = pytest.mark.unit


def run_cli(name: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = command(name)(list(argv))
    return code, out.getvalue()


def test_docs_config_md_is_generated_from_the_config_classes():
    from avemo.cli.docs import main, render
    assert main(["--check"]) == 0, "docs/config.md is stale: run python -m avemo.cli.docs"
    text = render()
    assert "| `optim.lr` | float | `0.001` | peak AdamW learning rate" in text
    assert "| `face.device` | str | `auto` | auto, cpu, cuda or cuda:N |" in text


def test_every_key_of_every_command_has_one_line_of_help():
    from avemo.cli.docs import sections
    from avemo.core.config_doc import config_table
    missing = [f"{section}.{key}" for section, _, cls in sections() for key, _, _, text in config_table(cls)
               if not text]
    assert missing == []


@pytest.mark.parametrize("name,section,cls_path,argv", [
    ("train", "train", "avemo.train.config:TrainConfig",
     ["--shards", "S", "optim.lr=0.1", "--run", "R", "data.workers=1", "--config", "meld"]),
    ("evaluate", "evaluate", "avemo.train.config:EvalConfig",
     ["--shards", "S", "batch_size=8", "--checkpoint", "C", "--out", "O", "workers=0"]),
    ("build-shards", "build", "avemo.pipeline.config:BuildConfig",
     ["--root", "M", "decode.fps=2", "--out", "O", "--splits", "dev", "face.device=cpu"]),
    ("predict", "predict", "avemo.inference.predict:PredictConfig", ["--window", "3", "threads=2"]),
])
def test_print_config_is_a_valid_config_with_overrides_anywhere(name, section, cls_path, argv, tmp_path):
    import importlib
    from avemo.core.config import load_config
    module, cls_name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    code, text = run_cli(name, *argv, "--print-config")
    assert code == 0 and text.startswith(f"{section}:\n")
    assert sum("  # " in line for line in text.splitlines()) >= len(text.splitlines()) // 2   # help per key
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    printed = load_config(cls, section, path)
    code, again = run_cli(name, "--config", str(path), "--print-config")
    assert again == text                                  # a fixed point: it reads back to the same config
    if name == "train":
        assert (printed.shards, printed.run, printed.optim.lr, printed.data.workers) == (["S"], "R", 0.1, 1)
        assert printed.optim.epochs == 30 and printed.data.batch_size == 32       # from --config meld
    if name == "build-shards":
        assert printed.decode.fps == 2 and printed.splits == ["dev"] and printed.face.device == "cpu"


def test_demo_print_config_shows_its_four_sections():
    code, text = run_cli("demo", "train.optim.epochs=3", "--print-config")
    doc = yaml.safe_load(text)
    assert code == 0 and list(doc) == ["demo", "build", "train", "evaluate"]
    assert doc["train"]["optim"]["epochs"] == 3


def test_help_imports_no_torch_or_dask_and_version_works():
    """`avemo train --help` imports no torch, Dask or NumPy (that is what keeps it fast; checked by what
    `python -X importtime` reports it imported, not by a clock that a busy machine slows)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "avemo", "train", "--help"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "--overwrite" in result.stdout and "--print-config" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert any(m.startswith("avemo") for m in imported), sorted(imported)[:20]
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "dask", "distributed", "numpy", "torchaudio"})
    assert not heavy, heavy
    version = subprocess.run([sys.executable, "-m", "avemo", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("avemo ")
