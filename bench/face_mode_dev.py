"""Which FER2013 crops make the better face model on dev: face.image_mode=detect or whole (issue 19.2)?

From ../shared/data/fer2013 only: --train-n seeded training images (train/) and PublicTest half B as dev
(`make-list image-folders validation --dev-fraction 0.5`, seed 0: the same half B as bench/real_emotion.py).
  detect  the default build: padded, RetinaFace, aligned crops; images without a found face are no_face
  whole   face.image_mode=whole: every image is the face (no detector)
Both models are scored on the same dev images (those the detector found a face in; the whole build's dev list
is cut to them) and each on both dev builds: its own crops and the other mode's (`avemo predict` crops a video's
faces by detection, so a model trained on whole-image crops must also work on detected ones). Training is
configs/real.yaml's face recipe (MobileFaceNet's last 4 blocks fine-tuned, 0.3x LR), face only, --epochs
epochs, scored with last.pt (no checkpoint picked on this dev).

    .venv/bin/python bench/face_mode_dev.py                     # 3000 faces x 4 epochs per mode
    .venv/bin/python bench/face_mode_dev.py --quick             # 200 faces, 1 epoch, 200 dev
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import common

MODES = {"detect": [], "whole": ["face.image_mode=whole"]}


def lists(shared: Path, out: Path, train_n: int, dev_n: int, seed: int) -> Path:
    from avemo.pipeline import lists as make
    root = shared / "data" / "fer2013"
    train = [r for r in make.image_folders(root).rows if r["split"] == "train"]
    train = sorted(random.Random(seed).sample(train, min(train_n, len(train))), key=lambda r: r["path"])
    dev = [r for r in make.image_folders(root / "validation", dev_fraction=0.5, seed=0).rows if r["split"] == "dev"]
    dev = dev[:: max(1, len(dev) // dev_n)][:dev_n] if dev_n else dev
    path = out / "fer_modes.csv"
    path.write_text(make.MediaList(rows=train + dev).csv_text(), encoding="utf-8")
    return path


def build(list_path: Path, out: Path, overrides: list[str]) -> dict:
    from avemo.core.config import load_config
    from avemo.pipeline.build import run_build
    from avemo.pipeline.config import BuildConfig
    from avemo.shards.manifest import read_manifest
    if not (out / "manifest.parquet").exists():
        cfg = load_config(BuildConfig, "build", "real", overrides,
                          {"media_list": str(list_path), "out": str(out), "splits": ["train", "dev"]})
        run_build(cfg)
    rows = read_manifest(out).to_pylist()
    return {split: {r["key"]: r for r in rows if r["split"] == split} for split in ("train", "dev")}


def cut_list(list_path: Path, keep_dev: set[str], out: Path) -> Path:
    """The list with its dev rows cut to `keep_dev` keys (the detector's finds)."""
    with open(list_path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] != "dev" or r["key"] in keep_dev]
    path = out / "fer_modes_whole.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def train(shards: Path, run: Path, epochs: int, overrides: list[str]) -> dict:
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    from avemo.train.loop import run_train
    cfg = load_config(TrainConfig, "train", "real", ["data.weights=[1.0]", f"optim.epochs={epochs}", *overrides],
                      {"shards": [str(shards)], "run": str(run)})
    if (run / "last.pt").is_file() and (run / "done").is_file():
        return {}
    result = run_train(cfg, resume=False, overwrite=True)
    (run / "done").write_text("1")
    return result


def evaluate(shards: Path, checkpoint: Path, out: Path) -> dict:
    from avemo.core.config import load_config
    from avemo.train.config import EvalConfig
    from avemo.train.evaluate import run_evaluate
    cfg = load_config(EvalConfig, "evaluate", "real", ["ablation=false"],
                      {"shards": str(shards), "checkpoint": str(checkpoint), "split": "dev", "out": str(out)})
    m = run_evaluate(cfg)
    return {"accuracy": m["accuracy"], "weighted_f1": m["weighted_f1"], "macro_f1": m["macro_f1"], "n": m["n"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-n", type=int, default=3000)
    parser.add_argument("--dev-n", type=int, default=0, help="dev images of half B (0 = all 1,796)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", default=str(common.REPO.parent / "shared"))
    parser.add_argument("--out", default=str(common.OUT / "face_mode_dev"))
    parser.add_argument("--quick", action="store_true", help="200 faces, 200 dev, 1 epoch")
    parser.add_argument("overrides", nargs="*", help="extra train key=value settings")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_n, args.dev_n, args.epochs = 200, 200, 1
    name = "face_mode_dev_quick" if args.quick else "face_mode_dev"
    out = Path(args.out) / f"n{args.train_n}_d{args.dev_n}_s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    record = common.new_record(args)
    times: dict[str, float] = {}

    def timed(label, fn, *a):
        t0 = time.perf_counter()
        result = fn(*a)
        times[label] = round(time.perf_counter() - t0, 1)
        print(f"[face_mode_dev] {label}: {times[label]} s", flush=True)
        return result

    full_list = lists(Path(args.shared), out, args.train_n, args.dev_n, args.seed)
    built = {"detect": timed("build detect", build, full_list, out / "shards_detect", MODES["detect"])}
    found = {k for k, r in built["detect"]["dev"].items() if r["status"] == "ok"}
    whole_list = cut_list(full_list, found, out)
    built["whole"] = timed("build whole", build, whole_list, out / "shards_whole", MODES["whole"])
    ok = {m: {s: sum(r["status"] == "ok" for r in b[s].values()) for s in b} for m, b in built.items()}
    assert {k for k, r in built["whole"]["dev"].items() if r["status"] == "ok"} == found, "the same dev images"
    scores: dict[str, dict] = {}
    for mode in MODES:
        run = out / f"run_{mode}_e{args.epochs}"
        timed(f"train {mode}", train, out / f"shards_{mode}", run, args.epochs, args.overrides)
        for dev in MODES:
            scores[f"{mode} model on {dev} crops"] = timed(f"evaluate {mode} on {dev}", evaluate,
                                                           out / f"shards_{dev}", run / "last.pt",
                                                           out / f"eval_{mode}_on_{dev}")
    record["load"]["after"] = common.loadavg()
    record |= {"ok": ok, "scores": scores, "times_s": times,
               "dev_rejected_by_detector": len(built["detect"]["dev"]) - len(found)}
    rows = [[k, v["n"], f"{100 * v['accuracy']:.1f} %", f"{v['weighted_f1']:.3f}", f"{v['macro_f1']:.3f}"]
            for k, v in scores.items()]
    body = (f"{args.train_n} seeded FER2013 training faces (detect kept {ok['detect']['train']}, whole "
            f"{ok['whole']['train']}), dev = PublicTest half B: {len(built['detect']['dev'])} images, "
            f"{len(found)} with a face found by the detector (both modes scored on those). Face only, "
            f"configs/real.yaml's face recipe, {args.epochs} epochs, last.pt.\n\n"
            + common.table(["model on dev crops", "dev n", "accuracy", "weighted F1", "macro F1"], rows)
            + "\n\nSeconds per stage: " + ", ".join(f"{k} {v}" for k, v in times.items()) + "\n")
    print(body)
    print(f"wrote {common.write_results(name, 'FER2013 faces: detect vs whole-image crops, dev accuracy', record, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
