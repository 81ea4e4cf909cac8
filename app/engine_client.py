"""A tiny client for the glass daemon's API: HTTP/1.1 over its unix socket.

The daemon speaks (a subset of) the Docker Engine API, so paths and field names are
Docker's: ``/version``, ``/info``, ``/images/json``, ``/containers/json?all=1``.
The web app is unprivileged and reaches the engine only this way.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any, Iterator


class EngineError(Exception):
    """The daemon answered, but not with what was asked for."""


class EngineUnreachable(EngineError):
    """Nothing answers on the daemon's socket (not running, wrong path, no permission)."""

    def __init__(self, socket_path: str, cause: BaseException):
        super().__init__(f"cannot reach the Glassbox daemon at {socket_path}: {cause}")
        self.socket_path = socket_path
        self.cause = cause


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a unix stream socket instead of TCP."""

    def __init__(self, socket_path: str, timeout: float = 5.0):
        # The host name only fills the Host header; Docker's clients send "localhost" too.
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EngineRefused(EngineError):
    """The daemon understood and said no (4xx): its message is meant for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class EngineClient:
    """Talks to the daemon's API over its unix socket; one connection per request."""

    def __init__(self, socket_path: str, timeout: float = 5.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def get_json(self, path: str) -> Any:
        """``GET path`` and return the decoded JSON body; raise EngineError otherwise."""
        return self.call("GET", path)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the decoded JSON answer (None for an empty one). A 4xx raises
        EngineRefused with the daemon's message, anything else unexpected EngineError."""
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.request(method, path, body=data, headers=headers)
            except OSError as e:  # missing socket, refused, permission denied, timeout
                raise EngineUnreachable(self.socket_path, e) from e
            try:
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise EngineError(f"{method} {path}: the daemon's answer broke off: {e}") from e
        finally:
            conn.close()
        if 400 <= response.status < 500:
            raise EngineRefused(response.status, _error_message(answer))
        if response.status not in (200, 201, 204):
            raise EngineError(f"{method} {path}: the daemon answered {response.status}: "
                              f"{_error_message(answer)}")
        if not answer:
            return None
        try:
            return json.loads(answer)
        except ValueError as e:
            raise EngineError(f"{method} {path}: the daemon's answer is not JSON: {e}") from e

    def lines(self, path: str) -> Iterator[dict]:
        """A streamed answer of JSON lines (``/glassbox/events``), as they come. It waits
        as long as the daemon stays quiet; it ends when the daemon ends the stream."""
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request("GET", path, headers={"Accept": "application/json"})
                response = conn.getresponse()
            except OSError as e:
                raise EngineUnreachable(self.socket_path, e) from e
            if response.status != 200:
                message = _error_message(response.read())
                if 400 <= response.status < 500:
                    raise EngineRefused(response.status, message)
                raise EngineError(f"GET {path}: the daemon answered {response.status}: {message}")
            conn.sock.settimeout(None)
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise EngineError(f"GET {path}: the stream broke off: {e}") from e
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def hijack(self, method: str, path: str, body: Any = None) -> tuple[socket.socket, bytes]:
        """Docker's connection hijack (attach, exec start): after the answer's headers the
        connection is a raw two-way stream. Returns the socket and any stream bytes that
        came with the headers."""
        data = b"" if body is None else json.dumps(body).encode()
        request = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
                   f"Upgrade: tcp\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                sock.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise EngineError(f"{method} {path}: the daemon closed the connection")
                    head += chunk
                    if len(head) > 65536:
                        raise EngineError(f"{method} {path}: the answer's headers are too long")
            except OSError as e:
                raise EngineUnreachable(self.socket_path, e) from e
            head, _, rest = head.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status not in (101, 200):
                body_bytes = rest
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                while length and len(body_bytes) < int(length.group(1)):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body_bytes += chunk
                message = _error_message(body_bytes)
                if 400 <= status < 500:
                    raise EngineRefused(status, message)
                raise EngineError(f"{method} {path}: the daemon answered {status}: {message}")
            sock.settimeout(None)
            return sock, rest
        except BaseException:
            sock.close()
            raise


def _error_message(body: bytes) -> str:
    """The Docker API puts its error text in {"message": ...}; fall back to the raw body."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500] or "(no message)"
