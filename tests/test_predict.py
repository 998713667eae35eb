"""Prediction with trained models: the CLI, the served MLflow audio model and the predict_batch DAG, against
models the real train stages made and registered on the real MLflow server.

The CLI's inputs must be the features stage's, number for number (the card's settings, never re-typed); bad
files are named and the batch goes on; the served model answers offline as the CLI does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
import soundfile as sf

from devtools.mirror.cli import CorpusSpec
from devtools.mirror.server import MirrorServer
from devtools.workspace import airflow, airflow_env, free_port, prepare_airflow, stop_processes
from tasks.cli import run_stage
from tasks.evaluate.model import load_dvc_model, predict
from tasks.features.slices import slice_starts
from tasks.predict.cli import main as predict_main
from tasks.train.data import read_partition

from .conftest import shared
from .features_fixture import corpus_workspace

pytestmark = pytest.mark.slow
SPEC = CorpusSpec(seed=11, ravdess_actors=(1, 2, 3), ravdess_seconds=(4.2, 5.5), cal500_songs=2,
                  cal500_seconds=(9.0, 10.0), audioset_per_class=(5, 2), audioset_missing=0)  # fmt: skip
PREFIX = "predict"  # registered names of this module's models: predict-spectrogram-small-cnn, ...
CNN = f"models:/{PREFIX}-spectrogram-small-cnn@champion"
RATE = 16000


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Path:
    ws = corpus_workspace(tmp_path_factory.mktemp("predict"), SPEC, [
        f"train.common.tracking_uri={mlflow_server}",
        f"predict.tracking_uri={mlflow_server}",
        f"train.common.registry_prefix={PREFIX}",
        "train.models.spectrogram.cnn_ravdess.split={kind: actor_folds, k: 3, fold: 0}",
        "train.models.spectrogram.stats_ravdess.split={kind: actor_folds, k: 3, fold: 0}",
        "train.models.audioset.lstm1_audioset.split.k=2",
        "train.architectures.small_cnn.epochs=4",
        "train.architectures.lstm1.epochs=3",
        "predict.chunk_files=2"])  # fmt: skip
    for stage in ("train_spectrogram@cnn_ravdess", "train_spectrogram@stats_ravdess", "train_audioset@lstm1_audioset"):
        run_stage(stage, ws)
    return ws


def tone(path: Path, seconds: float, rate: int = RATE, level: float = 0.3, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = level * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(ws: Path, *args: str) -> Run:
    """`python -m tasks predict ARGS` in the workspace, in this process (torch and MLflow are imported once for the
    module); test_cli_inputs_are_the_features_stages_number_for_number runs the real command line."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = predict_main([*args, "--root", str(ws)])
    return Run(code, out.getvalue(), err.getvalue())


def cli_process(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "tasks", "predict", *args], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def predictions(path: Path) -> dict[str, dict]:
    return {p["file"]: p for p in json.loads(path.read_text())["predictions"]}


