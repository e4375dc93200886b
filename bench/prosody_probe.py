"""How much emotion the voice's prosody carries on held-out speakers (issue 19's voice branch, a probe).

The shards hold only 64-band log-mels, whose 40 Hz bins at 25 ms barely resolve a voice's harmonics: pitch
(F0) and voicing reach the voice branch only through them. Before the shard format carries them, this probe
measures what they are worth: utterance statistics of avemo.pipeline.audio.pitch_track (YIN F0 and
periodicity) and of the log-mel, each fed to the same linear classifier (multinomial logistic regression,
L2 chosen by 3-fold cross-validation over the training actors), trained on RAVDESS actors 01-18 and scored
on actors 19-21 (the recipe's voice dev split, 156 utterances). Language-independent by construction: no
statistic depends on which words were said.

Feature sets (per utterance):
- prosody: voiced share; median, mean, std, 10th/90th percentile and range of log2 F0 over voiced frames;
  mean |frame-to-frame change| of log2 F0; mean and std of periodicity; loudness std and range (dB over the
  non-silent frames); voiced onsets per second (a syllable-rate proxy); log duration: 14 numbers.
- mel: the mean and std of each of the 64 log-mel bands over the utterance: 128 numbers.
- mel + prosody: both.
Rerun: .venv/bin/python bench/prosody_probe.py
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, loadavg, machine, new_record, table, write_results  # noqa: E402

from avemo.pipeline.audio import audio_input, log_mel, pitch_track  # noqa: E402
from avemo.pipeline.config import AudioConfig  # noqa: E402
from avemo.shards.labels import EMOTIONS  # noqa: E402

RATE = 16_000


DEFAULT_RAVDESS = str(Path(os.environ.get("AVEMO_SHARED", REPO.parent / "shared")) / "data" / "ravdess")


def ravdess_rows(root: Path, prog: str, splits: tuple[str, ...]) -> list[dict] | None:
    """labels.csv's rows with a 7-class label in these splits; None (and a line on stderr) without RAVDESS."""
    if not (root / "labels.csv").is_file():
        print(f"{prog}: no RAVDESS at {root} (labels.csv)", file=sys.stderr)
        return None
    return [r for r in csv.DictReader(open(root / "labels.csv")) if r["label7"] and r["split"] in splits]


def read_voice(path: Path) -> np.ndarray:
    """The whole file, mono at 16 kHz, as the build reads it."""
    from avemo.pipeline.readers import read_audio
    return read_audio(str(path), RATE)


def prosody_stats(audio: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    pitch = pitch_track(audio, RATE, cfg).astype(np.float64)
    logf0, period = pitch
    voiced = period >= 0.8                                   # YIN's dip below 0.2
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, cfg.n_fft // 2), cfg.n_fft)[::cfg.hop_length]
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(1) + 1e-10)[: len(period)]
    loud = db[db > db.max() - 40] if len(db) else np.zeros(1)
    seconds = len(audio) / RATE
    if voiced.sum() >= 2:
        f = logf0[voiced]
        steps = np.abs(np.diff(logf0))[voiced[1:] & voiced[:-1]]
        f0 = [np.median(f), f.mean(), f.std(), np.percentile(f, 10), np.percentile(f, 90),
              np.percentile(f, 90) - np.percentile(f, 10), steps.mean() if len(steps) else 0.0]
    else:
        f0 = [0.0] * 7
    onsets = np.sum(voiced[1:] & ~voiced[:-1]) / max(seconds, 1e-3)
    return np.array([voiced.mean(), *f0, period.mean(), period.std(), loud.std(), np.ptp(loud), onsets,
                     np.log(seconds)])


