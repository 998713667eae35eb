"""VGGish embeddings: the published architecture and state dict layout, weights loading, post-processing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from devtools.mirror.server import MirrorServer
from devtools.mirror.store import synth_clip, write_store
from tasks.audio import decode_flac, encode_flac
from tasks.config import ConfigError, apply_overrides, section_config
from tasks.features.dataset import open_table, read_metadata
from tasks.features.frontend import Spectrogram
from tasks.features.reader import FeatureDataset
from tasks.features.vggish import (
    Postprocessor,
    VGGish,
    WeightsError,
    embed,
    examples,
    features_vggish,
    random_model,
    random_pca,
)
from tasks.fetch import sha256_file
from tasks.storage import Clip

# torchvggish's VGGish state dict (vggish-10086976.pth): every key and shape, as published.
PUBLISHED_KEYS = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}  # fmt: skip


def test_architecture_is_the_published_one() -> None:
    model = VGGish()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PUBLISHED_KEYS
    out = model(torch.zeros(3, 96, 64))
    assert out.shape == (3, 128)
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)


def test_postprocessing_is_pca_then_clip_then_8_bits(params: dict) -> None:
    rng = np.random.default_rng(0)
    matrix, means = rng.standard_normal((128, 128)), rng.standard_normal(128)
    raw = rng.standard_normal((5, 128)) * 0.3
    post = Postprocessor(torch.tensor(matrix, dtype=torch.float32), torch.tensor(means, dtype=torch.float32))
    cfg = vggish_cfg(params, Path("unused"))
    expected = np.round((np.clip((raw - means) @ matrix.T, -2, 2) + 2) * 255 / 4)
    got = post(torch.tensor(raw, dtype=torch.float32), cfg)
    assert got.dtype == torch.uint8 and np.abs(got.numpy().astype(int) - expected).max() <= 1
    plain = vggish_cfg(params, Path("unused"), "features_vggish.quantize=false", "features_vggish.clip_range=null",
                       "features_vggish.pca=false")  # fmt: skip
    assert torch.equal(post(torch.tensor(raw, dtype=torch.float32), plain), torch.tensor(raw, dtype=torch.float32))


def test_examples_are_non_overlapping_96_frame_windows() -> None:
    frames = torch.arange(998 * 64, dtype=torch.float32).reshape(998, 64)  # a 10 s clip
    batch = examples(frames, 96)
    assert batch.shape == (10, 96, 64)
    assert torch.equal(batch[3], frames[288:384])
    assert examples(frames[:95], 96).shape == (0, 96, 64)
    assert examples(frames, 48).shape == (19, 96, 64)


# CPU and CUDA need not agree bit for bit (cuDNN picks its own convolution algorithms, TF32 by
# default): 8-bit embeddings may differ by one level, floats by this share of their spread.
CUDA_LEVELS, CUDA_FLOAT_RTOL, CUDA_DIFFERING_SHARE = 1, 1e-2, 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the check runs where a GPU is lent")
def test_cpu_and_cuda_embeddings_agree_within_the_stated_tolerance(params: dict) -> None:
    """`device: auto` makes the dataset depend on the machine (its metadata records which ran): the two
    devices must give the same embeddings within CUDA_LEVELS / CUDA_FLOAT_RTOL."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(64, 96, 64, generator=generator) * 2 - 3  # log-mel-like levels
    model, post = random_model(0), random_pca(0)
    unquantized = ("features_vggish.quantize=false", "features_vggish.clip_range=null")
    for extra, check in (((), "levels"), (unquantized, "float")):
        cfg = vggish_cfg(params, Path("unused"), *extra)
        cpu = embed(model.cpu(), post, batch, cfg, torch.device("cpu"))
        cuda = embed(model.cuda(), post, batch, cfg, torch.device("cuda"))
        if check == "levels":
            diff = (cpu.int() - cuda.int()).abs()
            share = float((diff > 0).float().mean())
            print(f"CUDA fp32 against CPU: {share:.4f} of the bytes differ, by at most {int(diff.max())} level(s)")
            assert diff.max() <= CUDA_LEVELS and share <= CUDA_DIFFERING_SHARE
        else:
            spread = float(cpu.std())
            assert float((cpu - cuda).abs().max()) <= CUDA_FLOAT_RTOL * spread