def test_cli_inputs_are_the_features_stages_number_for_number(workspace: Path, tmp_path: Path) -> None:
    """Every RAVDESS clip of the raw store through the CLI: the same slices and the same probabilities as the
    model gives on the features stage's own rows of that clip."""
    out = tmp_path / "ravdess.json"
    proc = cli_process(workspace, "raw:ravdess", "--model", "models/cnn_ravdess", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = predictions(out)
    model = load_dvc_model(workspace / "models" / "cnn_ravdess")
    data = read_partition(workspace / "data/features/slices", "slices", "ravdess", "train", 10)
    prob, row_clip = predict(model, data, __import__("torch").device("cpu"))
    assert len(got) == data.n_clips > 10
    for c, clip_id in enumerate(data.clip_ids):
        mine = got[f"raw:ravdess/{clip_id}"]
        rows = np.flatnonzero(row_clip == c)
        assert len(mine["slices"]) == len(rows), clip_id
        cli_prob = np.array([[s[k] for k in model.classes] for s in mine["slices"]])
        np.testing.assert_allclose(cli_prob, prob[rows], atol=1e-5, err_msg=clip_id)
        assert [s["start_s"] for s in mine["slices"]] == pytest.approx(list(data.row_start[rows] / RATE), abs=1e-3)
        assert mine["mood"] in model.classes and sum(mine["probabilities"].values()) == pytest.approx(1.0)


def test_vggish_model_sees_the_embeddings_the_stage_stored(workspace: Path, tmp_path: Path) -> None:
    """An LSTM on (random-weight) VGGish embeddings: a 10 s clip is one window of the features stage's 10
    examples; its probabilities equal the model's on the stored embeddings."""
    out = tmp_path / "audioset.json"
    proc = cli(workspace, "raw:audioset", "--model", "models/lstm1_audioset", "--voting", "soft", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOM VGGish weights" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["random_vggish_weights"] is True and doc["voting"] == "soft"
    got = {p["file"]: p for p in doc["predictions"]}
    model = load_dvc_model(workspace / "models" / "lstm1_audioset")
    for split in ("train", "test"):
        data = read_partition(workspace / "data/features/vggish", "vggish", "audioset", split, 10)
        prob, _ = predict(model, data, __import__("torch").device("cpu"))
        for c, clip_id in enumerate(data.clip_ids):
            mine = got[f"raw:audioset/{clip_id}"]
            assert len(mine["slices"]) == 1, clip_id
            np.testing.assert_allclose([mine["slices"][0][k] for k in model.classes], prob[c], atol=1e-4)


def test_real_songs_from_files_folders_and_urls_with_a_registered_model(workspace: Path, tmp_path: Path) -> None:
    """Real RAVDESS recordings (48 kHz wav, and 16 kHz FLAC) as files and a folder, a URL on a loopback server,
    the champion of the registry; the table on stdout, one row per file."""
    wav = sorted(shared("ravdess", "song_wav48k").rglob("*.wav"))[:2]
    flac_dir = shared("ravdess", "song_flac16k")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(wav[0], served / "clip.wav")
    with MirrorServer(served) as mirror:
        url = f"{mirror.url}/clip.wav"
        out = tmp_path / "real.csv"
        proc = cli(workspace, str(wav[0]), str(wav[1]), url, "--model", CNN, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = cli(workspace, str(wav[0]), "--model", CNN)
    frame = pd.read_csv(out)
    assert sorted(frame["file"].unique()) == sorted([str(wav[0]), str(wav[1]), url])
    for name, group in frame.groupby("file"):
        path = wav[0] if name == url else Path(name)
        seconds = sf.info(path).duration
        expected = len(slice_starts(-(-round(seconds * RATE) // 500), 128, 128, "align_end"))
        assert len(group) == expected, name
        probs = group[[c for c in frame.columns if c.startswith("song_")]].iloc[0]
        assert probs.sum() == pytest.approx(1.0)
    # The URL is the same recording as the first file: the same prediction.
    np.testing.assert_allclose(frame[frame.file == url]["happy"].to_numpy(), frame[frame.file == str(wav[0])]
                               ["happy"].to_numpy(), atol=1e-6)  # fmt: skip
    assert table.returncode == 0 and wav[0].name[:20] in table.stdout and "mood" in table.stdout
    assert f"{PREFIX}-spectrogram-small-cnn@champion (v" in table.stderr
    # One singer's folder: the clips shorter than one 4 s slice (3.6-3.97 s) are refused by name, the rest voted.
    actor = flac_dir / "Actor_11"
    folder = cli(workspace, str(actor), "--model", CNN, "--voting", "threshold", "--out", str(tmp_path / "f.json"))
    got = predictions(tmp_path / "f.json")
    files = sorted(actor.glob("*.flac"))
    short = {str(f) for f in files if sf.info(f).duration < 4.0}
    assert sorted(got) == sorted(map(str, files)) and 0 < len(short) < len(files)
    assert {f for f, p in got.items() if p["reason"] == "too_short"} == short
    assert folder.returncode == 1 and f"{len(files) - len(short)} of {len(files)} files predicted" in folder.stderr
    assert all(p["mood"] is None or p["vote_share"] >= 0.6 - 1e-9 for p in got.values())  # threshold voting abstains


def test_bad_files_are_named_and_the_batch_goes_on(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    tone(folder / "good.wav", 5.0)
    (folder / "notes.mp3").write_text("these are not the songs you are looking for\n" * 50)
    (folder / "empty.wav").write_bytes(b"")
    tone(folder / "silent.wav", 5.0, level=0.0)
    tone(folder / "short.wav", 1.0)
    tone(folder / "big.wav", 40.0)  # 1.3 MB: over the 1 MB limit below
    # A download cut short: an m4a's index (moov) is written last, so half a file has none.
    full = tmp_path / "full.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tone(tmp_path / "t.wav", 8.0)), str(full)], check=True)
    (folder / "truncated.m4a").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "mixed.json"
    proc = cli(workspace, str(folder), "--model", "models/cnn_ravdess", "--out", str(out),
               "-S", "predict.max_file_mb=1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    got = {Path(k).name: v for k, v in predictions(out).items()}
    reasons = {name: p["reason"] for name, p in got.items()}
    assert reasons == {"good.wav": None, "notes.mp3": "decode", "empty.wav": "empty", "silent.wav": "silent",
                       "short.wav": "too_short", "big.wav": "too_large", "truncated.m4a": "decode"}  # fmt: skip
    assert got["good.wav"]["mood"] is not None
    for name, p in got.items():
        if p["reason"]:
            assert name in p["error"], p["error"]  # every message names its file
            assert f"error: {p['error']}" in proc.stderr
    assert "1 of 7 files predicted" in proc.stderr
    assert "shorter than 4 s" in got["short.wav"]["error"]


def test_models_that_cannot_predict_say_what_is_missing(workspace: Path, tmp_path: Path) -> None:
    song = tone(tmp_path / "song.wav", 5.0)
    cases = {
        "models:/no-such-model@champion": "no registered model 'no-such-model'",
        f"models:/{PREFIX}-spectrogram-small-cnn@gold": "has no alias 'gold'",
        "runs:/0123456789abcdef/model": "no run '0123456789abcdef'",
        str(tmp_path / "nowhere"): "neither an MLflow model URI",
    }
    old = tmp_path / "old_model"
    shutil.copytree(workspace / "models" / "cnn_ravdess", old)
    card = json.loads((old / "model.json").read_text())
    del card["features"]["params"], card["features"]["stage"]
    (old / "model.json").write_text(json.dumps(card))
    cases[str(old)] = "records no feature settings (features.stage, features.params missing)"
    for model, message in cases.items():
        proc = cli(workspace, str(song), "--model", model)
        assert proc.returncode == 1 and message in proc.stderr, (model, proc.stderr[-2000:])
    missing = cli(workspace, str(tmp_path / "absent.wav"), "--model", "models/cnn_ravdess")
    assert missing.returncode == 1 and "absent.wav: no such file, folder or URL" in missing.stderr


def test_the_logistic_baseline_predicts_whole_clips(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    proc = cli(workspace, str(tone(tmp_path / "a.wav", 6.0)), "--model", "models/stats_ravdess", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (p,) = predictions(out).values()
    assert len(p["slices"]) == 1 and p["mood"] in p["probabilities"]


def test_registered_audio_model_is_served_offline_and_agrees_with_the_cli(workspace: Path, tmp_path: Path,
                                                                         mlflow_server: str) -> None:  # fmt: skip
    """`mlflow models serve` on the audio model's champion, on loopback: a real clip posted as base64 gets the
    CLI's mood and probabilities; a bad row gets its error and the good rows still their moods."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    audio = client.get_model_version_by_alias(f"{PREFIX}-spectrogram-small-cnn-audio", "champion")
    torch_version = client.get_model_version_by_alias(f"{PREFIX}-spectrogram-small-cnn", "champion")
    assert audio.tags["torch_model"] == f"{PREFIX}-spectrogram-small-cnn/{torch_version.version}"
    assert torch_version.tags["audio_model"] == f"{PREFIX}-spectrogram-small-cnn-audio/{audio.version}"
    clip = sorted(shared("ravdess", "song_wav48k").rglob("*.wav"))[0]
    out = tmp_path / "cli.json"
    assert cli(workspace, str(clip), "--model", CNN, "--out", str(out)).returncode == 0
    expected = predictions(out)[str(clip)]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MOOD_SERVE_ALLOW_PATHS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               f"models:/{PREFIX}-spectrogram-small-cnn-audio@champion", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        body = {"dataframe_records": [
            {"audio_base64": base64.b64encode(clip.read_bytes()).decode(), "filename": clip.name},
            {"audio_base64": base64.b64encode(b"not audio at all" * 100).decode(), "filename": "junk.mp3"},
            {"path": str(clip)}]}  # fmt: skip
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert response.ok, response.text[-2000:]
        rows = response.json()["predictions"]
    finally:
        stop_processes([server])
        log.close()
    good, junk, by_path = rows
    assert good["file"] == clip.name and good["mood"] == expected["mood"] and good["error"] == ""
    for c, value in expected["probabilities"].items():
        assert good[f"prob_{c}"] == pytest.approx(value, abs=1e-6)
        assert by_path[f"prob_{c}"] == pytest.approx(value, abs=1e-6)
    assert len(json.loads(good["slices"])) == len(expected["slices"])
    assert junk["mood"] == "" and junk["reason"] == "decode" and "junk.mp3" in junk["error"]


def test_predict_batch_dag_maps_chunks_and_writes_the_predictions_asset(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    for k in range(4):
        tone(folder / f"song{k}.wav", 4.5 + k, freq=220.0 * (k + 1))
    (folder / "broken.flac").write_bytes(b"fLaC" + b"\0" * 100)
    env = airflow_env(tmp_path / "airflow", workspace)
    prepare_airflow(env)
    conf = {"input": str(folder), "model": CNN, "voting": "soft"}
    proc = airflow(env, "dags", "test", "predict_batch", "--conf", json.dumps(conf))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "DagRunState.FAILED" not in log, log[-5000:]
    (run,) = [p for p in (workspace / "data" / "predictions").iterdir() if p.is_dir()]
    table = pq.read_table(run / "predictions.parquet").to_pandas()
    assert sorted(Path(f).name for f in table.file) == ["broken.flac", *(f"song{k}.wav" for k in range(4))]
    assert len(list(run.glob("part-*.parquet"))) == 3  # 5 files in chunks of 2
    good = table[table.error.isna()]
    assert len(good) == 4 and good.mood.notna().all() and set(good.voting) == {"soft"}
    assert set(table.model) == {f"{PREFIX}-spectrogram-small-cnn"} and table.model_version.str.isdigit().all()
    assert table[table.file.str.endswith("broken.flac")].reason.item() == "decode"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["predicted"] == 4 and summary["failed"] == {"decode": 1} and summary["missing"] == 0
    assert "predict_batch: 4 of 5 files predicted" in log
    assets = json.loads(airflow(env, "assets", "list", "-o", "json").stdout)
    assert any(a["name"] == "predictions" for a in assets)
