"""Training throughput per architecture on this machine, and the Parquet loader against in-memory tensors (not a test).

    .venv/bin/python benchmarks/train.py [--seconds 8] [--archs all] [--epoch-slices 1340]

Prints, side by side:
  (a) training samples/s (forward + backward + optimizer step, fp32, batch size of params.yaml, 128 x 128
      slices or 10 x 128 VGGish sequences) per architecture, and the minutes one epoch of the real RAVDESS
      training side takes at that rate (--epoch-slices: 4/5 of the 836 song clips' 1673 slices);
      on CUDA, when torch sees a GPU, the study nets in fp32 and bf16 autocast (channels_last);
  (b) the loader: small-CNN epochs fed from a Parquet feature dataset through tasks.train.data (read once,
      float16 kept, batches gathered by index and cast per batch) against the same epochs fed from
      float32 batches already in memory, as a ratio (goal >= 0.9x), for a 1-epoch run (the read counted
      once) and per epoch after it.
Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tasks.config import load_params, section_config
from tasks.train.data import load_clips
from tasks.train.loop import autocast, make_optimizer, to_device
from tasks.train.models import MoodNet, build_net, training_loss

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from tests.features_fixture import write_slices  # noqa: E402

SLICE_NETS = ["small_cnn", "resnet50", "resnet152", "vgg11", "vgg19", "googlenet"]
SEQUENCE_NETS = ["logreg", "lstm1", "lstm3"]
CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful"]


def step_rate(arch: str, cfg, device: torch.device, seconds: float, precision: str = "fp32") -> float:
    """Training samples/s of one architecture: steps until `seconds` pass (after one warm-up step)."""
    torch.manual_seed(0)
    sequence = arch in SEQUENCE_NETS
    model = MoodNet(build_net(arch, len(CLASSES), cfg, 10), 0.0, 1.0, sequence=sequence).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, cfg)
    criterion = torch.nn.CrossEntropyLoss()
    shape = (cfg.batch_size, 10, 128) if sequence else (cfg.batch_size, 1, 128, 128)
    x = to_device(torch.randn(shape), device)
    target = torch.nn.functional.one_hot(torch.arange(cfg.batch_size) % len(CLASSES), len(CLASSES)).float().to(device)
    use_autocast = precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            loss = training_loss(model(x), target, criterion)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def loader_ratio(tmp: Path, clips: int, epochs: int, device: torch.device) -> dict[str, float]:
    """Small-CNN epochs fed by the Parquet loader path against float32 batches already in memory."""
    corpus = [(f"c{i:04d}", CLASSES[i % 6], i % 20 + 1) for i in range(clips)]
    root = write_slices(tmp / "slices", corpus, size=128)
    cfg = section_config(load_params(PROJECT / "params.yaml"), "train").architectures["small_cnn"]

    def run(batches) -> float:
        torch.manual_seed(0)
        model = MoodNet(build_net("small_cnn", 6, cfg, 10), 0.0, 1.0, sequence=False).to(device).train()
        optimizer = make_optimizer(model, cfg)
        criterion = torch.nn.CrossEntropyLoss()
        started = time.perf_counter()
        for x, target in batches():
            with autocast(device):
                loss = training_loss(model(x), target, criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    started = time.perf_counter()
    data = load_clips(root, "slices", "ravdess", CLASSES, 10)
    read_s = time.perf_counter() - started
    rows = np.arange(len(data.inputs))
    labels = torch.from_numpy(data.clip_label[data.row_clip])
    order = np.random.default_rng(0).permutation(rows)
    chunks = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    def batch(chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(chunk)
        return to_device(data.inputs[index], device), torch.nn.functional.one_hot(labels[index], 6).float().to(device)

    def from_loader():
        return (batch(chunk) for chunk in chunks)

    in_memory = [batch(chunk) for chunk in chunks]
    loader_s, memory_s = [], []
    for _ in range(epochs):  # interleaved, best of each
        loader_s.append(run(from_loader))
        memory_s.append(run(lambda: iter(in_memory)))
    n = len(rows)
    return {"slices": n, "parquet_read_s": read_s, "loader_samples_per_s": n / min(loader_s),
            "memory_samples_per_s": n / min(memory_s), "ratio_per_epoch": min(memory_s) / min(loader_s),
            "ratio_one_epoch_run": min(memory_s) / (min(loader_s) + read_s)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed steps per architecture")
    parser.add_argument("--archs", default="all")
    parser.add_argument("--epoch-slices", type=int, default=1340)
    parser.add_argument("--loader-clips", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = section_config(load_params(PROJECT / "params.yaml"), "train")
    archs = SLICE_NETS + SEQUENCE_NETS if args.archs == "all" else args.archs.split(",")
    cpu = torch.device("cpu")
    results: dict = {"machine": platform.platform(), "torch_threads": torch.get_num_threads(), "cpu": {}, "cuda": {}}
    print(f"training throughput, fp32, CPU ({torch.get_num_threads()} threads)")
    print(f"{'arch':<10} {'batch':>5} {'samples/s':>10} {'min/epoch (RAVDESS fold)':>25}")
    for arch in archs:
        rate = step_rate(arch, cfg.architectures[arch], cpu, args.seconds)
        minutes = args.epoch_slices / rate / 60 if arch in SLICE_NETS else None
        results["cpu"][arch] = {"batch": cfg.architectures[arch].batch_size, "samples_per_s": rate,
                                "minutes_per_epoch": minutes}  # fmt: skip
        print(f"{arch:<10} {cfg.architectures[arch].batch_size:>5} {rate:>10.1f} "
              f"{'' if minutes is None else f'{minutes:.2f}':>25}")  # fmt: skip
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nCUDA ({torch.cuda.get_device_name()}): samples/s fp32, bf16, ratio")
        for arch in [a for a in archs if a in SLICE_NETS]:
            fp32 = step_rate(arch, cfg.architectures[arch], gpu, args.seconds)
            bf16 = step_rate(arch, cfg.architectures[arch], gpu, args.seconds, "bf16")
            results["cuda"][arch] = {"fp32": fp32, "bf16": bf16, "ratio": bf16 / fp32}
            print(f"{arch:<10} {fp32:>10.1f} {bf16:>10.1f} {bf16 / fp32:>6.2f}x")
    devices = [cpu] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            r = loader_ratio(Path(tmp) / device.type, args.loader_clips, args.repeats, device)
            results[f"loader_{device.type}"] = r
            print(f"\nloader ({device.type}, small CNN, {r['slices']} slices, best of {args.repeats}): "
                  f"Parquet loader {r['loader_samples_per_s']:.1f} vs in-memory {r['memory_samples_per_s']:.1f} "
                  f"samples/s = {r['ratio_per_epoch']:.3f}x per epoch (goal >= 0.9x); a 1-epoch run, counting the "
                  f"Parquet read ({r['parquet_read_s']:.2f} s): {r['ratio_one_epoch_run']:.3f}x")  # fmt: skip
    out = PROJECT / "benchmarks/results/train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
