"""Issue 19.6, the voice front-end: voice-only runs on RAVDESS, several seeds per variant, scored on dev.

The voice branch is the one furthest from its goal, and one seed on 156 dev clips moves by ~5 points
(bench/results/recipe_ablation.md), so each variant here trains the voice alone (the RAVDESS shard set of a
bench/real_emotion.py run, actors 01-18; no faces, so a run takes minutes) with several seeds, and is scored
on actors 19-21 at every epoch. Reported per variant: the mean, min and max over seeds of the last epoch's dev
accuracy (no selection on dev) and of the best epoch's (how best.pt is picked). Each run is its own
`avemo train` process; finished runs are reused, so an interrupted benchmark resumes.

    .venv/bin/python bench/voice_ablation.py --data bench/out/real_full/data                 # every variant
    .venv/bin/python bench/voice_ablation.py --data ... --only stats --seeds 0 1 2

Variants with their own build settings (BUILDS, e.g. mels128) build their RAVDESS shards into --out from the
data folder's lists/ravdess.csv. Results: bench/results/voice_ablation.md (mean, mels128, wide) and
voice_ablation_pooling.md (mean, stats, attention; an earlier machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, epoch_records, loadavg, machine, new_record, table, write_results  # noqa: E402

# the voice-only schedule: RAVDESS alone, one epoch = its 936 training utterances
SCHEDULE = ["data.weights=[1.0]", "data.epoch_samples=936", "optim.epochs=10", "model.face_weights="]

# name -> (what it changes, for the table; train overrides on top of configs/real.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mean": ("voice frames pooled by their mean (shipped)", ["model.audio_pool=mean"]),
    "stats": ("mean + standard deviation pooling", ["model.audio_pool=stats"]),
    "attention": ("attentive statistics pooling", ["model.audio_pool=attention"]),
    "mels128": ("128 mel bands from a 50 ms FFT (20 Hz bins: pitch harmonics; shipped 64 from 25 ms)",
                ["model.n_mels=128"]),
    "wide": ("audio CNN 1.5x wider: 48, 96, 192 channels", ["model.audio_channels=[48,96,192]"]),
    "flatten": ("audio CNN's 8 mel bands x 128 channels kept per frame (shipped: their mean over bands)",
                ["model.audio_freq=flatten"]),
    "pitch": ("F0 and periodicity per frame beside the mel (YIN; shards built with audio.pitch=true)",
              ["model.pitch=true"]),
    "trim": ("each clip's quiet ends (35 dB below its loudest frame) left out of the voice branch",
             ["model.voice_trim_db=35"]),
    "warp": ("vocal tract length perturbation: each training clip's log-mel frequencies scaled by 0.9-1.1",
             ["augment.freq_warp=0.1"]),
}
# variants that need their own RAVDESS shards: build-shards settings on top of bench/real_data.py's
BUILDS: dict[str, list[str]] = {"mels128": ["audio.n_mels=128", "audio.n_fft=800"], "pitch": ["audio.pitch=true"]}


def variant_shards(data: Path, out: Path, name: str) -> Path:
    """The RAVDESS shards a variant trains on: the real_emotion run's, or its own build (resumable)."""
    if name not in BUILDS:
        return data / "shards" / "ravdess"
    shards = out / f"shards_{name}"
    if not (shards / "manifest.parquet").is_file():
        from real_data import build
        build(shards, print, BUILDS[name], media_list=str(data / "lists" / "ravdess.csv"))
    return shards


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_seed{seed}"


def one_run(out: Path, shards: Path, name: str, seed: int) -> dict:
    run = run_dir(out, name, seed)
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [str(Path(sys.executable).parent / "avemo"), "train", "--shards", str(shards), "--run", str(run),
           "--config", "real", f"seed={seed}", *SCHEDULE, *VARIANTS[name][1]]
    resume = (run / "last.pt").is_file()
    cmd.append("--resume" if resume else "--overwrite")
    wall = time.perf_counter()
    with open(out / f"{name}_seed{seed}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    epochs = epoch_records(run)
    best = max(epochs, key=lambda e: e["dev_weighted_f1"])   # how train picks best.pt
    result = {"variant": name, "seed": seed, "train_s": round(time.perf_counter() - wall, 1),
              "last": {"accuracy": epochs[-1]["dev_accuracy"], "weighted_f1": epochs[-1]["dev_weighted_f1"]},
              "best": {"accuracy": best["dev_accuracy"], "weighted_f1": best["dev_weighted_f1"],
                       "epoch": best["epoch"]},
              "per_epoch_accuracy": [round(e["dev_accuracy"], 4) for e in epochs]}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(OUT / "real_emotion" / "data"), help="a real_emotion run's data folder")
    p.add_argument("--out", default=str(OUT / "voice_ablation"), help="work folder (one run per variant and seed)")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="these variants (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--report-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--name", default="voice_ablation", help="bench/results/NAME.md and .json")
    args = p.parse_args(argv)
    shards, out = Path(args.data) / "shards" / "ravdess", Path(args.out)
    if not (shards / "manifest.parquet").is_file():
        print(f"voice_ablation: no RAVDESS shards at {shards}: run bench/real_emotion.py first (or --data)",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, schedule=SCHEDULE)
    names = args.only or list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for seed in args.seeds:                     # interleaved: seed 0 of every variant, then seed 1, ...
        for name in names:
            if args.report_only and not (run_dir(out, name, seed) / "result.json").is_file():
                continue
            runs[name].append(one_run(out, variant_shards(Path(args.data), out, name), name, seed))
            print(json.dumps(runs[name][-1]), flush=True)
    runs = {n: r for n, r in runs.items() if r}
    record.update(runs=runs, load={**record["load"], "after": loadavg()})
    rows = [[VARIANTS[n][0], len(r), spread([x["last"]["accuracy"] for x in r]),
             spread([x["last"]["weighted_f1"] for x in r]), spread([x["best"]["accuracy"] for x in r]),
             round(statistics.median(x["train_s"] for x in r))] for n, r in runs.items()]
    per_seed = [[VARIANTS[n][0], *[f"seed {x['seed']}: {' '.join(f'{a:.2f}' for a in x['per_epoch_accuracy'])}"
                                   for x in r]] for n, r in runs.items()]
    body = "\n".join([
        "The voice alone: trained on RAVDESS actors 01-18 only (`--config real` "
        f"{' '.join(SCHEDULE)}), scored on actors 19-21 (156 utterances). Mean over seeds (min-max).", "",
        table(["variant", "seeds", "last epoch, accuracy", "last epoch, weighted F1",
               "best epoch (dev-picked), accuracy", "train s (median)"], rows), "",
        "Dev accuracy per epoch:", "",
        "\n".join(f"- {row[0]}: " + "; ".join(row[1:]) for row in per_seed)])
    write_results(args.name, "Voice front-end, several seeds, voice alone on dev (issue 19.6)", record, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
