"""One training loop for every torch architecture: seeded, checkpointed each epoch, resumable.

A run killed at any point and started again resumes from its last epoch's checkpoint and ends
with the same weights as an uninterrupted run: shuffling, augmentation and dropout draw from
generators seeded by (seed, epoch), so an epoch does not depend on the process that runs it.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.config import ArchConfig, AugmentConfig
from tasks.evaluate import voting
from tasks.storage import temp_path
from tasks.train.augment import augment_batch
from tasks.train.data import ClipData, Split, class_weights
from tasks.train.models import MoodNet, logits_of, training_loss

log = logging.getLogger("tasks")
EVAL_BATCH = 64


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


@dataclass
class Scores:
    """Validation scores of one epoch: clip-level by the weighted vote, and slice (row) level."""

    loss: float
    row_accuracy: float
    clip_accuracy: float
    clip_pred: np.ndarray


@dataclass
class FitResult:
    model: MoodNet
    history: list[dict[str, float]]
    best_epoch: int
    scores: Scores | None = None  # on the validation side
    monitor_scores: Scores | None = None  # on the clips that chose the epoch (split.monitor)
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpoint:
    """The state after each epoch, written atomically; `stamp` ties it to one configuration."""

    def __init__(self, path: Path, stamp: str) -> None:
        self.path, self.stamp = path, stamp

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:
            log.warning("checkpoint %s unreadable (%s); starting from epoch 0", self.path, exc)
            return None
        if state.get("stamp") != self.stamp:
            log.warning("checkpoint %s is for another configuration or data; starting from epoch 0", self.path)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(self.path)
        torch.save({**state, "stamp": self.stamp}, tmp)
        os.replace(tmp, self.path)


def training_rows(data: ClipData, split: Split, min_real_share: float) -> np.ndarray:
    """Rows of the training clips with enough real audio; a clip keeps at least its fullest row."""
    rows = data.rows_of(split.train)
    keep = data.real_share[rows] >= min_real_share
    fullest = {}
    for row in rows:
        clip = data.row_clip[row]
        if clip not in fullest or data.real_share[row] > data.real_share[fullest[clip]]:
            fullest[clip] = row
    keep |= np.isin(rows, list(fullest.values()))
    return rows[keep]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float()
    if device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict_rows(model: MoodNet, data: ClipData, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class probabilities of the given input rows (eval mode, no gradients)."""
    model.eval()
    out = []
    with torch.no_grad(), autocast(device):
        for start in range(0, len(rows), EVAL_BATCH):
            batch = torch.from_numpy(rows[start:start + EVAL_BATCH])
            lengths = torch.from_numpy(data.lengths[batch.numpy()]) if data.lengths is not None else None
            out.append(torch.softmax(logits_of(model(to_device(data.inputs[batch], device), lengths)).float(), 1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(data.classes))


def vote(prob: np.ndarray, row_clip: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote per clip present (tasks.evaluate.voting states the rule). Returns (clips, predicted class)."""
    clips, inverse = np.unique(row_clip, return_inverse=True)
    return clips, voting.majority(voting.tally(prob, inverse, weights, len(clips)))


def evaluate(model: MoodNet, data: ClipData, clips: np.ndarray, device: torch.device, weighting: str) -> Scores:
    rows = data.rows_of(clips)
    prob = predict_rows(model, data, rows, device).numpy().astype(np.float64)
    target = data.clip_label[data.row_clip[rows]]
    weights = data.real_share[rows] if weighting == "real_share" else np.ones(len(rows))
    weights = np.maximum(weights, 1e-3)
    nll = -np.log(np.clip(prob[np.arange(len(rows)), target], 1e-12, None))
    voted, pred = vote(prob, data.row_clip[rows], weights)
    return Scores(
        loss=float((nll * weights).sum() / weights.sum()),
        row_accuracy=float((prob.argmax(1) == target).mean()),
        clip_accuracy=float((pred == data.clip_label[voted]).mean()),
        clip_pred=pred,
    )


def make_optimizer(model: nn.Module, cfg: ArchConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def fit(model: MoodNet, data: ClipData, split: Split, cfg: ArchConfig, augment: AugmentConfig, seed: int,
        device: torch.device, checkpoint: Checkpoint, min_real_share: float = 0.0, weighting: str = "real_share",
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:  # fmt: skip
    """Train until cfg.epochs or `patience` epochs without a lower loss on split.monitor; the best epoch's
    weights are returned. `on_epoch(epoch, row)` sees each epoch's figures (for MLflow)."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs, gamma=cfg.gamma)
    rows = training_rows(data, split, min_real_share)
    row_target = torch.from_numpy(data.clip_label[data.row_clip])
    criterion = nn.CrossEntropyLoss(weight=class_weights(row_target[rows].numpy(), len(data.classes)).to(device))
    history: list[dict[str, float]] = []
    best = {"loss": float("inf"), "epoch": -1, "state": None}
    start = 0
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        log.info("resuming from the checkpoint after epoch %d of %d", start, cfg.epochs)
    for epoch in range(start, cfg.epochs):
        if best["epoch"] >= 0 and epoch - best["epoch"] > cfg.patience:
            break
        started = time.monotonic()
        torch.manual_seed(epoch_seed(seed, epoch))  # dropout and init-free randomness of this epoch
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        model.train()
        loss_sum = correct = seen = 0.0
        for begin in range(0, len(order), cfg.batch_size):
            batch = torch.from_numpy(order[begin:begin + cfg.batch_size])
            if len(batch) < 2:
                continue  # batch norm cannot train on one example
            x = to_device(data.inputs[batch], device)
            target = nn.functional.one_hot(row_target[batch], len(data.classes)).float().to(device)
            if data.features == "slices":
                x, target = augment_batch(x, target, augment, generator)
            lengths = torch.from_numpy(data.lengths[batch.numpy()]) if data.lengths is not None else None
            with autocast(device):
                output = model(x, lengths)
                loss = training_loss(output, target, criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((logits_of(output).argmax(1) == target.argmax(1)).sum())
            seen += len(batch)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        scores = evaluate(model, data, split.val, device, weighting)
        row = {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "val_loss": scores.loss, "val_accuracy": scores.row_accuracy,
               "val_clip_accuracy": scores.clip_accuracy, "lr": lr}  # fmt: skip
        if len(split.inner):
            chooser = evaluate(model, data, split.inner, device, weighting)
            row.update(inner_loss=chooser.loss, inner_clip_accuracy=chooser.clip_accuracy)
        else:
            chooser = scores
        row["epoch_seconds"] = time.monotonic() - started
        history.append(row)
        if chooser.loss < best["loss"]:
            best = {"loss": chooser.loss, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        if on_epoch is not None:
            on_epoch(epoch, row)
        log.info("epoch %d/%d: train loss %.4f acc %.3f | choosing loss %.4f | val loss %.4f acc %.3f clip acc %.3f | "
                 "lr %.2g | %.1f s", epoch + 1, cfg.epochs, row["train_loss"], row["train_accuracy"], chooser.loss,
                 row["val_loss"], row["val_accuracy"], row["val_clip_accuracy"], lr, row["epoch_seconds"])  # fmt: skip
        checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "scheduler": scheduler.state_dict(), "history": history, "best": best})
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    result = FitResult(model, history, best["epoch"])
    result.scores = evaluate(model, data, split.val, device, weighting)
    result.monitor_scores = evaluate(model, data, split.monitor, device, weighting)
    return result
