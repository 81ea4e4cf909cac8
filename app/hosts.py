"""Each visitor gets their own Docker host, tied to a cookie.

The host's name comes from the visitor's id in the signed session cookie, so any web
process that can read the cookie finds the same host: nothing here is state that only one
process holds. What this module keeps in memory (socket paths, the touch clock, the host
creation rate per address) is a cache or a limit, rebuilt from the daemon when lost.
"""
from __future__ import annotations

import collections
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from flask import current_app, session

from .engine_client import EngineClient, EngineError, EngineRefused

log = logging.getLogger("glassbox.web")
VISITOR = re.compile(r"^[0-9a-f]{16}$")


class HostUnavailable(Exception):
    """No host for this visitor: a quota or the daemon said no. The message is for them."""


@dataclass(frozen=True)
class Host:
    name: str
    socket: str  # the host's Docker API socket

    def client(self, timeout: float = 5.0) -> EngineClient:
        return EngineClient(self.socket, timeout=timeout)


def visitor_id(create: bool = True) -> str | None:
    """The visitor's id from the session cookie; a new one on a first visit."""
    visitor = session.get("visitor")
    if isinstance(visitor, str) and VISITOR.match(visitor):
        return visitor
    if not create:
        return None
    session["visitor"] = visitor = secrets.token_hex(8)
    session.permanent = True
    return visitor


def host_name(visitor: str) -> str:
    return f"v-{visitor}"


class Hosts:
    """Finds or creates visitors' hosts through the daemon's control socket."""

    def __init__(self, control: EngineClient, idle_timeout: float, creations_per_hour: int,
                 quota: dict | None = None):
        self.control = control
        self.quota = quota  # the daemon's Quota fields to change for visitors' hosts
        self.idle_timeout = idle_timeout
        self.creations_per_hour = creations_per_hour
        self.sockets: dict[str, str] = {}
        self.lock = threading.Lock()
        self.created_by: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.touched: dict[str, float] = {}
        # name -> {"Quota": …, "RegistryAuth": …} for a host about to be made, or None for
        # the defaults: set by classroom.py, so a classroom student's host (made anew after
        # a reset or an idle timeout too) has the classroom's quotas and registry login.
        self.settings: Callable[[str], dict | None] | None = None

    def get(self, name: str, address: str, create: bool = True) -> Host:
        """The host called ``name``, created if the daemon has none by that name (a first
        visit, or the host was freed after being idle)."""
        with self.lock:
            known = self.sockets.get(name)
        # Touched in the last half minute: it is there (the daemon frees a host only after
        # its idle timeout, and a reset here forgets it), so no request to the daemon.
        fresh = min(30.0, self.idle_timeout / 2)
        if known is not None and (time.monotonic() - self.touched.get(name, 0) < fresh
                                  or self._still_there(name)):
            return Host(name, known)
        existing = self._lookup(name)
        if existing is not None and known is None:
            self._settle(name)
        if existing is None:
            if not create:
                raise HostUnavailable("your Docker host is gone; reload the page for a new one")
            settings = dict((self.settings(name) if self.settings else None) or {})
            # A classroom's students were let in by its code (a class may sit behind one
            # NAT address): they are not counted; everyone else is.
            if settings.pop("Counted", True):
                self._count_creation(address)
            try:
                body = {"Name": name, "IdleTimeout": self.idle_timeout, "Quota": self.quota, **settings}
                answer = self.control.call("POST", "/glassbox/hosts", body)
                existing = answer["Socket"]
            except EngineRefused as e:
                if e.status != 409:  # 409: another request made it just now
                    raise HostUnavailable(f"no Docker host for you right now: {e}") from e
                existing = self._lookup(name)
                if existing is None:
                    raise HostUnavailable(f"no Docker host for you right now: {e}") from e
        with self.lock:
            self.sockets[name] = existing
        return Host(name, existing)

    def _settle(self, name: str) -> None:
        """A host this process did not make (the web app or the whole site restarted; the
        daemon keeps hosts, not their classroom settings): its settings, given again."""
        settings = self.settings(name) if self.settings else None
        for key, path in (("Quota", "quota"), ("RegistryAuth", "registry-auth")):
            if settings and key in settings:
                try:
                    self.control.call("PUT", f"/glassbox/hosts/{name}/{path}", settings[key])
                except EngineError as e:
                    log.warning("settings of %s: %s", name, e)

    def _still_there(self, name: str) -> bool:
        """A cached host may have been freed for idleness: the touch tells (and counts as
        activity, which it is)."""
        try:
            self.control.call("POST", f"/glassbox/hosts/{name}/touch")
        except EngineRefused:
            with self.lock:
                self.sockets.pop(name, None)
            return False
        self.touched[name] = time.monotonic()
        return True

    def _lookup(self, name: str) -> str | None:
        for host in self.control.get_json("/glassbox/hosts"):
            if host["Name"] == name:
                return host["Socket"]
        return None

    def _count_creation(self, address: str) -> None:
        """A visitor who throws away their cookie gets a new host each time: a limit per
        address keeps one machine from taking every host the daemon can make."""
        now = time.monotonic()
        with self.lock:
            made = self.created_by[address]
            while made and now - made[0] > 3600:
                made.popleft()
            if len(made) >= self.creations_per_hour:
                wait = int(3600 - (now - made[0])) + 1
                raise HostUnavailable(
                    f"quota reached: {self.creations_per_hour} Docker hosts were created from your "
                    f"address in the last hour; keep your cookies, or try again in {wait // 60 + 1} min")
            made.append(now)

    def touch(self, name: str, every: float = 30.0) -> None:
        """Keep a host from being freed while a browser shows it (at most one call per
        ``every`` seconds per host from this process)."""
        now = time.monotonic()
        if now - self.touched.get(name, 0) < every:
            return
        self.touched[name] = now
        try:
            self.control.call("POST", f"/glassbox/hosts/{name}/touch")
        except EngineError as e:
            log.info("touch %s: %s", name, e)

    def remove(self, name: str) -> None:
        with self.lock:
            self.sockets.pop(name, None)
            self.touched.pop(name, None)
        try:
            self.control.call("DELETE", f"/glassbox/hosts/{name}")
        except EngineRefused as e:
            if e.status != 404:
                raise


def hosts() -> Hosts:
    return current_app.extensions["glassbox.hosts"]


def init_app(app) -> None:
    control = EngineClient(app.config["ENGINE_SOCKET"], timeout=app.config["ENGINE_TIMEOUT"])
    app.extensions["glassbox.hosts"] = Hosts(control, app.config["HOST_IDLE_TIMEOUT"],
                                             app.config["HOSTS_PER_ADDRESS_PER_HOUR"],
                                             app.config["HOST_QUOTA"])
