"""Issue 19.6: one recipe choice at a time, measured on dev against the shipped recipe.

Each variant trains the short recipe of bench/masked_audio_dev.py (configs/real.yaml, 3 epochs of 6,000 draws,
same seed, same data order) with one change, on the three shard sets of a bench/real_emotion.py run, and is
scored on RAVDESS actors 19-21 (voice alone) and the paired dev set (both / voice only / face only). The
baseline is the shipped recipe under the same short schedule: masked_audio_dev.py's `after` run when its
result is there (--baseline), else trained here. Each variant runs in its own process; finished ones are reused.

    .venv/bin/python bench/recipe_ablation.py --data bench/out/real_full/data            # every variant (~8 min each)
    .venv/bin/python bench/recipe_ablation.py --data ... --only no_balance wide_voice     # some of them
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, loadavg, machine, new_record, table, write_results  # noqa: E402
from masked_audio_dev import SHORT, missing_data, one_mode  # noqa: E402

# name -> (what it changes, for the table; train overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the shipped recipe (configs/real.yaml)", []),
    "no_balance": ("class balance: none (shipped: sqrt-weighted loss)", ["imbalance=none"]),
    "wide_voice": ("voice front-end: audio CNN 48-96-192 (shipped: 32-64-128)", ["model.audio_channels=[48,96,192]"]),
    "no_voice_aug": ("voice augmentation off (shipped: speed +-10 %, noise p 0.3 at 10 dB)",
                     ["augment.speed=0.0", "augment.noise_p=0.0"]),
    "face_8_blocks": ("face fine-tune depth: last 8 blocks (shipped: 4)", ["model.face_train_blocks=8"]),
    "strong_specaug": ("SpecAugment: 3 band masks <= 12 bins, 3 time masks <= 40 frames (shipped: 2 x 8, 2 x 25)",
                       ["augment.freq_masks=3", "augment.freq_mask_width=12", "augment.time_masks=3",
                        "augment.time_mask_width=40"]),
    "voice_draws_2x": ("mix: RAVDESS voices drawn twice as often (weights 1:2:2, shipped 1:1:2)",
                       ["data.weights=[1.0,2.0,2.0]"]),
    "modality_drop_05": ("modality dropout 0.5 (shipped: 0.3): the voice must answer alone more often",
                         ["model.modality_dropout=0.5"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(OUT / "real_emotion" / "data"), help="a real_emotion run's data folder")
    p.add_argument("--out", default=str(OUT / "recipe_ablation"), help="work folder (one run per variant)")
    p.add_argument("--baseline", default=str(OUT / "masked_audio" / "after" / "result.json"),
                   help="masked_audio_dev.py's `after` result: the same short recipe, reused as the baseline")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="these variants (and the baseline)")
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)    # the child process of one
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if args.variant:
        result = one_mode("after", data, out / args.variant, [*SHORT, *VARIANTS[args.variant][1]])
        result["variant"] = args.variant
        (out / args.variant).mkdir(parents=True, exist_ok=True)
        (out / args.variant / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if missing_data(data, "recipe_ablation"):
        return 2
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, short=SHORT)
    names = ["baseline", *[n for n in (args.only or VARIANTS) if n != "baseline"]]
    results = {}
    for name in names:
        done = out / name / "result.json"
        if name == "baseline" and not done.is_file() and Path(args.baseline).is_file():
            done = Path(args.baseline)
        if not done.is_file():
            subprocess.run([sys.executable, __file__, "--variant", name, "--data", str(data), "--out", str(out)],
                           check=True)
        results[name] = json.loads(done.read_text())
    record.update(results=results, load={**record["load"], "after": loadavg()})
    metrics = list(results["baseline"]["scores"])
    base = results["baseline"]["scores"]
    rows = [[VARIANTS[n][0], *[f"{r['scores'][m]:.3f}" + ("" if n == "baseline" else f" ({r['scores'][m] - base[m]:+.3f})")
                               for m in metrics], r["train_s"]] for n, r in results.items()]
    body = "\n".join([
        "One change at a time against the shipped recipe, all on the same short schedule "
        f"(`--config real {' '.join(SHORT)}`, seed 0, the same data order); dev sets: RAVDESS actors 19-21 "
        "and the paired dev set (every dev utterance with a FER face of its class). One seed on 156 dev clips: "
        "differences under ~4 points are within noise.", "",
        table(["variant", *metrics, "train s"], rows)])
    path = write_results("recipe_ablation", "Recipe choices, one at a time, on dev (issue 19.6)", record, body)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
