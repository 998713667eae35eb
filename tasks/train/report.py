"""Figures of one training run: learning curves, the validation confusion matrix, accuracy with its interval."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix


def accuracy_interval(correct: int, total: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy of correct / total."""
    if total == 0:
        return (0.0, 0.0)
    ci = binomtest(correct, total).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def majority_baseline(train_labels: np.ndarray, val_labels: np.ndarray) -> float:
    """Accuracy of always predicting the training side's most frequent class."""
    return float((val_labels == np.bincount(train_labels).argmax()).mean())


def learning_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    frame = pd.DataFrame(history)
    frame.index.name = "epoch"
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    frame[["train_loss", "val_loss"]].plot(ax=loss_ax, marker=".")
    loss_ax.set_ylabel("cross-entropy")
    columns = [c for c in ("train_accuracy", "val_accuracy", "val_clip_accuracy") if c in frame]
    frame[columns].plot(ax=acc_ax, marker=".")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], png: Path, csv: Path, title: str,
              normalise: bool = False) -> np.ndarray:  # fmt: skip
    """The confusion matrix (rows actual, columns predicted) as CSV and PNG; row-normalised on request."""
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    if normalise:
        rows = matrix.sum(1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    pd.DataFrame(matrix, index=pd.Index(classes, name="actual"), columns=classes).to_csv(csv)
    fig, ax = plt.subplots(figsize=(6, 5))
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=ax, colorbar=False, xticks_rotation=45,
                                                               values_format=".2f" if normalise else "d")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return matrix
