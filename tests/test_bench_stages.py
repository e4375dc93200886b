"""bench/real_emotion.py's Stages: each stage is saved to OUT/stages.json as it finishes, and a rerun on the
same folder (which resumes the work: data checked, training continued) keeps the earlier invocations' stage
times instead of reporting only its own near-zero ones."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit


@pytest.fixture()
def real_emotion():
    sys.path.insert(0, str(REPO / "bench"))
    import real_emotion
    yield real_emotion
    sys.path.remove(str(REPO / "bench"))


def test_a_rerun_keeps_the_stage_times_of_the_invocation_that_did_the_work(real_emotion, tmp_path, capsys):
    path = tmp_path / "out" / "stages.json"
    first = real_emotion.Stages(path)
    assert first.run("prepare", lambda: "done") == "done"
    saved = json.loads(path.read_text())["invocations"]          # on disk as soon as the stage finishes
    assert [list(run["stages"]) for run in saved] == [["prepare"]]
    with pytest.raises(RuntimeError):                              # a crash in the next stage ...
        first.run("train", lambda: (time.sleep(0.3), (_ for _ in ()).throw(RuntimeError("killed"))))
    # ... is saved too, marked unfinished; the finished one stays as it was
    stages = json.loads(path.read_text())["invocations"][0]["stages"]
    assert list(stages) == ["prepare", "train"] and stages["train"]["finished"] is False
    assert "finished" not in stages["prepare"] and stages["train"]["wall_s"] >= 0.3
    assert "(stopped by an error)" in capsys.readouterr().out

    second = real_emotion.Stages(path)                             # the rerun
    assert [list(run["stages"]) for run in second.earlier] == [["prepare", "train"]]
    second.run("prepare", lambda: None)
    second.run("train", lambda: None)
    runs = json.loads(path.read_text())["invocations"]
    assert len(runs) == 2 and list(runs[1]["stages"]) == ["prepare", "train"]
    assert runs[0]["stages"]["prepare"] == first.times["prepare"]

    path.write_text("{not json")                                   # an unreadable file: noted, not a crash
    third = real_emotion.Stages(path)
    assert third.earlier == [] and "unreadable" in capsys.readouterr().out


def test_the_report_shows_earlier_invocations(real_emotion, tmp_path, monkeypatch):
    import common
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    row = {"n": 156, "accuracy": 0.5, "weighted_f1": 0.5, "macro_f1": 0.5}
    record = {"results": {f"paired dev, {m}": row for m in ("both", "audio-only", "face-only")},
              "stages": {"train": {"wall_s": 3.5, "cpu_s": 3.8, "tree_pss_gb": 0.9}},
              "earlier_invocations": [{"date": "2026-12-07 23:07:15 UTC",
                                       "stages": {"train": {"wall_s": 1740.2, "cpu_s": 3376.5, "tree_pss_gb": 3.56},
                                                  "evaluate": {"wall_s": 2.0, "cpu_s": 2.0, "tree_pss_gb": 1.0,
                                                               "finished": False}}}],
              "config": "real", "overrides": [], "best_epoch": 14, "epochs": 15, "parameters": 1.4e6, "sets": {},
              "command": "x", "date": "d", "machine": common.machine(),
              "load": {"before": [0, 0, 0], "after": [0, 0, 0]}}
    text = real_emotion.report(record, "stages_probe", False).read_text()
    assert "An earlier invocation on this folder** (2026-12-07 23:07:15 UTC" in text
    assert "| train | 1740 | 3376 | 3.56 |" in text                 # whole seconds from 1,000 up, not 1.74e+03
    assert "No training epoch ran in this invocation" in text       # its own train stage has no epochs
    assert "| evaluate (stopped by an error) | 2 | 2 | 1 |" in text
