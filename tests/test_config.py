"""Unit tier: the config model (each section checks itself, whichever command nests it), the one error
hierarchy, the CLI's one-line errors and its habits. No media, no weights, no ../shared."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import avemo
from avemo.core.config import load_config, parse_overrides, read_yaml_section
from avemo.core.errors import AvemoError, ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("override, message", [
    ("decode.fps=0", "decode.fps must be > 0"),
    ("face.detect_size=1", "face.detect_size must be in [64, 4096]"),
    ("face.crop_size=64", "face.crop_size must be 112 (MobileFaceNet's input)"),
    ("audio.hop_length=0", "audio.hop_length must be in (0, n_fft]"),
    ("face.device=gpu", "face.device=gpu is not auto, cpu, cuda or cuda:N"),
    ("threads=0", "threads must be >= 1"),
])
def test_predict_reuses_the_sections_and_their_checks(override, message):
    """PredictConfig nests build's decode/face/audio sections: their own checks apply (decode.fps=0 was a
    ZeroDivisionError traceback in the stream decoder)."""
    from avemo.inference.predict import load_predict_config
    with pytest.raises(ConfigError) as info:
        load_predict_config({}, None, {}, [override])
    assert str(info.value) == message


@pytest.mark.parametrize("cls_path, section, override, message", [
    ("avemo.pipeline.config:BuildConfig", "build", "dask.retries=-1", "dask.retries must be in [0, 100]"),
    ("avemo.pipeline.config:BuildConfig", "build", "limit=-1", "limit must be >= 0 (0 = all rows)"),
    ("avemo.train.config:TrainConfig", "train", "optim.epochs=0", "optim.epochs must be >= 1"),
    ("avemo.train.config:TrainConfig", "train", "eval_every=0", "eval_every must be >= 1"),
    ("avemo.train.config:TrainConfig", "train", "data.batch_size=0", "data.batch_size must be >= 1"),
    ("avemo.train.config:EvalConfig", "evaluate", "batch_size=0", "batch_size must be >= 1"),
    ("avemo.train.config:TrainConfig", "train", "model.num_classes=5", "unknown config key 'model.num_classes'"),
])
def test_every_section_checks_itself(cls_path, section, override, message):
    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as info:
        load_config(cls, section, None, [override])
    assert str(info.value).startswith(message)


def test_devices_accept_an_index():
    from avemo.train.config import TrainConfig
    assert load_config(TrainConfig, "train", None, ["device=cuda:1"]).device == "cuda:1"


def test_bundled_configs_by_name():
    assert read_yaml_section("meld", "train")["optim"]["epochs"] > 0
    assert read_yaml_section("demo.yaml", "demo")["seed"] == 0
    with pytest.raises(ConfigError, match=r"config file not found: nosuch \(bundled configs: demo, meld"):
        read_yaml_section("nosuch", "train")


def test_overrides_are_yaml_scalars():
    assert parse_overrides(["optim.lr=0.5", "splits=[train]", "a.b=x"]) == {
        "optim": {"lr": 0.5}, "splits": ["train"], "a": {"b": "x"}}


def test_exponent_floats_without_a_dot():
    """YAML 1.1 reads `3e-4` as a string; the README's own `optim.lr=3e-4` must still work."""
    from avemo.train.config import TrainConfig
    assert load_config(TrainConfig, "train", None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="optim.lr must be a number, got 'fast'"):
        load_config(TrainConfig, "train", None, ["optim.lr=fast"])


def test_one_exception_hierarchy():
    """Every error class the package defines derives from AvemoError (caught once by the CLI), and none is a
    ValueError/RuntimeError, so a real bug raising those keeps its traceback."""
    classes = []
    packages = [importlib.import_module(f"avemo.{p}") for p in ("pipeline", "train", "model", "shards")]
    infos = [i for pkg in (avemo, *packages) for i in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")]
    for info in infos:
        if info.name.startswith(("avemo.cli", "avemo.api", "avemo.demo.app")):
            continue
        module = importlib.import_module(info.name)
        classes += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                    if issubclass(obj, Exception) and obj.__module__ == info.name]
    names = {c.__name__ for c in classes}
    assert {"ConfigError", "DataError", "WeightsError", "CheckpointError", "ClusterError", "CorruptShardError",
            "UnsafeSampleError", "LabelFileError", "LayoutError", "DecodeError", "InputError"} <= names
    for cls in classes:
        assert issubclass(cls, AvemoError), cls
        assert not issubclass(cls, (ValueError, RuntimeError)), cls


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avemo", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    result = _cli("train", "--shards", str(tmp_path), "optim.lr=-1", "--run", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.splitlines() == ["avemo train: error: optim.lr must be in (0, 10)"]
    result = _cli("evaluate", "--shards", str(tmp_path), "--checkpoint", "x.pt", "--out", str(tmp_path / "e"),
                  "--config", "nosuch")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("avemo evaluate: error: config file not found: nosuch")


def test_manifest_filter_in_a_fresh_process():
    """shards_for_split on an in-memory table, before anything imported pyarrow.compute (an AttributeError
    in a fresh process once: `pa.compute` exists only after some import loads it)."""
    code = ("import pyarrow as pa\nfrom avemo.shards.manifest import shards_for_split\n"
            "t = pa.table({'split': ['train', 'dev'], 'status': ['ok', 'ok'], 'shard': ['a.tar', 'b.tar'],"
            " 'shard_sha256': ['1', '2']})\nprint(sorted(shards_for_split(t, 'train')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "['a.tar']", result.stderr


def test_version_and_lazy_api():
    assert avemo.__version__ != "0+unknown"
    assert _cli("--version").stdout.strip() == f"avemo {avemo.__version__}"
    with pytest.raises(AttributeError):
        avemo.no_such_thing  # noqa: B018


def test_config_files_are_bounded(tmp_path):
    """A 724-byte alias bomb ran for minutes at 4.5 GB; errors echo at most a short prefix of a value."""
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\ntrain: {seed: *a9}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: aliases \(\*a0\) are not allowed"):
        read_yaml_section(bomb, "train")
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "{a: " * 40 + "1" + "}" * 40 + "\n")
    with pytest.raises(ConfigError, match="nests deeper than 16 levels"):
        read_yaml_section(deep, "train")
    big = tmp_path / "big.yaml"
    big.write_text("train: {seed: 0}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a config is at most 1048576 bytes"):
        read_yaml_section(big, "train")
    from avemo.train.config import TrainConfig
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, "train", None, ["optim.lr=" + "z" * 5000])
    assert len(str(info.value)) < 200 and "(5002 characters)" in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("hop_s=0.000001", "hop must be in [0.05 s, window]"), ("threads=100000", "threads must be <= 256"),
    ("decode.max_frames=1000000000000000000000", "decode.max_frames must be in [1, 1024]"),
    ("decode.sample_rate=0", "decode.sample_rate must be in [8000, 48000]"),
    ("decode.frame_size=0", "decode.frame_size must be in [64, 4096]"),
])
def test_numeric_settings_have_sane_ranges(override, message):
    """`--hop 0.000001` meant millions of windows for a 2 s clip, threads=100000 no output in 120 s."""
    from avemo.inference.predict import load_predict_config
    with pytest.raises(ConfigError) as info:
        load_predict_config({}, None, {}, [override])
    assert str(info.value) == message
