"""Record what a stage produced in dvc.lock and push it, so `dvc status` is clean after Airflow runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from tasks.errors import PipelineError

log = logging.getLogger("tasks")


class DvcError(PipelineError):
    """A DVC command failed; the message holds its output."""


def dvc(root: Path, *args: str) -> str:
    # Stage commands say `python`: it must be this interpreter, whatever PATH the caller had.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed in {root}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


def commit_and_push(root: Path, stages: list[str]) -> dict[str, str]:
    """`dvc commit` writes the stage's deps, params and outs hashes to dvc.lock; then push the outs.

    The stage ran through the same function `dvc repro` would run, so committing its result is
    exactly what `dvc repro` would have recorded.
    """
    dvc(root, "commit", "--force", *stages)
    pushed = dvc(root, "push", *stages).strip().splitlines()
    status = dvc(root, "status", *stages).strip()
    log.info("dvc: committed %s; %s; status: %s", ", ".join(stages), pushed[-1] if pushed else "", status)
    return {"stages": ",".join(stages), "push": pushed[-1] if pushed else "", "status": status}


def outcome(result: dict[str, str]) -> str:
    """commit_and_push's result in a few words, for a task's return value (the full story is in its log)."""
    clean = "clean" if result["status"] == "Data and pipelines are up to date." else "NOT clean (see the task log)"
    return f"dvc: committed {result['stages']}; {result['push'] or 'nothing to push'}; status {clean}"
