"""`avemo train`: a lean streaming loop over shards. Works unchanged under `torchrun` (DDP).

Writes RUN/config.yaml (the resolved settings: a `--config` that reproduces the run), RUN/last.pt (every
epoch) and RUN/best.pt (by dev weighted F1), both atomic, RUN/train.log, and the trackers of `report_to`
(RUN/metrics.jsonl, RUN/tb/, W&B, MLflow; train/trackers.py). A new run refuses a non-empty RUN unless
`overwrite` (train/runs.py). `--resume` restores model, optimiser, scheduler, RNG and step from RUN/last.pt
and continues exactly where it stopped; it may raise optim.epochs, and then the cosine schedule is
re-planned over the new total (the LR at step s is what a run started with the new epochs has at step s).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import random
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from avemo.core.config import resolve_device
from avemo.core.errors import CheckpointError, ConfigError, TrainingError
from avemo.core.paths import writable_dir
from avemo.core.memory import keep_heap
from avemo.model.net import build_model, count_parameters, flops_per_clip
from avemo.core.logfile import tee
from avemo.shards.manifest import read_build_config
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from avemo.train.checkpoint import require_sections, rng_state, set_rng_state
from avemo.train.config import OptimConfig, TrainConfig
from avemo.train.data import (EmptySplitError, SharedEpoch, SplitShards, eval_loader, mix_weights, mixed_label_counts, mixed_train_loader,
                              split_shards)
from avemo.train.evaluate import predict, to_device, use_bf16
from avemo.train.metrics import classification_metrics
from avemo.train.runs import check_shards_hash, flat_config, manifest_sha256, prepare_run_folder, write_run_config
from avemo.train.trackers import Trackers, check_available, parse_report_to


def setup_distributed(device_name: str, timeout_min: float = 60.0) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # the other ranks wait at a barrier while rank 0 hashes the shards and scores every set's dev split:
        # NCCL's 10-minute default would kill a run with large or several dev sets
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    return rank, world, device


def on_rank0(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 alone, its result sent to every rank (dist.broadcast_object_list); an
    exception there is raised on every rank, so none waits forever. Without a process group: a plain call."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn(*args, **kwargs))
        except Exception as exc:
            error = exc
            try:
                pickle.dumps(exc)
                box[0] = (False, exc)
            except Exception:
                box[0] = (False, RuntimeError(str(exc)))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error                          # rank 0: its own exception, with its traceback
    ok, value = box[0]
    if not ok:
        raise value
    return value


def class_weights(counts: Sequence[float], mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    c = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    w = c.sum() / (len(counts) * c)                 # "balanced": inverse frequency
    if mode == "sqrt_weighted_loss":
        w = w.sqrt()
    return w / (w * c).sum() * c.sum()              # keep the average weight per sample at 1


def lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[str, list] = {"decay": [], "no_decay": [], "face_decay": [], "face_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = "face_" if name.startswith("face.cnn.") else ""
        groups[prefix + ("no_decay" if p.ndim <= 1 else "decay")].append(p)
    o = cfg.optim
    spec = [("decay", o.lr, o.weight_decay), ("no_decay", o.lr, 0.0),
            ("face_decay", o.lr * o.face_lr_mult, o.weight_decay), ("face_no_decay", o.lr * o.face_lr_mult, 0.0)]
    return torch.optim.AdamW([{"params": groups[k], "lr": lr, "weight_decay": wd} for k, lr, wd in spec if groups[k]],
                             lr=o.lr, fused=torch.cuda.is_available())


@torch.no_grad()
def mel_statistics(urls: list[str] | list[list[str]], cfg: TrainConfig,
                   max_batches: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean/std over valid frames of the first train samples of each set (model buffers)."""
    total = torch.zeros(cfg.model.n_mels, dtype=torch.float64)
    sq = torch.zeros_like(total)
    n = 0
    for set_urls in (urls if urls and isinstance(urls[0], list) else [urls]):
        for i, batch in enumerate(eval_loader(set_urls, cfg.data.batch_size, 0, cfg.data.max_frames,  # type: ignore[arg-type]
                                              cfg.data.max_mel_frames, n_mels=cfg.model.n_mels)):
            m = batch["mel_mask"].unsqueeze(1)
            total += (batch["mel"] * m).sum((0, 2)).double()
            sq += (batch["mel"] ** 2 * m).sum((0, 2)).double()
            n += int(m.sum())
            if i + 1 >= max_batches:
                break
    if n == 0:
        return torch.zeros(cfg.model.n_mels), torch.ones(cfg.model.n_mels)
    mean = total / n
    return mean.float(), (sq / n - mean ** 2).clamp(min=1e-4).sqrt().float()


