"""`alm gateway`'s HTTP server limits (server/api/http_server.py), with raw sockets as a hostile client sends them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from alm.gateway import gateway_argv
from alm.processes import free_port, stop_process, wait_ok

KEEP_ALIVE_S = 2.0
HEADER_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 32 * 1024
MAX_CONNECTIONS = 200
PER_CLIENT = 50


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, int, psutil.Process]]:
    """`alm gateway` as the container runs it, configured only through ALM_* (no engine needed here)."""
    port = free_port()
    env = {
        **os.environ,
        "ALM_ENGINE_URLS": f"http://127.0.0.1:{free_port()}",
        "ALM_HTTP_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "ALM_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ALM_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "ALM_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "ALM_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "ALM_GRACEFUL_SHUTDOWN_S": "1",
    }
    with open(tmp_path_factory.mktemp("gateway") / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            gateway_argv("127.0.0.1", port), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        assert wait_ok(proc, f"http://127.0.0.1:{port}/health", 60), "alm gateway did not start"
        yield "127.0.0.1", port, psutil.Process(proc.pid)
    finally:
        stop_process(proc, 10)


def connect(gateway, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source``: any 127.0.0.0/8 address is another client on Linux's loopback."""
    return socket.create_connection(gateway[:2], timeout=10, source_address=(source, 0))


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed); then the connection must be closed by the server."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """True if the server closed ``sock`` (EOF or reset) within ``wait_s``."""
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_openai_error(status: int, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["param"] is None
    assert set(error) == {"message", "type", "param", "code"}


def test_a_16_mb_header_is_refused_without_being_buffered(gateway) -> None:
    rss = gateway[2].memory_info().rss
    sock = connect(gateway)
    replies: list[bytes] = []
    reader = threading.Thread(target=lambda: replies.append(_read_all(sock)))
    reader.start()
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(16 * 16):
            sock.sendall(b"a" * 65536)
        sock.sendall(b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: expected
    reader.join(30)
    status, _, body = _parse(replies[0])
    assert_openai_error(status, body, 431, "headers_too_large")
    assert gateway[2].memory_info().rss - rss < 8 * 2**20  # uvicorn with httptools alone buffered all 16 MiB


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), {}, body


def test_headers_within_the_limit_are_served(gateway) -> None:
    headers = {f"x-h{i}": "v" * 1000 for i in range(25)}  # 25 KiB of headers, under 32 KiB
    assert httpx.get(f"http://{gateway[0]}:{gateway[1]}/health", headers=headers).status_code == 200


def test_bytes_that_are_not_http_get_a_400_in_the_openai_shape(gateway) -> None:
    sock = connect(gateway)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")  # e.g. TLS to a plain port
    status, _, body = read_response(sock)
    assert_openai_error(status, body, 400, "invalid_http_request")
    assert closed_by_server(sock, 5)


def test_idle_connections_are_closed_after_the_keep_alive_timeout(gateway) -> None:
    idle = [connect(gateway) for _ in range(100)]  # never send a byte
    used = connect(gateway)  # one request, then idle between requests
    used.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(used)[0] == 200
    opened = time.monotonic()
    assert not any(closed_by_server(s, 0.01) for s in [*idle[:5], used])  # open well before the timeout
    deadline = opened + KEEP_ALIVE_S + 5
    still_open = [s for s in [*idle, used] if not closed_by_server(s, max(deadline - time.monotonic(), 0.01))]
    assert not still_open, f"{len(still_open)} of 101 idle connections still open after {KEEP_ALIVE_S + 5:g} s"
    assert time.monotonic() - opened >= KEEP_ALIVE_S - 0.5  # not closed early


def test_headers_sent_a_byte_at_a_time_get_a_408(gateway) -> None:
    sock = connect(gateway)
    sock.sendall(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while not data and time.monotonic() - started < HEADER_TIMEOUT_S + 10:
        try:
            sock.sendall(b"x")  # a header that never ends, each byte resetting nothing
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    status, _, body = _parse(data)
    assert_openai_error(status, body, 408, "request_timeout")
    assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.5


def test_connections_beyond_the_limit_get_503_but_probes_are_answered(gateway) -> None:
    """Overload (not client input): uvicorn's limit_concurrency answers 503, except to /health and /ready."""
    idle = [connect(gateway, f"127.0.0.{2 + i % 5}") for i in range(MAX_CONNECTIONS)]  # 5 clients, 40 each
    try:
        for path, status in (("/v1/models", 503), ("/health", 200), ("/ready", 503)):  # no engine: not ready
            sock = connect(gateway, "127.0.0.9")
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            got, _, body = read_response(sock)
            assert got == status, (path, body)
            if path == "/ready":
                assert json.loads(body)["error"]["code"] == "no_healthy_engine"  # the app's answer, not uvicorn's
            sock.close()
    finally:
        for s in idle:
            closed_by_server(s, KEEP_ALIVE_S + 5)  # the keep-alive timeout frees them
    assert httpx.get(f"http://{gateway[0]}:{gateway[1]}/v1/models").status_code == 200


def test_one_client_cannot_hold_every_connection(gateway) -> None:
    """1,100 idle connections from one client once made every request, probes included, a 503: now that client
    gets its share, its requests beyond it a 429, and other clients and probes are served."""
    hog = [connect(gateway, "127.0.0.20") for _ in range(1100)]
    try:
        beyond = hog[-1]
        beyond.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(beyond)
        assert status == 429 and json.loads(body)["error"]["code"] == "too_many_connections"
        assert headers["connection"] == "close" and closed_by_server(beyond, 5)
        probe = hog[-2]
        probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(probe)[0] == 200
        other = connect(gateway, "127.0.0.21")
        other.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(other)[0] == 200
    finally:
        for s in hog:
            s.close()
