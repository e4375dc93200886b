"""model.face_flip_tta on trained runs: the same checkpoint scored with each face read once, and read as is and
mirrored (the two embeddings averaged).

The setting acts in use only (training never sees it), so its worth on a finished run is measured without
retraining: copy the run's checkpoint with model.face_flip_tta=true in its config (the weights untouched) and
score both with `avemo evaluate` on the real_emotion dev sets (paired dev in three modes, FER half B,
RAVDESS actors 19-21 as the control: no faces there, so it must not move). Paired: the same weights and clips.

    .venv/bin/python bench/face_tta.py --run bench/out/real_vs/run --data bench/out/data --name face_tta_vs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (loadavg, machine, new_record, table, trained_run_arguments, trained_run_paths,  # noqa: E402
                    write_results)
from real_emotion import comparison_rows, score_with_model_settings  # noqa: E402

from avemo.model.checkpoint import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    trained_run_arguments(p, "face_tta")
    args = p.parse_args(argv)
    run, data, out = trained_run_paths(args, "face_tta")
    record = new_record(args)
    record.update(machine=machine(), load={"before": loadavg()})
    ckpt = load_checkpoint(run / args.checkpoint)
    results, seconds = {}, {}
    for flip in (False, True):
        results[flip], seconds[flip] = score_with_model_settings(ckpt, f"flip{int(flip)}", out, data, args.config,
                                                                 args.checkpoint, face_flip_tta=flip)
    rows = comparison_rows(results[False], results[True])
    record.update(load=dict(record["load"], after=loadavg()),
                  results={f"flip={k}": v for k, v in results.items()},
                  evaluate_s={f"flip={k}": v for k, v in seconds.items()})
    body = (f"Run: `{run}` ({args.checkpoint}); the same weights with model.face_flip_tta false and true. "
            f"The three evaluations took {seconds[False]:.0f} s without and {seconds[True]:.0f} s with it "
            "(process start-up included).\n\n"
            + table(["dev set, modality", "clips", "accuracy, one read", "accuracy, + mirrored", "change",
                     "weighted F1, one read", "weighted F1, + mirrored"], rows) + "\n")
    write_results(args.name, "Faces read as is and mirrored, in use (model.face_flip_tta)", record, body)
    print(json.dumps({f"flip={k}": {n: round(m["accuracy"], 3) for n, m in v.items()} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
