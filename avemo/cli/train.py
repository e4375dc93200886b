"""`avemo train`: argument parsing around avemo.train.loop.run_train."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import MutableMapping

from avemo.cli.common import Interrupted, print_config, split_overrides

EPILOG = """\
run folders: a new run needs an empty (or new) --run folder; an existing one is refused unless --resume
(continue it; optim.epochs may grow) or --overwrite (start over: deletes its checkpoints and logs).
several corpora: avemo train --shards paired --shards ravdess --shards fer data.weights=[2,1,1] --run R
pre-train then fine-tune: avemo train --shards meld --init-from runs/pretrain/best.pt --run runs/meld
RUN/config.yaml is a valid --config that reproduces the run (its train: section, every key resolved; give every
--shards of the run again, in the same order):
  avemo train --shards S --run runs/b --config runs/a/config.yaml
trackers: report_to=tensorboard,jsonl (default), wandb, mlflow (pip install 'avemo[wandb]' / 'avemo[mlflow]').
multi-GPU / multi-node: torchrun --nproc_per_node=N -m avemo train --shards S --run-dir R ... (docs/scale.md)
"""


def resume_command(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return shlex.join(["avemo", "train", *kept, "--resume"])


def allocator_restart_env(cfg, environ: MutableMapping[str, str]) -> dict[str, str] | None:
    """The environment to start `avemo train` again with for cfg.allocator (avemo/core/memory.py says why), or
    None; ConfigError where allocator=jemalloc cannot be had. Takes back what an earlier start added to
    `environ` once the decision is made (settle_preload), so that the programs training runs start as usual."""
    from avemo.core.config import resolve_device
    from avemo.core.errors import ConfigError
    from avemo.core.memory import allocator_env, allocator_in_use, settle_preload
    on_cpu = cfg.allocator != "auto" or allocator_in_use() == "jemalloc" or \
        resolve_device(cfg.device).type == "cpu"            # the GPU check (torch import) only where it decides
    try:
        return allocator_env(cfg.allocator, dict(environ), on_cpu=on_cpu)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        settle_preload(environ)


def start_on_allocator(cfg, argv: list[str]) -> None:
    """Start this program again on jemalloc (train.allocator): malloc is chosen before a process starts, so
    the only way is exec with LD_PRELOAD, the same process id (torchrun keeps its rank), the same interpreter
    flags and arguments. Only where this process is the `avemo train` command line itself (sys.argv and
    the interpreter's own sys.orig_argv both end with it: not avemo.cli.main called from Python, e.g. a
    test, nor a process started by multiprocessing), and at most once."""
    env = allocator_restart_env(cfg, os.environ)
    command = ["train", *argv]
    if env is not None and sys.argv[1:] == command and sys.orig_argv[-len(command):] == command:
        from avemo.core.memory import start_again
        start_again(env)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo train", description="Train the audio-visual model from shards.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", action="append",
                        help="folder or bucket URL (s3://b/meld) written by build-shards; repeat it to train on "
                             "several sets at once (mixed by data.weights; the first one's dev split picks best.pt)")
    parser.add_argument("--init-from", dest="init_from", default=None,
                        help="start a new run from this checkpoint's model weights and mel statistics (e.g. a run "
                             "pre-trained on other corpora); the optimiser and schedule start afresh; ignored by "
                             "--resume, which continues from RUN/last.pt")
    # --run-dir: the spelling to use under torchrun, whose argparse finds `--run` ambiguous (--run-path)
    parser.add_argument("--run", "--run-dir", dest="run",
                        help="output folder for checkpoints, config.yaml, metrics, logs and TensorBoard")
    parser.add_argument("--config", default=None,
                        help="YAML file or bundled name (meld, demo); its `train:` section is used")
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN from RUN/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a RUN that holds a run: deletes its checkpoints, logs and config")
    ns, overrides = split_overrides(parser, argv, "e.g. optim.lr=3e-4 data.batch_size=64", required=("shards", "run"))
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    extra = {k: v for k, v in {"shards": ns.shards, "run": ns.run, "init_from": ns.init_from}.items()
             if v is not None}
    cfg = load_config(TrainConfig, "train", ns.config, overrides, extra)
    if ns.print_config:
        return print_config(cfg, "train")
    start_on_allocator(cfg, argv)
    from avemo.train.loop import run_train
    try:
        state = run_train(cfg, resume=ns.resume, overwrite=ns.overwrite)
    except KeyboardInterrupt:
        print(file=sys.stderr)           # end the progress bar's line: the advice gets a line of its own
        raise Interrupted(f"finished epochs are kept in {cfg.run}; continue with: {resume_command(argv)}") from None
    print(f"done: epoch {state['epoch']}, step {state['step']}, best dev weighted F1 {state['best']:.4f}; "
          f"checkpoints in {cfg.run}")
    return 0
