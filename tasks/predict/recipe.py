"""What a model sees of one audio file, made as its training data was made: the feature settings come from
the model's card (`features.params`, the features stage's own params as its dataset recorded them).

Spectrogram models see every square slice of the file (features_slices' own slicing and front end).
VGGish models see the file's 0.96 s examples in consecutive windows of `sequence_length` (10 x 0.96 s, the
clip length they learned from): a 3 minute song is 18 windows, each a row that votes, as slices do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from tasks.audio import AudioError
from tasks.config import FeaturesSlicesConfig, FeaturesVggishConfig
from tasks.errors import PipelineError
from tasks.features.frontend import Spectrogram, isolate_vocals, prepare_audio
from tasks.features.slices import slice_clip
from tasks.features.vggish import EMBEDDING_SIZE, EXAMPLE_FRAMES, Postprocessor, VGGish, embed, examples, load_model
from tasks.train.data import ClipData, dequantize

STAGES = ("features_slices", "features_vggish")


class RecipeError(PipelineError):
    """A model whose card does not say how its features were made; the message names what is missing."""


@dataclass(frozen=True)
class Rows:
    """One file's model inputs: rows x (1 x bands x frames) slices, or rows x steps x 128 windows."""

    inputs: torch.Tensor
    real_share: np.ndarray  # share of each row that is audio, not padding
    start: np.ndarray  # first sample of each row, at the front end's rate
    end: np.ndarray  # end sample of each row's audio
    lengths: np.ndarray | None  # windows: real steps per row
    seconds: float


