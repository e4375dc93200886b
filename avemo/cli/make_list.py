"""`avemo make-list`: argument parsing around avemo.pipeline.lists (a media list for build-shards --list)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  avemo make-list ravdess ../shared/data/ravdess --out ravdess.csv      # actors 19-21 dev, calm dropped
  avemo make-list crema-d CREMA-D/AudioWAV --dev-speakers 1001-1009 --out crema.csv
  avemo make-list image-folders ../shared/data/fer2013/validation --dev-fraction 0.5 --out fer.csv
  avemo build-shards --list ravdess.csv --out shards/ravdess

Columns written: path (absolute), label (a MELD class), split, key, speaker. Files that are not listed are
counted with the reason on stderr.
"""


def _split_flags(parser: argparse.ArgumentParser, dev_default: float) -> None:
    parser.add_argument("--dev-fraction", type=float, default=dev_default,
                        help=f"seeded split: this share goes to dev (default {dev_default})")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="... and this share to test (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avemo make-list", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Write a media list (CSV) for `avemo build-shards --list` from "
                                                 "a corpus' file names or class folders.")
    sub = parser.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    rav = sub.add_parser("ravdess", help="RAVDESS MM-VV-EE-II-SS-RR-AA.{wav,flac,mp4} files under ROOT")
    rav.add_argument("--calm", choices=("drop", "neutral"), default="drop",
                     help="calm has no MELD class: drop it (default) or call it neutral")
    rav.add_argument("--dev-actors", default=None, help="actors for dev, e.g. 19-21 (default 19,20,21)")
    rav.add_argument("--test-actors", default="", help="actors for test (default none)")
    crema = sub.add_parser("crema-d", help="CREMA-D 1001_DFA_ANG_XX.wav files under ROOT")
    crema.add_argument("--dev-speakers", default=None, help="speakers for dev, e.g. 1001-1009 (default: seeded)")
    crema.add_argument("--test-speakers", default="", help="speakers for test with --dev-speakers (default none)")
    _split_flags(crema, 0.15)
    img = sub.add_parser("image-folders", help="ROOT/[SPLIT/]CLASS/*.jpg|png (FER2013, CK+, AffectNet)")
    img.add_argument("--numbering", choices=("fer2013", "affectnet"), default="",
                     help="what numbered class folders (0, 1, ...) mean")
    img.add_argument("--ignore-split-folders", action="store_true",
                     help="pool ROOT/SPLIT/ folders and split at random (seeded) instead")
    _split_flags(img, 0.2)
    for p in (rav, crema, img):
        p.add_argument("root", metavar="ROOT", help="the corpus folder")
        p.add_argument("--out", default=None, help="write the CSV here (default: stdout)")
    return parser


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    from avemo.core.atomic import atomic_write_bytes
    from avemo.pipeline import lists
    root = Path(ns.root)
    if ns.corpus == "ravdess":
        result = lists.ravdess(root, ns.calm, lists.parse_ids(ns.dev_actors, "--dev-actors"),
                               lists.parse_ids(ns.test_actors, "--test-actors"))
    elif ns.corpus == "crema-d":
        result = lists.crema_d(root, lists.parse_ids(ns.dev_speakers, "--dev-speakers"),
                               lists.parse_ids(ns.test_speakers, "--test-speakers"), ns.dev_fraction,
                               ns.test_fraction, ns.seed)
    else:
        result = lists.image_folders(root, ns.numbering, ns.ignore_split_folders, ns.dev_fraction,
                                     ns.test_fraction, ns.seed)
    if not result.rows:
        raise lists.ListError(f"no {ns.corpus} file found under {root}" +
                              (f" ({result.summary()})" if result.skipped else ""))
    if ns.out:
        atomic_write_bytes(ns.out, result.csv_text().encode("utf-8"))
    else:
        sys.stdout.write(result.csv_text())
    print(f"avemo make-list {ns.corpus}: {result.summary()}" + (f" -> {ns.out}" if ns.out else ""),
          file=sys.stderr)
    return 0
