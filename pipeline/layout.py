"""Where MELD's files are: the official archive layout or a flat train/ dev/ test/ one."""
from __future__ import annotations

from pathlib import Path

from avemo.core.errors import DataError

SPLITS = ("train", "dev", "test")
CSV_NAMES = {s: f"{s}_sent_emo.csv" for s in SPLITS}
# official archive folder names first, then the flat layout
VIDEO_DIRS = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev"),
    "test": ("output_repeated_splits_test", "test"),
}


class LayoutError(DataError):
    pass


def find_csv(root: Path, split: str) -> Path:
    for candidate in (root / CSV_NAMES[split], root / split / CSV_NAMES[split]):
        if candidate.is_file():
            return candidate
    raise LayoutError(f"no {CSV_NAMES[split]} under {root} (expected MELD's layout: "
                      f"{CSV_NAMES[split]} beside {VIDEO_DIRS[split][0]}/)")


def find_video_dir(root: Path, split: str) -> Path | None:
    for name in VIDEO_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def video_path(video_dir: Path | None, dialogue_id: int, utterance_id: int) -> Path | None:
    if video_dir is None:
        return None
    return video_dir / f"dia{dialogue_id}_utt{utterance_id}.mp4"


def parse_splits(text: str) -> tuple[str, ...]:
    splits = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise LayoutError(f"--splits must be a comma list of {', '.join(SPLITS)}; got {text!r}")
    return splits
