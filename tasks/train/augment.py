"""Batch augmentation of log-mel slices: the study's brightness and contrast, SpecAugment masks, mixup.

All draws come from the caller's generator, so an epoch's augmentation is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.config import AugmentConfig


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _masks(n: int, size: int, count: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """n x size booleans: `count` stripes of up to `width` per example."""
    keep = torch.ones(n, size, dtype=torch.bool)
    if not count or not width:
        return keep
    widths = torch.randint(0, width + 1, (n, count), generator=generator)
    starts = (torch.rand(n, count, generator=generator) * (size - widths + 1)).long()
    index = torch.arange(size)
    for c in range(count):
        keep &= ~((index >= starts[:, c:c + 1]) & (index < (starts + widths)[:, c:c + 1]))
    return keep


def augment_batch(x: torch.Tensor, target: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
                  ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """x: batch x 1 x bands x frames (log-mel), target: batch x classes (one-hot or soft)."""
    n, _, bands, frames = x.shape
    device = x.device
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator).to(device).view(n, 1, 1, 1) + mean
    if cfg.brightness:
        x = x + _uniform(n, -cfg.brightness, cfg.brightness, generator).to(device).view(n, 1, 1, 1)
    if (cfg.time_masks and cfg.time_mask_frames) or (cfg.freq_masks and cfg.freq_mask_bands):
        # A masked cell takes the image's mean, not zero: zero is loud in log-mel terms.
        keep_t = _masks(n, frames, cfg.time_masks, cfg.time_mask_frames, generator).to(device)
        keep_f = _masks(n, bands, cfg.freq_masks, cfg.freq_mask_bands, generator).to(device)
        keep = (keep_f[:, None, :, None] & keep_t[:, None, None, :])
        x = torch.where(keep, x, x.mean(dim=(1, 2, 3), keepdim=True))
    if cfg.mixup_alpha:
        # torch's Beta takes no generator: draw it with numpy, seeded from the epoch's generator.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(cfg.mixup_alpha, cfg.mixup_alpha, n)).float()
        lam = lam.to(device)
        partner = torch.randperm(n, generator=generator).to(device)
        x = lam.view(n, 1, 1, 1) * x + (1 - lam.view(n, 1, 1, 1)) * x[partner]
        target = lam.view(n, 1) * target + (1 - lam.view(n, 1)) * target[partner]
    return x, target
