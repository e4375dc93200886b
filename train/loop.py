"""`avemo train`: a lean streaming loop over shards. Works unchanged under `torchrun` (DDP).

Writes RUN/config.yaml (the resolved settings: a `--config` that reproduces the run), RUN/last.pt (every
epoch) and RUN/best.pt (by dev weighted F1), both atomic, RUN/train.log, and the trackers of `report_to`
(RUN/metrics.jsonl, RUN/tb/, W&B, MLflow; train/trackers.py). A new run refuses a non-empty RUN unless
`overwrite` (train/runs.py). `--resume` restores model, optimiser, scheduler, RNG and step from RUN/last.pt
and continues exactly where it stopped; it may raise optim.epochs, and then the cosine schedule is
re-planned over the new total (the LR at step s is what a run started with the new epochs has at step s).
"""
from __future__ import annotations

import contextlib
import functools

import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from avemo.core.errors import ConfigError, TrainingError
from avemo.core.logfile import tee
from avemo.core.memory import allocator_in_use, keep_heap
from avemo.core.paths import writable_dir
from avemo.model.checkpoint import load_checkpoint, save_checkpoint
from avemo.model.net import VoiceStats, build_model, count_parameters, flops_per_clip
from avemo.train.checkpoint import (check_resume, check_same_sets, init_source, init_weights, replan_schedule,
                                    rng_state, set_rng_state)
from avemo.train.config import OptimConfig, TrainConfig
from avemo.train.data import SharedEpoch, SplitShards, eval_loader, mix_weights, mixed_label_counts, mixed_train_loader
from avemo.train.distributed import on_rank0, setup_distributed
from avemo.train.evaluate import predict, to_device, use_bf16
from avemo.train.metrics import classification_metrics
from avemo.train.runs import check_shards_hash, flat_config, manifest_sha256, prepare_run_folder, write_run_config
from avemo.train.sets import mel_statistics, prepare_data, set_names
from avemo.train.trackers import Trackers, check_available, parse_report_to
from avemo.train.voice_stats import fit_voice_stats


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


def make_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int):
    """Linear warmup, then a cosine to 0 over optim.epochs x steps_per_epoch steps: the steps the training
    loader yields per epoch (train.data.epoch_steps), so the plan ends on the last batch."""
    total = steps_per_epoch * optim.epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, max(1, int(optim.warmup_epochs * steps_per_epoch))))


