"""Light-ASD (model/asd.py), its crops and scoring of tracks (pipeline/speaker.py), on real talking faces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avemo.core.errors import DataError, WeightsError
from avemo.model.asd import LightASD, _chunks, load_light_asd, mfcc
from avemo.pipeline.speaker import (SYNC_CAP, TrackSpeech, correlation, crop_squares, grey_crops, lip_motion,
                                    median_smooth, score_tracks, speaking_in_window, track_samples,
                                    voice_envelope)
from avemo.pipeline.tracks import Track

RATE = 16000


def make_track(frames: list[int], box=(100.0, 50.0, 200.0, 170.0), track_id: int = 0) -> Track:
    n = len(frames)
    return Track(track_id, np.array(frames, dtype=np.int64), np.zeros(n, dtype=np.int64),
                 np.tile(np.array(box, dtype=np.float32), (n, 1)), np.ones(n, dtype=np.float32))


# ---------------------------------------------------------------- pure logic (random weights, no media)

@pytest.mark.unit
def test_network_shapes_and_candidate_audio_tracks():
    torch.manual_seed(0)
    net = LightASD().eval()
    assert net(torch.randn(2, 40, 13), torch.rand(2, 10, 112, 112) * 255).shape == (2, 10, 2)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (27, 112, 112), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(27 * 640)).astype(np.float32)
    one = net.speaking_logodds(faces, audio, durations_s=(1,))          # chunks of frames 0-24 and 25-26
    assert one.shape == (27,) and one.dtype == np.float32 and np.isfinite(one).all()
    many = net.speaking_logodds(faces, [audio, audio[: RATE // 2], np.zeros(0, np.float32)], durations_s=(1,))
    assert many.shape == (3, 27) and np.allclose(many[0], one, atol=1e-5)   # short audio: padded with silence
    assert net.speaking_logodds(faces[:0], audio).shape == (0,)
    assert net.speaking_logodds(faces, audio, durations_s=(1,), encoders_once=True).shape == (27,)
    assert _chunks(60, 25) == [(0, 50), (50, 60)] and _chunks(50, 25) == [(0, 50)] and _chunks(7, 25) == [(0, 7)]


@pytest.mark.unit
def test_the_fast_inference_encoder_is_the_same_function_as_the_modules(monkeypatch):
    """Inference (no grad, eval) folds BatchNorm into the face encoder's convolutions and runs its time
    convolutions as matrix products: the output must be the modules' own, for one track and a batch."""
    torch.manual_seed(0)
    net = LightASD().eval()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    from avemo.model import asd
    calls: list[int] = []
    time_conv = asd._time_conv
    monkeypatch.setattr(asd, "_time_conv", lambda *a: calls.append(1) or time_conv(*a))
    for shape in ((1, 30, 112, 112), (3, 7, 112, 112), (1, 2, 112, 96)):
        faces = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.enable_grad():                      # the modules' path (as in training, BN in eval mode)
            ref = net.encode_faces(faces).detach()
        assert calls == []
        with torch.inference_mode():
            fast = net.encode_faces(faces)
        assert len(calls) == 6                         # 3 blocks x 2 paths took the matrix-product time conv
        calls.clear()
        assert fast.shape == ref.shape == (shape[0], shape[1], 128)
        assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4), (fast - ref).abs().max()


