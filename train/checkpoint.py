"""Where a run starts from a checkpoint (the file format: avemo.model.checkpoint): `--resume` (RNG states,
the sections that restore the optimiser, the schedule and the step, the settings it must share with the
checkpoint) and `--init-from` (another run's model weights, nothing else)."""
from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch

from avemo.core.errors import CheckpointError
from avemo.model.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.train.config import TrainConfig


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


RESUME_SECTIONS = ("optimizer", "scheduler", "rng", "epoch", "step", "best")   # what `train --resume` needs


def require_sections(ckpt: dict, path: str | Path, names=RESUME_SECTIONS) -> None:
    missing = [name for name in names if name not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it cannot be resumed from")


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


def check_resume(ckpt: dict, path: Path, cfg: TrainConfig) -> None:
    """RUN/last.pt can be resumed with these settings: one line before any work if not."""
    require_sections(ckpt, path)
    model_from_checkpoint(ckpt, path)   # its weights fit its own config: one line, not a traceback
    check_same_sets(ckpt["config"], cfg, path)   # other sets first: their settings differ as a result
    changed = resume_mismatches(ckpt["config"], cfg)
    if changed:
        raise CheckpointError(f"cannot resume from {path}: it was trained with other settings "
                              f"({', '.join(changed)}); resume with its settings or start a new run")


def replan_schedule(optimizer, scheduler) -> None:
    """After a resume that changed optim.epochs: the restored optimiser holds the old plan's LR for the next
    step; set every group to the new plan's LR at the current step (LambdaLR's own formula)."""
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def init_source(cfg: TrainConfig) -> tuple[dict, torch.nn.Module]:
    """--init-from: the checkpoint and its model, checked before any work (a wrong path or other shapes is
    one line before the run folder is touched). Its mel statistics come with its weights."""
    ckpt = load_checkpoint(cfg.init_from, cfg.data.storage_options)
    source = model_from_checkpoint(ckpt, cfg.init_from)     # its weights fit its own config: one line if not
    saved, now = asdict(source.cfg), asdict(cfg.model)
    shape = [k for k in ("n_mels", "audio_channels", "hidden", "fusion_dim", "pitch", "audio_freq") if saved[k] != now[k]]
    if shape:
        raise CheckpointError(f"cannot start from {cfg.init_from}: its model has other shapes ("
                              + ", ".join(f"model.{k} {saved[k]!r} vs {now[k]!r}" for k in shape) + ")")
    return ckpt, source


def init_weights(model, cfg: TrainConfig, source: tuple[dict, torch.nn.Module], say) -> None:
    """A new run starts from another run's model weights (its optimiser and step are not taken)."""
    ckpt, net = source
    result = model.load_state_dict(net.state_dict(), strict=False)
    other = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("voice_stats.")]
    if other:   # model.voice_stats may differ (the new run fits its own); every other weight must match
        model.load_state_dict(net.state_dict())   # strict: raises naming them
    trained_on = ckpt["config"].get("shards") or []
    trained_on = [trained_on] if isinstance(trained_on, str) else trained_on   # checkpoints before multi-set
    say(f"model initialised from {cfg.init_from} (epoch {ckpt.get('epoch')}, trained on "
        f"{', '.join(map(str, trained_on)) or 'unknown shards'})")
