"""Hard IoU and Dice of label maps: per class, per case, and pooled over a whole validation set (numpy)."""

from __future__ import annotations

import numpy as np


def iou_counts(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Intersection and union voxel counts per class: int64 array (num_classes, 2)."""
    if label.shape != prediction.shape:
        raise ValueError(f"label {label.shape} and prediction {prediction.shape} differ in shape.")
    label = label.ravel().astype(np.int64)
    prediction = prediction.ravel().astype(np.int64)
    # One bincount over the joint (label, prediction) codes gives the confusion matrix.
    confusion = np.bincount(label * num_classes + prediction, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    return np.stack([intersection, union], axis=1)


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """IoU per class from (num_classes, 2) counts; a class absent from both label and prediction scores 1.0."""
    intersection, union = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per class, 2·|A∩B| / (|A| + |B|) = 2I / (U + I), from (num_classes, 2) counts; 1.0 where the class is absent from both."""
    intersection, union = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
    return np.where(union > 0, 2 * intersection / np.maximum(union + intersection, 1), 1.0)


def mean_foreground_iou(counts: np.ndarray) -> float:
    """Mean IoU over the foreground classes (class 0, the background, left out)."""
    return float(iou_from_counts(counts)[1:].mean())
