"""What `train --resume` needs of a checkpoint beyond the model (its format: avemo.model.checkpoint): the RNG
states and the sections that restore the optimiser, the schedule and the step."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from avemo.core.errors import CheckpointError


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
