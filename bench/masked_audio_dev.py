"""Issue 19.5 before/after on dev: does the audio CNN's BatchNorm over valid audio only help the voice branch?

after  (the model as shipped): MaskedBatchNorm2d takes the audio CNN's batch statistics over the time steps
       that hold audio, and in eager mode only clips with audio go through the audio CNN.
before (the model until 26d254a, restored here by patching the class in this process): every clip of the
       batch goes through the audio CNN and plain BatchNorm2d takes its statistics over all of them, face-only
       FER clips' empty mels and every clip's padding included.

Both train the same short recipe (configs/real.yaml with fewer, shorter epochs; same seed, same data order) on
the three shard sets of a bench/real_emotion.py run, then score RAVDESS actors 19-21 (voice alone) and the
paired dev set (both / voice only / face only). Each mode runs in its own process; finished modes are reused.

    .venv/bin/python bench/masked_audio_dev.py --data bench/out/real_emotion/data --out bench/out/masked_audio
    .venv/bin/python bench/masked_audio_dev.py ... optim.epochs=2 data.epoch_samples=4000   # other lengths
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, loadavg, machine, new_record, table, write_results  # noqa: E402

# the short schedule, and the recipe's settings as these dev rows measured them (configs/real.yaml has moved
# on since: 8 face blocks and a longer schedule; bench/results/real_emotion.md)
SHORT = ["optim.epochs=3", "data.epoch_samples=6000", "model.face_train_blocks=4", "model.audio_pool=mean"]
MODES = ("before", "after")


def restore_unmasked_norm() -> None:
    """The audio branch as it was: dense over the batch, BatchNorm2d over every clip and frame."""
    import torch.nn as nn
    from avemo.model import net
    net.MaskedBatchNorm2d.forward = lambda self, x, mask=None: nn.BatchNorm2d.forward(self, x)  # type: ignore
    net.AudioEncoder.forward = lambda self, mel, mel_mask: self.encode(mel, mel_mask)  # type: ignore


def missing_data(data: Path, prog: str) -> bool:
    """True (and one line on stderr) when `data` lacks a real_emotion run's three finished shard builds."""
    if all((data / "shards" / s / "manifest.parquet").is_file() for s in ("paired", "ravdess", "fer")):
        return False
    print(f"{prog}: {data}/shards lacks a finished paired/ravdess/fer build (run bench/real_emotion.py first)",
          file=sys.stderr)
    return True


def one_mode(mode: str, data: Path, out: Path, overrides: list[str]) -> dict:
    import real_emotion
    if mode == "before":
        restore_unmasked_norm()
    shards = {name: data / "shards" / name for name in ("paired", "ravdess", "fer")}
    run = out / mode / "run"
    wall = time.perf_counter()
    # in this process: the patch of "before" must reach the training and the evaluation
    real_emotion.train(shards, run, "real", overrides, in_process=True)
    train_s = time.perf_counter() - wall
    paired = real_emotion.evaluate(shards["paired"], run / "best.pt", out / mode / "eval_paired", "real", True,
                                   in_process=True)
    rav = real_emotion.evaluate(shards["ravdess"], run / "best.pt", out / mode / "eval_ravdess", "real", False,
                                in_process=True)
    rows = {f"paired dev, {m.replace('_', '-')} (accuracy)": paired["ablation"][m]["accuracy"]
            for m in ("both", "audio_only", "face_only")}
    rows["RAVDESS 19-21, voice alone (accuracy)"] = rav["accuracy"]
    rows["RAVDESS 19-21, voice alone (weighted F1)"] = rav["weighted_f1"]
    return {"mode": mode, "scores": rows, "train_s": round(train_s, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(OUT / "real_emotion" / "data"), help="a real_emotion run's data folder")
    p.add_argument("--out", default=str(OUT / "masked_audio"), help="work folder (one run per mode)")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)      # the child process of one mode
    args, overrides = p.parse_known_args(argv)
    data, out = Path(args.data), Path(args.out)
    overrides = [*SHORT, *overrides]
    if args.mode:
        result = one_mode(args.mode, data, out, overrides)
        (out / args.mode / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if missing_data(data, "masked_audio_dev"):
        return 2
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()}, overrides=overrides)
    results = {}
    for mode in MODES:
        done = out / mode / "result.json"
        if not done.is_file():
            subprocess.run([sys.executable, __file__, "--mode", mode, "--data", str(data), "--out", str(out),
                            *overrides], check=True)
        results[mode] = json.loads(done.read_text())
    record.update(results=results, load={**record["load"], "after": loadavg()})
    names = list(results["after"]["scores"])
    body = ["The audio CNN's BatchNorm over every clip of a mixed batch (before) vs over the clips and frames "
            "that hold audio (after), same short recipe, seed and data; dev sets: RAVDESS actors 19-21 and the "
            "paired dev set (every dev utterance with a FER face of its class).", "",
            table(["dev set, modality", "before", "after", "after - before"],
                  [[n, round(results["before"]["scores"][n], 3), round(results["after"]["scores"][n], 3),
                    f"{results['after']['scores'][n] - results['before']['scores'][n]:+.3f}"] for n in names]),
            "", f"Training: `--config real` {' '.join(overrides)}; "
                f"{results['before']['train_s']} s (before) and {results['after']['train_s']} s (after)."]
    path = write_results("masked_audio_dev", "Absent audio out of the audio BatchNorm: before/after on dev",
                         record, "\n".join(body))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
