"""How far our VGGish examples are from the reference's on audio that is not at 16 kHz (not a test).

At 16 kHz the two agree to float32 rounding (tests/test_vggish_reference.py). At other rates the reference
(torchvggish 0.2's vggish_input) resamples with resampy and we with soxr HQ, as librosa.load does; this
measures what that choice alone changes, on a generated 10 s music clip at 44.1 kHz (the CAL500 rate):
the log-mel difference (max, 99th percentile, median) and the same clip resampled by resampy and fed to our
front end, which must agree to float32 rounding again. Writes benchmarks/results/vggish_resampling.json.

    .venv/bin/python benchmarks/vggish_resampling.py [--seed 0] [--mood happy]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import resampy
import soxr
import torch
from torchvggish import vggish_input

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from devtools.mirror.synth import synthesize  # noqa: E402
from tasks.config import load_params, section_config  # noqa: E402
from tasks.features.frontend import Spectrogram  # noqa: E402
from tasks.features.vggish import examples  # noqa: E402

RESULTS = PROJECT / "benchmarks" / "results" / "vggish_resampling.json"
RATE_IN, RATE = 44100, 16000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mood", default="happy")
    args = parser.parse_args()
    cfg = section_config(load_params(PROJECT / "params.yaml"), "features_vggish")
    clip = synthesize(args.mood, 10.0, RATE_IN, np.random.default_rng(args.seed)).astype(np.float64)
    front = Spectrogram(cfg.frontend)

    def ours(wave16k: np.ndarray) -> np.ndarray:
        frames = front(torch.from_numpy(wave16k.astype(np.float32)))
        return examples(frames, cfg.example_hop_frames).numpy().astype(np.float64)

    reference = vggish_input.waveform_to_examples(clip, RATE_IN, return_tensor=False)
    with_soxr = ours(soxr.resample(clip, RATE_IN, RATE, quality="HQ"))
    with_resampy = ours(resampy.resample(clip, RATE_IN, RATE))
    n = min(len(reference), len(with_soxr))
    diff = np.abs(with_soxr[:n] - reference[:n])
    same_resampler = float(np.abs(with_resampy[:n] - reference[:n]).max())
    # The resamplers' filters part near the new Nyquist (8 kHz): which bands that reaches.
    band_max = diff.max(axis=(0, 1))
    wide = [int(b) for b in np.flatnonzero(band_max > 0.01)]
    result = {"clip": f"synthesized {args.mood}, 10 s at {RATE_IN} Hz, seed {args.seed}", "examples": n,
              "soxr_vs_resampy_log_mel": {"max": round(float(diff.max()), 5),
                                          "p99": round(float(np.percentile(diff, 99)), 5),
                                          "median": round(float(np.median(diff)), 6)},
              "bands_over_0.01": {str(b): round(float(band_max[b]), 4) for b in wide},
              "other_bands_max": round(float(np.delete(band_max, wide).max()), 5),
              "resampy_into_ours_vs_reference_max": same_resampler}  # fmt: skip
    r = result["soxr_vs_resampy_log_mel"]
    print(f"{result['clip']}: our examples (soxr HQ) against the reference's (resampy), log-mel difference "
          f"max {r['max']:.4f}, 99th percentile {r['p99']:.4f}, median {r['median']:.5f} over {n} examples; "
          f"bands over 0.01: {result['bands_over_0.01']} (of 64; the rest at most {result['other_bands_max']}); "
          f"with resampy feeding our front end instead: max {same_resampler:.1e}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
