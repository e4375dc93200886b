"""`avemo evaluate`: a checkpoint on one split of the shards -> metrics.json, predictions.parquet,
confusion.png, evaluate.log, and a face-only / audio-only / both ablation (the other modality masked out);
with log_to_run=true the metrics also go to the checkpoint's run (RUN/metrics.jsonl and its trackers)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from avemo.core import storage
from avemo.core.config import resolve_device
from avemo.core.atomic import atomic_write_bytes
from avemo.core.errors import ConfigError
from avemo.core.logfile import tee
from avemo.shards.labels import EMOTIONS
from avemo.shards.manifest import write_table
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.train.config import EvalConfig
from avemo.core.paths import writable_dir
from avemo.train.data import eval_loader, split_shards
from avemo.train.metrics import classification_metrics

MODES = {"both": (True, True), "face_only": (True, False), "audio_only": (False, True)}


def use_bf16(device: torch.device, amp: str) -> bool:
    """The `amp` setting (auto | bf16 | off) on this device: bf16 autocast on CUDA unless amp=off."""
    return device.type == "cuda" and amp != "off"


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.inference_mode()
def predict(model, loader, device, modes=("both",), bf16: bool = False) -> dict:
    """{mode: (keys, labels, probs (N, 7))} for each modality mode, in one pass over the data. The faces of a
    batch are embedded once (the costly part), then each mode masks a modality out and runs the rest of the
    model from the embeddings. bf16: autocast on CUDA, as the training run decided (use_bf16)."""
    model.eval()
    out: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in modes}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    for batch in loader:
        batch = to_device(batch, device)
        with autocast:
            emb = model.embed_faces(batch["faces"], batch["face_mask"])   # only the frames with a face
        for mode in modes:
            use_face, use_audio = MODES[mode]
            face_mask = batch["face_mask"] & use_face
            mel_mask = batch["mel_mask"] & use_audio
            with autocast:
                logits = model.forward_from_embeddings(emb, face_mask, batch["mel"], mel_mask)
            keys, labels, probs = out[mode]
            keys += batch["key"]
            labels.append(batch["label"].cpu())
            probs.append(torch.softmax(logits.float(), -1).cpu())
    return {m: (k, torch.cat(l).numpy() if l else np.zeros(0, int), torch.cat(p).numpy() if p else np.zeros((0, len(EMOTIONS))))
            for m, (k, l, p) in out.items()}


def confusion_png(cm: list[list[int]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = np.asarray(cm, dtype=float)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row-normalised")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def attach_to_run(ckpt: dict, checkpoint: str, split: str, metrics: dict) -> None:
    """The metrics, as `{split}/...`, at the checkpoint's step, into the run that wrote the checkpoint:
    RUN/metrics.jsonl and the trackers of its report_to (the same W&B / MLflow run, via RUN/trackers.json)."""
    from avemo.train.trackers import Trackers, parse_report_to
    run = Path(checkpoint).parent
    saved = ckpt["config"]
    tracker = saved.get("tracker") or {}
    trackers = Trackers(run, parse_report_to(saved.get("report_to", "tensorboard,jsonl")),
                        (saved.get("train_split", "train"), saved.get("eval_split", "dev"), split),
                        tracker.get("project", "avemo"), tracker.get("run_name", ""), tracker.get("mlflow_uri", ""))
    record = {f"{split}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")}
    for mode, m in metrics.get("ablation", {}).items():
        if mode != "both":
            record[f"{split}_{mode}_weighted_f1"] = m["weighted_f1"]
    trackers.log(int(ckpt.get("step", 0)), **record)
    trackers.close()


def run_evaluate(cfg: EvalConfig, log=print) -> dict:
    device = resolve_device(cfg.device)
    bf16 = use_bf16(device, cfg.amp)
    if cfg.log_to_run and (storage.is_url(cfg.checkpoint)
                           or not (Path(cfg.checkpoint).parent / "config.yaml").is_file()):
        raise ConfigError(f"log_to_run=true: {cfg.checkpoint} does not sit in a local run folder (no config.yaml "
                          "beside the checkpoint)")
    out = writable_dir(cfg.out, "--out")   # before the work: a file or read-only folder fails now, in one line
    log = tee(log, out / "evaluate.log")
    ckpt = load_checkpoint(cfg.checkpoint, cfg.storage_options)
    model = model_from_checkpoint(ckpt, cfg.checkpoint).to(device)
    data = ckpt["config"]["data"]
    from avemo.shards.manifest import read_build_config
    from avemo.train.sets import require_pitch
    require_pitch(cfg.shards, read_build_config(cfg.shards, cfg.storage_options), model.cfg.pitch)
    split = split_shards(cfg.shards, cfg.split, cfg.corrupt_shards, log_fn=log,
                         hint="set corrupt_shards=skip to evaluate without it", options=cfg.storage_options)
    loader = eval_loader(split.urls, cfg.batch_size, cfg.workers, data["max_frames"], data["max_mel_frames"],
                         n_mels=model.cfg.n_mels, listed=split.listed, pitch=model.cfg.pitch)
    modes = tuple(MODES) if cfg.ablation else ("both",)
    log(f"evaluating {cfg.checkpoint} (epoch {ckpt.get('epoch')}) on {cfg.split}: {split.n_samples} clips, "
        f"{len(split.urls)} shards, {device}")
    with tqdm(loader, total=-(-split.n_samples // cfg.batch_size), desc=f"evaluate {cfg.split}", unit="batch",
              dynamic_ncols=True) as bar:   # closed on Ctrl-C too: no bar redrawn after the error line
        results = predict(model, bar, device, modes, bf16)
    keys, labels, probs = results["both"]
    preds = probs.argmax(1)
    metrics = classification_metrics(labels, preds)
    metrics.update(split=cfg.split, checkpoint=str(cfg.checkpoint), epoch=ckpt.get("epoch"))
    if cfg.ablation:
        metrics["ablation"] = {}
        for mode, (_, mode_labels, mode_probs) in results.items():
            m = classification_metrics(mode_labels, mode_probs.argmax(1))
            metrics["ablation"][mode] = {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}
    columns = {"key": keys, "label": labels.astype(np.int8), "pred": preds.astype(np.int8)}
    columns.update({f"p_{name}": probs[:, i].astype(np.float32) for i, name in enumerate(EMOTIONS)})
    write_table(out / "predictions.parquet", pa.table(columns))
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    confusion_png(metrics["confusion"], out / "confusion.png",
                  f"{cfg.split}: weighted F1 {metrics['weighted_f1']:.3f}, acc {metrics['accuracy']:.3f}")
    log(f"{cfg.split}: weighted_f1={metrics['weighted_f1']:.4f} accuracy={metrics['accuracy']:.4f} "
        f"macro_f1={metrics['macro_f1']:.4f}; wrote {out}")
    if cfg.log_to_run:
        attach_to_run(ckpt, cfg.checkpoint, cfg.split, metrics)
    return metrics