# bf16 autocast on CUDA rounds activations to 8 mantissa bits: most bytes within one level of fp32 on CPU.
BF16_WITHIN_ONE_SHARE = 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the check runs where a GPU is lent")
def test_cuda_bf16_embeddings_stay_within_one_level_for_most_bytes(params: dict) -> None:
    batch = torch.randn(64, 96, 64, generator=torch.Generator().manual_seed(0)) * 2 - 3
    model, post = random_model(0), random_pca(0)
    cpu = embed(model.cpu(), post, batch, vggish_cfg(params, Path("unused")), torch.device("cpu"))
    bf16 = vggish_cfg(params, Path("unused"), "features_vggish.precision=bfloat16")
    cuda = embed(model.cuda(), post, batch, bf16, torch.device("cuda"))
    diff = (cpu.int() - cuda.int()).abs()
    share = float((diff <= 1).float().mean())
    print(f"CUDA bf16 against CPU fp32: {share:.4f} of the bytes within one level, max {int(diff.max())} levels")
    assert share >= BF16_WITHIN_ONE_SHARE


def vggish_cfg(params: dict, root: Path, *extra: str):
    overrides = [f"features_vggish.store.raw_dir={root / 'raw'}", f"features_vggish.store.out_dir={root / 'vggish'}",
                 f"features_vggish.store.metrics_file={root / 'm.json'}", "features_vggish.device=cpu",
                 "features_vggish.store.max_failure_share=0.5", *extra]  # the store holds one too-short clip
    return section_config(apply_overrides(params, overrides), "features_vggish")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Stand-ins for the published files: same keys, shapes and formats (PCA as numpy arrays), hub-style names."""
    folder = tmp_path_factory.mktemp("weights")
    tmp = folder / "vggish.pth"
    torch.save(random_model(11).state_dict(), tmp)
    model_path = folder / f"vggish-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(model_path)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    torch.save({"pca_eigen_vectors": q * 0.05, "pca_means": rng.standard_normal(128) * 3}, tmp)
    pca_path = folder / f"vggish_pca_params-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(pca_path)
    return model_path, pca_path


@pytest.fixture(scope="module")
def audioset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AudioSet-like store: 10 s clips at 16 kHz with a split column, one too short for an example."""
    root = tmp_path_factory.mktemp("audioset")
    clips = [synth_clip(f"yt{i:02d}_30", mood, 10.0, 16000, i, meta={"split": split})
             for i, (mood, split) in enumerate([("happy", "train"), ("sad", "train"), ("angry", "test")])]  # fmt: skip
    clips.append(synth_clip("short_0", "happy", 0.9, 16000, 9, meta={"split": "train"}))
    write_store(root / "raw", "audioset", clips, shard_rows=2)
    return root


def test_embeddings_with_published_format_weights_from_path_and_url(
    params: dict, weights: tuple[Path, Path], audioset: Path, tmp_path: Path
) -> None:
    model_path, pca_path = weights
    (tmp_path / "raw").symlink_to(audioset / "raw")
    with MirrorServer(pca_path.parent) as mirror:
        cfg = vggish_cfg(params, tmp_path, f"features_vggish.weights.url={model_path}",
                         f"features_vggish.pca_params.url={mirror.url}/{pca_path.name}")  # fmt: skip
        metrics = features_vggish(cfg, tmp_path)
    assert metrics["random_weights"] is False
    assert metrics["clips"] == 3 and metrics["rows"] == 30 and metrics["shape"] == [128]
    assert metrics["failed_by_reason"] == {"too_short": 1}
    assert metrics["per_dataset"] == {"audioset": {"train": {"clips": 2, "rows": 20}, "test": {"clips": 1, "rows": 10}}}
    meta = read_metadata(tmp_path / "vggish")
    assert meta["weights"]["vggish"]["sha256"] == sha256_file(model_path)
    assert meta["weights"]["pca"]["sha256"] == sha256_file(pca_path) and meta["random_weights"] is False
    assert any((tmp_path / ".cache/downloads").glob(f"*{pca_path.name}"))  # fetched once, into the cache

    # The stored rows are the network's output for the clip's examples, post-processed.
    table = open_table(tmp_path / "vggish", split="test")
    assert table.schema.field("embedding").type == pa.fixed_shape_tensor(pa.uint8(), [128])
    stored = table["embedding"].combine_chunks().to_numpy_ndarray()
    assert table["index"].to_pylist() == list(range(10))
    assert table["end_sample"].to_pylist()[0] == 95 * 160 + 400
    blob = pq.read_table(next((audioset / "raw/audioset/shards").glob("part-00001-*.parquet"))).to_pylist()
    clip = next(r for r in blob if r["id"] == "yt02_30")
    frames = Spectrogram(cfg.frontend)(torch.from_numpy(decode_flac(clip["audio"])[0][:, 0]))
    model = VGGish()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    with torch.no_grad():
        raw = model.eval()(examples(frames, 96)).numpy()
    pca = torch.load(pca_path, weights_only=False)
    expected = np.round((np.clip((raw - pca["pca_means"]) @ pca["pca_eigen_vectors"].T, -2, 2) + 2) * 255 / 4)
    assert np.abs(stored.astype(int) - expected).max() <= 1
    assert len(np.unique(stored)) > 20  # the embeddings carry information, not a saturated constant

    data = FeatureDataset(tmp_path / "vggish", "embedding", split="train", classes=["happy", "sad"])
    assert data.features.shape == (20, 128) and data.features.dtype == torch.uint8


