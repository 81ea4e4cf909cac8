"""Browser terminals: xterm.js in the page, a hijacked attach or exec stream behind it.

A terminal is one stream from the daemon (the host terminal's attach, a container's attach,
or an exec'd shell) and one Socket.IO room. Every tab of the student that opens it joins
the room, so two tabs show the same terminal; a tab that (re)joins first gets the recent
output replayed, so a reload shows the screen it had, not a blank one.

The replay buffer lives in the web process that holds the stream. Several web nodes need
sticky sessions (which Socket.IO needs anyway); a node that restarts attaches again and
has no replay for what came before.
"""
from __future__ import annotations

import codecs
import logging
import socket
import struct
import threading
import time

from flask import request
from flask_socketio import join_room, leave_room

from .engine_client import EngineError, EngineRefused
from .hosts import Host
from .live import CONTAINER, answer_errors, current_host, fields, read_only, viewers
from .socketio import queued, socketio

log = logging.getLogger("glassbox.web")

REPLAY_BYTES = 64 * 1024    # recent output kept for a tab that (re)joins
MAX_INPUT = 64 * 1024       # bytes of one input message
MAX_TERMINALS = 8           # open terminals per host
OPENS_PER_MINUTE = 20       # terminal.open per host
# Flow control: a tab with more than this many characters of output waiting to be written
# to it holds the terminal's reading (the program's writes block, as on a slow real
# terminal) — without it `yes` in a tab that stopped reading fills this process's memory
# at tens of MB a second. A tab that stays that far behind for STALLED_AFTER seconds is
# disconnected; it rejoins with the replay when it comes back.
MAX_UNREAD = 1 << 20
STALLED_AFTER = 10.0


