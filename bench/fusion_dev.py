"""Fusion on dev (issue 19.6): the learnt fusion head against late fusion of the branches' own answers.

The model fuses by concatenating the two pooled branch embeddings (plus two presence flags) into one MLP head;
trained with modality dropout, the same head also answers from one modality (the other masked out). Late
fusion needs no new weights: each branch's own class log-probabilities, combined per clip. This scores, on a
dev split with both modalities, for each checkpoint given:

- learnt head: the shipped answer (the head on both embeddings);
- product of experts: log p(face only) + log p(voice only) (late logit fusion, equal weights);
- head + experts: log p(both) + (log p(face only) + log p(voice only)) / 2;
- mean of the three probabilities.

Per variant: accuracy, weighted F1, and the clips it fixes / breaks against the learnt head (a paired count:
on 156 clips one clip is 0.6 points, so a variant that fixes 3 and breaks 1 is noise, not a finding).

    .venv/bin/python bench/fusion_dev.py --shards bench/out/real_v2/data/shards/paired \\
        --checkpoint ep10=bench/out/real_v2/run/best.pt --checkpoint ep12=bench/out/real_v2/run/last.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, machine, new_record, table, write_results  # noqa: E402


def variants(logp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Class scores per fusion rule from each mode's log-probabilities (N, 7); argmax is the answer."""
    both, face, voice = logp["both"], logp["face_only"], logp["audio_only"]
    return {"learnt head (shipped)": both,
            "product of experts (face x voice)": face + voice,
            "head + experts / 2": both + 0.5 * (face + voice),
            "mean of the three probabilities": np.log(np.exp(both) + np.exp(face) + np.exp(voice))}


def score(shards: str, checkpoint: str, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import torch
    from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
    from avemo.train.data import eval_loader, split_shards
    from avemo.train.evaluate import MODES, predict
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint)
    data = ckpt["config"]["data"]
    sp = split_shards(shards, split, "stop")
    loader = eval_loader(sp.urls, 64, 0, data["max_frames"], data["max_mel_frames"], n_mels=model.cfg.n_mels,
                         listed=sp.listed)
    out = predict(model, loader, torch.device("cpu"), tuple(MODES))
    keys = out["both"][0]
    for mode, (k, _, _) in out.items():
        assert k == keys, f"{mode}: clips in another order"
    labels = out["both"][1]
    return labels, {mode: np.log(np.clip(probs, 1e-8, 1.0)) for mode, (_, _, probs) in out.items()}


def main(argv: list[str] | None = None) -> int:
    from avemo.train.metrics import classification_metrics
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="a shard set whose dev clips have both face and voice")
    p.add_argument("--checkpoint", required=True, action="append", help="NAME=PATH or PATH; repeat")
    p.add_argument("--split", default="dev")
    p.add_argument("--name", default="fusion_dev", help="results name in bench/results")
    args = p.parse_args(argv)
    before = loadavg()
    models = dict(c.split("=", 1) if "=" in c else (c, c) for c in args.checkpoint)
    rows, record_models = [], {}
    for name, path in models.items():
        labels, logp = score(args.shards, path, args.split)
        ref = logp["both"].argmax(1) == labels
        record_models[name] = {"path": path, "n": int(len(labels))}
        for variant, s in variants(logp).items():
            pred = s.argmax(1)
            m = classification_metrics(labels, pred)
            right = pred == labels
            fixed, broken = int((right & ~ref).sum()), int((~right & ref).sum())
            record_models[name][variant] = {"accuracy": m["accuracy"], "weighted_f1": m["weighted_f1"],
                                            "fixed": fixed, "broken": broken}
            rows.append([name, variant, len(labels), round(m["accuracy"], 3), round(m["weighted_f1"], 3),
                         f"+{fixed} / -{broken}"])
            print(f"{name:8s} {variant:36s} acc {m['accuracy']:.3f} wF1 {m['weighted_f1']:.3f} +{fixed}/-{broken}")
    record = new_record(args)
    record.update(machine=machine(), load={"before": before, "after": loadavg()}, models=record_models)
    body = [f"Split `{args.split}` of `{args.shards}`. Fusion rules applied to one model's own per-modality "
            "answers (no retraining); fixed / broken = clips right / wrong that the learnt head had wrong / "
            "right.", "",
            table(["model", "fusion", "clips", "accuracy", "weighted F1", "fixed / broken vs head"], rows), "",
            "Models: " + "; ".join(f"{k} = `{v}`" for k, v in models.items()) + "."]
    write_results(args.name, "Fusion on dev: learnt head vs late fusion", record, "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
