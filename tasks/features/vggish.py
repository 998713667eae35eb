"""VGGish (Hershey et al. 2017) in PyTorch, as torchvggish publishes it, and the embedding stage.

Network: conv3x3 64, pool, conv 128, pool, conv 256 x2, pool, conv 512 x2, pool (2x2 stride 2),
then FC 4096, FC 4096, FC 128, each followed by ReLU (torchvggish keeps the ReLU after the
128-d layer, as the graph that made the AudioSet release did). Input: 96 frames x 64 mel bands.
Post-processing, each step a parameter: PCA with whitening (subtract the means, multiply by
the matrix), clipping to [-2, 2], 8-bit quantization. State dict keys are torchvggish's
(`features.N.*`, `embeddings.N.*`; `pca_eigen_vectors`, `pca_means`), so the published
`vggish-10086976.pth` and `vggish_pca_params-970ea276.pth` load as they are.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tasks.audio import AudioError, FlacBytes
from tasks.config import DownloadConfig, FeaturesVggishConfig
from tasks.errors import PipelineError
from tasks.features.dataset import Block, FeatureStore, code_version
from tasks.features.frontend import Spectrogram, load_audio
from tasks.features.inputs import InputShard
from tasks.features.stage import build_features, resolve_device
from tasks.fetch import fetch, redact, sha256_file
from tasks.storage import params_hash

log = logging.getLogger("tasks")
STAGE = "features_vggish"
EXAMPLE_FRAMES = 96
BANDS = 64
EMBEDDING_SIZE = 128
LAYERS: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]
# Pickles of numpy arrays (the published PCA file holds two) need these, and nothing else.
NUMPY_GLOBALS = [
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    np.dtypes.Float32DType,
    np.dtypes.Float64DType,
]
HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


class WeightsError(PipelineError):
    """A weights file that is not the state dict it should be; names the file and the problem."""


class VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for item in LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True),
            nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, EMBEDDING_SIZE), nn.ReLU(True),
        )  # fmt: skip

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """examples x 96 frames x 64 bands -> examples x 128."""
        x = self.features(examples.unsqueeze(1))
        # Flatten channels-last, the order of the TensorFlow graph the weights came from.
        return self.embeddings(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


@dataclass(frozen=True)
class Postprocessor:
    matrix: torch.Tensor  # 128 x 128, applied as matrix @ (x - means)
    means: torch.Tensor  # 128

    def __call__(self, embeddings: torch.Tensor, cfg: FeaturesVggishConfig) -> torch.Tensor:
        x = embeddings.float()
        if cfg.pca:
            x = (x - self.means.to(x.device)) @ self.matrix.to(x.device).T
        if cfg.clip_range is not None:
            x = x.clamp(*cfg.clip_range)
        if cfg.quantize:
            low, high = cfg.clip_range  # type: ignore[misc]  # the config validator requires it
            x = torch.round((x - low) * (255.0 / (high - low))).to(torch.uint8)
        return x


def load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors or numpy arrays, loaded without running arbitrary pickled code."""
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
        raise WeightsError(f"{what} {path.name}: not a loadable state dict ({str(exc).splitlines()[0]})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{what} {path.name}: holds a {type(state).__name__}, not a state dict")
    return {str(k): torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v, dtype=torch.float32)
            for k, v in state.items()}  # fmt: skip


def fetch_weights(cfg: DownloadConfig, root: Path, what: str) -> tuple[Path, str]:
    """Path and sha256 of a weights file; with no sha256 set, a torch-hub style name's prefix is checked."""
    path = fetch(cfg, root)
    digest = sha256_file(path)
    match = HUB_HASH.search(Path(unquote(urlparse(cfg.url).path)).name)
    if cfg.sha256 is None and match and not digest.startswith(match.group(1)):
        raise WeightsError(f"{what} {redact(cfg.url)}: sha256 {digest} does not start with {match.group(1)}, "
                           "the hash its name promises")  # fmt: skip
    return path, digest


def _matched(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected),
                               ("wrong shape", [f"{k} {got[k]} != {expected[k]}" for k in wrong]))
            if keys
        )  # fmt: skip
        raise WeightsError(f"{what} {path.name} is not a torchvggish VGGish state dict ({detail})")


def random_model(seed: int) -> VGGish:
    """Seeded He-normal weights: activations keep their spread through the ReLUs and 8-bit output."""
    model = VGGish()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                module.bias.zero_()
    return model


def random_pca(seed: int) -> Postprocessor:
    """A seeded random rotation: the PCA step keeps its shape and cost, and decorrelates nothing."""
    generator = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(EMBEDDING_SIZE, EMBEDDING_SIZE, generator=generator))
    return Postprocessor(q, torch.zeros(EMBEDDING_SIZE))


