"""The ONE label map shared by the pipeline (writer) and training (reader).

Bump LABEL_MAP_VERSION whenever the order or the names change: every sample records the version it was
written with, and the reader refuses shards written with another one.
"""
from __future__ import annotations

LABEL_MAP_VERSION = "meld-emotion7-sentiment3-v1"

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")

EMOTION_TO_ID = {name: i for i, name in enumerate(EMOTIONS)}
SENTIMENT_TO_ID = {name: i for i, name in enumerate(SENTIMENTS)}


def emotion_id(name: str) -> int | None:
    return EMOTION_TO_ID.get(name.strip().lower())


def sentiment_id(name: str) -> int | None:
    return SENTIMENT_TO_ID.get(name.strip().lower())
