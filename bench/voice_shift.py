"""How much a trained voice branch depends on the silence around the words (issue 19: other corpora).

RAVDESS files hold about a second of room tone around each sentence; other corpora are cut close to the words
(or hold more), and a predict window may hold none. A voice branch that pools and normalises over the whole
clip reads the same words differently with a different share of silence. This scores each checkpoint's voice
alone (no face) on RAVDESS actors 19-21 (156 utterances, the recipe's voice dev split), each file three ways:

- recorded: as the file is (what the shards hold);
- cut tight: cut to its words: from the first to the last 10 ms frame within 30 dB of its loudest, plus 50 ms
  each side (an independent cut: the model's own model.voice_trim_db is not used to make it);
- more room tone: the file's own first 0.25 s (its room tone) repeated before it for 0.75 s.

Every way is then cut to what the model reads, evaluate's crop (the checkpoint's data.max_mel_frames from the
start; the recipe's 4 s take a third of these files short of their end): the table's length and silence share
are those of the crop. Per checkpoint and way: accuracy and the share of utterances whose answer is the
recorded one's.

    .venv/bin/python bench/voice_shift.py --checkpoint shipped=RUN1/best.pt --checkpoint trim=RUN2/best.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, machine, new_record, table, write_results  # noqa: E402
from prosody_probe import DEFAULT_RAVDESS, RATE, model_log_probs, ravdess_rows, read_voice  # noqa: E402

from avemo.pipeline.config import AudioConfig  # noqa: E402
from avemo.shards.labels import EMOTIONS  # noqa: E402

FRAME = RATE // 100          # 10 ms


def frame_db(audio: np.ndarray) -> np.ndarray:
    """Each whole 10 ms frame's power in dB below the loudest frame's (0 at the loudest)."""
    n = len(audio) // FRAME
    power = (audio[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2).mean(1) + 1e-12
    return 10 * np.log10(power / power.max())


def cut_tight(audio: np.ndarray, top_db: float = 30.0, margin_s: float = 0.05) -> np.ndarray:
    """The file from its first to its last 10 ms frame within top_db of its loudest frame, margin_s each side."""
    loud = np.flatnonzero(frame_db(audio) >= -top_db)
    margin = int(margin_s * RATE)
    return audio[max(0, loud[0] * FRAME - margin): min(len(audio), (loud[-1] + 1) * FRAME + margin)]


def more_room_tone(audio: np.ndarray, before_s: float = 0.75, tone_s: float = 0.25) -> np.ndarray:
    tone = audio[: int(tone_s * RATE)]
    return np.concatenate([np.tile(tone, int(np.ceil(before_s / tone_s)))[: int(before_s * RATE)], audio])


def silence_share(audio: np.ndarray, top_db: float = 30.0) -> float:
    """The share of 10 ms frames more than top_db below the loudest."""
    return float(np.mean(frame_db(audio) < -top_db))


WAYS = {"recorded": lambda a: a, "cut tight": cut_tight, "more room tone": more_room_tone}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--ravdess", default=DEFAULT_RAVDESS)
    p.add_argument("--name", default="voice_shift")
    args = p.parse_args(argv)
    root = Path(args.ravdess)
    rows = ravdess_rows(root, "voice_shift", ("dev",))
    if rows is None:
        return 2
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    voices = [read_voice(root / r["path"]) for r in rows]
    y = np.array([EMOTIONS.index(r["label7"]) for r in rows])
    from avemo.model.checkpoint import load_checkpoint
    results, out = {}, []
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        config = load_checkpoint(path)["config"]
        cfg = AudioConfig(n_mels=config["model"]["n_mels"])                # the build's defaults otherwise
        crop = config["data"]["max_mel_frames"] * cfg.hop_length          # samples: what evaluate reads
        ways = {w: [f(a)[:crop] for a in voices] for w, f in WAYS.items()}
        preds = {w: model_log_probs(path, clips, cfg).argmax(1) for w, clips in ways.items()}
        for w, pred in preds.items():
            acc, same = float(np.mean(pred == y)), float(np.mean(pred == preds["recorded"]))
            length = float(np.mean([len(c) for c in ways[w]])) / RATE
            quiet = float(np.mean([silence_share(c) for c in ways[w]]))
            counts = np.bincount(pred, minlength=len(EMOTIONS))
            top = int(counts.argmax())
            results[f"{name}/{w}"] = {"accuracy": round(acc, 4), "same_as_recorded": round(same, 4),
                                      "length_s": round(length, 3), "silence_share": round(quiet, 3),
                                      "answers": {e: int(c) for e, c in zip(EMOTIONS, counts)}}
            out.append([name, w, f"{length:.2f}", f"{quiet:.2f}", f"{acc:.3f}", f"{same:.3f}",
                        f"{EMOTIONS[top]} {counts[top] / len(pred):.2f}"])
    record.update(load=dict(record["load"], after=loadavg()), results=results, utterances=len(rows),
                  checkpoints=args.checkpoint)
    body = (f"RAVDESS actors 19-21, {len(rows)} utterances, the voice alone (no face). Checkpoints: "
            + ", ".join(f"`{c}`" for c in args.checkpoint) + ".\n\n"
            + table(["model", "the files", "mean length read, s", "silence share (30 dB)", "accuracy",
                    "same answer as recorded", "most given answer (its share; the largest class holds 0.15)"], out) + "\n")
    write_results(args.name, "Voice alone with more or less silence around the words", record, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
