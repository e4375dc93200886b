"""model.voice_warp_tta on trained runs: the same checkpoint scored with each voice read once, and read as is
and with its frequencies scaled by each listed factor (training's augment.freq_warp warp; the voice embeddings
averaged).

The setting acts in use only (training never sees it), so its worth on a finished run is measured without
retraining: copies of the run's checkpoint with model.voice_warp_tta set in their config (the weights
untouched), each scored with `avemo evaluate` on the real_emotion dev sets (paired dev in three modes, RAVDESS
actors 19-21, FER half B as the control: no voices there, so it must not move). Paired: the same weights and
clips for every variant.

    .venv/bin/python bench/voice_tta.py --run bench/out/real_warp_seed2/run --data bench/out/s46data \
        --warps 0.95,1.05 --warps 0.9,1.1 --warps 0.9,0.95,1.05,1.1 --name voice_tta_seed2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, machine, new_record, table, trained_run_arguments, trained_run_paths, write_results  # noqa: E402
from real_emotion import score_with_model_settings  # noqa: E402

from avemo.model.checkpoint import load_checkpoint  # noqa: E402


def factors(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--warps wants comma-separated factors such as 0.9,1.1, not {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    trained_run_arguments(p, "voice_tta")
    p.add_argument("--warps", type=factors, action="append", required=True,
                   help="one variant's factors, comma-separated (repeat for more variants); each voice read "
                        "once (model.voice_warp_tta=[]) is always scored first")
    args = p.parse_args(argv)
    run, data, out = trained_run_paths(args, "voice_tta")
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    ckpt = load_checkpoint(run / args.checkpoint)
    variants = {"none": []} | {",".join(f"{a:g}" for a in w): w for w in args.warps}
    results, seconds = {}, {}
    for name, warps in variants.items():
        results[name], seconds[name] = score_with_model_settings(ckpt, name.replace(",", "_"), out, data, args.config,
                                                                 args.checkpoint, voice_warp_tta=warps)
        print(name, {k: round(v["accuracy"], 3) for k, v in results[name].items()}, f"{seconds[name]} s", flush=True)
    base = results["none"]
    rows = [[set_name, m["n"]] + [f"{results[v][set_name]['accuracy']:.3f}" + (
        "" if v == "none" else f" ({results[v][set_name]['accuracy'] - m['accuracy']:+.3f})") for v in variants]
        for set_name, m in base.items()]
    record.update(load=dict(record["load"], after=loadavg()), results=results, evaluate_s=seconds)
    body = (f"Run: `{run}` ({args.checkpoint}); the same weights with model.voice_warp_tta set to each variant "
            "(none = each voice read once). Accuracy (change against none); the three evaluations of each took "
            + ", ".join(f"{seconds[v]:.0f} s ({v})" for v in variants) + " (process start-up included).\n\n"
            + table(["dev set, modality", "clips"] + [f"warps {v}" for v in variants], rows) + "\n")
    write_results(args.name, "Voices read as is and frequency-warped, in use (model.voice_warp_tta)", record, body)
    print(json.dumps({v: {n: round(m["accuracy"], 3) for n, m in r.items()} for v, r in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
