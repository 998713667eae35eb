#!/usr/bin/env bash
# airflow-init: run once per deployment, as root, in the project image (docker-compose.yaml).
set -euo pipefail
ws=/workspace
if [ ! -d "$ws/.git" ]; then
  # The workspace is a copy of the project: the DVC repo every task reads and writes.
  cp -a /opt/mood-pipeline/. "$ws/"
  rm -rf "$ws/.venv"
  git -C "$ws" init -q -b main
  git -C "$ws" add -A
  git -C "$ws" -c user.email=pipeline@localhost -c user.name=mood-pipeline commit -q -m workspace
fi
cd "$ws"
dvc remote add --force --default minio s3://dvc/
dvc remote modify minio endpointurl http://minio:9000
mkdir -p "$ws/.airflow"
python -c 'import json, os; print(json.dumps({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}))' \
  > "$ws/.airflow/passwords.json"
chmod 600 "$ws/.airflow/passwords.json"
airflow db migrate
airflow pools set dvc 1 "DVC holds a repo-wide lock"
airflow pools set audioset_downloads "$AUDIOSET_DOWNLOAD_SLOTS" "AudioSet shard tasks downloading at once"
airflow pools set gpu "$GPU_SLOTS" "training tasks, one per GPU"
if [ -n "${AUDIOSET_COOKIES_FILE:-}${AUDIOSET_PROXY:-}" ]; then
  airflow connections delete audioset_youtube >/dev/null 2>&1 || true
  airflow connections add audioset_youtube --conn-type generic \
    --conn-extra "{\"cookies_file\": \"${AUDIOSET_COOKIES_FILE:-}\", \"proxy\": \"${AUDIOSET_PROXY:-}\"}"
fi
chown -R 50000:0 "$ws"
