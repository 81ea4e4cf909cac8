"""The daemon's side of the zygote: spawn it, send it requests, hear its reports."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Callable

from sandbox.zygote import ProtocolError, receive_message, send_message

log = logging.getLogger(__name__)


class ZygoteError(RuntimeError):
    def __init__(self, message: str, step: str | None = None):
        super().__init__(message)
        self.step = step


class ZygoteClient:
    """Requests are answered in order of ids; exits arrive whenever they happen."""

    def __init__(self, on_exit: Callable[[str, int, int], None]):
        self.on_exit = on_exit
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        # A fresh interpreter, not a fork of this (threaded) process.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.zygote", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        theirs.close()
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}
        self._next = 0
        self._closed = False
        ready, _ = receive_message(self.sock)
        if not ready or ready.get("op") != "ready":
            raise ZygoteError(f"the zygote did not start (got {ready!r})")
        self.pid = ready["pid"]
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def request(self, op: str, fds: dict[str, int] | None = None, timeout: float = 30,
                **fields) -> tuple[dict, list[int]]:
        with self._lock:
            self._next += 1
            ident = fields.pop("id", None) or f"req-{self._next}"
            future: Future = Future()
            self._pending[ident] = future
            names = list((fds or {}).keys())
            try:
                send_message(self.sock, {"op": op, "id": ident, "fds": names, **fields},
                             [fds[n] for n in names])
            except (ProtocolError, OSError) as exc:
                self._pending.pop(ident, None)
                raise ZygoteError(str(exc), op) from None
        try:
            reply, reply_fds = future.result(timeout)
        finally:
            with self._lock:
                self._pending.pop(ident, None)
        if reply.get("op") == "failed":
            raise ZygoteError(reply.get("error", "failed"), reply.get("step"))
        return reply, reply_fds

    def _read(self) -> None:
        while True:
            try:
                message, fds = receive_message(self.sock)
            except OSError:
                message, fds = None, []
            if message is None:
                break
            if message.get("op") == "exited":
                try:
                    self.on_exit(message["id"], message["pid"], message["status"])
                except Exception:
                    log.exception("handling the exit of %s", message["id"])
                continue
            with self._lock:
                future = self._pending.get(message.get("id"))
            if future is None:
                for fd in fds:
                    os.close(fd)
                log.warning("unexpected message from the zygote: %r", message)
                continue
            future.set_result((message, fds))
        with self._lock:
            pending = list(self._pending.values())
            self._closed = True
        for future in pending:
            if not future.done():
                future.set_result(({"op": "failed", "error": "the zygote exited"}, []))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
