"""The README's main job: `avemo demo` end to end on the embedded default dataset, and it must learn."""
from __future__ import annotations

import json
import shutil

import pytest

from avemo.cli import main
from conftest import background_folder, background_result, demo_command


@pytest.mark.slow
def test_demo_learns_end_to_end(tmp_path, capsys):
    # `python -m avemo demo` with the demo's own settings, as `make demo` runs it: started in the background when
    # collection ended (conftest.BACKGROUND_TESTS, this test runs last); in-process here when it was not started
    folder = background_folder("demo")
    try:
        if folder is None:
            out_dir = tmp_path / "demo"
            assert main(demo_command(out_dir)[3:]) == 0
            out = capsys.readouterr().out
        else:
            out_dir = folder / "demo"
            code, out = background_result("demo", keep=True)
            assert code == 0, out[-3000:]
        metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
        assert metrics["n"] == 70 and metrics["weighted_f1"] >= 0.5, metrics["weighted_f1"]
        for name in ("confusion.png", "predictions.parquet"):
            assert (out_dir / "eval" / name).stat().st_size > 0
        assert (out_dir / "run" / "best.pt").is_file() and (out_dir / "run" / "last.pt").is_file()
        assert "test metrics" in out and str(out_dir / "eval" / "metrics.json") in out
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


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

