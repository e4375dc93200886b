"""`avemo predict`: argument parsing around avemo.inference.predict.run_predict."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

EPILOG = """\
inputs: video files, folders (every video in them), pipe:0 (stdin: a streaming container such as
mpegts or matroska, or an mp4 with its moov atom first), lavfi:GRAPH (ffmpeg generators), URLs
(rtsp://, http://, ...) and capture devices (/dev/video0).

examples:
  avemo predict clip.mp4 --checkpoint runs/a/best.pt --plot clip.png
  avemo predict clips/ --checkpoint model.onnx --out predictions.jsonl
  ffmpeg -i cam.mp4 -c copy -f mpegts - | avemo predict pipe:0 --checkpoint model.onnx
  avemo predict /dev/video0 --checkpoint model.onnx --window 2 --hop 0.5

Decode, face and audio settings are build-shards' (the checkpoint's build config when it has one,
then the `build:` section of --config), so the model sees inputs made as in training.
"""



OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo predict", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Emotion over sliding windows of videos or live streams.")
    parser.add_argument("items", nargs="+", metavar="INPUT | key=value",
                        help="inputs (file, folder, pipe:0, lavfi:GRAPH, URL, device) and config overrides "
                             "(e.g. threads=2 face.device=cpu decode.fps=4)")
    parser.add_argument("--checkpoint", required=True, help="best.pt from avemo train, or model.onnx from avemo export")
    parser.add_argument("--window", type=float, default=None, help="window length in seconds (default 2.0)")
    parser.add_argument("--hop", type=float, default=None, help="seconds between window starts (default 0.5)")
    parser.add_argument("--out", default=None, help="JSON lines file (default: stdout)")
    parser.add_argument("--plot", default=None, help="PNG timeline of the 7 probabilities")
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None)
    parser.add_argument("--realtime", action="store_true", default=None,
                        help="read inputs at their native rate, as a live camera would deliver them")
    parser.add_argument("--timings", action="store_true", default=None, help="per-stage milliseconds per window")
    parser.add_argument("--config", default=None, help="YAML file or bundled name: its build: and predict: sections")
    ns = parser.parse_intermixed_args(argv)
    overrides = [a for a in ns.items if OVERRIDE_RE.match(a) and not Path(a).exists()]
    texts = [a for a in ns.items if a not in overrides]
    if not texts:
        parser.error("no INPUT given")
    flags = {k: v for k, v in {"window_s": ns.window, "hop_s": ns.hop, "runtime": ns.runtime,
                               "realtime": ns.realtime, "timings": ns.timings}.items() if v is not None}
    from avemo.inference.predict import load_predict_config, run_predict
    from avemo.inference.runtime import read_model
    from avemo.core.paths import check_outputs, local_inputs
    check_outputs({"--out": ns.out, "--plot": ns.plot}, {"the checkpoint": ns.checkpoint, **local_inputs(texts)})
    model = read_model(ns.checkpoint)
    cfg = load_predict_config(model.meta, ns.config, flags, overrides)
    out = open(ns.out, "w", encoding="utf-8") if ns.out else sys.stdout
    records: list[dict] = []       # kept only for --plot: an endless live input must not grow memory

    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()     # a live consumer (or a crash) sees every finished window
        if ns.plot:
            records.append(record)

    try:
        failed = run_predict(texts, model, cfg, emit, report=lambda line: print(line, file=sys.stderr))
    except BrokenPipeError:   # whoever read our stdout went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("avemo predict: output closed, stopped", file=sys.stderr)
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
    if ns.plot:
        from avemo.inference.timeline import plot_timeline
        plot_timeline(records, ns.plot, model.meta["labels"])
        print(f"wrote {ns.plot}", file=sys.stderr)
    return 1 if failed else 0