class Terminal:
    """One stream and the tabs that show it."""

    def __init__(self, host: Host, ident: str, title: str, container: str,
                 exec_id: str | None, tty: bool, sock: socket.socket, first: bytes):
        self.host = host
        self.id = ident
        self.title = title
        self.container = container
        self.exec_id = exec_id
        self.tty = tty
        self.sock = sock
        self.room = f"terminal:{host.name}:{ident}"
        self.recent = bytearray()
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.frames = bytearray()  # a non-TTY attach is multiplexed: 8-byte frame headers
        self._output(first)
        self.reader = threading.Thread(target=self._read, name=f"term-{ident[:20]}", daemon=True)
        self.reader.start()

    def describe(self) -> dict:
        return {"id": self.id, "title": self.title}

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._output(data)
                self._wait_for_tabs()
        finally:
            self.closed.set()
            self.sock.close()
            socketio.emit("terminal.exit", {"id": self.id, "code": self._exit_code()}, to=self.room)
            terminals.forget(self)

    def _output(self, data: bytes) -> None:
        if not data:
            return
        if not self.tty:
            data = self._demultiplex(data)
        with self.lock:
            self.recent += data
            del self.recent[:-REPLAY_BYTES]
            text = self.decoder.decode(data)
            if text:
                socketio.emit("terminal.output", {"id": self.id, "data": text, "replay": False},
                              to=self.room)

    def _wait_for_tabs(self) -> None:
        """Reads no more of the stream while a tab showing this terminal is behind (see
        MAX_UNREAD); drops a tab that stays behind."""
        behind_since = None
        while True:
            behind = [sid for sid, _ in socketio.server.manager.get_participants("/", self.room)
                      if queued(sid)[1] > MAX_UNREAD]
            for sid in [sid for sid in behind if sid in viewers]:
                # Watching the instructor: one student's stalled window must not pause
                # the terminal the whole class watches.
                log.info("terminal %s: watcher %s stopped reading: disconnected", self.id, sid)
                socketio.server.disconnect(sid)
                behind.remove(sid)
            if not behind or self.closed.is_set():
                return
            now = time.monotonic()
            behind_since = behind_since or now
            if now - behind_since > STALLED_AFTER:
                for sid in behind:
                    log.info("terminal %s: tab %s stopped reading: disconnected", self.id, sid)
                    socketio.server.disconnect(sid)
                return
            time.sleep(0.05)

    def _demultiplex(self, data: bytes) -> bytes:
        self.frames += data
        out = bytearray()
        while len(self.frames) >= 8:
            size = struct.unpack(">I", self.frames[4:8])[0]
            if len(self.frames) < 8 + size:
                break
            out += self.frames[8:8 + size]
            del self.frames[:8 + size]
        return bytes(out).replace(b"\n", b"\r\n")

    def _exit_code(self) -> int | None:
        path = (f"/exec/{self.exec_id}/json" if self.exec_id
                else f"/containers/{self.container}/json")
        for _ in range(20):  # the exit is recorded a moment after the stream ends
            try:
                state = self.host.client().get_json(path)
            except EngineError:
                return None
            if self.exec_id:
                if not state.get("Running"):
                    return state.get("ExitCode")
            elif not state["State"].get("Running"):
                return state["State"].get("ExitCode")
            time.sleep(0.05)
        return None

    def join(self, sid: str) -> None:
        """The tab gets the recent output, then everything new (under one lock: nothing
        shown twice, nothing skipped)."""
        with self.lock:
            text = bytes(self.recent).decode("utf-8", "ignore")
            socketio.emit("terminal.output", {"id": self.id, "data": text, "replay": True}, to=sid)
            join_room(self.room, sid=sid)

    def write(self, data: str) -> None:
        if self.closed.is_set():
            return
        try:
            self.sock.sendall(data.encode("utf-8", "replace"))
        except OSError:
            pass

    def resize(self, cols: int, rows: int) -> None:
        path = (f"/exec/{self.exec_id}/resize" if self.exec_id
                else f"/containers/{self.container}/resize")
        try:
            self.host.client().call("POST", f"{path}?h={rows}&w={cols}")
        except EngineError as e:
            log.info("resize %s: %s", self.id, e)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Terminals:
    """The open terminals of this process, by host."""

    def __init__(self):
        self.by_host: dict[str, dict[str, Terminal]] = {}
        self.lock = threading.Lock()
        self.opening: dict[str, threading.Lock] = {}
        self.opened: dict[str, list[float]] = {}

    def find(self, host: str, ident: str) -> Terminal | None:
        with self.lock:
            return self.by_host.get(host, {}).get(ident)

    def listing(self, host: str) -> list[dict]:
        with self.lock:
            return [t.describe() for t in self.by_host.get(host, {}).values()]

    def add(self, terminal: Terminal) -> None:
        with self.lock:
            self.by_host.setdefault(terminal.host.name, {})[terminal.id] = terminal
        announce(terminal.host.name)

    def forget(self, terminal: Terminal) -> None:
        with self.lock:
            mine = self.by_host.get(terminal.host.name, {})
            if mine.get(terminal.id) is terminal:
                del mine[terminal.id]
        announce(terminal.host.name)

    def host_lock(self, host: str) -> threading.Lock:
        with self.lock:
            return self.opening.setdefault(host, threading.Lock())

    def count_open(self, host: str) -> None:
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.opened.get(host, []) if now - t < 60]
            if len(recent) >= OPENS_PER_MINUTE:
                raise EngineRefused(429, f"quota reached: at most {OPENS_PER_MINUTE} terminals "
                                         "opened per minute; wait a little")
            if len(self.by_host.get(host, {})) >= MAX_TERMINALS:
                raise EngineRefused(429, f"quota reached: at most {MAX_TERMINALS} terminals open "
                                         "at once; close one (type exit)")
            recent.append(now)
            self.opened[host] = recent

    def close_host(self, host: str) -> None:
        with self.lock:
            mine = list(self.by_host.pop(host, {}).values())
        for terminal in mine:
            terminal.close()


terminals = Terminals()


def announce(host: str) -> None:
    socketio.emit("terminals", terminals.listing(host), to=f"visitor:{host}")


def open_host_terminal(host: Host, cols: int, rows: int) -> Terminal:
    """The host's terminal: the running one if there is one, else a new one (created,
    attached, then started, so its first prompt is not lost)."""
    existing = terminals.find(host.name, "host")
    if existing:
        return existing
    control = hosts_control()
    client = host.client()
    try:
        found = control.get_json(f"/glassbox/hosts/{host.name}/terminal")
        ident, fresh = found["Id"], False
    except EngineRefused as e:
        if e.status != 404:
            raise
        terminals.count_open(host.name)
        ident, fresh = control.call("POST", f"/glassbox/hosts/{host.name}/terminal")["Id"], True
    sock, first = client.hijack("POST", f"/containers/{ident}/attach?stream=1&stdin=1&stdout=1&stderr=1")
    try:
        if fresh:
            client.call("POST", f"/containers/{ident}/start")
    except BaseException:
        sock.close()
        raise
    terminal = Terminal(host, "host", "host terminal", ident, None, True, sock, first)
    terminals.add(terminal)
    terminal.resize(cols, rows)
    return terminal


