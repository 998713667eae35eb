"""A loopback HTTP mirror with Range support and injectable faults.

The offline demo serves the generated corpus with it; tests use its faults to play a
misbehaving internet (HTTP errors with Retry-After, resets mid-stream, truncated files, slow
responses). Nothing in the product depends on it: every source URL is a parameter.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
COPY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, consumed by the next request for its path.

    kind: 'status' (reply `status` with `headers`), 'reset' (send `after_bytes` of the body,
    then reset the connection), 'cut' (announce the whole body, send `after_bytes` of it, then
    close the connection cleanly), 'truncate' (serve only the first `after_bytes` bytes, as if
    the file were short), 'delay' (wait `seconds`, then serve normally).
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    seconds: float = 0.0


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0) -> None:
        self.root = Path(root).resolve()
        self.latency_s = latency_s
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.requests: list[tuple[str, str | None]] = []
        self.request_times: list[float] = []  # time.time() of each entry of `requests`
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add_fault(self, path: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self.faults["/" + path.lstrip("/")].extend([fault] * times)

    def next_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self.faults.get(path)
            return queue.popleft() if queue else None

    def record(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((path, range_header))
            self.request_times.append(time.time())

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up early on purpose (yt-dlp reads 512 bytes of a direct link to sniff it);
        # that is no server error worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self.serve_forever, name="mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests and the demo read server.requests instead of stderr noise

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _resolve(self, path: str) -> Path | None:
        target = (self.server.root / path.lstrip("/")).resolve()
        if target != self.server.root and self.server.root not in target.parents:
            return None
        return target if target.is_file() else None

    def _serve(self, body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.server.record(path, self.headers.get("Range"))
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        fault = self.server.next_fault(path)
        if fault and fault.kind == "delay":
            time.sleep(fault.seconds)
            fault = None
        if fault and fault.kind == "status":
            self._error(fault.status, fault.headers)
            return
        target = self._resolve(path)
        if target is None:
            self._error(HTTPStatus.NOT_FOUND)
            return
        data_len = target.stat().st_size
        if fault and fault.kind == "truncate":
            data_len = min(data_len, fault.after_bytes)
        start, end = 0, data_len - 1
        status = HTTPStatus.OK
        if (spec := self.headers.get("Range")) and (m := RANGE_RE.match(spec.strip())):
            first, last = m.groups()
            if first:
                start, end = int(first), min(int(last), data_len - 1) if last else data_len - 1
            elif last:
                start = max(0, data_len - int(last))
            if start >= data_len or start > end:
                self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{data_len}"})
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", self.date_time_string(int(target.stat().st_mtime)))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{data_len}")
        self.end_headers()
        if body:
            self._send_body(target, start, length, fault)

    def _send_body(self, target: Path, start: int, length: int, fault: Fault | None) -> None:
        cut = fault.after_bytes if fault and fault.kind in ("reset", "cut") else None
        sent = 0
        with target.open("rb") as fh:
            fh.seek(start)
            while sent < length:
                chunk = fh.read(min(COPY_CHUNK, length - sent))
                if not chunk:
                    break
                if cut is not None and sent + len(chunk) >= cut:
                    self.wfile.write(chunk[: max(cut - sent, 0)])
                    self.wfile.flush()
                    if fault.kind == "reset":
                        self._reset()
                    else:
                        self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer". The pause
        # lets it read what was sent first, as when a real connection drops mid-stream.
        time.sleep(0.2)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _error(self, status: int, headers: dict[str, str] | None = None) -> None:
        body = f"{int(status)} {HTTPStatus(status).phrase}\n".encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
