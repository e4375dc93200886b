"""The training loader's CPU per batch on the real recipe's shards (configs/real.yaml's mix of paired clips,
RAVDESS voices and FER faces), before and after two loader changes, interleaved in one process:

  tar       the tar stage alone (shards/tar_reader.py's bounded_members) over each set's first train shards,
            as built before (a PAX extended header per member: tarfile wrote the float mtime 0.0 as one) and
            the same members rewritten as plain ustar, as build-shards writes them now (int mtime):
            microseconds per member and bytes per shard
  faces     face augmentation of real collated batches: torchvision's functional ops one clip at a time (as
            the loader did, in augment_sample, faceless clips included) vs train/augment.py's augment_faces
            over the whole batch (which skips clips without a face)
  loader    the whole training loader in this process (data.workers=0, 1 torch thread, as in a worker):
            CPU ms per batch, before (faces augmented per clip with torchvision, SpecAugment masks by
            torchaudio's mask_along_axis) vs now (faces per batch, the masks as slices: train/augment.py),
            on the shards as they are on disk; the tar gain comes on top, measured by `tar`

    .venv/bin/python bench/loader_cpu.py --data bench/out/data
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import torch
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, loadavg, new_record, ratio, summarize, table, write_results  # noqa: E402

import avemo.train.augment as train_augment  # noqa: E402
import avemo.train.data as train_data  # noqa: E402
from avemo.core.config import load_config  # noqa: E402
from avemo.shards.tar_reader import bounded_members  # noqa: E402
from avemo.train.augment import augment_faces, augment_sample  # noqa: E402
from avemo.train.config import AugmentConfig, TrainConfig  # noqa: E402

SETS = ("paired", "ravdess", "fer")


def rewritten(tar_bytes: bytes, pax: bool) -> bytes:
    """The same members in the same order, written as build-shards wrote them before (pax: tarfile's default
    format with the float mtime 0.0, one extended header per member) or writes them now (mtime 0: one plain
    ustar header each); checked, so the two rows measure what they say whatever the shards on disk are."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            info.mtime, info.pax_headers = (0.0 if pax else 0), {}
            dst.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as check:
        assert all(bool(m.pax_headers) == pax for m in check.getmembers())
    return out.getvalue()


