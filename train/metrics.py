"""Classification metrics from a confusion matrix (numpy), the numbers the MELD literature reports:
accuracy, weighted F1 (by support), macro F1, per-class precision/recall/F1/support."""
from __future__ import annotations

import numpy as np

from avemo.shards.labels import EMOTIONS


def confusion(labels: np.ndarray, preds: np.ndarray, n: int = len(EMOTIONS)) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm  # rows: true class, columns: predicted


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_metrics(labels, preds, names=EMOTIONS) -> dict:
    cm = confusion(labels, preds, len(names))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    precision = _div(tp, cm.sum(0).astype(np.float64))
    recall = _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    total = support.sum()
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),  # over all classes, absent ones count as 0 (sklearn labels=all)
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(names)},
        "confusion": cm.tolist(),
        "labels": list(names),
    }
