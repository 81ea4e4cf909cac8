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
        """A streamed answer of JSON lines (``/glassbox/events``), one by one."""
        for batch in self.batches(path):
            yield from batch

    def batches(self, path: str) -> Iterator[list[dict]]:
        """A streamed answer of JSON lines, as lists: the lines that arrived together in
        one read (a container's start is a burst of events; the browser gets it as one
        message). Waits as long as the daemon stays quiet; ends when the daemon ends."""
        sock, rest = self._request_raw("GET", path)
        try:
            sock.settimeout(None)
            chunks = _Dechunker(rest)
            while True:
                lines = [line for line in chunks.lines() if line.strip()]
                if lines:
                    yield [json.loads(line) for line in lines]
                if chunks.done:
                    return
                try:
                    data = sock.recv(262144)
                except OSError as e:
                    raise EngineError(f"GET {path}: the stream broke off: {e}") from e
                if not data:
                    if chunks.pending():
                        raise EngineError(f"GET {path}: the stream broke off mid-line")
                    return
                chunks.feed(data)
        finally:
            sock.close()

    def hijack(self, method: str, path: str, body: Any = None) -> tuple[socket.socket, bytes]:
        """Docker's connection hijack (attach, exec start): after the answer's headers the
        connection is a raw two-way stream. Returns the socket and any stream bytes that
        came with the headers."""
        return self._request_raw(method, path, body, upgrade=True)

    def _request_raw(self, method: str, path: str, body: Any = None,
                     upgrade: bool = False) -> tuple[socket.socket, bytes]:
        """Sends one request on a fresh connection and reads the answer's headers; for a
        2xx/101 returns the socket and the bytes already read past the headers, else
        raises with the daemon's message."""
        data = b"" if body is None else json.dumps(body).encode()
        upgrade_headers = "Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else ""
        request = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{upgrade_headers}"
                   f"Content-Type: application/json\r\n"
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
            if not (status == 101 or 200 <= status < 300):
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


class _Dechunker:
    """HTTP/1.1 chunked transfer coding, fed as bytes arrive; gives whole lines."""

    def __init__(self, data: bytes = b""):
        self.raw = bytearray(data)
        self.body = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        self.raw += data

    def pending(self) -> bool:
        return bool(self.body.strip())

    def lines(self) -> list[bytes]:
        while not self.done:
            end = self.raw.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(self.raw[:end]).split(b";")[0], 16)
            if size == 0:
                self.done = True
                break
            if len(self.raw) < end + 2 + size + 2:
                break
            self.body += self.raw[end + 2:end + 2 + size]
            del self.raw[:end + 2 + size + 2]
        cut = self.body.rfind(b"\n")
        if cut < 0:
            return []
        complete = bytes(self.body[:cut + 1])
        del self.body[:cut + 1]
        return complete.splitlines()