def test_bad_weights_are_clear_errors(params: dict, weights: tuple[Path, Path], audioset: Path,
                                      tmp_path: Path) -> None:  # fmt: skip
    model_path, pca_path = weights
    (tmp_path / "raw").symlink_to(audioset / "raw")
    renamed = tmp_path / "vggish-00000000.pth"
    renamed.symlink_to(model_path)
    with pytest.raises(WeightsError, match="does not start with 00000000"):
        features_vggish(vggish_cfg(params, tmp_path, f"features_vggish.weights.url={renamed}",
                                   f"features_vggish.pca_params.url={pca_path}"), tmp_path)  # fmt: skip
    with pytest.raises(WeightsError, match=r"not a torchvggish VGGish state dict.*missing: embeddings\.0\.bias"):
        features_vggish(vggish_cfg(params, tmp_path, f"features_vggish.weights.url={pca_path}",
                                   f"features_vggish.pca_params.url={pca_path}"), tmp_path)  # fmt: skip
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a loadable state dict"):
        features_vggish(vggish_cfg(params, tmp_path, f"features_vggish.weights.url={junk}",
                                   f"features_vggish.pca_params.url={pca_path}"), tmp_path)  # fmt: skip
    with pytest.raises(WeightsError, match="need pca_eigen_vectors 128x128"):
        features_vggish(vggish_cfg(params, tmp_path, f"features_vggish.weights.url={model_path}",
                                   f"features_vggish.pca_params.url={model_path}"), tmp_path)  # fmt: skip
    assert not (tmp_path / "vggish" / "_dataset.json").exists()


def test_random_weights_only_when_allowed_and_then_recorded(params: dict, audioset: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(audioset / "raw")
    with pytest.raises(ConfigError, match="allow_random_weights: true"):
        vggish_cfg(params, tmp_path, "features_vggish.weights=null")
    with pytest.raises(ConfigError, match="allow_random_weights: true"):
        vggish_cfg(params, tmp_path, "features_vggish.pca_params=null")
    cfg = vggish_cfg(params, tmp_path, "features_vggish.weights=null", "features_vggish.pca_params=null",
                     "features_vggish.allow_random_weights=true", "features_vggish.datasets=[audioset]")  # fmt: skip
    metrics = features_vggish(cfg, tmp_path)
    assert metrics["random_weights"] is True and metrics["rows"] == 30
    assert json.loads((tmp_path / "m.json").read_text())["random_weights"] is True
    meta = read_metadata(tmp_path / "vggish")
    assert meta["random_weights"] is True and meta["weights"]["vggish"] == {"random": True, "seed": 0}
    part = next((tmp_path / "vggish").rglob("part-*.parquet"))
    assert json.loads(pq.read_schema(part).metadata[b"mood_pipeline"])["random_weights"] is True
    first = open_table(tmp_path / "vggish")["embedding"].combine_chunks().to_numpy_ndarray()
    # Seeded: a fresh run writes the same embeddings.
    again = features_vggish(cfg.model_copy(update={"store": cfg.store.model_copy(
        update={"out_dir": str(tmp_path / "again")})}), tmp_path)  # fmt: skip
    assert again["rows"] == 30
    assert np.array_equal(first, open_table(tmp_path / "again")["embedding"].combine_chunks().to_numpy_ndarray())


def test_corrupt_and_silent_clips_fail_alone(params: dict, tmp_path: Path) -> None:
    good = synth_clip("good_0", "sad", 2.0, 22050, 1, channels=2, meta={"split": "test"})
    silent = Clip("silent_0", encode_flac(np.zeros(32000, np.float32), 16000), ["sad"], "synth", {"split": "test"})
    write_store(tmp_path / "raw", "audioset", [good, silent])
    cfg = vggish_cfg(params, tmp_path, "features_vggish.weights=null", "features_vggish.pca_params=null",
                     "features_vggish.allow_random_weights=true", "features_vggish.store.max_failure_share=0.5")
    metrics = features_vggish(cfg, tmp_path)
    assert metrics["clips"] == 1 and metrics["rows"] == 2 and metrics["failed_by_reason"] == {"silent": 1}
