"""Issue 18, point 4: config loose ends. A section's check is prefixed once, a bad split is one line however it
is given, a bad config file is refused before torch or dask are imported, and a list's near-miss label
says which MELD class was meant. No media, no weights."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avemo.core.config import load_config
from avemo.core.errors import ConfigError
from avemo.pipeline.media_list import read_media_list
from tests.conftest import command

pytestmark = pytest.mark.unit


def test_a_sections_own_check_is_prefixed_once(tmp_path, capsys):
    from avemo.train.config import TrainConfig
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, "train", None, ["data.weights=[-1,1]"])
    assert str(info.value) == "data.weights must be >= 0 with a positive sum"
    code = command("train")(["--shards", str(tmp_path), "--run", str(tmp_path / "r"), "data.weights=[-1,1]"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == ["avemo train: error: data.weights must be >= 0 with a positive sum"]


def test_a_bad_split_is_one_line_as_a_flag_an_override_or_in_a_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("build:\n  splits: [train, foo]\n")
    out = tmp_path / "out"
    build = command("build-shards")
    for extra in (["--splits", "foo"], ["splits=[foo]"], ["--config", str(config)]):
        assert build(["--root", str(tmp_path / "meld"), "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "foo" in err[0] and "train, dev, test" in err[0], (extra, err)
    assert not out.exists(), "nothing is written for a refused config"


def test_a_bad_config_is_refused_before_torch_or_dask_are_imported(tmp_path):
    """A file refused on its first line cost ~7 s of CPU of imports first (torch via the train config's model
    section, dask and torch via build-shards' run_build, the detector runtime via predict)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [\n")
    runs = {
        "train": ["--shards", "S", "--run", str(tmp_path / "r"), "--config", str(bad)],
        "build-shards": ["--root", "M", "--out", str(tmp_path / "o"), "--config", str(bad)],
        "evaluate": ["--shards", "S", "--checkpoint", "c.pt", "--out", str(tmp_path / "e"), "--config", str(bad)],
        "predict": ["clip.mp4", "--checkpoint", "c.pt", "--config", str(bad)],
        "demo": ["--out", str(tmp_path / "d"), "--config", str(bad)],
        "train ": ["--shards", "S", "--run", str(tmp_path / "r"), "optim.lr=-1"],   # a bad override too
    }
    code = (f"import json, sys\nfrom avemo.cli import main\nout = {{}}\nfor name, argv in {json.dumps(runs)}.items():\n"
            "    rc = main([name.strip(), *argv])\n"
            "    out[name] = [rc, sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules)]\n"
            "print(json.dumps(out))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.splitlines()[-1])
    assert got == {name: [2, []] for name in runs}, result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == len(runs) and all(": error: " in line for line in errors), errors
    assert sum("is not valid YAML" in line for line in errors) == len(runs) - 1, errors


@pytest.mark.parametrize("given, hint", [
    ("angry", "did you mean anger?"), ("Happy", "did you mean joy?"), ("sad", "did you mean sadness?"),
    ("surprised", "did you mean surprise?"), ("disgusted", "did you mean disgust?"),
    ("fearful", "did you mean fear?"), ("scared", "did you mean fear?"), ("happiness", "did you mean joy?"),
    ("calm", "neutral is the closest, but calm has no MELD class"),
    ("contempt", "contempt has no MELD class"),
    ("grumpy", "MELD's classes: anger, disgust, fear, joy, neutral, sadness, surprise"),
])
def test_a_near_miss_label_says_which_meld_class_was_meant(tmp_path, given, hint):
    (tmp_path / "l.csv").write_text(f"path,label,split\nx.wav,{given},train\n")
    rows, _ = read_media_list(tmp_path / "l.csv", ["train"])
    (row,) = rows["train"]
    assert row["reason"] == "unknown_label" and hint in row["detail"], row["detail"]
