#!/usr/bin/env bash
# Local MLflow tracking server: SQLite backend, artifacts under mlflow/store, bound to loopback.
# Lean settings measured here: one worker and no job execution start in ~7 s using ~0.5 GB.
# Usage: mlflow/start.sh [PORT]   (env: MLFLOW_STORE to move the store, PYTHON for the interpreter,
#   MLFLOW_BACKEND_STORE_URI for another backend, e.g. postgresql+psycopg2://user@host/db; it migrates itself)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${MLFLOW_STORE:-$here/store}
port=${1:-${MLFLOW_PORT:-5000}}
python=${PYTHON:-$here/../.venv/bin/python}
mkdir -p "$store/artifacts"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec "$python" -m mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$store/mlflow.db}" \
  --artifacts-destination "$store/artifacts" --serve-artifacts