def mel_stats(audio: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    mel = log_mel(audio, RATE, cfg).astype(np.float64)
    return np.concatenate([mel.mean(1) - mel.mean(), mel.std(1)])    # level-free: the recording gain cancels


def fit_predict(x_train, y_train, x_test, weight_decay: float) -> np.ndarray:
    return fit_log_probs(x_train, y_train, x_test, weight_decay).argmax(1)


def fit_log_probs(x_train, y_train, x_test, weight_decay: float) -> np.ndarray:
    """The product's fit (train/voice_stats.py, model.voice_stats): standardised, L2 on the weights."""
    from avemo.train.voice_stats import fit_linear
    state = fit_linear(torch.tensor(x_train, dtype=torch.float64), torch.tensor(y_train), weight_decay)
    xs = (torch.tensor(x_test, dtype=torch.float64) - state["mean"].double()) / state["std"].double()
    return torch.log_softmax(xs @ state["weight"].double().T + state["bias"].double(), 1).numpy()


def add_row(name, n_features, decay, pred, truth, results: dict, rows: list) -> None:
    acc = float(np.mean(pred == truth))
    per_class = {EMOTIONS[c]: round(float(np.mean(pred[truth == c] == c)), 3)
                 for c in range(len(EMOTIONS)) if np.any(truth == c)}
    results[name] = {"features": n_features, "weight_decay": decay, "dev_accuracy": acc, "per_class": per_class}
    rows.append([name, n_features, decay, round(acc, 3), " ".join(f"{k} {v:.2f}" for k, v in per_class.items())])
    print(name, results[name], flush=True)


def model_log_probs(path: str, voices: list[np.ndarray], cfg: AudioConfig) -> np.ndarray:
    """(n, 7) log-probabilities of a trained model from the voice alone (no face), each utterance's log-mel
    cropped from its start as evaluate does."""
    from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
    from avemo.model.inputs import collate, crop_mel
    ckpt = load_checkpoint(path)
    model, data = model_from_checkpoint(ckpt, path), ckpt["config"]["data"]
    out = []
    with torch.inference_mode():
        for audio in voices:
            rows = audio_input(audio, RATE, cfg, model.cfg.pitch)               # the model's audio input
            mel = crop_mel(torch.from_numpy(rows.astype(np.float32)), data["max_mel_frames"])
            t = data["max_frames"]
            b = collate([{"key": "k", "label": 0, "faces": torch.zeros((t, 3, 112, 112), dtype=torch.uint8),
                          "face_mask": torch.zeros(t, dtype=torch.bool), "mel": mel}])   # pitch rows included
            logits = model(b["faces"], b["face_mask"], b["mel"], b["mel_mask"])
            out.append(torch.log_softmax(logits.float(), 1)[0].numpy())
    return np.stack(out)


def choose_decay(x, y, groups) -> float:
    """L2 strength by 3-fold cross-validation over the training actors (dev never seen)."""
    actors = np.unique(groups)
    folds = [actors[i::3] for i in range(3)]
    best, best_acc = 1e-3, -1.0
    for decay in (1e-4, 1e-3, 1e-2, 1e-1):
        acc = np.mean([np.mean(fit_predict(x[~np.isin(groups, f)], y[~np.isin(groups, f)], x[np.isin(groups, f)],
                                           decay) == y[np.isin(groups, f)]) for f in folds])
        if acc > best_acc:
            best, best_acc = decay, acc
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ravdess", default=DEFAULT_RAVDESS)
    p.add_argument("--name", default="prosody_probe")
    p.add_argument("--checkpoint", help="a trained avemo checkpoint: its voice-alone dev predictions, and their "
                                        "late fusion (equal-weight log-probabilities) with each linear probe")
    args = p.parse_args(argv)
    root = Path(args.ravdess)
    rows = ravdess_rows(root, "prosody_probe", ("train", "dev"))
    if rows is None:
        return 2
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    cfg = AudioConfig()
    feats: dict[str, list] = {"prosody": [], "mel": []}
    labels, split, actor, dev_audio = [], [], [], []
    wall = time.perf_counter()
    for r in rows:
        audio = read_voice(root / r["path"])
        if r["split"] == "dev":
            dev_audio.append(audio)
        feats["prosody"].append(prosody_stats(audio, cfg))
        feats["mel"].append(mel_stats(audio, cfg))
        labels.append(EMOTIONS.index(r["label7"]))
        split.append(r["split"])
        actor.append(int(r["speaker"]))
    features_s = time.perf_counter() - wall
    y, dev, groups = np.array(labels), np.array(split) == "dev", np.array(actor)
    sets = {"prosody": np.array(feats["prosody"]), "mel": np.array(feats["mel"])}
    sets["mel + prosody"] = np.concatenate([sets["mel"], sets["prosody"]], 1)
    majority = float(np.mean(y[dev] == np.bincount(y[~dev]).argmax()))
    out_rows, results = [], {}
    model_lp = None if args.checkpoint is None else model_log_probs(args.checkpoint, dev_audio, cfg)
    for name, x in sets.items():
        decay = choose_decay(x[~dev], y[~dev], groups[~dev])
        lp = fit_log_probs(x[~dev], y[~dev], x[dev], decay)
        runs = [(name, lp.argmax(1))]
        if model_lp is not None:
            runs += [(f"trained voice branch + {name} (late fusion)", (lp + model_lp).argmax(1))]
        for label, pred in runs:
            add_row(label, x.shape[1], decay, pred, y[dev], results, out_rows)
    if model_lp is not None:
        add_row("trained voice branch alone", "-", "-", model_lp.argmax(1), y[dev], results, out_rows)
    record.update(load=dict(record["load"], after=loadavg()), results=results, majority=majority,
                  utterances={"train": int((~dev).sum()), "dev": int(dev.sum())}, features_s=round(features_s, 1))
    body = (f"Utterances: {int((~dev).sum())} train (actors 01-18), {int(dev.sum())} dev (actors 19-21); "
            f"features for all in {features_s:.0f} s. Majority class on dev: {majority:.3f}; chance 1/7 = 0.143.\n\n"
            + (f"Trained model: `{args.checkpoint}` (its voice alone, no face; the late fusions add its "
               "log-probabilities to the probe's with equal weight, nothing tuned on dev).\n\n" if args.checkpoint else "")
            + table(["features", "numbers", "L2 (3-fold CV on train actors)", "dev accuracy", "dev recall per class"],
                    out_rows) + "\n")
    write_results(args.name, "Prosody probe: utterance statistics -> emotion on held-out RAVDESS speakers",
                  record, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
