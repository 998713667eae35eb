"""The audio model registered beside each torch model (NAME-audio): how training logs it, and what its served
`predict` does (tasks/predict/serving.py is the thin file MLflow loads).

Input: a DataFrame with `audio_base64` (a file's bytes, any format ffmpeg reads; `filename` optionally names
it) or `path` (a file on the serving host) per row. Output: one row per input with the file, the mood, the vote
share, one `prob_<class>` column per class, the per-slice probabilities as JSON, and `error` / `reason` for a
file that could not be predicted (the other rows still are); an empty mood means none (an error, or threshold
voting abstained), an empty error none. Params: `voting`, `threshold`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.audio import AudioError, encode_flac, read_pcm
from tasks.config import PredictConfig
from tasks.evaluate.model import CARD, TrainedModel
from tasks.predict.inputs import AUDIO_SUFFIXES, Audio, Limits, check_size
from tasks.predict.predictor import Predictor
from tasks.train import tracking

log = logging.getLogger("tasks")
SERVING = Path(__file__).with_name("serving.py")
PACKAGE = Path(__file__).resolve().parents[1]
AUDIO_SUFFIX = "-audio"
ARTIFACT = "audio_model"
# What serving needs beside torch (tracking.PIP_REQUIREMENTS), at requirements.txt's pins (a test keeps them
# equal); ffmpeg must be on the serving host's PATH.
REQUIREMENTS = [*tracking.PIP_REQUIREMENTS, "mlflow==3.17.2", "pyarrow==25.0.1", "pandas==3.1.1", "librosa==0.11.0",
                "soxr==1.1.0", "soundfile==0.14.0", "miniaudio==1.71", "pydantic==2.14.3", "PyYAML==6.0.3",
                "requests==2.34.2"]  # fmt: skip
# What one input may cost: predict's defaults (max_file_mb, max_seconds).
LIMITS = Limits.of(PredictConfig())
# `path` inputs read files on the serving host: only where this is set.
ALLOW_PATHS = "MOOD_SERVE_ALLOW_PATHS"


def audio_model_name(registered: str) -> str:
    return f"{registered}{AUDIO_SUFFIX}"


def signature(classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "audio_base64", required=False),
                     ColSpec("string", "filename", required=False)])  # fmt: skip
    outputs = Schema([ColSpec("string", "file"), ColSpec("string", "mood", required=False),
                      ColSpec("double", "vote_share"), ColSpec("double", "seconds"),
                      *(ColSpec("double", f"prob_{c}") for c in classes), ColSpec("string", "slices"),
                      ColSpec("string", "error", required=False),
                      ColSpec("string", "reason", required=False)])  # fmt: skip
    params = ParamSchema([ParamSpec("voting", "string", "majority"), ParamSpec("threshold", "double", 0.6)])
    return ModelSignature(inputs, outputs, params)


def example_input(seconds: float) -> Any:
    """A generated clip (a chord with a tremolo, at 16 kHz) as base64 FLAC: long enough for one slice."""
    import pandas as pd

    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * (0.5 + 0.3 * np.sin(2 * np.pi * 3 * t))
    flac = encode_flac((0.2 * wave).astype(np.float32), rate).data
    return pd.DataFrame({"audio_base64": [base64.b64encode(flac).decode()], "filename": ["example.flac"]})


def log_audio_model(card: dict[str, Any], run_id: str, root: Path) -> Any:
    """Log the audio model in the training run (artifact `audio_model`); its ModelInfo (training registers it as
    NAME-audio)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        card_file = Path(tmp) / CARD
        card_file.write_text(json.dumps(card))
        artifacts = {"card": str(card_file), "model": f"runs:/{run_id}/model", **vggish_files(card, root)}
        params = card["features"]["params"]
        seconds = params.get("slice_seconds", 1.0) + 0.5
        return mlflow.pyfunc.log_model(name=ARTIFACT, python_model=str(SERVING), artifacts=artifacts,
                                       code_paths=[str(PACKAGE)], signature=signature(card["classes"]),
                                       input_example=example_input(seconds), pip_requirements=REQUIREMENTS)  # fmt: skip


