"""Run folders: never lose finished work, and record everything needed to reproduce the run.

Rules (README "Using it on MELD"):
- a new run (no `--resume`) needs an empty or absent folder; a folder that holds anything is refused in one
  line, unless `--overwrite` (which deletes the run's own files: checkpoints, logs, config, tracker state;
  anything else in the folder stays);
- `--resume` continues from RUN/last.pt; with no last.pt yet (killed during the first epoch) it starts
  afresh, dropping the logs of that unfinished start, but never over a best.pt it cannot continue from;
- RUN/config.yaml holds the resolved `train:` section (every key, defaults included) and the shard
  manifest's sha256 (`shards_sha256`, checked when set), so `--config RUN/config.yaml` reproduces the run.
"""
from __future__ import annotations

import datetime
import platform
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from avemo.core.atomic import atomic_write_bytes, clean_temporaries, sha256_file
from avemo.core.config_doc import dump_config
from avemo.core.errors import ConfigError, DataError
from avemo.shards.manifest import MANIFEST_NAME

# what a run writes into its folder (and --overwrite deletes); evaluate's --out folders are the user's
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "train.log", "tb", "trackers.json", "wandb")


class RunExistsError(ConfigError):
    """A new run aimed at a folder that already holds one."""


def prepare_run_folder(run: Path, resume: bool, overwrite: bool, say=print) -> None:
    """Apply the rules above before any work starts; creates `run`."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite deletes it: pick one")
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--run {run} is a file, not a folder")
    if run.is_dir():
        clean_temporaries(run, RUN_FILES.__contains__)   # a save cut short by a kill left its hidden .tmp- file
    entries = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if entries and not resume and not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise RunExistsError(f"run folder {run} is not empty ({shown}); continue that run with --resume, "
                             "start it over with --overwrite (deletes its checkpoints and logs), or pick "
                             "another --run")
    if resume and not (run / "last.pt").is_file():
        if (run / "best.pt").is_file():
            raise RunExistsError(f"--resume: {run} has best.pt but no last.pt to continue from; move best.pt "
                                 "away or start over with --overwrite")
        if entries:
            say(f"note: --resume but no {run / 'last.pt'} yet (no epoch finished): starting from scratch")
        overwrite = True                 # only logs of an unfinished first epoch can be there
    if overwrite:
        for name in RUN_FILES:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run.mkdir(parents=True, exist_ok=True)


def manifest_sha256(shards: str) -> str:
    """sha256 of SHARDS/manifest.parquet: names the exact data a run trained on ('' where there is no
    local manifest file to hash)."""
    path = Path(shards) / MANIFEST_NAME
    return sha256_file(path) if path.is_file() else ""


def check_shards_hash(expected: str, actual: str, shards: str) -> None:
    if expected and actual and expected != actual:
        raise DataError(f"{shards}/{MANIFEST_NAME} has sha256 {actual[:12]}..., but this config was written for "
                        f"shards_sha256={expected[:12]}... (other data); pass shards_sha256= to train on them anyway")


def write_run_config(run: Path, cfg, world: int, device: str, command: str = "avemo train") -> None:
    """RUN/config.yaml: a valid `--config` (section `train:`, every key resolved, help as comments), with
    where it came from in an `avemo:` section that commands ignore."""
    from avemo import __version__
    import torch
    about = {"version": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
             "device": device, "world_size": world, "shards": cfg.shards, "shards_sha256": cfg.shards_sha256,
             "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    head = (f"# written by {command}; reproduce this run with:\n"
            f"#   avemo train {' '.join('--shards ' + str(x) for x in cfg.shards)} --run NEW_RUN "
            f"--config {run / 'config.yaml'}\n")
    text = head + yaml.safe_dump({"avemo": about}, sort_keys=False) + dump_config(cfg, "train")
    atomic_write_bytes(run / "config.yaml", text.encode("utf-8"))


def flat_config(cfg) -> dict:
    """{"optim.lr": 0.001, ...}: hyper-parameters as trackers take them (lists as strings)."""
    out: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    walk(asdict(cfg), "")
    return out