def load_model(cfg: FeaturesVggishConfig, root: Path) -> tuple[VGGish, Postprocessor, dict[str, Any]]:
    """The network and post-processor, and what they were made from (for the dataset metadata)."""
    info: dict[str, Any] = {}
    if cfg.weights is None:
        model = random_model(cfg.seed)
        info["vggish"] = {"random": True, "seed": cfg.seed}
    else:
        path, digest = fetch_weights(cfg.weights, root, "VGGish weights")
        model = VGGish()
        state = load_state(path, "VGGish weights")
        _matched(model, state, "VGGish weights", path)
        model.load_state_dict(state)
        info["vggish"] = {"random": False, "url": redact(cfg.weights.url), "sha256": digest}
    if cfg.pca_params is None:
        post = random_pca(cfg.seed)
        info["pca"] = {"random": True, "seed": cfg.seed, "used": cfg.pca}
    else:
        path, digest = fetch_weights(cfg.pca_params, root, "VGGish PCA parameters")
        state = load_state(path, "VGGish PCA parameters")
        matrix, means = state.get("pca_eigen_vectors"), state.get("pca_means")
        if matrix is None or means is None or matrix.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) \
                or means.numel() != EMBEDDING_SIZE:  # fmt: skip
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            raise WeightsError(f"VGGish PCA parameters {path.name}: need pca_eigen_vectors 128x128 and pca_means "
                               f"of 128 values, got {shapes}")  # fmt: skip
        post = Postprocessor(matrix, means.reshape(-1))
        info["pca"] = {"random": False, "url": redact(cfg.pca_params.url), "sha256": digest, "used": cfg.pca}
    return model.eval(), post, info


def examples(frames: torch.Tensor, hop_frames: int) -> torch.Tensor:
    """frames x 64 log-mel -> examples x 96 x 64; a partial example at the end is dropped, as published."""
    if frames.shape[0] < EXAMPLE_FRAMES:
        return frames.new_empty((0, EXAMPLE_FRAMES, frames.shape[1]))
    return frames.unfold(0, EXAMPLE_FRAMES, hop_frames).transpose(1, 2)


def embed(model: VGGish, post: Postprocessor, batch: torch.Tensor, cfg: FeaturesVggishConfig,
          device: torch.device) -> torch.Tensor:  # fmt: skip
    """examples x 96 x 64 -> post-processed embeddings on the CPU, cfg.batch_size examples at a time."""
    out = []
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bfloat16"):
        for start in range(0, len(batch), cfg.batch_size):
            raw = model(batch[start : start + cfg.batch_size].to(device, non_blocking=True))
            out.append(post(raw, cfg).cpu())
    return torch.cat(out) if out else torch.empty(0, EMBEDDING_SIZE)


@dataclass(frozen=True)
class _Clip:
    index: int
    examples: torch.Tensor
    start: np.ndarray
    end: np.ndarray


def features_vggish(cfg: FeaturesVggishConfig, root: Path) -> dict[str, Any]:
    """VGGish embeddings of every clip of the configured raw stores, one row per 0.96 s example."""
    device = resolve_device(cfg.device, STAGE)
    if device.type != "cuda" and cfg.precision == "bfloat16":
        log.warning("%s: bfloat16 on %s is slow and not what the benchmarks measure", STAGE, device)
    model, post, weights = load_model(cfg, root)
    model.to(device)
    random_weights = weights["vggish"]["random"] or (cfg.pca and weights["pca"]["random"])
    if random_weights:
        log.warning("%s: SEEDED RANDOM WEIGHTS (allow_random_weights): the embeddings carry no learned meaning; "
                    "the dataset metadata and metrics say so", STAGE)  # fmt: skip
    fe = cfg.frontend
    spectrogram = Spectrogram(fe)
    params = cfg.model_dump(mode="json")
    metadata = {
        "stage": STAGE,
        "params_hash": params_hash(params),
        "code_version": code_version(__file__),
        "frontend": fe.model_dump(mode="json"),
        "params": params,
        "weights": weights,
        "random_weights": random_weights,
        "device": device.type,
        "precision": cfg.precision,
        "layout": "one row per 0.96 s example; start/end_sample at the front end's rate",
    }
    value_type = pa.uint8() if cfg.quantize else pa.float32()
    store = FeatureStore(root / cfg.store.out_dir, "embedding", value_type, [EMBEDDING_SIZE], metadata,
                         cfg.store.rows_per_file)  # fmt: skip
    span = (EXAMPLE_FRAMES - 1) * fe.hop_length + fe.win_length  # samples one example sees

    def clip(shard: InputShard, i: int, blob: FlacBytes) -> _Clip:
        samples = load_audio(blob, fe.sample_rate, cfg.checks)
        batch = examples(spectrogram(torch.from_numpy(samples)), cfg.example_hop_frames)
        if len(batch) == 0:
            raise AudioError("too_short", f"{samples.size / fe.sample_rate:.3f} s is shorter than one VGGish "
                                          f"example ({span / fe.sample_rate:.3f} s)")  # fmt: skip
        start = np.arange(len(batch)) * cfg.example_hop_frames * fe.hop_length
        return _Clip(i, batch, start, start + span)

    def finish(shard: InputShard, clips: list[_Clip]) -> list[Block]:
        if not clips:
            return []
        embeddings = embed(model, post, torch.cat([c.examples for c in clips]), cfg, device).numpy()
        blocks, offset = [], 0
        for c in clips:
            k = len(c.examples)
            blocks.append(Block(shard.ids[c.index], shard.splits[c.index], shard.labels[c.index],
                                shard.actors[c.index], embeddings[offset : offset + k], c.start, c.end))  # fmt: skip
            offset += k
        return blocks

    extra = {"random_weights": random_weights, "weights": weights}
    # Clips per network call: as many 10 s clips (10 examples each) as fill one batch.
    batch_clips = max(1, cfg.batch_size // 10)
    return build_features(STAGE, cfg.store, cfg.datasets, cfg.default_splits, root, store, clip, finish,
                          batch_clips, extra)  # fmt: skip

