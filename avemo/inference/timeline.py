"""`avemo predict --plot`: a PNG timeline of the 7 probabilities, one panel per input."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from avemo.core.atomic import atomic_write_bytes

# one fixed colour per emotion, the same in every plot
COLOURS = {"neutral": "#a6a6a6", "joy": "#f2b701", "surprise": "#f07f13", "anger": "#d62728",
           "sadness": "#1f77b4", "disgust": "#2ca02c", "fear": "#9467bd"}
MAX_PANELS = 8


def _steps(rows: list[dict], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each window's probabilities held from its centre - hop/2 to its centre + hop/2 (the whole window
    when it is alone): x (2N,), probs (2N, 7)."""
    centres = np.array([(r["start"] + r["end"]) / 2 for r in rows])
    half = np.diff(centres).min() / 2 if len(rows) > 1 else (rows[0]["end"] - rows[0]["start"]) / 2
    x = np.stack([centres - half, centres + half], 1).ravel()
    probs = np.array([[r["probs"][k] for k in labels] for r in rows]).repeat(2, axis=0)
    return x, probs


def _speakers_panel(ax, rows: list[dict]) -> None:
    """Each person's speaking probability per window (a line per track id), the window's speaker marked."""
    centres = np.array([(r["start"] + r["end"]) / 2 for r in rows])
    people = sorted({f["track"] for r in rows for f in r["faces"]})
    for k, pid in enumerate(people[:12]):
        colour = f"C{k % 10}"
        y = np.array([next((f["speaking"] for f in r["faces"] if f["track"] == pid and f["speaking"] is not None),
                           np.nan) for r in rows], dtype=np.float64)
        ax.plot(centres, y, color=colour, lw=1.5, marker=".", label=f"person {pid}: speaking")
        spoke = [i for i, r in enumerate(rows) if r.get("speaker") == pid]
        if spoke:
            ax.plot(centres[spoke], [1.03] * len(spoke), "s", color=colour, ms=5)
    ax.set_ylim(0, 1.06)
    ax.set_xlim(0, max([r["end"] for r in rows] or [1.0]))
    ax.set_ylabel("speaking")
    ax.set_title("who speaks (squares: the window's speaker)", fontsize=9, loc="left")
    ax.grid(alpha=0.3)


def plot_timeline(records: list[dict], path: str | Path, labels: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sources = list(dict.fromkeys(r["source"] for r in records))[:MAX_PANELS] or ["(no input)"]
    # with --speakers, a second panel per input: who spoke when
    talks = {s for s in sources if any("faces" in r for r in records if r["source"] == s)}
    panels = [(s, kind) for s in sources for kind in ("emotion", "speakers") if kind == "emotion" or s in talks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 0.6 + 2.6 * len(panels)), squeeze=False)
    for ax, (source, kind) in zip(axes[:, 0], panels):
        if kind == "speakers":
            _speakers_panel(ax, [r for r in records if r["source"] == source and "faces" in r])
            continue
        rows = [r for r in records if r["source"] == source and r.get("probs")]   # not dropped, not blind
        end = max([r["end"] for r in records if r["source"] == source] or [1.0])
        if rows:
            x, probs = _steps(rows, labels)
            ax.stackplot(x, probs.T, labels=labels, colors=[COLOURS.get(k) for k in labels], alpha=0.9)
            face = np.array([r["face"] for r in rows]).repeat(2)
            ax.plot(x, face, color="black", lw=1.3, ls="--", label="face: fraction of frames")
            silent = [(r["start"] + r["end"]) / 2 for r in rows if "audio" not in r["modalities"]]
            if silent:
                ax.plot(silent, [1.03] * len(silent), "v", color="black", ms=4, label="window without audio")
        for r in records:
            if r["source"] == source and "dropped_windows" in r:
                ax.axvspan(r["start"], r["end"], color="red", alpha=0.2, lw=0, label="dropped (too slow)")
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1.06)
        ax.set_ylabel("probability")
        ax.set_title(Path(source).name if "://" not in source else source, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    legend: dict[str, object] = {}
    for ax in axes[:, 0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend.keys()), loc="center right", fontsize=8,  # type: ignore[call-overload]
               frameon=False)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
