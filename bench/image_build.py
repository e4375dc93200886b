"""Benchmark `avemo build-shards --list` on FER2013's training faces (issue 19.2): images/s of the whole
command (LocalCluster start included, as a user runs it) and the faces-found rate, per way of building.

Variants, interleaved per repeat (A B C A B C ...), each a fresh `avemo build-shards` process into a fresh
folder, on the same seeded subset of `../shared/data/fer2013/train` (48x48 grey JPEGs):
  ffmpeg    decode.in_process=false: one ffprobe and one ffmpeg process per image (the path before this
            benchmark), padded, batched RetinaFace
  inproc    the default: Pillow probes and decodes each image in the worker; the same padding and batched
            RetinaFace (face.batch_frames images per pass, from many rows)
  whole     face.image_mode=whole: in-process decode, each image taken as the face (no detector)
`--try "key=value ..."` adds config variants. Then a serial one-process profile (CPU ms per image per stage)
and, with `--full VARIANT`, one run of that variant over all 28,709 training images.
Faces found = ok samples with a face / images in the run (a rejected image is `no_face` here).

    .venv/bin/python bench/image_build.py                       # 600 images x 3 variants x 3 repeats
    .venv/bin/python bench/image_build.py --quick               # 60 images, 1 repeat -> image_build_quick.md
    .venv/bin/python bench/image_build.py --full inproc         # ... plus one run over the 28,709
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import common

VARIANTS = {"ffmpeg": ["decode.in_process=false"], "inproc": [], "whole": ["face.image_mode=whole"]}
FULL_TRAIN = 28_709


def make_lists(shared: Path, limit: int, seed: int) -> tuple[Path, Path]:
    """(the full FER training list, a seeded subset of `limit` rows), made by `avemo make-list` once."""
    folder = common.OUT / "image_build"
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "fer_train.csv"
    if not full.exists():
        listing = folder / "fer_all.csv"
        subprocess.run([sys.executable, "-m", "avemo", "make-list", "image-folders", str(shared / "data" / "fer2013"),
                        "--out", str(listing)], check=True)
        with open(listing, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
        write_rows(full, rows)
    with open(full, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    subset = folder / f"fer_train_{limit}_s{seed}.csv"
    write_rows(subset, sorted(random.Random(seed).sample(rows, min(limit, len(rows))), key=lambda r: r["path"]))
    return full, subset


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_once(list_path: Path, out: Path, overrides: list[str]) -> dict:
    """One `avemo build-shards` process: wall s, CPU s of it and its reaped children (Dask workers), manifest."""
    import pyarrow.parquet as pq
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "avemo", "build-shards", "--list", str(list_path), "--out", str(out),
                           "--splits", "train", *overrides], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"build-shards failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    found = sum(r["status"] == "ok" and r["n_faces"] > 0 for r in rows)
    return {"seconds": seconds, "items": len(rows), "cpu_s": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime), "found": found, "found_rate": found / len(rows),
            "rejected": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
            "face_mode": dict(Counter(r["face_mode"] for r in rows if r["status"] == "ok"))}


def profile(list_path: Path, n: int) -> dict:
    """Serial, one process, one torch thread: CPU ms per image of each stage, both ways of reading."""
    import numpy as np
    import torch
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig
    from avemo.pipeline.decode import plan_decode
    from avemo.pipeline.faces import (WHOLE_FACE_LANDMARKS, get_detector, image_box, pad_small_frames,
                                      speaker_faces, whole_face)
    from avemo.pipeline.readers import decode_file, probe_file
    from avemo.shards.format import encode_sample
    torch.set_num_threads(1)
    cfg = load_config(BuildConfig, "build", None, ["face.device=cpu"], {})
    with open(list_path, newline="", encoding="utf-8") as fh:
        paths = [Path(r["path"]) for r in csv.DictReader(fh)][:n]
    ms: Counter = Counter()

    def cpu() -> float:   # this process and its reaped children (the ffprobe / ffmpeg processes)
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def timed(stage, fn, *a):
        t0 = cpu()
        out = fn(*a)
        ms[stage] += 1000 * (cpu() - t0) / len(paths)
        return out

    frames, images = [], []
    for path in paths:
        for way, in_process in (("ffmpeg", False), ("pillow", True)):
            probe = timed(f"probe ({way})", probe_file, path, cfg.probe, cfg.audio, True, in_process)
            decoded = timed(f"decode ({way})", decode_file, str(path), probe.reader, plan_decode(probe, cfg.decode), 60)
        images.append(decoded.frames[0])
        frames.append(timed("pad", pad_small_frames, decoded.frames, cfg.face))
    detector = get_detector(cfg.face)
    detector.detect([f[0] for f in frames[: detector.batch_frames]])   # warm-up
    dets = timed(f"detect (batches of {detector.batch_frames})", detector.detect, [f[0] for f in frames])
    wholes = [timed("whole-image face (no detector)", whole_face, im, image_box(*im.shape[:2], cfg.face), cfg.face)
              for im in images]
    for f, det in zip(frames, dets):
        track = timed("crop", speaker_faces, f, [det], cfg.face)
        timed("encode", encode_sample, "k", {}, track.mask, track.boxes, track.crops, None, cfg.face.jpeg_quality)
    # where the detector puts these faces' landmarks, as fractions of the image: the whole-image constants' source
    marks = []
    for det, im in zip(dets, images):
        if len(det.scores):
            box = image_box(*im.shape[:2], cfg.face)   # the image on the padded frame
            marks.append((det.landmarks[int(np.argmax(det.scores))] - box[:2]) / (box[2:] - box[:2]))
    return {"n": len(paths), "ms_per_image": dict(ms), "found": sum(len(d.scores) > 0 for d in dets),
            "whole_ok": sum(not isinstance(w, str) for w in wholes),
            "median_landmarks": np.median(np.array(marks, dtype=float), axis=0).round(3).tolist() if marks else None,
            "whole_face_landmarks": WHOLE_FACE_LANDMARKS.astype(float).round(3).tolist()}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=600, help="training images in the subset (seeded sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which of ffmpeg,inproc,whole")
    parser.add_argument("--try", dest="tries", action="append", default=[], help="extra variant: 'key=value ...'")
    parser.add_argument("--profile-images", type=int, default=64)
    parser.add_argument("--full", default="", help="a variant to run once over all 28,709 training images")
    parser.add_argument("--shared", default=str(common.REPO.parent / "shared"))
    parser.add_argument("--name", default="image_build")
    parser.add_argument("--quick", action="store_true", help="60 images, 1 repeat, 16 profiled")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.repeats, args.profile_images = 60, 1, 16
        args.name = f"{args.name}_quick"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    shared = Path(args.shared)
    if not (shared / "data" / "fer2013" / "train").is_dir():
        raise SystemExit(f"no FER2013 training faces under {shared / 'data' / 'fer2013' / 'train'}")
    record = common.new_record(args)
    full, subset = make_lists(shared, args.limit, args.seed)
    chosen = {name: VARIANTS[name] for name in args.variants.split(",") if name}
    chosen |= {f"[{t}]": t.split() for t in args.tries}
    scratch = common.OUT / "image_build"
    variants = {name: (lambda ov=ov, i=i: build_once(subset, scratch / f"out_{i}", ov))
                for i, (name, ov) in enumerate(chosen.items())}
    print(f"{args.limit} FER2013 training images, {args.repeats} interleaved repeats of {list(variants)}", flush=True)
    runs = common.interleave(variants, args.repeats)
    prof = profile(subset, args.profile_images) if args.profile_images else None
    full_run = None
    if args.full:
        print(f"full run: {args.full} over {full}", flush=True)
        full_run = build_once(full, scratch / "out_full", chosen.get(args.full, VARIANTS.get(args.full, [])))
        full_run |= {"variant": args.full, "rate": full_run["items"] / full_run["seconds"],
                     "load_after": common.loadavg()}
    record["load"]["after"] = common.loadavg()
    summary = common.summarize(runs)
    record |= {"subset": str(subset.relative_to(common.REPO)), "variants": chosen, "runs": runs,
               "images_per_s": summary, "profile": prof, "full": full_run}
    body = report(args, chosen, runs, summary, prof, full_run)
    print(body)
    print(f"wrote {common.write_results(args.name, 'build-shards on FER2013 training images (issue 19.2)', record, body)}")
    return 0


def report(args, chosen, runs, summary, prof, full_run) -> str:
    rows = []
    for name, rs in ((n, rs) for n, rs in runs.items() if rs):
        s, last = summary[name], rs[-1]
        cpu = common.stats([r["cpu_s"] / r["items"] for r in rs])["median"]
        minutes = FULL_TRAIN / s["median"] / 60
        rows.append([name, " ".join(chosen[name]) or "(defaults)", s["min"], s["median"], s["max"], len(rs),
                     f"{1000 * cpu:.0f}", f"{last['found']}/{last['items']} ({100 * last['found_rate']:.1f} %)",
                     ", ".join(f"{k} {v}" for k, v in sorted(last["rejected"].items())) or "-",
                     f"{minutes:.1f}"])
    text = "" if not rows else (f"{args.limit} seeded FER2013 training images (48x48 grey JPEG; seed {args.seed}), `avemo build-shards "
            "--list ... --splits train` as one process per run (LocalCluster of 2 workers, defaults otherwise), "
            "fresh output each run. Images/s = images / wall seconds of the whole command; CPU ms per image = "
            "the command's and its workers' CPU time / images.\n\n"
            + common.table(["variant", "settings", "images/s min", "median", "max", "runs", "CPU ms / image",
                            "faces found (last run)", "rejected", "28,709 images take (min, at the median)"], rows))
    base = "ffmpeg" if "ffmpeg" in summary else None
    if base:
        text += "\n\nSpeed-up over the ffmpeg path (median/median; worst = min/max): " + "; ".join(
            f"{name} {r['median']:.1f}x (worst {r['worst']:.1f}x)"
            for name in summary if name != base for r in [common.ratio(summary[name], summary[base])])
    text += ("\n\nGoal: the 28,709 training images in <= 10 min (>= 48 images/s) with >= 95 % faces found where "
             "the detector runs. On a shared machine the wall rate is what the load left; CPU ms per image is the work.")
    if prof:
        text += (f"\n\n## Where an image's time goes (serial, 1 process, 1 torch thread, {prof['n']} images, "
                 "CPU ms per image)\n\n" + common.table(["stage", "CPU ms / image"],
                                                        [[k, f"{v:.2f}"] for k, v in prof["ms_per_image"].items()])
                 + f"\n\nDetector found a face in {prof['found']}/{prof['n']}; whole-image mode accepted "
                 f"{prof['whole_ok']}/{prof['n']}. Median detected landmarks (fractions of the image: eyes, nose, "
                 f"mouth corners) {prof['median_landmarks']} vs the whole-image constants {prof['whole_face_landmarks']}.")
    if full_run:
        text += (f"\n\n## Full run: {full_run['variant']} over all {full_run['items']} training images\n\n"
                 f"{full_run['seconds']:.0f} s wall = {full_run['rate']:.1f} images/s; "
                 f"{1000 * full_run['cpu_s'] / full_run['items']:.0f} CPU ms per image; faces found "
                 f"{full_run['found']}/{full_run['items']} ({100 * full_run['found_rate']:.2f} %); rejected "
                 f"{full_run['rejected']}; load average after: {full_run['load_after']}")
    return text + "\n"


if __name__ == "__main__":
    sys.exit(main())
