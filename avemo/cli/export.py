"""`avemo export`: argument parsing around avemo.inference.export.export."""
from __future__ import annotations

import argparse

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}   # kept in step with inference.export.FORMATS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="avemo export", description="Export a checkpoint to ONNX or TorchScript.",
        epilog="then: avemo predict clip.mp4 --checkpoint model.onnx   (onnxruntime, the fastest CPU path)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avemo train (best.pt)")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument("--out", default=None, help="output file (default: next to the checkpoint, "
                        + ", ".join(f"{k}: *{v}" for k, v in FORMATS.items()) + ")")
    ns = parser.parse_args(argv)
    from avemo.inference.export import export
    path = export(ns.checkpoint, ns.format, ns.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {ns.format})")
    return 0
