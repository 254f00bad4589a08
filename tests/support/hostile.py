"""Clients that misbehave below what httpx allows: raw sockets that send headers and trickle, stall or withhold
the body, and the raw HTTP response they get back."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit


class RawClient:
    """One TCP connection to ``base_url``; ``start`` sends a POST's headers (and optionally part of the body)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)

    def start(
        self,
        path: str,
        content_length: int | None,
        first: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        length = (
            f"content-length: {content_length}\r\n" if content_length is not None else "transfer-encoding: chunked\r\n"
        )
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n{extra}{length}\r\n"
        self.sock.sendall(head.encode() + first)

    def trickle(self, data: bytes, every_s: float) -> bool:
        """Send ``data`` a byte at a time; False once the server has closed the connection."""
        for i in range(len(data)):
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError:
                return False
            time.sleep(every_s)
        return True

    def response(self) -> tuple[int, dict]:
        """Read until the server closes or a whole JSON response arrived: (status, parsed body)."""
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                break
        head, _, body = buf.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(body)

    def close(self) -> None:
        self.sock.close()


def json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()
