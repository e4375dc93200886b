"""The public Python API (re-exported lazily by `import avemo`): one call per command, typed results,
AvemoError subclasses for expected failures. Settings are the commands' own: a `config` file (or bundled
name such as "meld") and `key=value` overrides, exactly as on the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avemo.core.config import load_config
from avemo.inference.predict import PredictConfig, WindowPredictor, load_predict_config, run_predict
from avemo.inference.runtime import ModelFile, make_runner, read_model
from avemo.inference.stream import Window
from avemo.model.asd import FaceIdentities, LightASDScorer
from avemo.pipeline.build import BuildSummary, run_build
from avemo.pipeline.config import BuildConfig
from avemo.train.config import EvalConfig, TrainConfig
from avemo.train.evaluate import run_evaluate
from avemo.train.loop import run_train

PathLike = str | Path


def build_shards(root: PathLike | None, out: PathLike, config: PathLike | None = None,
                 overrides: Sequence[str] = (), media_list: PathLike | None = None) -> BuildSummary:
    """MELD CSVs + videos under `root`, or the media list CSV `media_list` (then root=None) -> WebDataset
    shards + manifest.parquet in `out` (resumable)."""
    source = {"root": str(root or ""), "media_list": str(media_list or "")}
    cfg = load_config(BuildConfig, "build", config, list(overrides), {**source, "out": str(out)})
    scorer = (LightASDScorer(cfg.face.asd_weights, cfg.face.asd_variant).load() if cfg.face.speaker == "asd"
              else FaceIdentities().load() if cfg.face.speaker_names else None)
    return run_build(cfg, scorer=scorer)


def train(shards: PathLike, run: PathLike, config: PathLike | None = None, overrides: Sequence[str] = (),
          resume: bool = False) -> dict:
    """Train from shards into the run folder; returns the final state (epoch, step, best dev weighted F1)."""
    cfg = load_config(TrainConfig, "train", config, list(overrides), {"shards": str(shards), "run": str(run)})
    return run_train(cfg, resume=resume, log=lambda *a, **k: None)


def evaluate(shards: PathLike, checkpoint: PathLike, out: PathLike, split: str = "test",
             config: PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """Score a checkpoint on one split; returns metrics.json's dict (weighted F1, per class, confusion)."""
    cfg = load_config(EvalConfig, "evaluate", config, list(overrides),
                      {"shards": str(shards), "checkpoint": str(checkpoint), "split": split, "out": str(out)})
    return run_evaluate(cfg, log=lambda *a, **k: None)


def load_model(path: PathLike) -> ModelFile:
    """A training checkpoint (.pt) or an exported ONNX model, ready for `predict`."""
    return read_model(path)


def predict(source: PathLike | tuple[np.ndarray, np.ndarray | None], model: ModelFile | PathLike,
            config: PathLike | None = None, overrides: Sequence[str] = ()) -> list[dict]:
    """Emotion of a video file (one dict per sliding window, as `avemo predict` prints) or of arrays
    `(frames, audio)`: frames (T, H, W, 3) uint8 RGB sampled at the model's decode.fps, audio (N,) float32
    mono at its audio sample rate or None -> one dict for the whole clip."""
    if not isinstance(model, ModelFile):
        model = read_model(model)
    cfg = load_predict_config(model.meta, None if config is None else str(config), {}, list(overrides))
    if isinstance(source, (str, Path)):
        records: list[dict] = []
        failed = run_predict([str(source)], model, cfg, records.append, report=_raise_report)
        assert failed == 0   # _raise_report raised already
        return [r for r in records if "label" in r]
    return [_predict_arrays(*source, model=model, cfg=cfg)]


def _raise_report(line: str) -> None:
    if line.startswith("avemo predict:"):
        from avemo.core.errors import DataError
        raise DataError(line.removeprefix("avemo predict: "))


def _predict_arrays(frames: np.ndarray, audio: np.ndarray | None, model: ModelFile, cfg: PredictConfig) -> dict:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        from avemo.core.errors import DataError
        raise DataError(f"frames must be (T, H, W, 3) uint8 RGB, got shape {frames.shape}")
    rate = cfg.audio.sample_rate if hasattr(cfg.audio, "sample_rate") else cfg.decode.sample_rate
    predictor = WindowPredictor(make_runner(model, cfg.runtime, cfg.threads), cfg, "arrays", rate)
    n_audio = 0 if audio is None else len(audio)
    end = max(len(frames) / cfg.decode.fps, n_audio / rate)
    window = Window(index=0, start=0.0, end=end, frame_ids=np.arange(len(frames)), frames=frames,
                    audio=None if audio is None else np.asarray(audio, dtype=np.float32))
    return predictor(window)


__all__ = ["build_shards", "train", "evaluate", "load_model", "predict", "Any"]
