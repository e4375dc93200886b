"""`avemo evaluate`: argument parsing around avemo.train.evaluate.run_evaluate."""
from __future__ import annotations

import argparse

from avemo.cli.common import print_config, split_overrides


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo evaluate",
                                     description="Score a checkpoint on one split of the shards.")
    parser.add_argument("--shards", help="folder or bucket URL (s3://b/meld) written by build-shards")
    parser.add_argument("--checkpoint", help="a .pt written by `avemo train` (best.pt or last.pt), a path or a URL")
    parser.add_argument("--split", default=None, help="train, dev or test (default: test)")
    parser.add_argument("--out", help="folder for metrics.json, predictions.parquet, confusion.png")
    parser.add_argument("--config", default=None, help="YAML file or bundled name; its `evaluate:` section is used")
    ns, overrides = split_overrides(parser, argv, "e.g. batch_size=64 log_to_run=true",
                                    required=("shards", "checkpoint", "out"))
    from avemo.core.config import load_config
    from avemo.train.config import EvalConfig
    extra = {"shards": ns.shards, "checkpoint": ns.checkpoint, "split": ns.split, "out": ns.out}
    cfg = load_config(EvalConfig, "evaluate", ns.config, overrides, {k: v for k, v in extra.items() if v is not None})
    if ns.print_config:
        return print_config(cfg, "evaluate")
    from avemo.train.evaluate import run_evaluate   # torch: only once the settings are known good
    metrics = run_evaluate(cfg)
    print(f"{cfg.split}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} "
          f"weighted_f1={metrics['weighted_f1']:.4f} macro_f1={metrics['macro_f1']:.4f}")
    for mode, m in metrics.get("ablation", {}).items():
        print(f"  {mode:<10} weighted_f1={m['weighted_f1']:.4f} accuracy={m['accuracy']:.4f}")
    print(f"wrote {cfg.out}/metrics.json, predictions.parquet, confusion.png")
    return 0
