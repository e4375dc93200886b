"""Light-ASD's face encoder on CPU: the modules as written (Conv3d + BatchNorm, what training runs) vs the
inference path (BatchNorm folded, the (k, 1, 1) time convolutions and the 1x1 mix as matrix products, the
(1, 3, 3) pools as 2-D pools; model/asd.py SplitBlock._infer_faces). Both compute the same function
(tests/test_asd.py); this measures frames per second, 1 torch thread as the build's Dask workers and predict
run it, interleaved repeats (modules, inference, modules, ...) on tracks of 1, 2.3 and 6 s at 25 fps.

    .venv/bin/python bench/asd_encoder.py            # ~1 min -> bench/results/asd_encoder.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, loadavg, new_record, ratio, summarize, table, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, nargs="+", default=[25, 57, 150])
    ap.add_argument("--name", default="asd_encoder")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from avemo.model import asd
    from avemo.model.asd import LightASD, load_light_asd
    try:
        net = load_light_asd()
        weights = "published AVA weights"
    except Exception as exc:       # no ../shared weights: the timing does not depend on the values
        print(f"random weights ({exc})")
        net, weights = LightASD().eval(), "random weights"
    record = new_record(args)
    rows, results = [], {}
    for t in args.frames:
        faces = torch.randint(0, 256, (1, t, 112, 112), dtype=torch.uint8)

        def encode(kernels: bool, faces=faces, t=t) -> dict:
            asd.INFERENCE_KERNELS = kernels
            with torch.inference_mode():
                start = time.perf_counter()
                net.encode_faces(faces)
                return {"seconds": time.perf_counter() - start, "items": t}

        def modules() -> dict:
            return encode(False)

        def inference() -> dict:
            return encode(True)

        inference()                                 # warm-up: allocator, oneDNN kernels
        modules()
        runs = interleave({"modules": modules, "inference": inference}, args.repeats)
        summary = summarize(runs)
        gain = ratio(summary["inference"], summary["modules"])
        results[t] = {"summary": summary, "ratio": gain}
        rows += [[t, name, f"{v['min']:.1f}", f"{v['median']:.1f}", f"{v['max']:.1f}", f"{1e3 / v['median']:.1f}"]
                 for name, v in summary.items()]
        rows.append([t, "inference / modules", "", f"x{gain['median']:.2f}", f"(worst x{gain['worst']:.2f})", ""])
    asd.INFERENCE_KERNELS = True
    record["results"] = {"weights": weights, "per_track_frames": results}
    record["load"]["after"] = loadavg()
    body = "\n".join([
        f"Face encoder of Light-ASD ({weights}), one track of T grey 112x112 frames, 1 torch thread; frames/s",
        f"(min / median / max over {args.repeats} interleaved repeats) and ms per frame at the median.", "",
        table(["T", "path", "min", "median", "max", "ms per frame (median)"], rows), "",
        "Both under torch.inference_mode, model.asd.INFERENCE_KERNELS switched per call: the difference is the",
        "kernels (the modules' (k, 1, 1) Conv3d takes PyTorch's im2col slow path on CPU; the inference path runs",
        "matrix products and no BatchNorm pass)."])
    out = write_results(args.name, "Light-ASD face encoder: modules vs inference path (issue 17)", record, body)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
