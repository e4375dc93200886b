"""`avemo train`: argument parsing around avemo.train.loop.run_train."""
from __future__ import annotations

import argparse

from avemo.cli.common import split_overrides


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo train", description="Train the audio-visual model from shards.",
                                     epilog="multi-GPU / multi-node: torchrun --nproc_per_node=N -m avemo train "
                                            "--shards S --run-dir R ... (see docs/scale.md)")
    parser.add_argument("--shards", required=True, help="folder or bucket URL (s3://b/meld) written by build-shards")
    # --run-dir: the spelling to use under torchrun, whose argparse finds `--run` ambiguous (--run-path)
    parser.add_argument("--run", "--run-dir", dest="run", required=True,
                        help="output folder for checkpoints, metrics and TensorBoard")
    parser.add_argument("--config", default=None,
                        help="YAML file or bundled name (meld, demo); its `train:` section is used")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    ns, overrides = split_overrides(parser, argv, "e.g. optim.lr=3e-4 data.batch_size=64")
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    cfg = load_config(TrainConfig, "train", ns.config, overrides, {"shards": ns.shards, "run": ns.run})
    state = run_train(cfg, resume=ns.resume)
    print(f"done: epoch {state['epoch']}, step {state['step']}, best dev weighted F1 {state['best']:.4f}; "
          f"checkpoints in {cfg.run}")
    return 0
