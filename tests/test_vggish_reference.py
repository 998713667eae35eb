"""VGGish number for number against the reference code: torchvggish 0.2 (a test-only dependency), which carries
the TensorFlow release's numpy front end (mel_features.py, vggish_input.py, vggish_params.py) and the PyTorch
network. Its networks are built without weights (`_vgg(postprocess=False)`) and its postprocessor is given
PCA parameters directly: nothing here touches the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.config import apply_overrides, section_config
from tasks.features.frontend import Spectrogram
from tasks.features.vggish import VGGish, embed, examples, random_model, random_pca

torchvggish = pytest.importorskip("torchvggish", reason="torchvggish==0.2, the reference, is a test dependency")
from torchvggish import torchvggish as reference_net  # noqa: E402
from torchvggish import vggish_input, vggish_params  # noqa: E402

RATE = vggish_params.SAMPLE_RATE
# float32 (ours) against float64 (the reference): every mel value within this share of the clip's largest, plus
# a floor for silence. In log units that is ~1e-6 where there is energy, more only in bands a pure tone leaves
# empty (2.8e-4 at 1e-5 of the peak, for the band-edge tones), where float32 STFT rounding is all there is.
MEL_RTOL_OF_PEAK, MEL_FLOOR = 1e-6, 1e-9


@pytest.fixture(scope="module")
def cfg(request: pytest.FixtureRequest):
    from tasks.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    return section_config(apply_overrides(params, ["features_vggish.device=cpu"]), "features_vggish")


def ours(wave: np.ndarray, cfg) -> np.ndarray:
    frames = Spectrogram(cfg.frontend)(torch.from_numpy(wave.astype(np.float32)))
    return examples(frames, cfg.example_hop_frames).numpy()


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(2.9 * RATE)) / RATE  # three whole examples (288 frames) and a little more
    return {
        "noise": rng.uniform(-0.5, 0.5, t.size),
        "tone at the lower band edge (125 Hz)": 0.5 * np.sin(2 * np.pi * 125.0 * t),
        "tone at the upper band edge (7500 Hz)": 0.5 * np.sin(2 * np.pi * 7500.0 * t),
        "tone between bands (1000 Hz)": 0.3 * np.sin(2 * np.pi * 1000.0 * t),
        "silence": np.zeros(t.size),
        "2.5 s of noise (not a whole number of examples)": rng.normal(0.0, 0.2, int(2.5 * RATE)).clip(-1, 1),
    }


@pytest.mark.parametrize("name", list(signals()))
def test_our_examples_equal_the_reference_front_end(name: str, cfg) -> None:
    wave = signals()[name]
    theirs = vggish_input.waveform_to_examples(wave, RATE, return_tensor=False)
    got = ours(wave, cfg)
    assert got.shape == theirs.shape, (got.shape, theirs.shape)
    offset = vggish_params.LOG_OFFSET
    mel_ours, mel_theirs = np.exp(got.astype(np.float64)) - offset, np.exp(theirs) - offset
    tolerance = MEL_RTOL_OF_PEAK * mel_theirs.max() + MEL_FLOOR
    assert np.abs(mel_ours - mel_theirs).max() <= tolerance, (name, np.abs(mel_ours - mel_theirs).max(), tolerance)


def test_the_same_weights_give_the_same_embeddings(cfg) -> None:
    """Our network with a seeded random state dict, and the reference's with the same one."""
    model = random_model(0).eval()
    theirs = reference_net._vgg(postprocess=False).eval()
    theirs.load_state_dict(model.state_dict())
    batch = torch.from_numpy(ours(signals()["noise"], cfg))
    with torch.inference_mode():
        expected = theirs(batch[:, None])
        got = model(batch)
    assert isinstance(model, VGGish) and got.shape == expected.shape == (3, 128)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_same_pca_gives_every_byte_of_the_published_postprocessing(cfg) -> None:
    post = random_pca(0)
    reference = reference_net.Postprocessor.__new__(reference_net.Postprocessor)  # its __init__ downloads
    reference._pca_matrix = post.matrix.float()
    reference._pca_means = post.means.reshape(-1, 1).float()
    raw = torch.randn(500, 128, generator=torch.Generator().manual_seed(1)) * 0.7
    got = post(raw, cfg)
    expected = reference.postprocess(raw)
    assert got.dtype == torch.uint8
    assert torch.equal(got, expected.to(torch.uint8)), int((got != expected.to(torch.uint8)).sum())


def test_the_stage_path_embeds_as_the_reference_pipeline(cfg) -> None:
    """Front end, network and postprocessing together, as features_vggish runs them, against the reference's."""
    model, post = random_model(0).eval(), random_pca(0)
    reference = reference_net._vgg(postprocess=False).eval()
    reference.load_state_dict(model.state_dict())
    pproc = reference_net.Postprocessor.__new__(reference_net.Postprocessor)
    pproc._pca_matrix, pproc._pca_means = post.matrix.float(), post.means.reshape(-1, 1).float()
    wave = signals()["noise"]
    got = embed(model, post, torch.from_numpy(ours(wave, cfg)), cfg, torch.device("cpu"))
    with torch.inference_mode():
        theirs = pproc.postprocess(reference(vggish_input.waveform_to_examples(wave, RATE)))
    differ = (got.int() - theirs.to(torch.int32)).abs()
    # The front ends differ by float32 rounding only; through the net that moves at most a few bytes by one level.
    assert differ.max() <= 1 and float((differ > 0).float().mean()) <= 0.01, int((differ > 0).sum())
