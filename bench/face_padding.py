"""Face detection rate on FER2013's tightly cropped 48x48 faces, with and without face.pad_small_images.

Each image goes through the pipeline's own steps (probe_clip with any_kind, decode_clip, pad_small_frames,
the batched FaceDetector at the build's default settings); a face counts as found when the detector returns
at least one box (score >= face.score_threshold, side >= face.min_face_px) in the image. Variants: no
padding, and (target px, canvas px) pairs; the default is the config's. Detector time per image is the
median over --repeats interleaved passes (default 1).

    .venv/bin/python bench/face_padding.py            # 300 images x 5 variants (30 min at load average 16)
    .venv/bin/python bench/face_padding.py --quick    # 40 images
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, loadavg, new_record, stats, table, write_results  # noqa: E402

VARIANTS = {"no padding": None, "112 on 224": (112, 224), "160 on 320 (default)": (160, 320),
            "224 on 448": (224, 448), "160 on 480": (160, 480)}


def load_images(shared: Path, n: int, seed: int) -> list[tuple[str, object]]:
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig
    from avemo.pipeline.decode import decode_clip, plan_decode
    from avemo.pipeline.probe import ffmpeg_source, probe_clip
    cfg = load_config(BuildConfig, "build", None, [], {})
    root = shared / "data" / "fer2013"
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    out = []
    for row in rows:
        path = root / row["path"]
        probe = probe_clip(path, cfg.probe, cfg.audio, any_kind=True)
        assert probe.ok and probe.kind == "image", (path, probe)
        out.append((row["label7"], decode_clip(ffmpeg_source(path), plan_decode(probe, cfg.decode)).frames))
    return out


def run_variant(images, pad, detector) -> dict:
    from avemo.pipeline.faces import pad_small_frames
    face = dataclasses.replace(detector.cfg, pad_small_images=pad is not None,
                               **({"pad_target_px": pad[0], "pad_canvas_px": pad[1]} if pad else {}))
    t0 = time.perf_counter()
    frames = [pad_small_frames(f, face)[0] for _, f in images]
    dets = detector.detect(frames)
    elapsed = time.perf_counter() - t0
    found = [len(d.scores) > 0 for d in dets]
    by_class = Counter(label for (label, _), ok in zip(images, found) if ok)
    scores = [float(d.scores.max()) for d in dets if len(d.scores)]
    return {"found": sum(found), "n": len(found), "rate": sum(found) / len(found),
            "ms_per_image": 1000 * elapsed / len(found), "by_class": dict(by_class),
            "median_score": stats(scores)["median"] if scores else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="passes (detection is deterministic; more steady the times)")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--quick", action="store_true", help="40 images, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 40, 1
    import torch
    from avemo.pipeline.config import FaceConfig
    from avemo.pipeline.faces import FaceDetector
    torch.set_num_threads(2)
    record = new_record(args)
    images = load_images(Path(args.shared), args.n, args.seed)
    detector = FaceDetector(FaceConfig(device="cpu"))
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):   # interleaved: A B C ... A B C
        for name, pad in VARIANTS.items():
            runs[name].append(run_variant(images, pad, detector))
    classes = sorted(Counter(label for label, _ in images).items())
    results = {name: dict(r[0], ms_per_image=stats([x["ms_per_image"] for x in r])) for name, r in runs.items()}
    record.update(load={"before": record["load"]["before"], "after": loadavg()}, classes=dict(classes),
                  face_config=dataclasses.asdict(FaceConfig()), results=results)
    rows = [[name, f"{r['found']}/{r['n']}", f"{100 * r['rate']:.1f} %",
             f"{r['median_score']:.3f}" if r["median_score"] is not None else "-",
             f"{r['ms_per_image']['median']:.1f}"] for name, r in results.items()]
    per_class = [[label, n, *(results[name]["by_class"].get(label, 0) for name in VARIANTS)] for label, n in classes]
    body = (f"{args.n} FER2013 PublicTest images (48x48 grey, seeded sample, seed {args.seed}) through probe -> "
            "decode -> pad_small_frames -> FaceDetector (mobilenet0.25, detect_size 320, score >= 0.8, CPU). "
            "A face is found when the detector returns a box.\n\n"
            + table(["padding (target px on canvas px)", "faces found", "rate", "median top score",
                     "ms / image (median)"], rows)
            + "\n\nFound per class:\n\n" + table(["class", "images", *VARIANTS], per_class) + "\n")
    print(body)
    name = "face_padding_quick" if args.quick else "face_padding"
    print(f"wrote {write_results(name, 'Face detection on FER2013 faces: padding small images', record, body)}")


if __name__ == "__main__":
    main()
