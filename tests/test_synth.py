"""The generated mini-MELD clips (pipeline/synth.py): the shared face photo and ffmpeg failures."""
from __future__ import annotations

import numpy as np
import pytest

from avemo.pipeline.config import AudioConfig, ProbeConfig
from avemo.pipeline.probe import probe_clip
from avemo.demo.synth import SynthSpec, _decoded_face_photo, _write_clip, face_photo

SPEC = SynthSpec(per_class={}, width=160, height=96, fps=5)


def test_face_photo_is_decoded_once_and_each_caller_gets_its_own_copy():
    _decoded_face_photo.cache_clear()
    first = face_photo()
    reference = np.asarray(first).copy()
    first.paste((255, 0, 0), (0, 0, first.width, first.height))        # a caller that draws on its copy
    second = face_photo()
    assert second is not first
    np.testing.assert_array_equal(np.asarray(second), reference)
    assert reference.shape[2] == 3 and reference.std() > 10             # the real photograph, RGB
    info = _decoded_face_photo.cache_info()
    assert (info.misses, info.hits) == (1, 1)                          # the JPEG was decoded once


def test_clip_is_written_and_probes(tmp_path):
    path = tmp_path / "dia0_utt0.mp4"
    duration = _write_clip(path, "joy", SPEC, seed=3, face=True, audio=True)
    probe = probe_clip(path, ProbeConfig(), AudioConfig())
    assert probe.ok and probe.has_audio and (probe.width, probe.height) == (160, 96)
    assert probe.duration_s == pytest.approx(duration, abs=0.25)


def test_ffmpeg_exiting_early_reports_its_error_not_a_broken_pipe(tmp_path):
    """ffmpeg cannot open the output, exits, and the frame writes hit a closed pipe: the error carries
    ffmpeg's own message."""
    spec = SynthSpec(per_class={}, width=640, height=360, fps=25, min_duration_s=4.0)   # far more than a pipe buffer
    path = tmp_path / "no such folder" / "dia0_utt0.mp4"
    with pytest.raises(RuntimeError, match="ffmpeg failed writing .*No such file or directory"):
        _write_clip(path, "anger", spec, seed=1, face=True, audio=False)
