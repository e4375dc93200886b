"""Batched face detection over the frames of many clips, speaker-face selection, and 112x112 crops.

Detection runs on batches of `face.batch_frames` frames drawn from several clips (GPU when present,
AMP fp16 there), decodes anchors for the whole batch and runs one torchvision batched NMS. Per clip, the
speaker's face is the highest-weight IoU track (score x size), gaps filled from the next tracks; crops are
aligned by the 5 landmarks (ArcFace template) or cut from the box with a margin, all in one grid_sample.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

from avemo.core.errors import WeightsError
from avemo.core.config import resolve_device
from avemo.pipeline.config import FaceConfig
from avemo.pipeline.retinaface import BACKENDS, fold_batchnorm
from avemo.core.weights import load_state_dict, resolve_weights

# ArcFace 112x112 five-point template: eye, eye, nose, mouth corner, mouth corner (image left first)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

@dataclass
class FrameDets:
    boxes: np.ndarray      # (n, 4) xyxy pixels of the detector frame
    scores: np.ndarray     # (n,)
    landmarks: np.ndarray  # (n, 5, 2)
    whole: bool = False    # the image taken whole as the face (face.image_mode=whole), not a detection


@dataclass
class FaceTrack:
    mask: np.ndarray       # (T,) uint8
    boxes: np.ndarray      # (T, 5) float32: x1, y1, x2, y2 normalised to [0, 1], score
    crops: np.ndarray      # (mask.sum(), S, S, 3) uint8


class FaceDetector:
    def __init__(self, cfg: FaceConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "face.device")
        model = BACKENDS[cfg.backend]()
        state = load_state_dict(resolve_weights(cfg.backend, cfg.weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(f"{cfg.backend} weights do not fit the network: missing {list(missing)[:3]}, "
                               f"unexpected {list(unexpected)[:3]}")
        # BatchNorm folded into the convolutions and NHWC activations (channels_last): ~20 % less CPU per frame
        # here, the same detections (boxes within 1e-3 px)
        self.model = fold_batchnorm(model.eval()).to(self.device)
        self.model.to(memory_format=torch.channels_last)   # type: ignore[call-overload]  # (stubs lack it)
        # CPU: small batches stay in cache (26.7 -> 14.3 ms/frame at 640x360); a GPU wants many frames per pass
        self.batch_frames = cfg.batch_frames or (64 if self.device.type == "cuda" else 8)

    def _stack(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames -> (B, 3, H, W) float batch on the device, each shrunk to face.detect_size (long side)
        on its own, padded with the mean colour (reads as 0 to the network); and the (B,) scales used."""
        scales = [min(1.0, self.cfg.detect_size / max(f.shape[:2])) for f in frames]
        sizes = [(round(f.shape[0] * s), round(f.shape[1] * s)) for f, s in zip(frames, scales)]
        h, w = max(z[0] for z in sizes), max(z[1] for z in sizes)
        batch = torch.empty((len(frames), 3, h, w), device=self.device)
        batch[:] = torch.tensor([123.0, 117.0, 104.0], device=self.device).view(1, 3, 1, 1)
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape, []).append(i)
        for shape, idx in groups.items():  # one upload and one resize per distinct frame size
            block = torch.from_numpy(np.stack([frames[i] for i in idx]))
            if self.device.type == "cuda":
                block = block.pin_memory()
            block = block.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # (n, 3, h, w)
            th, tw = sizes[idx[0]]
            if (th, tw) != shape[:2]:
                block = F.interpolate(block, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
            batch[idx, :, :th, :tw] = block
        return batch, torch.tensor(scales, device=self.device)

    @torch.inference_mode()
    def detect(self, frames: list[np.ndarray]) -> list[FrameDets]:
        out: list[FrameDets] = []
        for start in range(0, len(frames), self.batch_frames):
            out.extend(self._detect_batch(frames[start: start + self.batch_frames]))
        return out

    def _detect_batch(self, frames: list[np.ndarray]) -> list[FrameDets]:
        batch, scales = self._stack(frames)                       # (B, 3, H, W), (B,)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            boxes, scores, landmarks = self.model(batch.contiguous(memory_format=torch.channels_last))
        # boxes (B, A, 4), scores (B, A), landmarks (B, A, 5, 2)
        # back to decoded-frame pixels, where the crops are cut
        boxes = boxes.float() / scales.view(-1, 1, 1)
        landmarks = landmarks.float() / scales.view(-1, 1, 1, 1)
        scores = scores.float()
        frame_idx, anchor_idx = torch.nonzero(scores >= self.cfg.score_threshold, as_tuple=True)
        b, s, lm = boxes[frame_idx, anchor_idx], scores[frame_idx, anchor_idx], landmarks[frame_idx, anchor_idx]
        sizes = torch.tensor([[f.shape[1], f.shape[0]] for f in frames], device=b.device, dtype=b.dtype)
        wh = sizes[frame_idx]
        b = torch.stack([b[:, 0].clamp(min=0), b[:, 1].clamp(min=0),
                         torch.minimum(b[:, 2], wh[:, 0]), torch.minimum(b[:, 3], wh[:, 1])], dim=1)
        big = ((b[:, 2] - b[:, 0]) >= self.cfg.min_face_px) & ((b[:, 3] - b[:, 1]) >= self.cfg.min_face_px)
        b, s, lm, frame_idx = b[big], s[big], lm[big], frame_idx[big]
        keep = batched_nms(b, s, frame_idx, self.cfg.nms_iou)   # one NMS call for the whole batch
        boxes, scores, marks, owner = (t[keep].cpu().numpy() for t in (b, s, lm, frame_idx))
        dets = []
        for i in range(len(frames)):
            sel = owner == i
            dets.append(FrameDets(boxes[sel], scores[sel], marks[sel]))
        return dets


@functools.lru_cache(maxsize=4)
def _cached_detector(cfg_key: tuple) -> FaceDetector:
    return FaceDetector(FaceConfig(**dict(cfg_key)))


def get_detector(cfg: FaceConfig) -> FaceDetector:
    """One detector per (config, process): a Dask worker keeps it for its lifetime."""
    return _cached_detector(tuple(sorted(vars(cfg).items())))


def _tracks(dets: list[FrameDets], iou_thr: float) -> list[list[tuple[int, int]]]:
    """Greedy IoU linking; a track is a list of (frame, detection index)."""
    tracks: list[list[tuple[int, int]]] = []
    last_boxes: list[np.ndarray] = []
    for t, frame in enumerate(dets):
        if len(frame.scores) == 0:
            continue
        used: set[int] = set()
        if tracks:
            iou = box_iou(torch.from_numpy(frame.boxes), torch.from_numpy(np.stack(last_boxes))).numpy()
            for d, k in sorted(np.ndindex(*iou.shape), key=lambda p: -iou[p]):
                if iou[d, k] < iou_thr:
                    break
                if d in used or tracks[k][-1][0] == t:
                    continue
                tracks[k].append((t, d))
                last_boxes[k] = frame.boxes[d]
                used.add(d)
        for d in range(len(frame.scores)):
            if d not in used:
                tracks.append([(t, d)])
                last_boxes.append(frame.boxes[d])
    return tracks


def select_speaker(dets: list[FrameDets], iou_thr: float) -> list[int | None]:
    """Per frame, the index of the speaker's detection (or None)."""
    def weight(track):
        total = 0.0
        for t, d in track:
            x1, y1, x2, y2 = dets[t].boxes[d]
            total += float(dets[t].scores[d]) * float(np.sqrt(max(x2 - x1, 0) * max(y2 - y1, 0)))
        return total
    choice: list[int | None] = [None] * len(dets)
    for track in sorted(_tracks(dets, iou_thr), key=weight, reverse=True):
        for t, d in track:
            if choice[t] is None:
                choice[t] = d
    return choice


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity M (2x3) with M @ [dst, 1] ~= src (crop pixel -> frame pixel)."""
    u, v = dst[:, 0], dst[:, 1]
    ones, zeros = np.ones_like(u), np.zeros_like(u)
    a = np.concatenate([np.stack([u, -v, ones, zeros], 1), np.stack([v, u, zeros, ones], 1)])
    rhs = np.concatenate([src[:, 0], src[:, 1]])
    (p, q, tx, ty), *_ = np.linalg.lstsq(a, rhs, rcond=None)
    return np.array([[p, -q, tx], [q, p, ty]], dtype=np.float64)


def crop_transform(box: np.ndarray, landmarks: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    size = cfg.crop_size
    if cfg.crop == "align":
        return _similarity(landmarks.astype(np.float64), ARCFACE_TEMPLATE.astype(np.float64) * size / 112.0)
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * cfg.margin)
    scale = side / size
    left, top = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    return np.array([[scale, 0, left + 0.5 * scale - 0.5], [0, scale, top + 0.5 * scale - 0.5]])


def _theta(m: np.ndarray, size: int, width: int, height: int) -> np.ndarray:
    # crop-pixel -> frame-pixel affine M, rewritten for affine_grid's normalised coords (align_corners=False)
    rows = []
    for r, extent in ((m[0], width), (m[1], height)):
        rows.append([r[0] * size / extent, r[1] * size / extent,
                     (r[0] * (size - 1) + r[1] * (size - 1) + 2 * r[2] + 1) / extent - 1])
    return np.array(rows, dtype=np.float32)


def crop_faces(frames: np.ndarray, matrices: list[np.ndarray], frame_ids: list[int], size: int) -> np.ndarray:
    """frames (T, H, W, 3) uint8 -> (n, size, size, 3) uint8 crops, one grid_sample for all."""
    if not frame_ids:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    h, w = frames.shape[1:3]
    src = torch.from_numpy(frames[frame_ids]).permute(0, 3, 1, 2).float()           # (n, 3, H, W)
    theta = torch.from_numpy(np.stack([_theta(m, size, w, h) for m in matrices]))     # (n, 2, 3)
    grid = F.affine_grid(theta, [len(frame_ids), 3, size, size], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def speaker_faces(frames: np.ndarray, dets: list[FrameDets], cfg: FaceConfig,
                  choice: list[int | None] | None = None) -> FaceTrack:
    """The strip of one face per frame: `choice` (per frame, a detection index or None), else select_speaker's."""
    t_count, h, w = frames.shape[:3]
    if choice is None:
        choice = select_speaker(dets, cfg.track_iou)
    mask = np.array([c is not None for c in choice], dtype=np.uint8)
    boxes = np.zeros((t_count, 5), dtype=np.float32)
    matrices, ids = [], []
    for t, d in enumerate(choice):
        if d is None:
            continue
        x1, y1, x2, y2 = dets[t].boxes[d]
        boxes[t] = (x1 / w, y1 / h, x2 / w, y2 / h, dets[t].scores[d])
        matrices.append(crop_transform(dets[t].boxes[d], dets[t].landmarks[d], cfg))
        ids.append(t)
    return FaceTrack(mask=mask, boxes=boxes, crops=crop_faces(frames, matrices, ids, cfg.crop_size))


PAD_GREY = 128


def _padded(h: int, w: int, cfg: FaceConfig) -> tuple[int, int, int] | None:
    """(scaled height, scaled width, canvas side) of an h x w image that pad_small_frames pads, else None."""
    if not cfg.pad_small_images or max(h, w) >= cfg.pad_target_px:
        return None
    scale = cfg.pad_target_px / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale)), cfg.pad_canvas_px