def open_container_terminal(host: Host, target: str, how: str, cols: int, rows: int) -> Terminal:
    """``attach`` to a container's own process, or ``exec`` a new shell in it."""
    client = host.client()
    info = client.get_json(f"/containers/{target}/json")  # 404 unless it is on this host
    cid, name = info["Id"], info["Name"].lstrip("/")
    if not info["State"].get("Running"):
        raise EngineRefused(409, f"container {name} is not running")
    if how == "attach":
        ident = f"attach:{cid}"
        existing = terminals.find(host.name, ident)
        if existing:
            return existing
        terminals.count_open(host.name)
        tty = bool(info["Config"].get("Tty"))
        stdin = "1" if info["Config"].get("OpenStdin") else "0"
        sock, first = client.hijack(
            "POST", f"/containers/{cid}/attach?stream=1&stdin={stdin}&stdout=1&stderr=1")
        terminal = Terminal(host, ident, f"attach {name}", cid, None, tty, sock, first)
    else:
        terminals.count_open(host.name)
        exec_id = client.call("POST", f"/containers/{cid}/exec", {
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": True,
            "Cmd": ["sh"], "Env": ["TERM=xterm-256color"],
        })["Id"]
        sock, first = client.hijack("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True})
        terminal = Terminal(host, f"exec:{exec_id[:16]}", f"sh in {name}", cid, exec_id, True,
                            sock, first)
    terminals.add(terminal)
    if terminal.tty:
        terminal.resize(cols, rows)
    return terminal


def hosts_control():
    from .hosts import hosts
    return hosts().control


def size(message: dict) -> tuple[int, int]:
    cols, rows = message.get("cols", 80), message.get("rows", 24)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (cols, rows)):
        raise EngineRefused(400, "cols and rows must be whole numbers")
    return min(max(cols, 2), 500), min(max(rows, 2), 200)


@socketio.on("terminal.open")
@answer_errors
def terminal_open(message=None):
    message = fields(message)
    target, how = message.get("target", "host"), message.get("how", "attach")
    if how not in ("attach", "exec") or not isinstance(target, str) \
            or not (target == "host" or CONTAINER.fullmatch(target)):
        return {"error": "terminal.open needs target ('host' or a container id) and how "
                         "('attach' or 'exec')"}
    cols, rows = size(message)
    host = current_host()
    if read_only():
        # Watching the instructor: their host terminal as it is, if it is open.
        terminal = terminals.find(host.name, "host")
        if terminal is None:
            return {"error": "the instructor's terminal is not open"}
        terminal.join(request.sid)
        return terminal.describe()
    rejoin = message.get("id")
    if rejoin is not None and rejoin != "host":
        # A tab coming back (a reload, a second tab): the same terminal, replayed.
        terminal = terminals.find(host.name, rejoin) if isinstance(rejoin, str) else None
        if terminal is None:
            return {"error": "that terminal has ended", "gone": True}
        terminal.join(request.sid)
        return terminal.describe()
    with terminals.host_lock(host.name):
        if target == "host":
            terminal = open_host_terminal(host, cols, rows)
        else:
            terminal = open_container_terminal(host, target, how, cols, rows)
    terminal.join(request.sid)
    socketio.emit("terminals", terminals.listing(host.name), to=request.sid)
    return terminal.describe()


def mine(message) -> Terminal | None:
    """The terminal a message names, if it is one of this visitor's own."""
    ident = fields(message).get("id")
    if not isinstance(ident, str):
        return None
    return terminals.find(current_host().name, ident)


@socketio.on("terminal.input")
@answer_errors
def terminal_input(message=None):
    if read_only():
        return {"error": "this terminal is the instructor's: you can watch, not type"}
    terminal = mine(message)
    data = fields(message).get("data")
    if terminal is None or not isinstance(data, str):
        return {"error": "no such terminal"}
    if len(data) > MAX_INPUT:
        return {"error": f"input too long (at most {MAX_INPUT} characters at once)"}
    terminal.write(data)
    return None


@socketio.on("terminal.resize")
@answer_errors
def terminal_resize(message=None):
    if read_only():
        return None  # a watcher's window must not resize the instructor's terminal
    terminal = mine(message)
    if terminal is None:
        return {"error": "no such terminal"}
    terminal.resize(*size(message))
    return None


@socketio.on("terminal.leave")
@answer_errors
def terminal_leave(message=None):
    terminal = mine(message)
    if terminal is not None:
        leave_room(terminal.room)
    return None