@pytest.mark.unit
def test_one_person_compares_identities_only_at_shot_changes():
    """build-shards' face.asd_one_face=skip: one face per frame at the same place, a cut half-way. The faces
    either side of the cut (and only they) are embedded: the same person is one, someone else is two, even
    at a similarity the tracker's loose overlap veto (0.2) would still link."""
    from avemo.pipeline.config import FaceConfig
    from avemo.pipeline.faces import FrameDets
    from avemo.pipeline.speaker import one_person
    rng = np.random.default_rng(0)
    shot_a, shot_b = (rng.integers(0, 256, (1, 180, 320, 3)) for _ in range(2))
    frames = np.concatenate([np.repeat(shot_a, 3, 0), np.repeat(shot_b, 3, 0)]).astype(np.uint8)
    box = np.array([[100, 40, 180, 140]], np.float32)
    marks = np.array([[[120, 80], [160, 80], [140, 100], [125, 120], [155, 120]]], np.float32)
    face = FrameDets(box, np.array([0.99], np.float32), marks)
    calls: list[int] = []

    def identities(sim: float):
        before = np.eye(128)[0]
        after = sim * before + np.sqrt(1 - sim ** 2) * np.eye(128)[1]

        def embed(crops: np.ndarray) -> np.ndarray:
            calls.append(len(crops))
            return np.stack([before, after])[: len(crops)]
        return embed

    cfg = FaceConfig()
    assert one_person(frames, [face] * 6, identities(0.9), cfg) and calls == [2]   # 2 faces embedded, not 6
    assert not one_person(frames, [face] * 6, identities(0.3), cfg)                # someone else at the same place
    assert one_person(frames[:3], [face] * 3, identities(0.3), cfg) and calls == [2, 2]   # no cut: none embedded
    assert not one_person(frames, [face] * 6, None, cfg)                           # cannot tell a cut's faces apart
    nobody = FrameDets(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    assert one_person(frames, [nobody] * 6, None, cfg)
    shift = np.array([150, 0, 150, 0], np.float32)
    two = FrameDets(np.concatenate([box, box + shift]), np.array([0.99, 0.98], np.float32),
                    np.concatenate([marks, marks + shift[:2]]))
    assert not one_person(frames, [face, two, face, face, face, face], identities(0.9), cfg)


@pytest.mark.unit
def test_mfcc_frames_and_silence():
    assert mfcc(np.zeros(16000, np.float32)).shape == (99, 13)          # 1 + ceil((16000 - 400) / 160)
    assert mfcc(np.zeros(16000 + 240, np.float32)).shape == (100, 13)   # 100 frames/s with the last window whole
    assert mfcc(np.zeros(10, np.float32)).shape == (1, 13) and mfcc(np.zeros(0, np.float32)).shape == (1, 13)
    assert np.isfinite(mfcc(np.zeros(4000, np.float32))).all()          # digital silence: log(eps), not -inf
    noise = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    loud, soft = mfcc(noise), mfcc(noise * 0.1)
    assert np.allclose(loud[:, 1:], soft[:, 1:], atol=0.05)             # scale moves c0 (log energy) only
    assert np.allclose(loud[:, 0] - soft[:, 0], np.log(100), atol=1e-2)


@pytest.mark.unit
def test_crop_geometry_follows_the_original():
    boxes = np.array([[100, 50, 200, 170]] * 5, dtype=np.float32)       # w 100, h 120 -> half-size 60
    (cx, cy, side), = crop_squares(boxes)[:1]
    assert (cx, cy, side) == pytest.approx((150, 110 + 24, 84))         # centre 0.4 s below, side 1.4 s
    jitter = np.array([[0.0], [0.0], [9.0], [0.0], [0.0]])
    assert np.allclose(median_smooth(jitter, 3)[:, 0], 0) and median_smooth(jitter[:1], 13).shape == (1, 1)
    frames = np.zeros((2, 40, 60, 3), dtype=np.uint8)
    frames[1] = 200
    squares = np.array([[30.0, 20.0, 10.0], [30.0, 20.0, 10.0], [0.0, 0.0, 40.0]])
    crops = grey_crops(frames, np.array([0, 1, 1]), squares)
    assert crops.shape == (3, 112, 112) and crops.dtype == np.uint8
    assert (crops[0] == 0).all() and (crops[1] == 200).all()
    assert crops[2, 0, 0] == 110 and crops[2, -1, -1] == 200            # outside the frame: the original's grey


@pytest.mark.unit
def test_tracks_are_resampled_to_25_fps_with_their_audio():
    times = np.arange(90) / 29.97                                       # 3 s of NTSC video
    track = make_track(list(range(15, 75)))
    at, ids, boxes = track_samples(track, times)
    assert len(at) == 50 and at[0] == pytest.approx(0.5, abs=1e-3)     # 60 frames of 1/29.97 s = 2.0 s
    assert ids[0] == 15 and ids[-1] <= 74 and np.all(np.diff(ids) >= 1) and boxes.shape == (50, 4)
    seen = []

    def scorer(faces, audio):
        seen.append((faces.shape, len(audio)))
        return np.linspace(-2, 2, len(faces))

    audio = np.zeros(3 * RATE, np.float32)
    cut = make_track(list(range(0, 20)) + list(range(60, 90)), track_id=1)   # away 1.3 s: two segments
    out = score_tracks(np.zeros((90, 48, 64, 3), np.uint8), times, [track, cut], audio, scorer)
    assert [s.track for s in out] == [0, 1]
    assert seen[0] == ((50, 112, 112), 3 * RATE - round(15 / 29.97 * RATE)) and len(seen) == 3
    assert len(out[1].logodds) == len(out[1].times) == len(out[1].boxes) == 17 + 25
    assert 0 < out[0].prob < 1 and out[0].window(10, 11) is None
    assert out[0].window(0.5, 1.5) < 0.5 < out[0].window(1.5, 2.5)
    assert set(speaking_in_window(out, 0.0, 0.4)) == {1}
    assert score_tracks(np.zeros((90, 48, 64, 3), np.uint8), times, [track], None, scorer) == []
    with pytest.raises(DataError, match="fps"):
        score_tracks(np.zeros((8, 48, 64, 3), np.uint8), np.arange(8) / 4.0, [make_track([0, 1])], audio, scorer)
    empty = TrackSpeech(0, np.zeros(0), np.zeros((0, 4)), np.zeros(0, np.float32))
    assert empty.prob == 0.0 and empty.window(0, 1) is None


@pytest.mark.unit
def test_lips_moving_in_step_with_the_voice_raise_the_speaking_probability():
    """Lip sync: the lower face's change per 25 fps sample against the voice's loudness. A face whose lips move
    while the voice sounds gains, one whose lips move between the words loses, and Light-ASD alone decides
    where sync cannot be told (a still face, too few samples) or sync_weight is 0."""
    n, hop = 50, RATE // 25
    talking = np.zeros(n, bool)
    talking[10:20] = talking[30:40] = True
    rng = np.random.default_rng(0)
    audio = np.where(np.repeat(talking, hop), 0.3 * np.sin(np.arange(n * hop) * 0.2), 1e-3).astype(np.float32)

    def face(moving: np.ndarray) -> np.ndarray:
        crops = np.full((n, 112, 112), 120, np.uint8)
        crops[moving, 60:100, 30:80] = rng.integers(0, 255, (int(moving.sum()), 40, 50))   # lips: changing
        return crops

    in_step, between = face(talking), face(~talking)
    envelope = voice_envelope(audio, n)
    assert envelope.shape == (n,) and envelope[talking].min() > envelope[~talking].max()
    assert lip_motion(in_step)[talking].mean() > 10 * lip_motion(in_step)[~talking].mean()
    assert correlation(lip_motion(in_step), envelope) > 0.8 > -0.5 > correlation(lip_motion(between), envelope)
    still = lip_motion(np.full((n, 112, 112), 120, np.uint8))
    assert correlation(still, envelope) is None and correlation(lip_motion(in_step)[:5], envelope[:5]) is None
    times, boxes, even = np.arange(n) / 25, np.zeros((n, 4)), np.zeros(n, np.float32)   # Light-ASD: 0.5 both

    def speech(crops, weight=2.0):
        return TrackSpeech(0, times, boxes, even, lip_motion(crops), envelope, weight)

    assert speech(in_step).prob > 0.8 and speech(between).prob < 0.3
    assert speech(in_step, 0.0).prob == speech(between, 0.0).prob == 0.5
    assert speech(in_step).window(0, 0.2) == 0.5                        # 5 samples: Light-ASD alone
    assert speech(in_step).sync(0, 2) == pytest.approx(correlation(lip_motion(in_step), envelope), abs=0.01)
    assert TrackSpeech(0, times, boxes, even).prob == 0.5               # no motion kept: Light-ASD alone
    # one jump of the lower face (a cut within the track) does not decide: motion is capped per window
    jump = lip_motion(between)
    jump[15] = 1000.0
    assert correlation(jump, envelope) > 0 > TrackSpeech(0, times, boxes, even, jump, envelope, 2.0).sync(0, 2)
    # audio that ends before the track: its samples after the end are not compared (not read as silence)
    short = voice_envelope(audio[: 25 * hop + hop // 2], n)
    assert np.isnan(short[25:]).all() and np.array_equal(short[:25], envelope[:25])
    assert correlation(lip_motion(in_step), short) == pytest.approx(correlation(lip_motion(in_step)[:25],
                                                                                envelope[:25]))


# ---------------------------------------------------------------- the published weights

@pytest.mark.parametrize("variant", ["talkset", "ava"])
def test_published_checkpoints_load_strict_and_safely(shared, variant):
    name = {"talkset": "finetuning_TalkSet.model", "ava": "pretrain_AVA_CVPR.model"}[variant]
    state = torch.load(shared / "weights" / "light-asd" / name, map_location="cpu", weights_only=True)
    net = LightASD()
    assert net.load_state_dict(state, strict=True) is not None and len(state) == 192
    assert sum(p.numel() for p in net.model.parameters()) == pytest.approx(1.02e6, rel=0.01)
    loaded = load_light_asd(variant=variant)
    assert not loaded.training
    assert torch.equal(loaded.lossAV.FC.weight, state["lossAV.FC.weight"])


def test_wrong_weights_are_one_clear_error(shared, tmp_path):
    with pytest.raises(WeightsError, match="does not fit Light-ASD"):
        load_light_asd(str(shared / "weights" / "mobilefacenet" / "mobilefacenet.pt"))
    with pytest.raises(WeightsError, match="variant"):
        load_light_asd(variant="columbia")


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features", reason="the reference MFCC package is not installed")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16123)).astype(np.float32)
    pcm = np.clip(np.round(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    ref = psf.mfcc(pcm, RATE, numcep=13, winlen=0.025, winstep=0.010)
    assert np.abs(ref - mfcc(audio)).max() < 1e-4


# ---------------------------------------------------------------- real talking faces (../shared/media)

def decode_25fps(path, max_frames: int = 1024):
    from avemo.core.config import load_config
    from avemo.pipeline.config import BuildConfig, DecodeConfig
    from avemo.pipeline.decode import decode_clip, plan_decode
    from avemo.pipeline.probe import ffmpeg_source, probe_clip
    cfg = load_config(BuildConfig, "build", None, [], {})
    probe = probe_clip(path, cfg.probe, cfg.audio, any_kind=True)
    return decode_clip(ffmpeg_source(path), plan_decode(probe, DecodeConfig(fps=25, max_frames=max_frames)))


@pytest.fixture(scope="module")
def finder():
    from avemo.inference.speaker import SpeakerConfig, SpeakerFinder
    return SpeakerFinder(SpeakerConfig(encoders_once=True))    # one visual pass: the suite stays quick


def test_a_real_face_speaks_with_its_own_voice_not_with_it_shifted_or_muted(media, finder):
    """CREMA-D: a real actor saying "Don't forget a jacket" (bench/asd_check.py measures all clips)."""
    clip = decode_25fps(media / "crema-d" / "1001_DFA_ANG_XX.flv")
    found = finder(clip.frames, clip.times, clip.audio)
    assert len(found.tracks) == 1 and found.speaker() is not None and found.speaker()[0] == 0
    track = found.tracks[0]
    times, ids, boxes = track_samples(track, clip.times)
    crops = grey_crops(clip.frames, ids, crop_squares(boxes))
    own = clip.audio[int(round(times[0] * RATE)):]
    muted = (1e-4 * np.random.default_rng(0).standard_normal(len(own))).astype(np.float32)
    logodds = finder.asd.speaking_logodds(crops, [own, np.roll(own, RATE), muted], encoders_once=True)
    probs = (1 / (1 + np.exp(-logodds.astype(np.float64)))).mean(1)
    assert probs[0] > 0.4 and probs[0] > 2 * probs[1] and probs[0] > 10 * probs[2], probs
    assert found.speech[0].probs.mean() == pytest.approx(probs[0], abs=1e-3)   # score_tracks: same crops, audio
    # lip sync: the lips move in step with their own voice, less with another take of the same sentence
    other = decode_25fps(media / "crema-d" / "1001_DFA_DIS_XX.flv").audio
    sync_own = correlation(lip_motion(crops), voice_envelope(own, len(crops)))
    sync_other = correlation(lip_motion(crops), voice_envelope(other, len(crops)))
    assert sync_own > 0.6 and sync_own > sync_other + 0.15, (sync_own, sync_other)
    motion = lip_motion(crops)                                          # score_tracks' sync: capped motion
    capped = correlation(np.minimum(motion, np.percentile(motion, SYNC_CAP)), voice_envelope(own, len(crops)))
    assert found.speech[0].sync(0, 99) == pytest.approx(capped, abs=1e-6) and capped > 0.6
    assert found.speech[0].prob > probs[0]                              # ... which raises its probability
    rms = np.array([np.sqrt(np.mean(own[i * 640:(i + 1) * 640] ** 2)) for i in range(len(crops))])
    speech = rms > 0.2 * rms.max()                                      # frames while the voice sounds
    frame = found.speech[0].probs
    assert frame[speech].mean() > 0.7 and frame[:5].mean() < 0.3       # before the first word: not speaking


def test_no_audio_and_no_face_give_no_speaking_mark(media, finder):
    silent = decode_25fps(media / "fer_test.mp4", max_frames=8)         # a face, no audio stream
    found = finder(silent.frames, silent.times, silent.audio)
    assert silent.audio is None and len(found.tracks) >= 1 and found.speech == [] and found.speaker() is None
    empty = decode_25fps(media / "no_face.mp4", max_frames=8)
    found = finder(empty.frames, empty.times, empty.audio)
    assert found.tracks == [] and found.speech == [] and found.speaker() is None
