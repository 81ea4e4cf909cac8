"""The gunicorn worker that serves the web app: gunicorn's threaded worker, with limits on
what one client can hold.

Every connection being served holds one of the worker's threads (``--threads 200``), and
an open WebSocket holds one for its whole life. Unchecked, one machine could take them all
and the site would stop answering everyone: 200 WebSockets that never send a thing, or
requests whose headers or body trickle in a byte at a time, or big responses it never
reads (slowloris). So, here:

- one client address may have at most ``CONNECTIONS_PER_ADDRESS`` connections open at once
  (a browser needs about 6, plus one per tab). An IPv6 client counts by its /64, which one
  machine usually has whole. Loopback is not counted: that is this machine itself (the
  daemon pushing to the classroom registry, the benchmarks, a local reverse proxy — which
  must then protect itself). ``GLASSBOX_CONNECTIONS_PER_ADDRESS`` changes the number
  (for a classroom behind one NAT address); ``GLASSBOX_HEADERS_TIMEOUT`` and
  ``GLASSBOX_IO_TIMEOUT`` the two timeouts below (``glassbox up`` passes its environment
  on to gunicorn);
- a request's line and headers must all arrive within ``HEADERS_TIMEOUT`` of a thread
  taking the connection;
- any read or write that moves no byte for ``IO_TIMEOUT`` ends the connection. An open
  WebSocket hears from its browser at least every ping interval (25 s), so a live one
  never trips it; one whose browser stopped reading is closed instead of holding its
  thread (and the packets queued for it) for good.

``glassbox up`` runs gunicorn with ``-k app.server.Worker``.
"""
from __future__ import annotations

import collections
import errno
import ipaddress
import os
import socket
import threading
import time

from gunicorn.workers import gthread

CONNECTIONS_PER_ADDRESS = int(os.environ.get("GLASSBOX_CONNECTIONS_PER_ADDRESS") or 32)
# seconds for a request's line and headers
HEADERS_TIMEOUT = float(os.environ.get("GLASSBOX_HEADERS_TIMEOUT") or 15)
# seconds a read or a write may go without moving a byte (more than Socket.IO's ping
# interval and timeout, 25 + 20 s, or quiet WebSockets would be cut)
IO_TIMEOUT = float(os.environ.get("GLASSBOX_IO_TIMEOUT") or 60)

_REFUSED = b"Too many connections from your address at once: close some tabs first.\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSED), _REFUSED))


def address_key(address) -> str | None:
    """What a client's connections are counted by; None for loopback (not counted)."""
    try:
        ip = ipaddress.ip_address(address[0])
    except (ValueError, TypeError, IndexError):
        return None  # a unix socket: not a remote client
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class TimedSocket(socket.socket):
    """A client's connection whose blocking calls give up rather than wait for ever."""

    headers_by: float | None = None  # the deadline for the request's headers, while read

    def setblocking(self, flag: bool) -> None:
        # gunicorn makes a connection blocking before it reads a request from it or
        # writes an answer: here, blocking means "with a timeout".
        if flag:
            self.settimeout(IO_TIMEOUT)
        else:
            super().setblocking(False)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.headers_by is not None:
            left = self.headers_by - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's headers took too long")
            self.settimeout(min(left, self.gettimeout() or IO_TIMEOUT))
        return super().recv(size, flags)

    def send(self, data, flags: int = 0) -> int:
        # simple-websocket writes each frame with one send() and ignores the count, as if
        # the socket blocked until all was written. With a timeout, send() may write part
        # of a frame; sendall() writes it all (or times out).
        self.sendall(data, flags)
        return len(data)


class Connection(gthread.TConn):
    """gunicorn's connection, counted against its client's address until it closes."""

    def __init__(self, worker: "Worker", key: str | None, *args):
        super().__init__(*args)
        self.worker = worker
        self.key = key  # None: not counted

    def close(self, graceful: bool = False) -> None:
        try:
            super().close(graceful)
        finally:
            self.worker.release(self)


class Worker(gthread.ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.open_by: collections.Counter[str] = collections.Counter()
        self.count_lock = threading.Lock()

    def accept(self, listener) -> None:
        """gunicorn's accept, with the per-address limit and timed sockets."""
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        key = address_key(address)
        with self.count_lock:
            refused = key is not None and self.open_by[key] >= CONNECTIONS_PER_ADDRESS
        if refused:
            self.log.debug("refused a connection from %s: %d already open", key,
                           CONNECTIONS_PER_ADDRESS)
            try:
                client.setblocking(False)
                client.send(REFUSAL)
            except OSError:
                pass
            client.close()
            return
        sock = TimedSocket(client.family, client.type, client.proto, fileno=client.detach())
        sock.setblocking(True)
        conn = Connection(self, key, self.cfg, sock, address, listener.getsockname())
        if key is not None:
            with self.count_lock:
                self.open_by[key] += 1
        self.nr_conns += 1
        self.enqueue_req(conn)

    def release(self, conn: Connection) -> None:
        """Uncounts a connection as it closes (once: gunicorn may close one twice)."""
        with self.count_lock:
            key, conn.key = conn.key, None
            if key is None:
                return
            self.open_by[key] -= 1
            if self.open_by[key] <= 0:
                del self.open_by[key]

    def handle(self, conn):
        # From here until the headers are in (handle_request), reads have a deadline.
        conn.sock.headers_by = time.monotonic() + HEADERS_TIMEOUT
        return super().handle(conn)

    def handle_request(self, req, conn):
        conn.sock.headers_by = None
        conn.sock.settimeout(IO_TIMEOUT)
        return super().handle_request(req, conn)
