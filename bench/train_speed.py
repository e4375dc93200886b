"""Training speed of recipe variants, interleaved: short `avemo train` runs of the real recipe on the three
shard sets of a bench/real_emotion.py run, each variant's runs alternating with the others' in the same session
(the order flips every repeat), so a slower or busier machine slows them alike. Reported per variant: the
training loop's samples/s (the train log's `samples_per_s`: steps only, not start-up or dev scoring), min and
median over repeats, and the ratio of medians to the first variant.

    .venv/bin/python bench/train_speed.py --data bench/out/real_pitch/data --variants mean pitch
    .venv/bin/python bench/train_speed.py ... --repeats 3 --samples 3200

The shard sets must hold what every variant reads (e.g. `pitch` needs a build with audio.pitch=true).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, epoch_records, interleave, loadavg, new_record, ratio, summarize, table,  # noqa: E402
                    write_results)

# name -> (what it changes, train overrides on top of the recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mean": ("the shipped voice branch (mel only)", []),
    "pitch": ("F0 and periodicity beside the mel (model.pitch=true)", ["model.pitch=true"]),
    "flatten": ("the audio CNN's mel bands kept per frame", ["model.audio_freq=flatten"]),
}


def one_run(shards: list[Path], run: Path, config: str, samples: int, overrides: list[str]) -> dict:
    """One epoch of `samples` draws -> {"seconds", "items"} of the training loop alone (its samples/s in the
    run's metrics.jsonl: start-up and dev scoring excluded), as common.interleave takes them."""
    sets = [a for s in shards for a in ("--shards", str(s))]
    subprocess.run([sys.executable, "-m", "avemo", "train", *sets, "--run", str(run), "--config", config,
                    "--overwrite", "optim.epochs=1", f"data.epoch_samples={samples}", "optim.warmup_epochs=0",
                    *overrides], check=True, stdout=subprocess.DEVNULL)
    rate = float(epoch_records(run)[-1]["samples_per_s"])
    return {"seconds": samples / rate, "items": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a bench/real_emotion.py run's data folder (its shards/)")
    p.add_argument("--config", default="real", help="the recipe (a YAML file or bundled name)")
    p.add_argument("--variants", nargs="+", default=["mean", "pitch"], choices=sorted(VARIANTS))
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant")
    p.add_argument("--samples", type=int, default=1600, help="draws per run (one epoch)")
    p.add_argument("--name", default="train_speed", help="results name in bench/results")
    args = p.parse_args(argv)
    shards = [Path(args.data) / "shards" / s for s in ("paired", "ravdess", "fer")]
    missing = [s for s in shards if not (s / "manifest.parquet").is_file()]
    if missing:
        print(f"train_speed: {missing[0]} is not a finished shard build (run bench/real_emotion.py first)",
              file=sys.stderr)
        return 2
    record = new_record(args)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        variants = {v: (lambda v=v: one_run(shards, Path(tempfile.mkdtemp(prefix=f"{v}_", dir=tmp)), args.config,
                                            args.samples, VARIANTS[v][1])) for v in args.variants}
        runs = interleave(variants, args.repeats,
                          log=lambda line: print(f"[train_speed]{line}", flush=True), alternate=True)
    record["load"]["after"] = loadavg()
    record["rates"] = rates = {v: [r["rate"] for r in rs] for v, rs in runs.items()}
    summary = summarize(runs)
    first = summary[args.variants[0]]
    rows = [[v, VARIANTS[v][0], " ".join(f"{x:.1f}" for x in rates[v]), summary[v]["min"], summary[v]["median"],
             ratio(summary[v], first)["median"]] for v in args.variants]
    body = (f"`avemo train --config {args.config}` on {Path(args.data) / 'shards'} (paired, ravdess, fer), one "
            f"epoch of {args.samples} draws per run, variants interleaved {args.repeats} times (order flipped "
            "every repeat); samples/s of the training loop (train log), start-up and dev scoring excluded.\n\n"
            + table(["variant", "what", "runs (samples/s)", "min", "median", "median / first"], rows) + "\n")
    path = write_results(args.name, "Training speed of recipe variants (interleaved)", record, body)
    print(f"[train_speed] {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