def train_step(net, optimizer, scheduler, batch: dict, optim: OptimConfig, weights: torch.Tensor | None = None,
               autocast=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step: forward (under `autocast`), cross-entropy with class `weights` and
    optim.label_smoothing (a mixup batch: each clip's two labels weighted lam, 1 - lam), backward, clip to
    optim.grad_clip, AdamW, LR schedule (when a scheduler is given).
    -> (loss, logits, grad_norm) as device tensors: nothing here waits for the device."""
    with autocast or nullcontext():
        logits = net(batch["faces"], batch["face_mask"], batch["mel"], batch["mel_mask"])
    loss = F.cross_entropy(logits.float(), batch["label"], weight=weights, label_smoothing=optim.label_smoothing)
    if "mix_lam" in batch:   # a mixup batch (train/augment.py mixup): each clip's partner's label, weighted
        lam = batch["mix_lam"].to(loss.dtype)
        partner = F.cross_entropy(logits.float(), batch["label"][batch["mix_index"]], weight=weights,
                                  label_smoothing=optim.label_smoothing)
        loss = lam * loss + (1 - lam) * partner
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), optim.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss, logits, grad_norm


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
                                   cfg.data.max_mel_frames, n_mels=cfg.model.n_mels, listed=split.listed,
                                   pitch=cfg.model.pitch)
    _, labels, probs = predict(model, loader, device, bf16=use_bf16(device, cfg.amp))["both"]
    return classification_metrics(labels, probs.argmax(1))


# ---- the phases of a run: prepare -> stream -> build the trainer -> (train, evaluate, save) per epoch ------

@dataclass
class Run:
    """What set-up resolves once and every later phase reads: this process's place, the run folder, the
    verified data, and where the weights start (RUN/last.pt of a resume, --init-from's model)."""
    cfg: TrainConfig                    # shards_sha256 resolved: RUN/config.yaml names the exact data
    rank: int
    world: int
    device: torch.device
    folder: Path
    say: Callable[..., None]            # rank 0: the log, also into RUN/train.log; other ranks: silent
    resume_from: dict | None            # RUN/last.pt on --resume
    init: tuple[dict, torch.nn.Module] | None   # --init-from: its checkpoint and model
    train_splits: list[SplitShards]
    eval_splits: list[SplitShards | None]   # None: a later set without an eval split (trained on, not scored)
    build_config: dict                  # the first set's build settings: every checkpoint carries them
    names: list[str]                    # a metric name per set (dev_NAME_weighted_f1)

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Stream:
    """The training batches, built once (their workers persist across epochs; the epoch reaches them through
    `epoch`): `steps` batches per epoch on each rank, the number the LR schedule is planned over."""
    loader: Any
    steps: int
    epoch: SharedEpoch


@dataclass
class Trainer:
    model: torch.nn.Module              # the bare model (checkpoints, evaluation)
    net: torch.nn.Module                # what steps: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any
    weights: torch.Tensor | None        # the loss's class weights
    autocast: Any
    progress: dict                      # epoch, step, best: saved in every checkpoint
    size: dict                          # model/parameters, model/gflops_per_clip (rank 0; {} elsewhere)
    ema: AveragedModel | None = None    # optim.ema_decay: the weights' moving average, updated every step

    @property
    def scored(self) -> torch.nn.Module:
        """The weights for use: scored on dev, picking best.pt, the checkpoints' `model` (the EMA where on)."""
        return self.model if self.ema is None else self.ema.module


def ema_decay_at(decay: float, updates: torch.Tensor) -> torch.Tensor:
    """The decay of the EMA's update number `updates` (1 = the first after the copy; a float tensor, on the
    device: no wait for it per step): min(decay, (1 + n) / (10 + n)), the usual warm-up (timm's ModelEmaV2,
    TF's ExponentialMovingAverage num_updates), so a short run's average is not dominated by its first,
    untrained weights (with a fixed 0.999, 0.999^n of them)."""
    return torch.clamp((1 + updates) / (10 + updates), max=decay)


def ema_avg_fn(decay: float):
    """AveragedModel's multi_avg_fn: float tensors lerp towards the trained ones at ema_decay_at(decay, n);
    integer buffers (BatchNorm's num_batches_tracked) are copied: an average of a counter means nothing."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], trained: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            weight = 1.0 - ema_decay_at(decay, n_averaged.to(averaged[0].dtype))
            # a 0-dim tensor weight: accepted at run time (tests/test_ema.py), missing from torch's stubs
            torch._foreach_lerp_(averaged, trained, weight)  # type: ignore[call-overload]
        else:
            torch._foreach_copy_(averaged, trained)
    return update


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s parameters and buffers (BatchNorm statistics included), or
    None for decay 0. torch's AveragedModel: its first update copies the weights, later ones move towards them
    (ema_avg_fn)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=ema_avg_fn(decay), use_buffers=True)


def resolve_hashes(cfg: TrainConfig) -> TrainConfig:
    """cfg with each set's manifest sha256 (checked against shards_sha256 where that names one)."""
    expected = cfg.shards_sha256.split(",") if cfg.shards_sha256 else [""] * len(cfg.shards)
    shas = [on_rank0(manifest_sha256, shards) for shards in cfg.shards]
    for want, sha, shards in zip(expected, shas, cfg.shards):
        check_shards_hash(want, sha, shards)
    resolved = [sha or want for sha, want in zip(shas, expected)]
    return replace(cfg, shards_sha256=",".join(resolved) if any(resolved) else "")


def prepare(cfg: TrainConfig, resume: bool, log, overwrite: bool) -> Run:
    """Every check that can fail before the work, then the run folder and the data: a bad setting is one line
    before anything is written; rank 0 hashes the shards, the other ranks receive its results."""
    rank, world, device = setup_distributed(cfg.device, cfg.dist_timeout_min)
    check_available(parse_report_to(cfg.report_to))
    if device.type == "cpu" and allocator_in_use() == "glibc":
        keep_heap()  # 2x faster CPU steps: activations are not page-faulted in again every step (avemo/memory.py)
    say = log if rank == 0 else (lambda *a, **k: None)
    folder = Path(cfg.run)
    last = folder / "last.pt"
    if rank == 0:
        writable_dir(folder, "--run")   # a file there, or a read-only folder: one line now, not after an epoch
    ckpt = load_checkpoint(last) if resume and last.is_file() else None
    if ckpt is not None:
        check_resume(ckpt, last, cfg)
    init = init_source(cfg) if cfg.init_from and ckpt is None else None   # a resume takes RUN/last.pt instead
    if cfg.shards_sha256 and len(cfg.shards_sha256.split(",")) != len(cfg.shards):
        raise ConfigError(f"shards_sha256 lists {len(cfg.shards_sha256.split(','))} hash(es) for "
                          f"{len(cfg.shards)} --shards set(s)")
    on_rank0(prepare_run_folder, folder, resume, overwrite, say)
    if rank == 0:
        say = tee(say, folder / "train.log")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    train_splits, eval_splits, build_config = on_rank0(prepare_data, cfg, say)
    cfg = resolve_hashes(cfg)
    if ckpt is not None:
        check_same_sets(ckpt["config"], cfg, last)
    if rank == 0:
        write_run_config(folder, cfg, world, str(device))
    return Run(cfg, rank, world, device, folder, say, ckpt, init, train_splits, eval_splits, build_config,
               set_names(list(cfg.shards)))


def train_stream(run: Run) -> Stream:
    cfg = run.cfg
    epoch = SharedEpoch(run.resume_from["epoch"] if run.resume_from else 0)
    loader, steps = mixed_train_loader(run.train_splits, cfg.data, cfg.augment, epoch, cfg.seed, run.world,
                                       n_mels=cfg.model.n_mels, pitch=cfg.model.pitch)
    return Stream(loader, steps, epoch)


def build_trainer(run: Run, steps_per_epoch: int) -> Trainer:
    """The model (new, from --init-from, or RUN/last.pt's), its optimiser and LR schedule (restored on a
    resume, with the RNG and the progress), wrapped for DDP / torch.compile."""
    cfg, say, ckpt = run.cfg, run.say, run.resume_from
    model = build_model(cfg.model, log=say)
    if run.init is not None:
        init_weights(model, cfg, run.init, say)
    elif ckpt is None:
        model.audio.mel_mean, model.audio.mel_std = on_rank0(mel_statistics, [s.urls for s in run.train_splits], cfg)
    else:   # with an EMA, `model` holds the averaged weights and `train_model` the ones being trained
        model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    if model.voice_stats is not None and ckpt is None:    # a new run (--init-from too: its own train voices)
        weigh = functools.partial(class_weights, mode=cfg.imbalance)
        fitted = on_rank0(fit_voice_stats, run.train_splits, cfg, weigh, say)
        # none fitted: an unfitted one (no vote), not the --init-from source's
        model.voice_stats.load_state_dict(fitted if fitted is not None else VoiceStats(cfg.model.n_mels).state_dict())
    model.to(run.device)
    ema = make_ema(model, cfg.optim.ema_decay)
    if ema is not None and ckpt is not None:
        ema.module.load_state_dict(ckpt["model"])
        ema.n_averaged.fill_(int(ckpt.get("ema_updates", 1)))
    size: dict = {}
    if run.main:
        flops = flops_per_clip(model, cfg.data.max_frames)   # dummy inputs on the model's device
        size = {"model/parameters": count_parameters(model), "model/gflops_per_clip": round(flops / 1e9, 3)}
        say(f"model: {count_parameters(model) / 1e6:.2f} M parameters, {flops / 1e9:.2f} GFLOPs per clip "
            f"({cfg.data.max_frames} frames)")
    weights = class_weights(mixed_label_counts(run.train_splits, mix_weights(run.train_splits, cfg.data.weights)),
                            cfg.imbalance)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_schedule(optimizer, cfg.optim, steps_per_epoch)
    progress = {"epoch": 0, "step": 0, "best": -1.0}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["config"]["optim"]["epochs"] != cfg.optim.epochs:
            replan_schedule(optimizer, scheduler)
            say(f"optim.epochs {ckpt['config']['optim']['epochs']} -> {cfg.optim.epochs}: the cosine schedule "
                f"is re-planned over {steps_per_epoch * cfg.optim.epochs} steps (LR now {scheduler.get_last_lr()[0]:.3g})")
        progress = {k: ckpt[k] for k in ("epoch", "step", "best")}
        set_rng_state(ckpt["rng"])
        say(f"resumed from {run.folder / 'last.pt'}: epoch {progress['epoch']}, step {progress['step']}")
    device = run.device
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if run.world > 1 else model
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(device, cfg.amp) else nullcontext()
    return Trainer(model, net, optimizer, scheduler, None if weights is None else weights.to(device), autocast,
                   progress, size, ema)


def describe(run: Run, trainer: Trainer, stream: Stream) -> None:
    splits, weights = run.train_splits, trainer.weights
    if run.cfg.allocator == "jemalloc" and allocator_in_use() != "jemalloc":
        run.say("warning: allocator=jemalloc, but this process runs on glibc's malloc: only the `avemo train` "
                "command starts itself on jemalloc; elsewhere start Python with LD_PRELOAD=libjemalloc.so.2")
    run.say(f"training on {run.device} x{run.world}: {sum(s.n_samples for s in splits)} clips, {stream.steps} "
            f"steps/epoch, {sum(len(s.urls) for s in splits)} shards; class weights "
            f"{None if weights is None else [round(w, 3) for w in weights.tolist()]}; malloc: {allocator_in_use()}")
    if len(splits) > 1:
        probs = mix_weights(splits, run.cfg.data.weights)
        run.say("shard sets: " + "; ".join(f"{n} {s.n_samples} train clips, p={p:.3f}"
                                           for n, s, p in zip(run.names, splits, probs)))


def open_trackers(run: Run, resume_step: int | None) -> Trackers:
    cfg = run.cfg
    return Trackers(run.folder, parse_report_to(cfg.report_to), (cfg.train_split, cfg.eval_split, "test"),
                    cfg.tracker.project, cfg.tracker.run_name, cfg.tracker.mlflow_uri, resume_step, flat_config(cfg))


def dev_loaders(run: Run) -> list:
    """Rank 0's loaders of each set's eval split, built once for every epoch's scoring. Their workers are forked
    for each scoring and exit after it: persistent ones, forked once after the first epoch, kept a
    copy-on-write snapshot of the trainer's heap as every later step rewrote it (peak memory 2.99 vs 2.49 GB
    PSS over 3 epochs of the real recipe, at the same speed: bench/results/train_memory_devloader.md)."""
    cfg = run.cfg
    return [eval_loader(split.urls, cfg.data.batch_size, min(2 if i == 0 else 1, cfg.data.workers),
                        cfg.data.max_frames, cfg.data.max_mel_frames, persistent=False, n_mels=cfg.model.n_mels,
                        listed=split.listed, pitch=cfg.model.pitch)
            if run.main and split is not None else None for i, split in enumerate(run.eval_splits)]


def train_epoch(run: Run, trainer: Trainer, stream: Stream, epoch: int, logger: Trackers | None) -> dict:
    """One pass of `stream.steps` batches -> the epoch's record (loss, accuracy, speed); stops the run on an
    epoch that trained on nothing or diverged (check_epoch), before anything is saved."""
    cfg, t, progress = run.cfg, trainer, trainer.progress
    t.net.train()
    stream.epoch.set_value(epoch)
    # running sums stay on the device: reading them (.item()) waits for the device, so that happens only
    # every log_every steps (rank 0) and at the end of the epoch
    seen, t0 = 0, time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    # `with`: the bar is closed however the epoch ends; a bar left open by Ctrl-C is redrawn when it is garbage
    # collected, after the interrupt's advice, as the last line on the terminal
    with tqdm(stream.loader, total=stream.steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
              disable=not run.main, dynamic_ncols=True) as bar:
        for batch in bar:
            batch = to_device(batch, run.device)
            loss, logits, grad_norm = train_step(t.net, t.optimizer, t.scheduler, batch, cfg.optim, t.weights,
                                                 t.autocast)
            if t.ema is not None:
                t.ema.update_parameters(t.model)
            progress["step"] += 1
            n = batch["label"].shape[0]
            seen += n
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == batch["label"]).sum()
            if logger is not None and progress["step"] % cfg.log_every == 0:
                step_loss, norm, loss_total, n_correct = torch.stack(
                    [loss.detach().double(), grad_norm.detach().double(), loss_sum, correct.double()]).tolist()
                logger.log(progress["step"], loss=step_loss, lr=t.scheduler.get_last_lr()[0], grad_norm=norm)
                bar.set_postfix(loss=f"{loss_total / seen:.3f}", acc=f"{n_correct / seen:.3f}")
    elapsed = time.perf_counter() - t0
    loss_total, n_correct = loss_sum.item(), int(correct.item())
    check_epoch(epoch + 1, seen, loss_total)   # before anything is saved: no broken or untrained best.pt
    progress["epoch"] = epoch + 1
    return {"epoch": progress["epoch"], "train_loss": loss_total / max(1, seen),
            "train_acc": n_correct / max(1, seen), "samples_per_s": seen * run.world / max(elapsed, 1e-9)}


def score_sets(run: Run, model: torch.nn.Module, loaders: list, prefix: str) -> dict:
    """`model` on every set's eval split -> {PREFIX_accuracy, ..., PREFIX_NAME_accuracy, ...}; the first
    set's scores are the unnamed ones."""
    cfg = run.cfg
    metrics = evaluate_split(model, run.eval_splits[0], cfg, run.device, loaders[0])
    out = {f"{prefix}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")}
    for i, (name, split) in enumerate(zip(run.names, run.eval_splits)):
        if len(run.names) > 1 and split is not None:
            m = metrics if i == 0 else evaluate_split(model, split, cfg, run.device, loaders[i])
            out.update({f"{prefix}_{name}_{k}": m[k] for k in ("accuracy", "weighted_f1")})
    return out


def evaluate_epoch(run: Run, trainer: Trainer, loaders: list, record: dict) -> None:
    """Rank 0: every set's eval split scored into `record`; the first set's weighted F1 picks best.pt. With an
    EMA the averaged weights are the ones scored (DEV_...), and the trained weights are scored too (DEV_raw_...):
    the two side by side in one run."""
    cfg, progress = run.cfg, trainer.progress
    record.update(score_sets(run, trainer.scored, loaders, cfg.eval_split))
    if trainer.ema is not None:
        record.update(score_sets(run, trainer.model, loaders, f"{cfg.eval_split}_raw"))
    score = record[f"{cfg.eval_split}_weighted_f1"]
    if score > progress["best"]:
        progress["best"] = score
        record["best"] = True
    record[f"{cfg.eval_split}_best_weighted_f1"] = progress["best"]


def save_epoch(run: Run, trainer: Trainer, record: dict, logger: Trackers | None) -> None:
    """Rank 0: RUN/best.pt (a new best) and RUN/last.pt, then the epoch's record to the trackers and the log."""
    t = trainer
    payload = dict(model=t.scored.state_dict(), optimizer=t.optimizer.state_dict(),
                   scheduler=t.scheduler.state_dict(), rng=rng_state(), config=asdict(run.cfg),
                   build=run.build_config, **t.progress)
    if t.ema is not None:   # `model` is what predict, evaluate, export and --init-from read: the EMA
        payload.update(train_model=t.model.state_dict(), ema_updates=int(t.ema.n_averaged))
    if record.get("best"):   # best.pt first: last.pt never records a best score that no best.pt holds
        save_checkpoint(run.folder / "best.pt", **payload)
    save_checkpoint(run.folder / "last.pt", **payload)
    if logger is not None:
        logger.log(t.progress["step"], **record)
    run.say(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))


