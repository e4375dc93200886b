"""Every command that writes a folder also keeps its log there (RUN/train.log, OUT/build.log, ...)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def tee(log: Callable, path: str | Path) -> Callable:
    """`log` that also appends each line, time-stamped, to `path` (opened per line: a kill loses nothing)."""
    path = Path(path)

    def say(*args, **kwargs) -> None:
        log(*args, **kwargs)
        text = " ".join(str(a) for a in args)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{stamp} {line}\n" for line in text.splitlines() or [""]))
    return say
