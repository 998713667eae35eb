"""Airflow's `[core] hostname_callable` for the test cluster: several Celery workers on one machine each
record their own name on the task instances they run (real hosts have names of their own)."""

import os
import socket


def worker_name() -> str:
    return os.environ.get("MOOD_WORKER_NAME") or socket.getfqdn()
