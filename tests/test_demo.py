"""The README's main job: `avemo demo` end to end on the embedded default dataset, and it must learn."""
from __future__ import annotations

import json

import pytest

from avemo.cli import main
from conftest import session_scheduler


@pytest.mark.slow
def test_demo_learns_end_to_end(tmp_path, capsys):
    # the demo's own settings but one: its build runs on the session's warm Dask cluster (conftest; starting a
    # LocalCluster is what other build tests check)
    argv = ["demo", "--out", str(tmp_path), f"build.scheduler={session_scheduler()}"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 70 and metrics["weighted_f1"] >= 0.5, metrics["weighted_f1"]
    for name in ("confusion.png", "predictions.parquet"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    out = capsys.readouterr().out
    assert "test metrics" in out and str(tmp_path / "eval" / "metrics.json") in out


@pytest.mark.parametrize("args, message", [
    (["train.optim.epochs=abc"], "optim.epochs"),
    (["demo.nope=1"], "nope"),
    (["demo.per_class.train=0"], "at least 1 clip per emotion"),
    (["epochs=5"], "must start with its section"),
])
def test_demo_config_errors_are_one_line_before_any_work(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("avemo demo: "), err
    assert not (tmp_path / "d").exists()                  # nothing generated, built or trained