class Recipe:
    """The card's features for any decoded file; `rows` raises AudioError for audio no model should see."""

    features: str
    sample_rate: int
    min_seconds: float

    def rows(self, pcm: np.ndarray, rate: int) -> Rows:
        """float32 frames x channels at `rate` -> the model's rows."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class SliceRecipe(Recipe):
    features = "slices"

    def __init__(self, cfg: FeaturesSlicesConfig, min_seconds: float | None) -> None:
        self.cfg = cfg
        self.sample_rate = cfg.frontend.sample_rate
        self.min_seconds = cfg.slice_seconds if min_seconds is None else min_seconds
        self.spectrogram = Spectrogram(cfg.frontend)

    def rows(self, pcm: np.ndarray, rate: int) -> Rows:
        cfg = self.cfg
        samples = checked_audio(pcm, rate, self, cfg.checks)
        if cfg.vocal_isolation:
            samples = isolate_vocals(samples, self.sample_rate)
        tensors, start, end = slice_clip(samples, cfg, self.spectrogram)
        span = cfg.frontend.n_bands * cfg.frontend.hop_length
        # float32 of the stored dtype's values: what the model saw in training.
        inputs = torch.from_numpy(tensors).float().unsqueeze(1)
        return Rows(inputs, (end - start) / span, start, end, None, samples.size / self.sample_rate)

    def describe(self) -> str:
        fe = self.cfg.frontend
        return (f"{self.cfg.slice_seconds:g} s slices of {fe.n_bands} {fe.scale} bands at {fe.sample_rate} Hz "
                f"(overlap {self.cfg.overlap:g}, tail {self.cfg.tail})")  # fmt: skip


class WindowRecipe(Recipe):
    features = "vggish"

    def __init__(self, cfg: FeaturesVggishConfig, root: Path, sequence_length: int, min_seconds: float | None,
                 device: torch.device) -> None:  # fmt: skip
        self.cfg = cfg
        fe = cfg.frontend
        self.sample_rate = fe.sample_rate
        self.span = (EXAMPLE_FRAMES - 1) * fe.hop_length + fe.win_length  # samples one example sees
        self.min_seconds = self.span / fe.sample_rate if min_seconds is None else min_seconds
        self.sequence_length = sequence_length
        self.device = device
        self.spectrogram = Spectrogram(fe)
        model, post, self.weights = load_model(cfg, root)
        self.model: VGGish = model.to(device)
        self.post: Postprocessor = post

    def rows(self, pcm: np.ndarray, rate: int) -> Rows:
        cfg, fe, steps = self.cfg, self.cfg.frontend, self.sequence_length
        samples = checked_audio(pcm, rate, self, cfg.checks)
        batch = examples(self.spectrogram(torch.from_numpy(samples)), cfg.example_hop_frames)
        if len(batch) == 0:
            raise AudioError("too_short", f"{samples.size / fe.sample_rate:.3f} s is shorter than one VGGish "
                                          f"example ({self.span / fe.sample_rate:.3f} s)")  # fmt: skip
        embeddings = dequantize(embed(self.model, self.post, batch, cfg, self.device), {"params": cfg.model_dump()})
        n_windows = -(-len(batch) // steps)
        inputs = torch.zeros(n_windows, steps, EMBEDDING_SIZE)
        lengths = np.zeros(n_windows, np.int64)
        for w in range(n_windows):
            part = embeddings[w * steps : (w + 1) * steps]
            inputs[w, : len(part)] = part
            lengths[w] = len(part)
        hop = cfg.example_hop_frames * fe.hop_length
        start = np.arange(n_windows) * steps * hop
        end = np.minimum(start + (lengths - 1) * hop + self.span, samples.size)
        return Rows(inputs, lengths / steps, start, end, lengths, samples.size / fe.sample_rate)

    def describe(self) -> str:
        weights = "SEEDED RANDOM VGGish weights" if self.weights["vggish"]["random"] else "published VGGish weights"
        return f"VGGish embeddings ({weights}) in windows of {self.sequence_length} x 0.96 s"


def checked_audio(pcm: np.ndarray, rate: int, recipe: Recipe, checks: Any) -> np.ndarray:
    """Mono float32 at the recipe's rate, refused when silent, clipped or shorter than the recipe's least."""
    samples = prepare_audio(pcm, rate, recipe.sample_rate, checks)
    if samples.size < recipe.min_seconds * recipe.sample_rate:
        raise AudioError("too_short", f"{samples.size / recipe.sample_rate:.3f} s is shorter than "
                                      f"{recipe.min_seconds:g} s (predict.min_seconds; null: one slice or one "
                                      "VGGish example)")  # fmt: skip
    return samples


def recipe_for(card: dict[str, Any], where: str, root: Path, min_seconds: float | None,
               device: torch.device) -> Recipe:  # fmt: skip
    """The recipe the card records; a card without feature settings is an error naming what it lacks."""
    features = card.get("features") or {}
    missing = [f"features.{k}" for k in ("stage", "params") if not features.get(k)]
    if missing:
        raise RecipeError(f"{where}: its model.json records no feature settings ({', '.join(missing)} missing): "
                          "a model trained before prediction existed cannot say how to slice audio; train it "
                          "again")  # fmt: skip
    stage = features["stage"]
    if stage not in STAGES:
        raise RecipeError(f"{where}: features.stage {stage!r} is not one of {sorted(STAGES)}")
    try:
        if stage == "features_slices":
            return SliceRecipe(FeaturesSlicesConfig.model_validate(features["params"]), min_seconds)
        cfg = FeaturesVggishConfig.model_validate(features["params"])
    except ValidationError as exc:
        raise RecipeError(f"{where}: features.params are not valid {stage} settings: "
                          f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None  # fmt: skip
    recipe = WindowRecipe(cfg, root, int(card["sequence_length"]), min_seconds, device)
    check_weights(recipe.weights, features.get("weights") or {}, where)
    return recipe


def check_weights(loaded: dict[str, Any], recorded: dict[str, Any], where: str) -> None:
    """The VGGish and PCA files fetched now must be those the model's embeddings came from: a mirror or a local
    path whose contents changed would give other embeddings without a word."""
    for key in ("vggish", "pca"):
        want, got = (recorded.get(key) or {}).get("sha256"), (loaded.get(key) or {}).get("sha256")
        if want and want != got:
            raise RecipeError(f"{where}: its embeddings came from the {key} file with sha256 {want[:16]}..., but "
                              f"{loaded[key].get('url', 'the seeded random weights')} is "
                              f"{(got or 'random')[:16]}...: fetch the file the model learned from")  # fmt: skip


def clip_data(rows: list[Rows], recipe: Recipe, classes: list[str], metadata: dict[str, Any]) -> ClipData:
    """Several files' rows as the ClipData the trained models predict from (one clip per file)."""
    row_clip = np.concatenate([np.full(len(r.real_share), i) for i, r in enumerate(rows)])
    lengths = np.concatenate([r.lengths for r in rows]) if recipe.features == "vggish" else None  # type: ignore[misc]
    n = len(rows)
    return ClipData(recipe.features, torch.cat([r.inputs for r in rows]), row_clip,
                    np.concatenate([r.real_share for r in rows]), lengths, [str(i) for i in range(n)],
                    np.full(n, -1), np.full(n, -1), classes, metadata, [[] for _ in range(n)],
                    np.concatenate([r.start for r in rows]), np.concatenate([r.end for r in rows]))  # fmt: skip
