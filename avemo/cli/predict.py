"""`avemo predict`: argument parsing around avemo.inference.predict.run_predict."""
from __future__ import annotations

import argparse
from collections import deque
import json
import os
import re
import sys
from pathlib import Path

from avemo.cli.common import PRINT_CONFIG_HELP, Interrupted, print_config

EPILOG = """\
inputs: video files, folders (every video in them), pipe:0 (stdin: a streaming container such as
mpegts or matroska, or an mp4 with its moov atom first), lavfi:GRAPH (ffmpeg generators), URLs
(rtsp://, http://, ...) and capture devices (/dev/video0).

examples:
  avemo predict clip.mp4 --checkpoint runs/a/best.pt --plot clip.png
  avemo predict clips/ --checkpoint model.onnx --out predictions.jsonl
  ffmpeg -i cam.mp4 -c copy -f mpegts - | avemo predict pipe:0 --checkpoint model.onnx
  avemo predict /dev/video0 --checkpoint model.onnx --window 2 --hop 0.5
  avemo predict scene.mp4 --checkpoint runs/a/best.pt --speakers --plot scene.png   # who speaks, per person

Decode, face and audio settings are build-shards' (the checkpoint's build config when it has one,
then the `build:` section of --config), so the model sees inputs made as in training.
"""



PLOT_WINDOWS = 20_000                # --plot of an endless source shows its last ~2.8 h (0.5 s hop)
OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avemo predict", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Emotion over sliding windows of videos or live streams.")
    parser.add_argument("items", nargs="*", metavar="INPUT | key=value",
                        help="inputs (file, folder, pipe:0, lavfi:GRAPH, URL, device) and config overrides "
                             "(e.g. threads=2 face.device=cpu decode.fps=4)")
    parser.add_argument("--checkpoint", help="best.pt from avemo train, or model.onnx from avemo export (a path or a URL)")
    parser.add_argument("--window", type=float, default=None, help="window length in seconds (default 2.0)")
    parser.add_argument("--hop", type=float, default=None, help="seconds between window starts (default 0.5)")
    parser.add_argument("--out", default=None, help="JSON lines file (default: stdout)")
    parser.add_argument("--plot", default=None, help="PNG timeline of the 7 probabilities")
    parser.add_argument("--overlay", default=None, metavar="OUT.mp4",
                        help="the input video (one file) with each window's answer drawn on it; with --speakers "
                             "each person's box, label and speaking mark, the speaker in green")
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None)
    parser.add_argument("--realtime", action="store_true", default=None,
                        help="read inputs at their native rate, as a live camera would deliver them")
    parser.add_argument("--timings", action="store_true", default=None, help="per-stage milliseconds per window")
    parser.add_argument("--per-clip", action="store_true", default=None,
                        help="one prediction per input file (the whole clip, as build-shards decodes it; how MELD "
                             "utterances are labelled) instead of sliding windows")
    parser.add_argument("--speakers", action="store_true", default=None,
                        help="follow every face, find who speaks (Light-ASD, by sight and sound) and give each "
                             "person's emotion: each line gains `faces` and `speaker` (frames decoded at 25 fps)")
    parser.add_argument("--config", default=None, help="YAML file or bundled name: its build: and predict: sections")
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP + " (with --checkpoint: "
                        "its build settings)")
    ns = parser.parse_intermixed_args(argv)
    overrides = [a for a in ns.items if OVERRIDE_RE.match(a) and not Path(a).exists()]
    texts = [a for a in ns.items if a not in overrides]
    if not ns.print_config and (not texts or not ns.checkpoint):
        parser.error("no INPUT given" if not texts else "the following arguments are required: --checkpoint")
    flags = {k: v for k, v in {"window_s": ns.window, "hop_s": ns.hop, "runtime": ns.runtime,
                               "realtime": ns.realtime, "timings": ns.timings,
                               "per_clip": ns.per_clip, "speakers": ns.speakers}.items() if v is not None}
    from avemo.core.config import parse_overrides, read_yaml_section
    for section in ("build", "predict") if ns.config else ():   # a bad file or override: one line, before torch
        read_yaml_section(ns.config, section)
    parse_overrides(overrides)
    if ns.overlay:
        from avemo.inference.overlay import check_overlay_path
        check_overlay_path(ns.overlay)
        if len(texts) != 1 or not Path(texts[0]).is_file():
            parser.error("--overlay draws on one input video file (not a folder, stream or several inputs)")
    from avemo.inference.predict import load_predict_config, run_predict
    from avemo.inference.runtime import read_model
    from avemo.core.paths import check_outputs, local_inputs
    check_outputs({"--out": ns.out, "--plot": ns.plot, "--overlay": ns.overlay}, {"the checkpoint": ns.checkpoint, **local_inputs(texts)})
    model = read_model(ns.checkpoint) if ns.checkpoint else None
    cfg = load_predict_config(model.meta if model else {}, ns.config, flags, overrides)
    if ns.print_config:
        return print_config(cfg, "predict")
    if cfg.face.speaker == "asd" and not cfg.speakers:
        print("avemo predict: note: this model learnt from the speaking face (its shards: face.speaker=asd); "
              "--speakers reads that face, without it the most prominent face is read", file=sys.stderr)
    out = open(ns.out, "w", encoding="utf-8") if ns.out else sys.stdout
    # kept only for --plot, and only the last PLOT_WINDOWS of them: an endless live input must not grow memory
    records: deque[dict] = deque(maxlen=PLOT_WINDOWS)
    drawn: list[dict] = []            # --overlay: every line of its one input file (a file ends)

    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()     # a live consumer (or a crash) sees every finished window
        if ns.plot:
            records.append(record)
        if ns.overlay:
            drawn.append(record)

    interrupted = False
    try:
        failed = run_predict(texts, model, cfg, emit, report=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt:   # Ctrl-C is how a live source ends: every window so far is out; plot them
        interrupted, failed = True, 0
    except BrokenPipeError:   # whoever read our stdout went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("avemo predict: output closed, stopped", file=sys.stderr)
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
    if ns.plot:
        from avemo.inference.timeline import plot_timeline
        plot_timeline(list(records), ns.plot, model.meta["labels"] if model else [])
        print(f"wrote {ns.plot}", file=sys.stderr)
    if ns.overlay and not interrupted and not failed:
        from avemo.inference.overlay import write_overlay
        frames = write_overlay(texts[0], drawn, ns.overlay)
        print(f"wrote {ns.overlay} ({frames} frames)", file=sys.stderr)
    if interrupted:
        raise Interrupted("every finished window was written" + (f", and the plot {ns.plot}" if ns.plot else ""))
    return 1 if failed else 0
