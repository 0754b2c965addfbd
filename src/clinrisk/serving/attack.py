"""Hostile clients for the serving tests and benchmark (127.0.0.1 only): an oversized body (declared or
chunked), a slow body, and a liveness prober that samples latency and the server's RSS meanwhile.

Raw sockets, because an HTTP client library would refuse to send a body it cannot finish, or buffer it."""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx

CHUNK = 64 * 1024


@dataclass(frozen=True)
class AttackResult:
    """What the attacker saw: the status line's code (None: no answer), seconds from the end of the
    headers to that answer, and body bytes sent before it."""

    status: int | None
    seconds: float
    bytes_sent: int


def _headers(path: str, host: str, extra: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(buf: bytes) -> int | None:
    if not buf.startswith(b"HTTP/1.1 ") or len(buf) < 12:
        return None
    try:
        return int(buf[9:12])
    except ValueError:
        return None


def oversized_body(
    host: str,
    port: int,
    path: str,
    total_bytes: int,
    *,
    chunked: bool,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> AttackResult:
    """Send up to ``total_bytes`` of body (declared in Content-Length, or chunked) until the server
    answers or closes; returns when it answered."""
    extra = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total_bytes)}
    if token:
        extra["Authorization"] = f"Bearer {token}"
    payload = b" " * CHUNK
    frame = f"{CHUNK:x}\r\n".encode() + payload + b"\r\n" if chunked else payload
    sent = 0
    buf = b""
    pending = b""
    closed = False
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(_headers(path, host, extra))
        t0 = time.perf_counter()
        s.setblocking(False)
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            want_write = [s] if sent < total_bytes and not closed else []
            readable, writable, _ = select.select([s], want_write, [], 0.5)
            if readable:
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                buf += data
                if _status(buf) is not None or not data:
                    break
            if writable:
                if not pending:
                    pending = frame  # whole frames only: a chunked body must stay well-formed
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True  # closed for writing; the answer may still be readable
                    continue
                except BlockingIOError:
                    continue
                pending = pending[n:]
                sent += n
        return AttackResult(_status(buf), time.perf_counter() - t0, sent)


def slow_body(
    host: str,
    port: int,
    path: str,
    declared: int,
    sent: int,
    *,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> AttackResult:
    """Declare ``declared`` body bytes, send ``sent`` of them, then wait for the server's answer."""
    extra = {"Content-Length": str(declared)}
    if token:
        extra["Authorization"] = f"Bearer {token}"
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(_headers(path, host, extra) + b" " * sent)
        t0 = time.perf_counter()
        buf = b""
        while _status(buf) is None:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            buf += data
        return AttackResult(_status(buf), time.perf_counter() - t0, sent)


@dataclass(eq=False)
class Prober(threading.Thread):
    """GET ``url`` every ``interval_s`` until stopped: latencies (s), failures, and the max RSS of
    process ``pid`` (bytes) sampled alongside."""

    url: str
    pid: int | None = None
    interval_s: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    max_rss: int = 0

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)
        self._stop_event = threading.Event()

    def run(self) -> None:
        proc = None
        if self.pid is not None:
            import psutil

            proc = psutil.Process(self.pid)
        with httpx.Client(timeout=30.0) as client:
            while not self._stop_event.is_set():
                t0 = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t0)
                self.failures += not ok
                if proc is not None:
                    self.max_rss = max(self.max_rss, proc.memory_info().rss)
                self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
