"""`avemo build-shards`: argument parsing and one-line errors around pipeline.build.run_build."""
from __future__ import annotations

import argparse
import sys

from avemo.config import load_config
from pipeline.build import DISK_FULL, SettingsMismatchError, run_build
from pipeline.cluster import ClusterError
from pipeline.config import BuildConfig
from pipeline.labels import LabelFileError
from pipeline.layout import LayoutError, parse_splits
from pipeline.weights import WeightsError

EPILOG = """\
examples:
  avemo build-shards --root ~/data/MELD.Raw --out shards/meld
  avemo build-shards --root MELD --out OUT --splits dev,test decode.fps=2 face.device=cuda
  avemo build-shards --root MELD --out OUT --scheduler tcp://10.0.0.5:8786 dask.gpu_resource=true

MELD_ROOT holds {train,dev,test}_sent_emo.csv beside train_splits/, dev_splits_complete/ and
output_repeated_splits_test/ (the official archive), or beside flat train/ dev/ test/ folders.
OUT gets {split}-NNNNNN.tar shards and manifest.parquet (one row per CSV row: status ok or rejected
+ reason). Rerunning the same command resumes: finished shards are skipped.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avemo build-shards", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Turn MELD label CSVs + videos into WebDataset shards, once.")
    parser.add_argument("--root", required=True, help="MELD folder (CSVs + video folders)")
    parser.add_argument("--out", required=True, help="output folder for shards and manifest.parquet")
    parser.add_argument("--splits", default=None, help="comma list of train,dev,test (default: all)")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--config", default=None, help="YAML file; its `build:` section is used")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. decode.fps=2")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    ns = parse_args(argv)
    out = ns.out              # an `out=` override may replace it below
    try:
        extra = {"root": ns.root, "out": ns.out}
        if ns.splits:
            extra["splits"] = list(parse_splits(ns.splits))
        if ns.scheduler:
            extra["scheduler"] = ns.scheduler
        cfg = load_config(BuildConfig, "build", ns.config, ns.overrides, extra)
        out = cfg.out
        summary = run_build(cfg)
    except OSError as exc:
        message = str(exc)
        if exc.errno in DISK_FULL:
            message = (f"no space left on device writing to {out} ({exc.strerror}); finished shards are "
                       "kept: free some space and rerun the same command to resume")
        print(f"avemo build-shards: error: {message}", file=sys.stderr)
        return 2
    except (LabelFileError, LayoutError, WeightsError, ClusterError, SettingsMismatchError) as exc:
        print(f"avemo build-shards: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    if summary.shards_failed:
        print(f"avemo build-shards: {summary.shards_failed} shard task(s) failed; their clips are listed as "
              "task_failed in the manifest. Rerun the same command to retry them.", file=sys.stderr)
        return 1
    return 0
