"""Out of corpus: a trained model on the six real CREMA-D talking-face clips of ../shared/media/crema-d.

The real-emotion recipe learns from RAVDESS voices and FER2013 stills; these clips are another corpus (another
actor, other sentences, colour video with its own voice, six emotions), read the way a user would: make-list
crema-d, build-shards --list with the default build settings, evaluate with the modality ablation (both,
face only, voice only) and the per-clip answers. Six clips of one actor are a sanity check, not a
measurement: one clip is 17 points. --grey adds each model read with model.face_colour=grey (FER2013, the
face training data, is grey: the same weights then see colour faces as they learnt them).

    .venv/bin/python bench/crema_check.py --checkpoint bench/out/real_emotion/run/best.pt
    .venv/bin/python bench/crema_check.py --checkpoint old=A/best.pt --checkpoint new=B/best.pt   # several
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, loadavg, machine, new_record, table, write_results  # noqa: E402

MODES = ("both", "face_only", "audio_only")


def avemo(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "avemo"), *args], check=True, cwd=REPO)


def grey_copy(path: str, out: Path) -> str:
    """The same weights with model.face_colour=grey: the model reads every face as grey (luma)."""
    from avemo.model.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["face_colour"] = "grey"
    save_checkpoint(out, **ckpt)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, action="append",
                   help="a trained model (RUN/best.pt), or NAME=PATH; repeat to score several on one build")
    p.add_argument("--media", default=str(REPO.parent / "shared" / "media" / "crema-d"))
    p.add_argument("--grey", action="store_true",
                   help="also score each model with model.face_colour=grey (a copy of it with that setting)")
    p.add_argument("--out", default=str(OUT / "crema_check"))
    p.add_argument("--name", default="crema_check", help="results name in bench/results")
    args = p.parse_args(argv)
    media, out = Path(args.media), Path(args.out)
    if not sorted(media.glob("*.flv")):
        print(f"crema_check: no CREMA-D clips in {media}", file=sys.stderr)
        return 2
    before = loadavg()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    avemo("make-list", "crema-d", str(media), "--dev-speakers", "1001", "--out", str(out / "list.csv"))
    avemo("build-shards", "--list", str(out / "list.csv"), "--out", str(out / "shards"))
    models = dict(c.split("=", 1) if "=" in c else (c, c) for c in args.checkpoint)
    if args.grey:
        models.update({f"{name}, faces read grey": grey_copy(path, out / f"grey{i}.pt")
                       for i, (name, path) in enumerate(list(models.items()))})
    metrics = {}
    for i, (name, path) in enumerate(models.items()):
        avemo("evaluate", "--shards", str(out / "shards"), "--checkpoint", path, "--out", str(out / f"eval{i}"),
              "--split", "dev", "ablation=true")
        metrics[name] = json.loads((out / f"eval{i}" / "metrics.json").read_text())
    record = new_record(args)
    record.update(machine=machine(), load={"before": before, "after": loadavg()}, metrics=metrics)
    rows = []
    for name, m in metrics.items():
        rows += [[name, mode.replace("_", "-"), f"{round(m['ablation'][mode]['accuracy'] * m['n'])}/{m['n']}",
                  round(m["ablation"][mode]["accuracy"], 3)] for mode in MODES]
    body = ["Six real CREMA-D clips (actor 1001, sentence DFA, one per emotion: anger, disgust, fear, joy, "
            "neutral, sadness), another corpus than the training data; default build settings. One clip = "
            "17 points: a sanity check, not a measurement.", "",
            table(["model", "modality", "clips right", "accuracy"], rows), "",
            "Models: " + "; ".join(f"{k} = `{v}`" for k, v in models.items()) + "."]
    write_results(args.name, "Out of corpus: six real CREMA-D talking-face clips", record, "\n".join(body))
    print(json.dumps({k: {mode: m["ablation"][mode]["accuracy"] for mode in MODES} for k, m in metrics.items()}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:      # the command has printed its own one-line error
        print(f"crema_check: `{' '.join(map(str, exc.cmd[1:3]))}` failed (exit {exc.returncode})", file=sys.stderr)
        sys.exit(2)