def run_train(cfg: TrainConfig, resume: bool = False, log=print, overwrite: bool = False) -> dict:
    try:
        state = _train(cfg, resume, log, overwrite)
    except BaseException:
        # a rank that stops on an error leaves its gloo group too: exiting with gloo's threads still alive,
        # libstdc++ aborts the process ("terminate called without an active exception", SIGABRT) and torchrun
        # reports that signal instead of the rank's one-line error and exit code. Not NCCL: destroying it while
        # the other ranks wait in a collective can hang. Nothing here may replace the rank's own error.
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return state


def _train(cfg: TrainConfig, resume: bool, log, overwrite: bool) -> dict:
    run = prepare(cfg, resume, log, overwrite)
    cfg = run.cfg
    stream = train_stream(run)               # first: the schedule is planned over the batches it yields
    trainer = build_trainer(run, stream.steps)
    end_epoch = cfg.optim.epochs
    if cfg.stop_after_epochs:
        end_epoch = min(end_epoch, trainer.progress["epoch"] + cfg.stop_after_epochs)
    logger: Trackers | None = None
    try:   # from the moment a tracker run exists: whatever stops the run ends it KILLED / FAILED, not RUNNING
        if run.main:
            logger = open_trackers(run, trainer.progress["step"] if run.resume_from else None)
            if run.resume_from is None:
                logger.params(flat_config(cfg), trainer.size)   # once per run: hyper-parameters, model size
        describe(run, trainer, stream)
        loaders = dev_loaders(run)
        for epoch in range(trainer.progress["epoch"], end_epoch):
            record = train_epoch(run, trainer, stream, epoch, logger)
            if run.main:
                if record["epoch"] % cfg.eval_every == 0 or record["epoch"] == cfg.optim.epochs:
                    evaluate_epoch(run, trainer, loaders, record)
                save_epoch(run, trainer, record, logger)
            if run.world > 1:
                dist.barrier()
    except BaseException as exc:   # Ctrl-C, a kill signal turned exception, a diverged loss, a broken pipe
        if logger is not None:
            logger.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if logger is not None:
        logger.close()
    return trainer.progress
