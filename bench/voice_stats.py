"""model.voice_stats on trained runs: the same network scored with and without the late-fusion voice classifier.

The classifier (model/net.py VoiceStats) is fitted before training and never trained with the network, so
its worth on a finished run is measured without retraining: fit it on the run's own train shards (what
`avemo train` does for a new run with model.voice_stats > 0), attach it to a copy of the run's checkpoint,
and score both with `avemo evaluate` on the real_emotion dev sets (paired dev in three modes, FER half B,
RAVDESS actors 19-21). Paired: the same network, weights and clips; only the vote differs. On a run trained
with the classifier, --weight 0 makes the copy without it.

    .venv/bin/python bench/voice_stats.py --run bench/out/real_flatten/run --data bench/out/data
    .venv/bin/python bench/voice_stats.py --run bench/out/real_vs/run --data bench/out/data --weight 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (loadavg, machine, new_record, table, trained_run_arguments, trained_run_paths,  # noqa: E402
                    write_results)
from real_emotion import comparison_rows, score_dev_sets  # noqa: E402

from avemo.model.checkpoint import load_checkpoint  # noqa: E402


def attach(ckpt: dict, checkpoint: str, weight: float, out: Path) -> tuple[Path, str]:
    """A run's checkpoint with the classifier fitted on its train shards -> OUT/CHECKPOINT (+ a log line)."""
    import functools

    from avemo.core.config import config_from_dict
    from avemo.model.checkpoint import model_from_checkpoint, save_checkpoint
    from avemo.model.net import AVEmotionNet
    from avemo.train.config import TrainConfig
    from avemo.train.data import split_shards
    from avemo.train.loop import class_weights
    from avemo.train.voice_stats import fit_voice_stats
    cfg = config_from_dict(TrainConfig, ckpt["config"])
    cfg = replace(cfg, model=replace(cfg.model, voice_stats=weight))
    splits = [split_shards(s, cfg.train_split) for s in cfg.shards]
    lines: list[str] = ["model.voice_stats=0: none"]
    fitted = None
    if weight > 0:
        fitted = fit_voice_stats(splits, cfg, functools.partial(class_weights, mode=cfg.imbalance), lines.append)
        if fitted is None:
            raise SystemExit(f"voice_stats: {lines[-1]}")
    model = AVEmotionNet(cfg.model)
    result = model.load_state_dict(model_from_checkpoint(ckpt).state_dict(), strict=False)
    assert all(k.startswith("voice_stats.") for k in result.missing_keys + result.unexpected_keys)
    if fitted is not None:
        model.voice_stats.load_state_dict(fitted)   # type: ignore[union-attr]
    config = dict(ckpt["config"], model=dict(ckpt["config"]["model"], voice_stats=weight))
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / checkpoint, **dict(ckpt, model=model.state_dict(), config=config))
    return out / checkpoint, lines[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    trained_run_arguments(p, "voice_stats")
    p.add_argument("--weight", type=float, default=1.0, help="model.voice_stats (1: equal-weight late fusion)")
    args = p.parse_args(argv)
    run, data, out = trained_run_paths(args, "voice_stats")
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    start = time.perf_counter()
    ckpt = load_checkpoint(run / args.checkpoint)
    copy, fit_line = attach(ckpt, args.checkpoint, args.weight, out / "run")
    fit_s = time.perf_counter() - start
    trained = ckpt["config"]["model"].get("voice_stats", 0.0)
    results = {label: score_dev_sets(data, path, out / f"eval_{label}", args.config)   # as trained, and its copy
               for label, path in (("run", run / args.checkpoint), ("copy", copy))}
    rows = comparison_rows(results["run"], results["copy"])
    record.update(load=dict(record["load"], after=loadavg()), results=results, fit=fit_line, fit_s=round(fit_s, 1))
    body = (f"Run: `{run}` ({args.checkpoint}, trained with model.voice_stats={trained}); its copy with "
            f"model.voice_stats={args.weight}. {fit_line}; {fit_s:.0f} s to make the copy (reading the train shards "
            "with audio included).\n\n"
            + table(["dev set, modality", "clips", f"accuracy, voice_stats={trained}",
                     f"accuracy, voice_stats={args.weight}", "change", f"weighted F1, {trained}",
                     f"weighted F1, {args.weight}"], rows) + "\n")
    write_results(args.name, "Late-fusion voice statistics on a trained run (model.voice_stats)", record, body)
    print(json.dumps({k: {n: round(m["accuracy"], 3) for n, m in v.items()} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
