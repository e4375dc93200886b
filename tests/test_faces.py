"""Batched RetinaFace + speaker selection + crops on the real videos in ../shared/media."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avemo.pipeline.config import BuildConfig, FaceConfig
from avemo.pipeline.decode import decode_clip, plan_decode
from avemo.pipeline.faces import _cached_detector, get_detector, speaker_faces
from avemo.pipeline.probe import ffmpeg_source, probe_clip
from avemo.core.weights import WeightsError, resolve_weights

CFG = BuildConfig()


def _decode(path):
    probe = probe_clip(path, CFG.probe, CFG.audio)
    assert probe.ok, probe
    return decode_clip(ffmpeg_source(path), plan_decode(probe, CFG.decode))


@pytest.fixture(scope="module")
def clips(media):
    names = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "no_face.mp4", "fer_test.mp4"]
    return {name: _decode(media / name) for name in names}


@pytest.fixture(scope="module")
def tracks(clips):
    detector = get_detector(CFG.face)
    frames = [f for d in clips.values() for f in d.frames]          # one batched pass over all clips
    dets = detector.detect(frames)
    out, i = {}, 0
    for name, d in clips.items():
        out[name] = speaker_faces(d.frames, dets[i: i + len(d.frames)], CFG.face)
        i += len(d.frames)
    return out


def test_faces_found_where_there_are_faces(tracks):
    for name in ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "fer_test.mp4"]:
        assert tracks[name].mask.mean() >= 0.9, (name, tracks[name].mask)
        assert tracks[name].crops.shape[1:] == (112, 112, 3)
    assert tracks["no_face.mp4"].mask.sum() == 0
    assert tracks["no_face.mp4"].crops.shape[0] == 0
    mov = tracks["face_noface.mov"].mask                           # the face leaves the frame
    assert mov[:3].all() and not mov[-3:].any()


def test_boxes_are_normalised_and_scored(tracks):
    t = tracks["single_face.mp4"]
    present = t.boxes[t.mask.astype(bool)]
    assert ((present[:, :4] >= 0) & (present[:, :4] <= 1)).all()
    assert (present[:, 2] > present[:, 0]).all() and (present[:, 4] >= CFG.face.score_threshold).all()
    assert (t.boxes[~t.mask.astype(bool)] == 0).all()


def test_crops_are_the_same_person_per_clip(tracks, shared):
    """Aligned crops through the real MobileFaceNet: same video = same identity, others differ."""
    from avemo.model.mobilefacenet import MobileFaceNet
    from avemo.model.net import FACE_MEAN, FACE_STD
    from avemo.core.weights import load_state_dict
    net = MobileFaceNet().eval()
    net.load_state_dict(load_state_dict(shared / "weights/mobilefacenet/mobilefacenet.pt"))
    mean, std = torch.tensor(FACE_MEAN).view(1, 3, 1, 1), torch.tensor(FACE_STD).view(1, 3, 1, 1)

    def embed(crops):
        x = (torch.from_numpy(crops[:6]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.no_grad():
            return torch.nn.functional.normalize(net(x), dim=1)
    a, b = embed(tracks["single_face.mp4"].crops), embed(tracks["WolfgangLanger_Pexels.mp4"].crops)
    assert float((a @ a.T).mean()) > 0.6 and float((b @ b.T).mean()) > 0.5
    assert float((a @ b.T).mean()) < 0.3


def test_batching_does_not_change_detections(clips):
    detector = get_detector(CFG.face)
    frames = list(clips["single_face.mp4"].frames[:4]) + list(clips["fer_test.mp4"].frames[:4])  # mixed sizes
    batched = detector.detect(frames)
    for frame, det in zip(frames, batched):
        single = detector.detect([frame])[0]
        assert len(single.scores) == len(det.scores)
        np.testing.assert_allclose(single.boxes, det.boxes, atol=0.5)


def test_detector_is_loaded_once_per_process():
    before = _cached_detector.cache_info().misses     # detectors this process built
    for _ in range(3):
        get_detector(FaceConfig())
    assert _cached_detector.cache_info().misses - before <= 1


def test_weights_resolution_is_explicit_about_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("AVEMO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("AVEMO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="no resnet50 weights"):
        resolve_weights("resnet50", download=False)
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("mobilenet0.25", str(tmp_path / "nope.pth"))


def test_resnet50_backend_matches_the_retina_face_package_decoding():
    """Our batched anchor decoding of the retina-face ResNet-50 network equals the package's numpy code."""
    from retinaface.commons import postprocess
    from avemo.pipeline.retinaface import ResNet50RetinaFace
    torch.manual_seed(0)
    model = ResNet50RetinaFace().eval()
    frames = torch.randint(0, 255, (2, 3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        boxes, scores, landmarks = model(frames)
        outs = [o.numpy() for o in model.net(frames.float().permute(0, 2, 3, 1))]
    stride_offset = 0
    for i, stride in enumerate((32, 16, 8)):
        bbox = outs[3 * i + 1][1]                                          # image 1
        h, w = bbox.shape[:2]
        anchors = postprocess.anchors_plane(h, w, stride, np.array(model.base_anchors[stride], dtype=np.float32))
        ref = postprocess.bbox_pred(anchors.reshape(-1, 4), bbox.reshape(-1, 4).copy())
        n = ref.shape[0]
        np.testing.assert_allclose(boxes[1, stride_offset: stride_offset + n].numpy(), ref, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(scores[1, stride_offset: stride_offset + n].numpy(),
                                   outs[3 * i][1][..., 2:].reshape(-1), rtol=1e-5, atol=1e-6)
        stride_offset += n


@pytest.mark.unit
def test_folded_detector_gives_the_same_outputs():
    import copy
    from avemo.pipeline.retinaface import MobileNetRetinaFace, fold_batchnorm
    torch.manual_seed(0)
    net = MobileNetRetinaFace().eval()
    for m in net.modules():   # BatchNorm with statistics of its own, so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    frames = torch.rand(2, 3, 96, 128) * 255
    with torch.inference_mode():
        for a, b in zip(net(frames), folded.to(memory_format=torch.channels_last)(
                frames.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)