def pad_small_frames(frames: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """(T, h, w, 3) uint8 frames of an image smaller than face.pad_target_px (long side) -> scaled up to it
    and centred on a grey (T, C, C, 3) canvas, C = face.pad_canvas_px: the margin a detector trained on
    faces in scenes needs around a tightly cropped face. Larger frames, or the setting off: unchanged."""
    t, h, w = frames.shape[:3]
    padded = _padded(h, w, cfg) if t else None
    if padded is None:
        return frames
    nh, nw, side = padded
    block = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()      # (T, 3, h, w)
    block = F.interpolate(block, size=(nh, nw), mode="bicubic", align_corners=False)
    scaled = block.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()         # (T, nh, nw, 3)
    canvas = np.full((t, side, side, 3), PAD_GREY, dtype=np.uint8)
    top, left = (side - nh) // 2, (side - nw) // 2
    canvas[:, top: top + nh, left: left + nw] = scaled
    return canvas


def image_box(h: int, w: int, cfg: FaceConfig) -> np.ndarray:
    """x1, y1, x2, y2 (pixels) of an h x w image on the frame pad_small_frames makes of it."""
    padded = _padded(h, w, cfg)
    if padded is None:
        return np.array([0, 0, w, h], dtype=np.float32)
    nh, nw, side = padded
    top, left = (side - nh) // 2, (side - nw) // 2
    return np.array([left, top, left + nw, top + nh], dtype=np.float32)


# Where RetinaFace (mobilenet0.25, on the padded frame) puts the face of an already-cropped face image, as
# fractions of the image: the median box and five landmarks (eyes, nose, mouth corners; made left-right
# symmetric) of its detections on 384 of 400 seeded FER2013 training faces. face.image_mode=whole crops
# every image as if these were its detection, so its crops are framed like the detector's (and predict's).
WHOLE_FACE_BOX = np.array([0.10, 0.01, 0.90, 1.00], dtype=np.float32)
WHOLE_FACE_LANDMARKS = np.array([[0.312, 0.390], [0.688, 0.390], [0.500, 0.590], [0.350, 0.760], [0.650, 0.760]],
                                dtype=np.float32)
BLANK_STD = 2.0   # grey levels: an image this flat (one colour, a blank scan) has no face to crop


def whole_face(image: np.ndarray, box: np.ndarray, cfg: FaceConfig) -> FrameDets | str:
    """face.image_mode=whole: the image (h, w, 3) is the face; its detection on the frame where it fills
    `box` (image_box), score 1, or why it cannot be a face (blank, smaller than face.min_face_px)."""
    h, w = image.shape[:2]
    if min(h, w) < cfg.min_face_px:
        return f"the image ({w}x{h}) is smaller than face.min_face_px={cfg.min_face_px:g}"
    if float(image.std()) < BLANK_STD:
        return "the image is blank (one colour)"
    x1, y1, x2, y2 = box
    scale = np.array([x2 - x1, y2 - y1], dtype=np.float32)
    origin = np.array([x1, y1], dtype=np.float32)
    face_box = np.concatenate([origin + WHOLE_FACE_BOX[:2] * scale, origin + WHOLE_FACE_BOX[2:] * scale])
    marks = origin + WHOLE_FACE_LANDMARKS * scale                                               # (5, 2)
    return FrameDets(boxes=face_box[None], scores=np.ones(1, np.float32), landmarks=marks[None], whole=True)