def train_step(net, optimizer, scheduler, batch: dict, optim: OptimConfig, weights: torch.Tensor | None = None,
               autocast=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step: forward (under `autocast`), cross-entropy with class `weights` and
    optim.label_smoothing, backward, clip to optim.grad_clip, AdamW, LR schedule (when a scheduler is given).
    -> (loss, logits, grad_norm) as device tensors: nothing here waits for the device."""
    with autocast or nullcontext():
        logits = net(batch["faces"], batch["face_mask"], batch["mel"], batch["mel_mask"])
    loss = F.cross_entropy(logits.float(), batch["label"], weight=weights, label_smoothing=optim.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), optim.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss, logits, grad_norm


# settings a resumed run must share with its checkpoint: the weights' shapes, and what the restored optimiser
# and LR schedule were computed for (model.face_weights only seeds a new run: a resume loads every weight)
RESUME_KEYS = [("data", "batch_size"), ("data", "weights"), ("optim", None), ("model", None)]
RESUME_FREE = {("model", "face_weights"), ("optim", "epochs")}   # epochs: the schedule is re-planned


def resume_mismatches(saved: dict, cfg: TrainConfig) -> list[str]:
    """`section.key checkpoint -> now` for each RESUME_KEYS setting that differs between the checkpoint's
    config and this run's (a key the checkpoint lacks counts as its default)."""
    now, defaults = asdict(cfg), asdict(TrainConfig())
    changed = []
    for section, only in RESUME_KEYS:
        old_section = saved.get(section) or {}
        for key in ([only] if only else now[section]):
            if (section, key) in RESUME_FREE:
                continue
            old = old_section.get(key, defaults[section][key])
            if old != now[section][key]:
                changed.append(f"{section}.{key} {old!r} -> {now[section][key]!r}")
    return changed


def check_same_sets(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """A resume trains on the shard sets of its checkpoint, in the same order (the mix, its seeds, the class
    weights, the steps per epoch and the set that picks best.pt all follow from them)."""
    old = saved.get("shards") or []
    old = [old] if isinstance(old, str) else list(old)
    old_sha = str(saved.get("shards_sha256") or "").split(",")
    new_sha = cfg.shards_sha256.split(",")
    changed = [str(new) for new, a, b in zip(cfg.shards, old_sha, new_sha) if a and b and a != b]
    if len(old) != len(cfg.shards) or changed:
        what = (f"the data of --shards {', '.join(changed)} changed since (its manifest's sha256 differs)" if
                len(old) == len(cfg.shards) else f"it was trained on {len(old)} shard set(s): {', '.join(map(str, old))}")
        raise CheckpointError(f"cannot resume from {path}: {what}; resume with the same --shards in the same "
                              f"order, or start a new run from its weights with --init-from {path}")


def open_trackers(cfg: TrainConfig, run: Path, resume_step: int | None) -> Trackers:
    return Trackers(run, parse_report_to(cfg.report_to), (cfg.train_split, cfg.eval_split, "test"),
                    cfg.tracker.project, cfg.tracker.run_name, cfg.tracker.mlflow_uri, resume_step, flat_config(cfg))


def replan_schedule(optimizer, scheduler) -> None:
    """After a resume that changed optim.epochs: the restored optimiser holds the old plan's LR for the next
    step; set every group to the new plan's LR at the current step (LambdaLR's own formula)."""
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def check_epoch(epoch: int, seen: int, loss_total: float) -> None:
    """Stop the run (one line, exit 2, nothing saved for this epoch) when the epoch trained on nothing or its
    loss went non-finite: either way the weights are untrained or broken. A non-finite loss stops the run
    rather than skipping its batch: NaN/inf inputs are refused before (build and decode_sample), so one here
    means the settings diverge, and the steps before it may already have damaged the weights."""
    if seen == 0:
        raise TrainingError(f"epoch {epoch} trained on 0 samples: every sample was unreadable or skipped "
                            f"(see the warnings above); nothing saved")
    if not math.isfinite(loss_total):
        raise TrainingError(f"training diverged: the loss of epoch {epoch} is {loss_total} (non-finite); "
                            f"nothing saved for this epoch (lower optim.lr or set optim.grad_clip)")


def evaluate_split(model, split, cfg: TrainConfig, device, loader=None) -> dict:
    """split: SplitShards (its urls and the keys the manifest lists)."""
    loader = loader or eval_loader(split.urls, cfg.data.batch_size, min(2, cfg.data.workers), cfg.data.max_frames,
                                   cfg.data.max_mel_frames, n_mels=cfg.model.n_mels, listed=split.listed)
    _, labels, probs = predict(model, loader, device, bf16=use_bf16(device, cfg.amp))["both"]
    return classification_metrics(labels, probs.argmax(1))


# build settings that shape the model's input: every set trained on together must share them
AUDIO_KEYS = ("n_mels", "n_fft", "hop_length", "sample_rate")


def set_names(shards: list[str]) -> list[str]:
    """A short name per shard set for its metrics (dev_NAME_weighted_f1): the folder's name, made unique."""
    names: list[str] = []
    for i, url in enumerate(shards):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(url).rstrip("/").rsplit("/", 1)[-1]) or f"set{i}"
        name = f"{name}_set" if name in ("best", "set") else name    # dev_best_weighted_f1 is the run's best
        names.append(name if name not in names else f"{name}_{i}")
    return names


def prepare_data(cfg: TrainConfig, log) -> tuple[list, list, dict]:
    """([train split per set], [eval split per set, None where a later set has none], build config of the
    first set): every shard of both splits hashed against its manifest; sets whose audio settings differ
    are refused (one model reads them all)."""
    options = cfg.data.storage_options    # a --shards may be a URL (avemo.core.storage)
    trains: list[SplitShards] = []
    evals: list[SplitShards | None] = []
    builds: list[dict] = []
    for i, shards in enumerate(cfg.shards):
        trains.append(split_shards(shards, cfg.train_split, cfg.data.corrupt_shards, log_fn=log, options=options))
        try:
            evals.append(split_shards(shards, cfg.eval_split, cfg.data.corrupt_shards, log_fn=log, options=options))
        except EmptySplitError:
            if i == 0:
                raise
            log(f"note: {shards} has no {cfg.eval_split} samples: it is trained on, not scored")
            evals.append(None)
        builds.append(read_build_config(shards, options))   # the first travels in every checkpoint (predict)
    audio = [{k: (b.get("audio") or {}).get(k) for k in AUDIO_KEYS} for b in builds]
    for shards, settings in zip(cfg.shards[1:], audio[1:]):
        differ = [f"{k} {audio[0][k]} vs {settings[k]}" for k in AUDIO_KEYS
                  if None not in (audio[0][k], settings[k]) and audio[0][k] != settings[k]]
        if differ:
            raise ConfigError(f"--shards {shards} was built with other audio settings than {cfg.shards[0]} "
                              f"({', '.join(differ)}): rebuild it with the same audio: section")
    return trains, evals, builds[0]


def init_source(cfg: TrainConfig) -> tuple[dict, torch.nn.Module]:
    """--init-from: the checkpoint and its model, checked before any work (a wrong path or other shapes is
    one line before the run folder is touched). Its mel statistics come with its weights."""
    ckpt = load_checkpoint(cfg.init_from, cfg.data.storage_options)
    source = model_from_checkpoint(ckpt, cfg.init_from)     # its weights fit its own config: one line if not
    saved, now = asdict(source.cfg), asdict(cfg.model)
    shape = [k for k in ("n_mels", "audio_channels", "hidden", "fusion_dim") if saved[k] != now[k]]
    if shape:
        raise CheckpointError(f"cannot start from {cfg.init_from}: its model has other shapes ("
                              + ", ".join(f"model.{k} {saved[k]!r} vs {now[k]!r}" for k in shape) + ")")
    return ckpt, source


def init_weights(model, cfg: TrainConfig, source: tuple[dict, torch.nn.Module], say) -> None:
    """A new run starts from another run's model weights (its optimiser and step are not taken)."""
    ckpt, net = source
    model.load_state_dict(net.state_dict())
    trained_on = ckpt["config"].get("shards") or []
    trained_on = [trained_on] if isinstance(trained_on, str) else trained_on   # checkpoints before multi-set
    say(f"model initialised from {cfg.init_from} (epoch {ckpt.get('epoch')}, trained on "
        f"{', '.join(map(str, trained_on)) or 'unknown shards'})")


def run_train(cfg: TrainConfig, resume: bool = False, log=print, overwrite: bool = False) -> dict:
    rank, world, device = setup_distributed(cfg.device, cfg.dist_timeout_min)
    check_available(parse_report_to(cfg.report_to))
    if device.type == "cpu":
        keep_heap()  # 2x faster CPU steps: activations are not page-faulted in again every step (avemo/memory.py)
    main_rank = rank == 0
    say = log if main_rank else (lambda *a, **k: None)
    run = Path(cfg.run)
    ckpt_path = run / "last.pt"
    if main_rank:
        writable_dir(run, "--run")   # a file there, or a read-only folder: one line now, not after an epoch
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if ckpt is not None:
        require_sections(ckpt, ckpt_path)
        model_from_checkpoint(ckpt, ckpt_path)   # its weights fit its own config: one line, not a traceback
        check_same_sets(ckpt["config"], cfg, ckpt_path)   # other sets first: their settings differ as a result
        changed = resume_mismatches(ckpt["config"], cfg)
        if changed:
            raise CheckpointError(f"cannot resume from {ckpt_path}: it was trained with other settings "
                                  f"({', '.join(changed)}); resume with its settings or start a new run")
    init = init_source(cfg) if cfg.init_from and ckpt is None else None   # a resume takes RUN/last.pt instead
    if len(cfg.shards_sha256.split(",")) != len(cfg.shards) and cfg.shards_sha256:
        raise ConfigError(f"shards_sha256 lists {len(cfg.shards_sha256.split(','))} hash(es) for "
                          f"{len(cfg.shards)} --shards set(s)")
    on_rank0(prepare_run_folder, run, resume, overwrite, say)
    if main_rank:
        say = tee(say, run / "train.log")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # shard hashing and statistics: rank 0 does them, the other ranks receive its results
    train_splits, eval_splits, build_config = on_rank0(prepare_data, cfg, say)
    names = set_names(list(cfg.shards))
    expected = cfg.shards_sha256.split(",") if cfg.shards_sha256 else [""] * len(cfg.shards)
    shas = [on_rank0(manifest_sha256, shards) for shards in cfg.shards]
    for want, sha, shards in zip(expected, shas, cfg.shards):
        check_shards_hash(want, sha, shards)
    resolved = [sha or want for sha, want in zip(shas, expected)]
    cfg = replace(cfg, shards_sha256=",".join(resolved) if any(resolved) else "")  # RUN/config.yaml names the data
    if ckpt is not None:
        check_same_sets(ckpt["config"], cfg, ckpt_path)
    probs = mix_weights(train_splits, cfg.data.weights)
    train_samples = sum(s.n_samples for s in train_splits)
    if main_rank:
        write_run_config(run, cfg, world, str(device))
    model = build_model(cfg.model, log=say)
    state: dict = {"epoch": 0, "step": 0, "best": -1.0}
    if init is not None:
        init_weights(model, cfg, init, say)
    elif ckpt is None:
        model.audio.mel_mean, model.audio.mel_std = on_rank0(mel_statistics, [s.urls for s in train_splits], cfg)
    else:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    if main_rank:
        flops = flops_per_clip(model, cfg.data.max_frames)   # dummy inputs on the model's device
        size = {"model/parameters": count_parameters(model), "model/gflops_per_clip": round(flops / 1e9, 3)}
        say(f"model: {count_parameters(model) / 1e6:.2f} M parameters, {flops / 1e9:.2f} GFLOPs per clip "
            f"({cfg.data.max_frames} frames)")
    weights = class_weights(mixed_label_counts(train_splits, probs), cfg.imbalance)
    weights = weights.to(device) if weights is not None else None
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, train_samples // (cfg.data.batch_size * world))
    total = steps_per_epoch * cfg.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))))
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["config"]["optim"]["epochs"] != cfg.optim.epochs:
            replan_schedule(optimizer, scheduler)
            say(f"optim.epochs {ckpt['config']['optim']['epochs']} -> {cfg.optim.epochs}: the cosine schedule "
                f"is re-planned over {total} steps (LR now {scheduler.get_last_lr()[0]:.3g})")
        state = {k: ckpt[k] for k in ("epoch", "step", "best")}
        set_rng_state(ckpt["rng"])
        say(f"resumed from {ckpt_path}: epoch {state['epoch']}, step {state['step']}")
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    bf16 = use_bf16(device, cfg.amp)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    logger = open_trackers(cfg, run, None if ckpt is None else state["step"]) if main_rank else None
    if logger is not None and ckpt is None:
        logger.params(flat_config(cfg), size)          # once per run: hyper-parameters and model size
    say(f"training on {device} x{world}: {train_samples} clips, {steps_per_epoch} steps/epoch, "
        f"{sum(len(s.urls) for s in train_splits)} shards; class weights "
        f"{None if weights is None else [round(w, 3) for w in weights.tolist()]}")
    if len(train_splits) > 1:
        say("shard sets: " + "; ".join(f"{n} {s.n_samples} train clips, p={p:.3f}"
                                       for n, s, p in zip(names, train_splits, probs)))

    end_epoch = cfg.optim.epochs
    if cfg.stop_after_epochs:
        end_epoch = min(end_epoch, state["epoch"] + cfg.stop_after_epochs)
    # built once: their workers persist across epochs (the epoch number reaches them through SharedEpoch)
    shared_epoch = SharedEpoch(state["epoch"])
    loader, steps = mixed_train_loader(train_splits, cfg.data, cfg.augment, shared_epoch, cfg.seed, world,
                                       n_mels=cfg.model.n_mels)
    dev_loaders = [eval_loader(split.urls, cfg.data.batch_size, min(2 if i == 0 else 1, cfg.data.workers),
                               cfg.data.max_frames, cfg.data.max_mel_frames, persistent=True,
                               n_mels=cfg.model.n_mels, listed=split.listed)
                   if main_rank and split is not None else None for i, split in enumerate(eval_splits)]
    try:
        for epoch in range(state["epoch"], end_epoch):
            net.train()
            shared_epoch.set_value(epoch)
            bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not main_rank,
                       dynamic_ncols=True)
            # running sums stay on the device: reading them (.item()) waits for the device, so that happens
            # only every log_every steps (rank 0) and at the end of the epoch
            seen, t0 = 0, time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for batch in bar:
                batch = to_device(batch, device)
                loss, logits, grad_norm = train_step(net, optimizer, scheduler, batch, cfg.optim, weights, autocast)
                state["step"] += 1
                n = batch["label"].shape[0]
                seen += n
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(1) == batch["label"]).sum()
                if logger is not None and state["step"] % cfg.log_every == 0:
                    step_loss, norm, loss_total, n_correct = torch.stack(
                        [loss.detach().double(), grad_norm.detach().double(), loss_sum, correct.double()]).tolist()
                    logger.log(state["step"], loss=step_loss, lr=scheduler.get_last_lr()[0], grad_norm=norm)
                    bar.set_postfix(loss=f"{loss_total / seen:.3f}", acc=f"{n_correct / seen:.3f}")
            elapsed = time.perf_counter() - t0
            loss_total, n_correct = loss_sum.item(), int(correct.item())
            check_epoch(epoch + 1, seen, loss_total)   # before anything is saved: no broken or untrained best.pt
            state["epoch"] = epoch + 1
            record = {"epoch": state["epoch"], "train_loss": loss_total / max(1, seen),
                      "train_acc": n_correct / max(1, seen), "samples_per_s": seen * world / max(elapsed, 1e-9)}
            if main_rank and (state["epoch"] % cfg.eval_every == 0 or state["epoch"] == cfg.optim.epochs):
                metrics = evaluate_split(model, eval_splits[0], cfg, device, dev_loaders[0])
                record.update({f"{cfg.eval_split}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")})
                for i, (name, split) in enumerate(zip(names, eval_splits)):
                    if len(names) > 1 and split is not None:     # every set scored; the first picks best.pt
                        m = metrics if i == 0 else evaluate_split(model, split, cfg, device, dev_loaders[i])
                        record.update({f"{cfg.eval_split}_{name}_{k}": m[k] for k in ("accuracy", "weighted_f1")})
                if metrics["weighted_f1"] > state["best"]:
                    state["best"] = metrics["weighted_f1"]
                    record["best"] = True
                record[f"{cfg.eval_split}_best_weighted_f1"] = state["best"]
            if main_rank:
                payload = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                               scheduler=scheduler.state_dict(), rng=rng_state(), config=asdict(cfg),
                               build=build_config, **state)
                if record.get("best"):   # best.pt first: last.pt never records a best score that no best.pt holds
                    save_checkpoint(run / "best.pt", **payload)
                save_checkpoint(ckpt_path, **payload)
                if logger is not None:
                    logger.log(state["step"], **record)
                say(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            if world > 1:
                dist.barrier()
    except BaseException as exc:   # Ctrl-C, a kill signal turned exception, a diverged loss: the tracker runs end
        if logger is not None:     # marked KILLED/FAILED, not left RUNNING
            logger.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if logger is not None:
        logger.close()
    if world > 1:
        dist.destroy_process_group()
    return state