def vggish_files(card: dict[str, Any], root: Path) -> dict[str, str]:
    """The published VGGish weights and PCA parameters a VGGish model's features came from (none when random:
    the seed remakes them)."""
    from tasks.config import FeaturesVggishConfig
    from tasks.features.vggish import fetch_weights

    if card["features"].get("stage") != "features_vggish":
        return {}
    cfg = FeaturesVggishConfig.model_validate(card["features"]["params"])
    files = {}
    for key, download in (("vggish_weights", cfg.weights), ("vggish_pca", cfg.pca_params)):
        if download is not None:
            files[key] = str(fetch_weights(download, root, key.replace("_", " "))[0])
    return files


def load_predictor(artifacts: dict[str, str]) -> Predictor:
    """The served model's Predictor, from its artifacts alone."""
    import mlflow

    card = json.loads(Path(artifacts["card"]).read_text())
    params = card["features"]["params"]
    for key, param in (("vggish_weights", "weights"), ("vggish_pca", "pca_params")):
        if key in artifacts:
            params[param] = {**params[param], "url": artifacts[key]}  # a plain path: fetch uses it in place
    model = mlflow.pytorch.load_model(artifacts["model"], map_location="cpu")  # only torch models get one
    source = card.get("registered_model") or card["name"]
    trained = TrainedModel(card, model, source, card.get("registered_model"), card.get("version"))
    return Predictor(trained, Path(tempfile.gettempdir()))


def predict_frame(predictor: Predictor, frame: Any, params: dict[str, Any]) -> Any:
    """The served predict: one output row per input row, errors as rows."""
    import pandas as pd

    rule = str(params.get("voting", predictor.rule))  # Predictor.predict refuses an unknown rule
    threshold = float(params.get("threshold", predictor.threshold))
    if not 0 < threshold <= 1:
        raise ValueError(f"params.threshold {threshold} is not in (0, 1]")
    records = frame.to_dict("records") if isinstance(frame, pd.DataFrame) else list(frame)
    with tempfile.TemporaryDirectory(prefix="serve-") as tmp:
        sources = (source_of(r, n, Path(tmp)) for n, r in enumerate(records))
        predictions = list(predictor.predict(sources, rule, threshold))
    rows = []
    for p in predictions:
        # Strings are never null: MLflow's JSON turns a None in a string column into NaN.
        rows.append({"file": p.file, "mood": p.mood or "", "vote_share": p.vote_share, "seconds": p.seconds,
                     **{f"prob_{c}": p.probabilities.get(c, float("nan")) for c in predictor.classes},
                     "slices": json.dumps(p.slices), "error": p.error or "", "reason": p.reason or ""})  # fmt: skip
    return pd.DataFrame(rows)


def text(value: Any) -> str:
    """A cell as a string: pandas fills a column a row lacks with NaN."""
    return value if isinstance(value, str) else ""


def source_of(record: dict[str, Any], n: int, tmp: Path) -> tuple[str, Callable[[], Audio]]:
    """(name, loader) of one input row; the loader raises AudioError naming what is wrong with it."""
    path, payload = text(record.get("path")), text(record.get("audio_base64"))
    name = text(record.get("filename")) or path or f"row {n}"

    def load() -> Audio:
        if payload:
            if len(payload) > LIMITS.max_bytes * 4 // 3 + 4:
                raise AudioError("too_large", f"audio_base64 is larger than {LIMITS.max_bytes / 1e6:g} MB")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise AudioError("decode", f"audio_base64 is not base64 ({exc})") from None
            # Only a known audio suffix of the caller's file name is kept: the name never becomes a path, and no
            # playlist suffix (.m3u8) steers ffmpeg.
            suffix = Path(name).suffix.lower()
            file = tmp / f"input-{n}{suffix if suffix in AUDIO_SUFFIXES else ''}"
            file.write_bytes(data)
            try:
                return read_pcm(file, LIMITS.max_seconds)
            finally:
                file.unlink()
        if path:
            if not os.environ.get(ALLOW_PATHS):
                raise AudioError("no_input", f"`path` inputs are off: set {ALLOW_PATHS}=1 where the server may read "
                                             "every file its callers name, or send audio_base64")  # fmt: skip
            if not Path(path).is_file():
                raise AudioError("missing", "no such file on the serving host")
            check_size(Path(path), LIMITS)
            return read_pcm(Path(path), LIMITS.max_seconds)
        raise AudioError("no_input", "neither audio_base64 nor path is set")

    return name, load
