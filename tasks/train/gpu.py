"""One GPU per training task: claim a free device with a lock file per index, pin it with CUDA_VISIBLE_DEVICES.

The Airflow pool `gpu` has as many slots as GPUs, so N tasks on a worker find N free devices; the
lock makes sure two of them never pick the same one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("tasks")


def visible_gpus() -> list[str]:
    """GPU indices this process may use: $CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@contextmanager
def claim_gpu(lock_dir: Path, devices: list[str], timeout_s: float = 3600.0) -> Iterator[str | None]:
    """Hold the lock of the first free device among `devices` (None when there are none) while in the block.

    The lock is an flock, so a killed task frees its GPU with its process.
    """
    if not devices:
        yield None
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for device in devices:
            # Named by host too: GPU 0 of one host is not GPU 0 of another, though the workspace may be shared.
            handle = (lock_dir / f"{socket.gethostname()}-gpu{device}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            log.info("claimed GPU %s (lock %s)", device, handle.name)
            try:
                yield device
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {devices} in {timeout_s:.0f} s (locks in {lock_dir})")
        time.sleep(5)


@contextmanager
def pinned(device: str | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES set to the claimed device while in the block (before CUDA initialises)."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
