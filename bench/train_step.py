"""Training-step and in-use speed of the two exact speed-ups in model/net.py, the strided audio CNN and what
each branch costs, interleaved in one process on real batches of the real recipe (configs/real.yaml's mix of
paired clips, RAVDESS voices and FER faces):

  fold      the face blocks that need no gradient run as copies with BatchNorm folded into their
            convolutions (FaceEncoder.fold_frozen_bn)
  relu      each audio CNN stage's ReLU after its max-pool instead of before (AudioEncoder.relu_after_pool)

  stride2   model.audio_time_stride=2: the audio CNN's first convolution steps 2 mel frames (not exact: a
            recipe choice, measured on dev by bench/real_emotion.py; here its speed on the same weights)

  no-audio  both, on the same batches with every clip's audio masked out (what the voice branch costs)
  no-faces  both, on the same batches with every face masked out (what the face branch costs)

Variants: before (neither), fold, relu, both (both speed-ups, audio stride 1), stride2 (both + stride 2: what
configs/real.yaml uses), no-audio, no-faces. Per variant: the median time of a
whole train_step (forward, loss, backward, clipping, AdamW) over the same batches, repeated and interleaved
(A B C D D C B A ...), and the in-use face embedding of 64 faces (evaluate, predict) with and without folding.
The batches are drawn once and kept, so the loader is not part of the timing.

    .venv/bin/python bench/train_step.py --data bench/out/data
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, loadavg, machine, new_record, ratio, summarize, table, write_results  # noqa: E402

from avemo.core.config import load_config  # noqa: E402
from avemo.model.net import AudioEncoder, FaceEncoder, build_model  # noqa: E402
from avemo.train.config import TrainConfig  # noqa: E402
from avemo.train.data import mixed_train_loader, split_shards  # noqa: E402
from avemo.train.loop import train_step  # noqa: E402

VARIANTS = {"before": (False, False, 1), "fold": (True, False, 1), "relu": (False, True, 1), "both": (True, True, 1),
            "stride2": (True, True, 2), "no-audio": (True, True, 1), "no-faces": (True, True, 1)}
MASKED = {"no-audio": "mel_mask", "no-faces": "face_mask"}    # the batch key those variants set all-false


def set_variant(fold: bool, relu: bool, net: torch.nn.Module | None = None, time_stride: int = 1) -> None:
    FaceEncoder.fold_frozen_bn = fold
    AudioEncoder.relu_after_pool = relu
    if net is not None:   # model.audio_time_stride on the same weights (the stride changes no shape)
        net.audio.cnn[0].stride = (1, time_stride)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a bench/real_emotion.py data folder (shards/{paired,ravdess,fer})")
    p.add_argument("--config", default="real")
    p.add_argument("--batches", type=int, default=10, help="batches per timed pass (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--baseline", default="before", choices=list(VARIANTS), help="the variant the ratios are to")
    p.add_argument("--name", default="train_step")
    args = p.parse_args(argv)
    shards = Path(args.data).resolve() / "shards"
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    cfg = load_config(TrainConfig, "train", args.config,
                      overrides=[f"shards=[{shards / 'paired'},{shards / 'ravdess'},{shards / 'fer'}]"])
    splits = [split_shards(str(s), "train") for s in cfg.shards]
    torch.manual_seed(cfg.seed)
    loader, _ = mixed_train_loader(splits, cfg.data, cfg.augment, 0, cfg.seed)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.batches + 2:
            break
    del loader
    shapes = {"faces per batch (median)": statistics.median(int(b["face_mask"].sum()) for b in batches),
              "clips with audio per batch (median)": statistics.median(int(b["mel_mask"].any(1).sum())
                                                                       for b in batches),
              "batch": cfg.data.batch_size, "torch threads": torch.get_num_threads()}
    net = build_model(cfg.model, log=lambda _m: None).train()
    optimizer = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-5)

    def steps(name: str):
        fold, relu, time_stride = VARIANTS[name]
        data = batches if name not in MASKED else \
            [dict(b, **{MASKED[name]: torch.zeros_like(b[MASKED[name]])}) for b in batches]

        def run() -> dict:
            set_variant(fold, relu, net, time_stride)
            net.train()
            for b in data[:2]:
                train_step(net, optimizer, None, b, cfg.optim)
            start = time.perf_counter()
            for b in data[2:]:
                train_step(net, optimizer, None, b, cfg.optim)
            return {"seconds": time.perf_counter() - start, "items": args.batches * cfg.data.batch_size}
        return run

    base = args.baseline
    variants = [base, *[v for v in args.variants if v != base]]             # the baseline first
    runs = interleave({k: steps(k) for k in variants}, args.repeats, alternate=True)
    summary = summarize(runs)
    faces = torch.cat([b["faces"][b["face_mask"]] for b in batches])[:64][None]

    def embed(fold: bool):
        def run() -> dict:
            set_variant(fold, True)
            net.eval()
            with torch.inference_mode():
                net.embed_faces(faces)                            # builds the folded copies (not timed)
                start = time.perf_counter()
                for _ in range(3):
                    net.embed_faces(faces)
            return {"seconds": time.perf_counter() - start, "items": 3 * faces.shape[1]}
        return run

    in_use = summarize(interleave({"unfolded": embed(False), "folded": embed(True)}, args.repeats, alternate=True))
    set_variant(True, True, net, 1)
    rows = [[k, f"{summary[k]['min']:.1f}", f"{summary[k]['median']:.1f}", f"{summary[k]['max']:.1f}",
             f"{1000 * cfg.data.batch_size / summary[k]['median']:.0f}",
             f"{ratio(summary[k], summary[base])['median']:.3f}"] for k in variants]
    use_rows = [[k, f"{in_use[k]['min']:.1f}", f"{in_use[k]['median']:.1f}",
                 f"{ratio(in_use[k], in_use['unfolded'])['median']:.3f}"] for k in ("unfolded", "folded")]
    record.update(load=dict(record["load"], after=loadavg()), shapes=shapes, train_step=summary, in_use=in_use,
                  runs={k: [r["rate"] for r in v] for k, v in runs.items()})
    body = (f"Real batches of `--config {args.config}` from `{shards}` ({json.dumps(shapes)}); "
            f"{args.batches} timed steps per pass, {args.repeats} interleaved passes per variant.\n\n"
            "## Training step (samples/s over the timed steps)\n\n"
            + table(["variant", "min", "median", "max", "ms per step (median)", f"x {base} (median)"], rows)
            + "\n\n## In use: face embeddings of 64 faces under inference_mode (faces/s)\n\n"
            + table(["face CNN", "min", "median", "x unfolded (median)"], use_rows) + "\n")
    write_results(args.name, "Training step: folded face blocks, ReLU after the pool, the audio CNN's stride, "
                  "what each branch costs",
                  record, body)
    print(json.dumps({"train_step": {k: round(v["median"], 2) for k, v in summary.items()},
                      "in_use": {k: round(v["median"], 1) for k, v in in_use.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
