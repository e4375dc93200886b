"""bench/recipe_ablation.py: each variant is the shipped recipe with exactly the change its row names."""
from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import REPO


def _flat(obj, prefix=""):
    out = {}
    for key, value in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.unit
def test_each_variant_changes_only_what_it_names(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import recipe_ablation
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    paths = {"shards": ["paired", "ravdess", "fer"], "run": "r"}
    base = _flat(load_config(TrainConfig, "train", "real", list(recipe_ablation.SHORT), paths))
    assert base["optim.epochs"] == 3 and base["data.epoch_samples"] == 6000
    for name, (_, overrides) in recipe_ablation.VARIANTS.items():
        cfg = _flat(load_config(TrainConfig, "train", "real", [*recipe_ablation.SHORT, *overrides], paths))
        changed = {k for k in base if cfg[k] != base[k]}
        assert changed == {o.split("=")[0] for o in overrides}, (name, changed)


@pytest.mark.unit
def test_voice_ablation_runs_the_voice_alone_and_each_variant_changes_only_what_it_names(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import voice_ablation
    from avemo.core.config import load_config
    from avemo.train.config import TrainConfig
    paths = {"shards": ["ravdess"], "run": "r"}
    base = _flat(load_config(TrainConfig, "train", "real", list(voice_ablation.SCHEDULE), paths))
    assert base["data.weights"] == [1.0] and base["model.face_weights"] == ""   # one set, no face network
    pools = set()
    for name, (_, overrides) in voice_ablation.VARIANTS.items():
        cfg = _flat(load_config(TrainConfig, "train", "real", [*voice_ablation.SCHEDULE, *overrides], paths))
        named = {o.split("=")[0] for o in overrides}
        assert {k for k in base if cfg[k] != base[k]} <= named, name
        pools.add(cfg["model.audio_pool"])
    assert pools == {"mean", "stats", "attention"}
    # a variant with its own shards builds them with settings build-shards knows, and its model reads them
    assert set(voice_ablation.BUILDS) <= set(voice_ablation.VARIANTS)
    mels = dict(o.split("=") for o in voice_ablation.BUILDS["mels128"])
    model = dict(o.split("=") for o in voice_ablation.VARIANTS["mels128"][1])
    assert mels["audio.n_mels"] == model["model.n_mels"] == "128"
    from avemo.pipeline.config import BuildConfig
    built = load_config(BuildConfig, "build", None, voice_ablation.BUILDS["mels128"],
                        {"media_list": "l.csv", "out": "o", "splits": ["train", "dev"]})
    assert (built.audio.n_mels, built.audio.n_fft) == (128, 800)
