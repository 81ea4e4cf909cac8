"""The plumbing of the daemon's HTTP API: routing, errors, bodies, streams, hijacks.

Handlers live in mixins (``api.py``: system and containers; ``api_images.py``:
images, builds, volumes); each registers its routes with ``@route``. Everything
here speaks the Docker Engine API's conventions: JSON errors ``{"message": …}``
with Docker's status codes, optional ``/vX.Y`` prefixes, ``Api-Version`` and
``Ostype`` on every response.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

VERSION = "0.1.0"
API_VERSION = "1.44"
MAX_JSON_BODY = 1 << 20
MAX_CHUNK = 1 << 30
MAX_CONNECTIONS = 128          # per socket: each is a thread
REQUEST_TIMEOUT = 60           # seconds to send a request's line and headers
ROUTES: list[tuple[str, re.Pattern, str]] = []


def route(method: str, pattern: str):
    """Registers a handler method for ``method`` and a path regex (groups become arguments)."""
    def register(fn):
        ROUTES.append((method, re.compile(r"^(?:/v[0-9]+\.[0-9]+)?" + pattern + r"$"), fn.__name__))
        return fn
    return register


class ApiError(Exception):
    """An answer other than success: ``status`` and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, handler, engine, daemon=None, control: bool = False):
        import os
        import threading
        if os.path.exists(path):
            os.unlink(path)
        self.engine = engine
        self.daemon = daemon
        self.control = control  # the control socket may also manage hosts
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(path, handler)

    def process_request(self, request, client_address):
        # One thread per connection, up to a cap: a client opening connections
        # without end can't exhaust the daemon's threads (or pids).
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class ChunkedReader:
    """A request body sent with ``Transfer-Encoding: chunked``, read as a file."""

    def __init__(self, raw):
        self.raw = raw
        self.left = 0
        self.done = False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self.left == 0:
                line = self.raw.readline(1024)
                if not line:
                    raise ApiError(400, "the request body ended in the middle of a chunk")
                try:
                    self.left = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ApiError(400, "malformed chunked request body") from None
                if self.left < 0 or self.left > MAX_CHUNK or not line.endswith(b"\n"):
                    raise ApiError(400, "malformed chunked request body (bad chunk size)")
                if self.left == 0:
                    while self.raw.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    break
            want = self.left if size < 0 else min(self.left, size - len(out))
            data = self.raw.read(want)
            if not data:
                raise ApiError(400, "the request body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(16)  # the CRLF after the chunk
        return bytes(out)


class LimitedReader:
    """A request body with a Content-Length."""

    def __init__(self, raw, length: int):
        self.raw = raw
        self.left = length

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if size < 0 else min(size, self.left)
        data = self.raw.read(want)
        self.left -= len(data)
        return data


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"Glassbox/{VERSION}"
    # A request must arrive within this; streams and hijacks lift it (see below).
    timeout = REQUEST_TIMEOUT

    def address_string(self) -> str:  # unix sockets have no (host, port)
        return "unix"

    def log_message(self, format: str, *args) -> None:
        log.debug("api: " + format, *args)

    @property
    def engine(self):
        return self.server.engine

    def do_GET(self): self.dispatch("GET")
    def do_HEAD(self): self.dispatch("HEAD")
    def do_POST(self): self.dispatch("POST")
    def do_PUT(self): self.dispatch("PUT")
    def do_DELETE(self): self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query_all = parse_qs(url.query, keep_blank_values=True)
        self.query = {k: v[-1] for k, v in self.query_all.items()}
        self.hijacked = False
        self.streaming = False
        lookup = "GET" if method == "HEAD" else method
        if self.server.daemon is not None and not self.server.control:
            self.server.daemon.touch(self.server.engine.host)  # a student's request: the host is in use
        for m, pattern, name in ROUTES:
            match = pattern.match(url.path)
            if match and m == lookup:
                self.run_handler(getattr(self, name), match.groups(), method, url.path)
                return
        self.fail(404, f"page not found: {method} {url.path} is not part of the API Glassbox serves")

    def run_handler(self, handler, args, method: str, path: str) -> None:
        from sandbox.engine import EngineError
        from sandbox.runtime import ContainerError
        try:
            handler(*args)
        except ApiError as exc:
            self.fail(exc.status, str(exc))
        except EngineError as exc:
            self.fail(exc.status, str(exc), exc.headers)
        except ContainerError as exc:
            self.fail(500 if exc.exit_code == 125 else 400 if exc.exit_code in (126, 127) else 500,
                      f"{exc.step}: {exc}" if exc.step else str(exc))
        except LookupError as exc:
            self.fail(404, str(exc).strip("'\""))
        except ValueError as exc:
            self.fail(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("api %s %s", method, path)
            self.fail(500, f"internal error: {exc}")

    def fail(self, status: int, message: str, headers: dict | None = None) -> None:
        """An error answer — or, once a stream has begun, an error line in it."""
        if self.hijacked:
            return
        if self.streaming:
            try:
                self.write_json_line({"errorDetail": {"message": message}, "error": message})
                self.end_stream()
            except OSError:
                pass
            return
        self.send_json(status, {"message": message}, headers)

    # ------------------------------------------------------------------ bodies

    def body(self):
        """The request body as a file: Content-Length or chunked."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return ChunkedReader(self.rfile)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        return LimitedReader(self.rfile, length)

    def read_json(self, required: bool = False) -> dict:
        body = self.body()
        raw = body.read(MAX_JSON_BODY + 1)
        if len(raw) > MAX_JSON_BODY:
            # Read (and drop) the rest, within reason, so the client hears why.
            drained = 0
            while drained < 64 * MAX_JSON_BODY and (chunk := body.read(1 << 16)):
                drained += len(chunk)
            self.close_connection = True
            raise ApiError(413, "request body too large (limit 1 MiB)")
        if not raw.strip():
            if required:
                raise ApiError(400, "a JSON body is required")
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON in the request body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", ""):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ApiError(400, f"invalid value for {name}: {value!r} (expected true or false)")

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.query.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"invalid value for {name}: {value!r} (expected a number)") from None

    # ------------------------------------------------------------------ answers

    def common_headers(self) -> None:
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Ostype", "linux")
        self.send_header("Server", f"Glassbox/{VERSION} (linux)")
        self.send_header("Docker-Experimental", "false")

    def send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.common_headers()
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.common_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self, content_type: str = "application/json", status: int = 200) -> None:
        """Headers now, a chunked body as things happen (progress, logs, events)."""
        self.send_response(status)
        self.common_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self.streaming = True
        self.connection.settimeout(None)  # a stream lasts as long as what it follows

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def write_json_line(self, obj) -> None:
        self.write_chunk(json.dumps(obj).encode() + b"\r\n")

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.streaming = False

    def hijack(self, content_type: str) -> socket.socket:
        """Docker's connection hijack: ``101 UPGRADED``, then the raw socket is the stream."""
        upgrade = (self.headers.get("Upgrade") or "").lower()
        if upgrade in ("tcp", "h2c"):
            self.send_response_only(101, "UPGRADED")
            self.send_header("Content-Type", content_type)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
        else:
            self.send_response_only(200, "OK")
            self.send_header("Content-Type", content_type)
        self.common_headers()
        self.end_headers()
        self.wfile.flush()
        self.hijacked = True
        self.close_connection = True
        self.connection.settimeout(None)
        return self.connection

    def client_gone(self) -> bool:
        """Has the client closed its end? (For streams that may stay quiet a long time.)"""
        import select
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
