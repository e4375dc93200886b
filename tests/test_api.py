"""The README's Python API example, run as written on generated data: the test swaps in only the paths and a
tiny config, and fails if the README's block no longer has the lines it swaps (so the two cannot drift)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from conftest import session_scheduler
from tiny_model import TINY

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def tiny_config(path: Path) -> Path:
    def tree(pairs):
        out: dict = {}
        for pair in pairs:
            key, value = pair.split("=", 1)
            *parents, leaf = key.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(value)
        return out
    path.write_text(yaml.safe_dump({
        # the session's warm Dask cluster (conftest): the example's build costs its clips, not a cluster start
        "build": tree(["dask.workers=2", "shards.max_clips=8", "decode.max_frames=8",
                       f"scheduler={session_scheduler()}"]),
        "train": tree([*TINY, "optim.epochs=1"]),
        "evaluate": {"batch_size": 8, "workers": 0, "ablation": False}}))
    return path


def test_readme_api_example_runs(mini_meld, media, tmp_path, monkeypatch):
    code = readme_example()
    config = tiny_config(tmp_path / "tiny.yaml")
    swaps = {'root="MELD"': f'root="{mini_meld}"', 'config="meld"': f'config="{config}"',
             '"clip.mp4"': f'"{media / "single_face.mp4"}"', '"optim.epochs=5"': '"optim.epochs=1"'}
    for old, new in swaps.items():
        assert old in code, f"the README example lost {old!r}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    scope = {"frames": rng.integers(0, 255, (6, 120, 160, 3), dtype=np.uint8),
             "audio": (0.1 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 220)).astype(np.float32)}
    exec(compile(code, "README.md", "exec"), scope)
    from avemo.shards.labels import EMOTIONS
    assert scope["summary"].shards_failed == 0, scope["summary"].lines()
    assert (tmp_path / "runs/a/best.pt").is_file()
    assert 0.0 <= scope["metrics"]["weighted_f1"] <= 1.0 and scope["state"]["epoch"] == 1
    assert scope["windows"] and all(w["label"] in EMOTIONS for w in scope["windows"])
    clip = scope["clip"]
    # 6 frames given; the model sees at most its training max_frames of them, spread over the clip
    assert clip["label"] in EMOTIONS and abs(sum(clip["probs"].values()) - 1) < 1e-3
    assert clip["frames"] == min(6, scope["model"].meta["max_frames"])