def per_clip_faces(faces: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """The loader's face augmentation before: torchvision's functional ops on one clip (T, 3, H, W)."""
    u = lambda a, b: a + (b - a) * float(torch.rand(()))  # noqa: E731
    if float(torch.rand(())) < cfg.flip_p:
        faces = faces.flip(-1)
    if cfg.grey_p and float(torch.rand(())) < cfg.grey_p:
        faces = TF.rgb_to_grayscale(faces, num_output_channels=3)
    faces = TF.adjust_brightness(faces, u(1 - cfg.brightness, 1 + cfg.brightness))
    faces = TF.adjust_contrast(faces, u(1 - cfg.contrast, 1 + cfg.contrast))
    faces = TF.adjust_saturation(faces, u(1 - cfg.saturation, 1 + cfg.saturation))
    size = faces.shape[-1]
    shift = [round(u(-cfg.translate, cfg.translate) * size) for _ in range(2)]
    return TF.affine(faces, angle=u(-cfg.rotate_deg, cfg.rotate_deg), translate=shift,
                     scale=u(1 - cfg.scale, 1 + cfg.scale), shear=[0.0, 0.0])


def torchaudio_mask(mel: torch.Tensor, max_width: int, fill: float, dim: int) -> None:
    """The loader's SpecAugment mask before (the copy back, ~10 us, is the only work added)."""
    mel.copy_(AF.mask_along_axis(mel[None], max_width, fill, axis=dim + 1)[0])


def per_clip_sample(sample: dict, cfg: AugmentConfig) -> dict:
    out = augment_sample(sample, cfg)
    return dict(out, faces=per_clip_faces(sample["faces"], cfg)) if cfg.enabled else out


def tar_stage(shards: Path, per_set: int, repeats: int) -> dict:
    blobs = {"pax": [], "ustar": []}
    for name in SETS:
        for path in sorted((shards / name).glob("train-*.tar"))[:per_set]:
            raw = path.read_bytes()
            blobs["pax"].append(rewritten(raw, pax=True))
            blobs["ustar"].append(rewritten(raw, pax=False))

    def read(kind: str):
        def run() -> dict:
            n, start = 0, time.perf_counter()
            for blob in blobs[kind]:
                for _member in bounded_members(io.BytesIO(blob), kind, lambda _e: False):
                    n += 1
            return {"seconds": time.perf_counter() - start, "items": n}
        return run

    runs = interleave({"pax": read("pax"), "ustar": read("ustar")}, repeats, alternate=True)
    return {"summary": summarize(runs), "members": runs["pax"][0]["items"], "shards": len(blobs["pax"]),
            "bytes": {k: sum(map(len, v)) for k, v in blobs.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a bench/real_emotion.py data folder (shards/{paired,ravdess,fer})")
    p.add_argument("--config", default="real")
    p.add_argument("--batches", type=int, default=20, help="batches per timed loader pass (after 3 warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tar-shards", type=int, default=2, help="train shards per set for the tar stage")
    p.add_argument("--name", default="loader_cpu")
    args = p.parse_args(argv)
    shards = Path(args.data).resolve() / "shards"
    torch.set_num_threads(1)                                   # as in a loader worker
    record = new_record(args)
    cfg = load_config(TrainConfig, "train", args.config,
                      overrides=[f"shards=[{','.join(str(shards / s) for s in SETS)}]", "data.workers=0"])
    splits = [train_data.split_shards(str(s), "train") for s in cfg.shards]

    print("tar stage")
    tar = tar_stage(shards, args.tar_shards, args.repeats)
    with tarfile.open(sorted((shards / SETS[-1]).glob("train-*.tar"))[0]) as first:
        tar["on_disk_pax"] = any(m.pax_headers for m in first.getmembers())

    def loader(kind: str):
        """Loader passes with the face augmentation of `kind`, patched into train/data.py's stages."""
        def run() -> dict:
            stages = train_data.augment_sample, train_data.augment_batch, train_augment.mask_band
            if kind == "before":
                train_data.augment_sample = per_clip_sample
                train_data.augment_batch = lambda batch, cfg: batch
                train_augment.mask_band = torchaudio_mask
            try:
                torch.manual_seed(0)
                it = iter(train_data.mixed_train_loader(splits, cfg.data, cfg.augment, 0, cfg.seed)[0])
                for _ in range(3):
                    next(it)
                cpu, start = time.process_time(), time.perf_counter()
                for _ in range(args.batches):
                    next(it)
                return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                        "items": args.batches}
            finally:
                train_data.augment_sample, train_data.augment_batch, train_augment.mask_band = stages
        return run

    print("face augmentation")
    torch.manual_seed(0)
    batches = []
    for batch in train_data.mixed_train_loader(splits, cfg.data, AugmentConfig(enabled=False), 0, cfg.seed)[0]:
        batches.append(batch)
        if len(batches) == args.batches:
            break

    def faces(kind: str):
        def run() -> dict:
            start = time.perf_counter()
            for b in batches:
                if kind == "per_clip":
                    for clip in b["faces"]:
                        per_clip_faces(clip, cfg.augment)      # every clip, as augment_sample did
                else:
                    augment_faces(b["faces"], cfg.augment, b["face_mask"])
            return {"seconds": time.perf_counter() - start, "items": len(batches)}
        return run

    face = summarize(interleave({"per_clip": faces("per_clip"), "batch": faces("batch")}, args.repeats,
                                alternate=True))
    print("loader")
    runs = interleave({"before": loader("before"), "now": loader("now")}, args.repeats, alternate=True)
    for rs in runs.values():
        for r in rs:
            r["cpu_ms"] = 1000 * r["cpu"] / r["items"]
            r["wall_ms"] = 1000 * r["seconds"] / r["items"]
    cpu_ms, wall_ms = summarize(runs, "cpu_ms"), summarize(runs, "wall_ms")
    faces_per_batch = sorted(int(b["face_mask"].any(1).sum()) for b in batches)[len(batches) // 2]

    ts = tar["summary"]
    us = {k: 1e6 / v["median"] for k, v in ts.items()}
    tar_rows = [[k, f"{1e6 / ts[k]['max']:.1f}", f"{us[k]:.1f}", f"{tar['bytes'][k] / tar['shards'] / 1e6:.2f}"]
                for k in ("pax", "ustar")]
    face_rows = [[k, f"{1000 / face[k]['max']:.1f}", f"{1000 / face[k]['median']:.1f}",
                  f"{ratio(face[k], face['per_clip'])['median']:.2f}"] for k in ("per_clip", "batch")]
    loader_rows = [[k, f"{cpu_ms[k]['min']:.0f}", f"{cpu_ms[k]['median']:.0f}", f"{wall_ms[k]['median']:.0f}"]
                   for k in ("before", "now")]
    record.update(load=dict(record["load"], after=loadavg()), tar=tar, faces=face, loader_cpu_ms=cpu_ms,
                  loader_wall_ms=wall_ms, clips_with_faces_per_batch=faces_per_batch,
                  runs={k: [r["cpu_ms"] for r in v] for k, v in runs.items()})
    tar_saved = (us["pax"] - us["ustar"]) * tar["members"] / tar["shards"]
    body = (f"Shards: `{shards}` (train splits of {', '.join(SETS)}); `--config {args.config}`: batch "
            f"{cfg.data.batch_size}, max_frames {cfg.data.max_frames}; a median of {faces_per_batch} clips with "
            f"a face per batch; {args.repeats} interleaved repeats.\n\n"
            f"## Tar stage ({tar['members']} members of {tar['shards']} shards)\n\n"
            + table(["shards written as", "us per member (min)", "us per member (median)", "MB per shard"], tar_rows)
            + f"\n\nUstar reads a member in {us['ustar'] / us['pax']:.2f}x the time (median), "
              f"{tar_saved / 1000:.0f} ms less per shard of these.\n\n"
            "## Face augmentation of a batch\n\n"
            + table(["faces augmented", "ms per batch (min)", "ms per batch (median)", "speed x per_clip (median)"],
                    face_rows)
            + f"\n\nper_clip augments all {cfg.data.batch_size} clips of a batch, as the loader did (the voice-only "
              f"ones' empty frames included); batch only the {faces_per_batch} with a face, so "
              f"{cfg.data.batch_size / faces_per_batch:.2f}x of the ratio is work skipped, the rest the batched "
              "maths.\n\n## The whole loader in one process (shards as on disk: "
              f"{'one PAX header per member, as built before' if tar['on_disk_pax'] else 'plain ustar'})\n\n"
            + table(["augmentation", "CPU ms per batch (min)", "CPU ms per batch (median)",
                     "wall ms per batch (median)"], loader_rows)
            + f"\n\nThe loader's CPU per batch now: {cpu_ms['now']['median'] / cpu_ms['before']['median']:.2f}x "
              "before's (median).\n")
    write_results(args.name, "Training loader CPU per batch: plain ustar shards, batched face augmentation", record,
                  body)
    print(json.dumps({"tar_us": us, "face_ms": {k: 1000 / v["median"] for k, v in face.items()},
                      "loader_cpu_ms": {k: v["median"] for k, v in cpu_ms.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
