"""`avemo build-shards`: argument parsing around avemo.pipeline.build.run_build."""
from __future__ import annotations

import argparse
import sys

from avemo.cli.common import Interrupted, print_config, split_overrides

EPILOG = """\
examples:
  avemo build-shards --root ~/data/MELD.Raw --out ~/data/meld-shards
  avemo build-shards --root MELD --out OUT --splits dev,test decode.fps=2 face.device=cuda
  avemo build-shards --root MELD --out OUT --scheduler tcp://10.0.0.5:8786 dask.gpu_resource=true
  avemo make-list ravdess data/ravdess --out ravdess.csv && avemo build-shards --list ravdess.csv --out OUT

MELD_ROOT holds {train,dev,test}_sent_emo.csv beside train_splits/, dev_splits_complete/ and
output_repeated_splits_test/ (the official archive), or beside flat train/ dev/ test/ folders.
OUT gets {split}-NNNNNN.tar shards and manifest.parquet (one row per CSV row: status ok or rejected
+ reason). Rerunning the same command resumes: finished shards are skipped.

--list LIST.csv instead of --root: any videos, audio files (no faces) and images (one frame, no audio),
columns path (absolute or relative to the list's folder), label (a MELD class), split (train/dev/test),
optional key, speaker, start, end. Small images are padded before face detection (face.pad_small_images).
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo build-shards", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Turn MELD label CSVs + videos, or a media list, into WebDataset shards, once.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--root", help="MELD folder (CSVs + video folders)")
    source.add_argument("--list", help="media list CSV: path,label,split[,key,speaker,start,end]")
    parser.add_argument("--out", help="output folder or bucket URL (s3://b/meld) for shards and manifest.parquet")
    parser.add_argument("--splits", default=None, help="comma list of train,dev,test (default: all)")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--config", default=None, help="YAML file or bundled name (meld); its `build:` section is used")
    ns, overrides = split_overrides(parser, argv, "config overrides, e.g. decode.fps=2", required=("out",))
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig
    from avemo.pipeline.layout import parse_splits
    if not (ns.root or ns.list or ns.print_config):
        parser.error("one of the arguments --root --list is required")
    extra = {k: v for k, v in {"root": ns.root, "media_list": ns.list, "out": ns.out}.items() if v is not None}
    if ns.splits:
        extra["splits"] = list(parse_splits(ns.splits))
    if ns.scheduler:
        extra["scheduler"] = ns.scheduler
    cfg = load_config(BuildConfig, "build", ns.config, overrides, extra)
    if ns.print_config:
        return print_config(cfg, "build")
    from avemo.pipeline.build import run_build     # dask and torch: only once the settings are known good
    scorer: object = None
    if cfg.face.speaker == "asd":                   # the active-speaker weights: checked before any work
        from avemo.model.asd import LightASDScorer
        scorer = LightASDScorer(cfg.face.asd_weights, cfg.face.asd_variant).load()
    elif cfg.face.speaker_names:                    # the face identity network alone
        from avemo.model.asd import FaceIdentities
        scorer = FaceIdentities().load()
    try:
        summary = run_build(cfg, scorer=scorer)
    except KeyboardInterrupt:
        print(file=sys.stderr)           # end the progress bar's line
        raise Interrupted("finished shards are kept; rerun the same command to resume") from None
    print("\n".join(summary.lines()))
    if summary.shards_failed:
        print(f"avemo build-shards: {summary.failure_advice()}", file=sys.stderr)
        return 1
    return 0
