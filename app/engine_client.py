"""A tiny client for the glass daemon's API: HTTP/1.1 over its unix socket.

The daemon speaks (a subset of) the Docker Engine API, so paths and field names are
Docker's: ``/version``, ``/info``, ``/images/json``, ``/containers/json?all=1``.
The web app is unprivileged and reaches the engine only this way.
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any


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


class EngineClient:
    """Reads from the daemon's API over its unix socket; one connection per request."""

    def __init__(self, socket_path: str, timeout: float = 5.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def get_json(self, path: str) -> Any:
        """``GET path`` and return the decoded JSON body; raise EngineError otherwise."""
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request("GET", path, headers={"Accept": "application/json"})
            except OSError as e:  # missing socket, refused, permission denied, timeout
                raise EngineUnreachable(self.socket_path, e) from e
            try:
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise EngineError(f"GET {path}: the daemon's answer broke off: {e}") from e
        finally:
            conn.close()
        if response.status != 200:
            raise EngineError(f"GET {path}: the daemon answered {response.status}: "
                              f"{_error_message(body)}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise EngineError(f"GET {path}: the daemon's answer is not JSON: {e}") from e


def _error_message(body: bytes) -> str:
    """The Docker API puts its error text in {"message": ...}; fall back to the raw body."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500] or "(no message)"
