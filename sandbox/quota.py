"""A Docker host's quotas: how often it may start things, how much may run at once.

Students reach their host through the docker CLI and through the web app; both
end in the same Engine, so the quotas are kept here, once per host. Rates are
sliding windows — at most N in *any* 60 seconds, which is exactly what the
message promises — and a refusal says which quota was reached and what to do.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from typing import Callable

MiB = 1024 * 1024
MINUTE = 60.0


@dataclasses.dataclass(frozen=True)
class Quota:
    """The limits of one Docker host; None lifts a limit.

    ``running_memory`` adds up the memory limits (``-m``) of the running
    containers, not what they use now: a limit is what a container may take,
    and a host must not promise more than it has. A container started without
    ``-m`` through the API already has the runtime's default limit
    (``runtime.DEFAULT_MEMORY``, 256 MiB) and counts as that. One with no limit
    at all (only the operator's own ``glassbox run`` can ask for that) could
    take the whole machine; it counts as the largest limit the host's Policy
    allows (``Policy.max_memory``). The writable layer's tmpfs, charged to the
    same cgroup, is not counted: it has its own cap (``--writable-size``).
    The host's own terminal (``ContainerConfig.system``) counts for nothing.
    """
    starts_per_minute: int | None = 30     # docker run, docker start
    execs_per_minute: int | None = 60      # docker exec
    builds_per_minute: int | None = 6      # docker build
    running_containers: int | None = 10    # at once
    running_memory: int | None = 1024 * MiB  # bytes: the running containers' -m, added up

    @classmethod
    def unlimited(cls) -> "Quota":
        return cls(None, None, None, None, None)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A quota that was reached: which, its limit, and the message for the student."""
    quota: str                   # "starts", "execs", "builds", "running_containers", "running_memory"
    limit: int
    retry_after: int | None      # seconds until it would pass; None: once something stops
    message: str


class SlidingWindow:
    """At most ``limit`` takes in any ``window`` seconds.

    It keeps the times of the last ``limit`` takes; a take is admitted when the
    oldest of them is a whole window ago. Not thread-safe by itself (HostQuota
    holds the lock). ``clock`` is injectable so tests need not wait a minute.
    """

    def __init__(self, limit: int, window: float = MINUTE, clock: Callable[[], float] = time.monotonic):
        if limit < 1:
            raise ValueError(f"a rate limit must allow at least 1 per window, not {limit}")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.times: collections.deque[float] = collections.deque(maxlen=limit)

    def wait(self) -> float:
        """Seconds until a take would be admitted (0: now)."""
        if len(self.times) < self.limit:
            return 0.0
        return max(0.0, self.times[0] + self.window - self.clock())

    def take(self) -> float:
        """Takes a slot and returns 0, or takes nothing and returns the seconds to wait."""
        wait = self.wait()
        if wait == 0:
            self.times.append(self.clock())  # the deque's maxlen drops the oldest
        return wait


RATE_WORDS = {"starts": ("container start", "container starts"),
              "execs": ("exec (docker exec)", "execs (docker exec)"), "builds": ("build", "builds")}


class HostQuota:
    """What one host has used of its Quota. Thread-safe: a check and the slot it
    takes (or the reservation of a start under way) happen under one lock."""

    def __init__(self, quota: Quota | None = None, clock: Callable[[], float] = time.monotonic):
        self.quota = quota or Quota.unlimited()
        self._lock = threading.Lock()
        self._clock = clock
        self._windows = self._windows_for(self.quota, {})
        # Containers admitted whose start is still under way (id -> memory counted):
        # not "running" yet, but already holding their place.
        self._starting: dict[str, int] = {}

    def replace(self, quota: Quota | None) -> None:
        """The host's limits from now on (a teacher changed them). What was taken
        still counts: the starts of the last minute against the new rate, the running
        containers and the starts under way against the new room. Nothing is stopped."""
        quota = quota or Quota.unlimited()
        with self._lock:
            windows = self._windows_for(quota, self._windows)   # a bad limit changes nothing
            self.quota, self._windows = quota, windows

    def _windows_for(self, quota: Quota, old: dict[str, SlidingWindow]) -> dict[str, SlidingWindow]:
        limits = {"starts": quota.starts_per_minute, "execs": quota.execs_per_minute,
                  "builds": quota.builds_per_minute}
        windows = {}
        for kind, limit in limits.items():
            if limit is None:
                continue
            windows[kind] = SlidingWindow(limit, MINUTE, self._clock)
            if kind in old:  # the newest takes that fit the new limit
                windows[kind].times.extend(old[kind].times)
        return windows

    def take(self, kind: str) -> Refusal | None:
        """One exec or build: a slot of its rate, or the refusal."""
        with self._lock:
            return self._take(kind)

    def admit_start(self, ident: str, memory: int, no_limit: bool,
                    running: Callable[[], dict[str, int]], build_step: bool = False) -> Refusal | None:
        """A container start: room among the running containers, then a slot of the
        start rate (not for a build's RUN step: its build took a build's slot).
        ``running()`` (id -> memory counted) is read under the lock, so two starts
        at once can't both take the last place. Admitted, the container holds its
        place until ``started(ident)``."""
        with self._lock:
            counted = {**running(), **self._starting}
            counted.pop(ident, None)
            refusal = self._room(memory, no_limit, counted, build_step)
            if refusal is None and not build_step:
                refusal = self._take("starts")
            if refusal is None:
                self._starting[ident] = memory
            return refusal

    def started(self, ident: str) -> None:
        """The start is over (running now, or failed): the reservation goes."""
        with self._lock:
            self._starting.pop(ident, None)

    def _take(self, kind: str) -> Refusal | None:
        window = self._windows.get(kind)
        if window is None:
            return None
        wait = window.take()
        if wait == 0:
            return None
        seconds = max(1, math.ceil(wait))
        one, many = RATE_WORDS[kind]
        return Refusal(kind, window.limit, seconds,
                       f"quota reached: at most {window.limit} {one if window.limit == 1 else many} "
                       f"per minute on this host; try again in {seconds} s")

    def _room(self, memory: int, no_limit: bool, counted: dict[str, int],
              build_step: bool = False) -> Refusal | None:
        most = self.quota.running_containers
        if most is not None and len(counted) >= most:
            return Refusal("running_containers", most, None,
                           f"quota reached: {len(counted)} containers are running on this host "
                           f"(the limit is {most}); stop one with docker stop, then try again")
        total = self.quota.running_memory
        if total is None:
            return None
        used = sum(counted.values())
        if used + memory <= total:
            return None
        smaller = "a smaller docker build --memory" if build_step else "a smaller -m (e.g. -m 64m)"
        if no_limit:
            asks = f"this container has no memory limit, which counts as {memory // MiB} MiB"
        elif build_step:
            asks = f"this build step asks for {memory // MiB} MiB"
        else:
            asks = f"this container asks for {memory // MiB} MiB (-m)"
        advice = f"try {smaller}" if memory > total else f"stop one with docker stop, or try {smaller}"
        return Refusal("running_memory", total, None,
                       f"quota reached: the running containers on this host may have "
                       f"{total // MiB} MiB of memory in all; {used // MiB} MiB is taken and "
                       f"{asks}; {advice}")
