"""The suite's tiny training recipe; tests/conftest.py's session fixture `tiny_checkpoint` trains it once."""
from __future__ import annotations

# the one tiny training recipe of the suite (CPU, seconds); tests add or override keys after it
TINY = ["device=cpu", "data.batch_size=4", "data.workers=0", "data.max_frames=4", "data.max_mel_frames=300",
        "model.face_trainable=none", "model.face_weights=auto", "data.shuffle_buffer=16", "log_every=1"]
TINY_TRAIN = [*TINY, "data.max_frames=8", "data.max_mel_frames=400", "optim.epochs=1"]
