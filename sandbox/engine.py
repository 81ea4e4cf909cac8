"""The engine: one state dir, its images, its containers, its event stream.

The daemon, ``glassbox run`` and the benchmarks all drive containers through
an ``Engine``. It owns the privileged pieces: the cgroup driver, the zygote,
the mounts. Creating one reconciles what a previous engine on the same state
dir left behind if it was killed (processes, cgroups, mounts, directories).
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from sandbox import cgroups, linux, tree
from sandbox.archive import UnsafeArchiveError, extract_layer
from sandbox.distribution import Distribution, DistributionError
from sandbox.events import EventBus
from sandbox.quota import HostQuota, Quota, Refusal
from sandbox.transfer import export_docker_archive, import_docker_archive, import_oci
from sandbox.commit import write_upper_as_layer
from sandbox.images import rfc3339 as images_rfc3339
from sandbox.images import Conflict as ImageConflict
from sandbox.images import Image, ImageError, ImageStore, check_reference
from sandbox.volumes import Volume, VolumeError, VolumeInUse, VolumeNotFound, VolumeStore
from sandbox.runtime import (Container, ContainerConfig, ContainerError, ExitStatus, Mount,
                             OutputListener, Process, Runtime)

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DEFAULT_STATE_DIR = "/var/lib/glassbox"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
TREE_LAYOUTS_KEPT = 8       # Graphviz layouts kept, by the tree's signature
TREE_LIST_CAP = 200         # paths per list in a layer's details
# Not sent with the whole tree: an image's history is in its details (tree_node),
# and the host path of a container's upper dir is nothing the browser draws.
TREE_OMITTED = ("history", "upper_dir")


class EngineError(Exception):
    """A request the engine refuses; the message says what was wrong."""
    headers: dict[str, str] = {}  # extra HTTP headers for the API's answer

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotFound(EngineError):
    def __init__(self, message: str):
        super().__init__(message, 404)


class Conflict(EngineError):
    def __init__(self, message: str):
        super().__init__(message, 409)


class QuotaReached(EngineError):
    """One of the host's quotas (sandbox/quota.py): 429 for a rate, where waiting
    helps (the answer's ``Retry-After`` says how long); 409 for what is running,
    where stopping something does."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message, 429 if refusal.retry_after is not None else 409)
        self.refusal = refusal
        self.headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else {}


def state_dir_from_env(value: str | None = None) -> Path:
    return Path(value or os.environ.get("GLASSBOX_STATE_DIR") or DEFAULT_STATE_DIR)


_private_mounts = False
# The mount namespace this process started in, noted before it leaves it: the
# inside view (sandbox/inside.py) compares each container's with the host's.
host_mount_namespace: int | None = None


def enter_private_mount_namespace() -> bool:
    """Gives this process its own mount namespace, if it still can.

    Every mount the engine makes (writable layers, overlays, idmapped layers)
    then lives only here: the host's mount table never sees them, and if this
    process is killed the kernel drops them all with the namespace. Host mounts
    still propagate in (slave). Only possible while single-threaded.
    """
    global _private_mounts, host_mount_namespace
    if _private_mounts:
        return True
    if threading.active_count() > 1:
        return False
    host_mount_namespace = os.stat("/proc/self/ns/mnt").st_ino
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    _private_mounts = True
    return True


def host_dir_name(host: str) -> str:
    return host or "default"


def cgroup_root_name(state_dir: Path, host: str = "default") -> str:
    """The parent cgroup of one Docker host's containers (unique per state dir and host)."""
    key = str(Path(state_dir).resolve()) + ("" if host_dir_name(host) == "default" else f"\0{host}")
    return f"glassbox-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class Engine:
    """One Docker host: its images, containers, volumes and events.

    Several hosts (a student's ``node1`` and ``node2``, or a classroom's
    students) share a state dir: blobs and unpacked layers are shared on disk,
    everything else — tags, containers, volumes, cgroups, the lock — is each
    host's own. Give each host its own ``uid_base`` so that their containers'
    root users are different host uids.
    """

    def __init__(self, state_dir: str | os.PathLike | None = None, host: str = "",
                 uid_base: int = 100000, sample_interval: float = 0.5,
                 policy: Policy | None = None, quota: Quota | None = None):
        if os.geteuid() != 0:
            raise EngineError("the Glassbox engine must run as root (it creates namespaces, "
                              "cgroups and mounts)", 500)
        self.private_mounts = enter_private_mount_namespace()
        self.state_dir = Path(state_dir) if state_dir else state_dir_from_env()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)
        name = host_dir_name(host)
        self._lock_file = open(self.state_dir / ("engine.lock" if name == "default" else f"engine-{name}.lock"), "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise EngineError(f"another Glassbox engine is using {self.state_dir} for host {name}; "
                              "stop it or choose another --state-dir", 409) from None
        self.host = host
        self.policy = policy or Policy()
        # None: no quota (the operator's own engine: glassbox run, bench, tests);
        # the daemon gives each student's host one (Daemon.create_host).
        self.quota = HostQuota(quota)
        # A classroom host's own logins ("127.0.0.1:8000" -> (username, password)), so that
        # a student's docker push and pull reach the classroom registry without docker login.
        self.registry_credentials: dict[str, tuple[str, str]] = {}
        self._in_build = threading.local()  # set while this thread runs a build's steps
        self.bus = EventBus()
        self.images = ImageStore(self.state_dir, host_dir_name(host))
        self.images.ensure_base_images()
        self.distribution = Distribution(
            self.images, lambda kind, subject, detail: self.bus.emit(kind, subject, detail, host=self.host))
        self.cgroup_root = cgroup_root_name(self.state_dir, name)
        self.cgroups = cgroups.detect(self.cgroup_root)
        self.volumes = VolumeStore(self.state_dir / "volumes" / host_dir_name(host), uid_base)
        self.containers_dir = self.state_dir / "containers" / name
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.reconcile()
        self.cgroups = cgroups.detect(self.cgroup_root)  # remove_all took the root group too
        try:
            self.runtime = Runtime(self.state_dir, self.bus, self.cgroups, uid_base=uid_base, host=host,
                                   idmap_dir=self.state_dir / f"idmap-{name}")
        except BaseException:
            # Nothing half-made stays: the cgroup root and the lock go with the failure.
            self.cgroups.remove_all()
            self._lock_file.close()
            raise
        self.containers: dict[str, Container] = {}
        self.exec_configs: dict[str, dict] = {}   # docker exec: created, then started by id
        # The tree's caches. A layer never changes, so its size is kept by ChainID
        # until gc removes it; a layout is kept by the signature of what it places.
        self._layer_sizes: dict[str, int] = {}
        self._tree_layouts: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._tree_last: tuple[tuple, tuple] | None = None   # (state key, tree) of the last tree()
        self._tree_lock = threading.Lock()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, args=(sample_interval,),
                                         name="cgroup-sampler", daemon=True)
        self._sampler.start()
        # A program that forgets close() still leaves nothing behind when it exits.
        atexit.register(self.close)

    # ------------------------------------------------------------------ start-up

    def reconcile(self) -> dict:
        """Removes what a killed engine left: processes, cgroups, mounts, dirs."""
        removed_cgroups = self.cgroups.remove_all()
        mounts = []
        # Only this host's: another host on the same state dir may be running.
        roots = [str(self.containers_dir.resolve()),
                 str((self.state_dir / f"idmap-{host_dir_name(self.host)}").resolve())]
        with open("/proc/self/mountinfo") as f:
            for line in f:
                target = line.split()[4].replace("\\040", " ")
                if any(target == root or target.startswith(root + "/") for root in roots):
                    mounts.append(target)
        for target in sorted(mounts, key=len, reverse=True):
            try:
                linux.umount(target, linux.MNT_DETACH)
            except OSError as exc:
                log.warning("could not unmount leftover %s: %s", target, exc)
        leftovers = [p.name for p in self.containers_dir.iterdir()]
        for path in self.containers_dir.iterdir():
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.state_dir / f"idmap-{host_dir_name(self.host)}", ignore_errors=True)
        found = {"cgroups": removed_cgroups, "mounts": mounts, "containers": leftovers}
        if any(found.values()):
            self.bus.emit("engine.reconciled", {"engine": str(self.state_dir)}, found, host=self.host)
        return found

    # ------------------------------------------------------------------ containers

    def create(self, config: ContainerConfig, image: Image | None = None) -> Container:
        """A container of ``config.image`` (or of ``image``, e.g. a build's intermediate state)."""
        if image is None:
            try:
                image = self.images.get(config.image)
            except ImageError as exc:
                raise NotFound(str(exc)) from None
        validate_config(config, self.policy)
        self._attach_volumes(config, image)
        validate_mounts(config, self.policy)  # the image's VOLUMEs too
        with self._lock:
            if config.name:
                if any(c.name == config.name for c in self.containers.values()):
                    raise Conflict(f"the container name {config.name!r} is already in use")
                name = config.name
            else:
                name = self._generate_name()
            ident = secrets.token_hex(32)
            directory = self.containers_dir / ident
            directory.mkdir(mode=0o700)
            container = Container(ident, name, config, image, directory)
            self.containers[ident] = container
        self._save(container)
        self.bus.emit("container.created", container.subject(),
                      {"image": image.name, "image_id": image.id, "argv": container.argv,
                       "hostname": container.hostname}, host=self.host)
        return container

    def start(self, ref: str | Container, on_output: OutputListener | None = None) -> Process:
        c = self.get(ref)
        if c.state != "created":
            raise Conflict(f"container {c.name} is {c.state}; only a created container can start")
        try:
            self._admit_start(c)
        except QuotaReached:
            if c.config.auto_remove:  # as with Docker: a --rm container goes with its failed start
                self.remove(c, force=True)
            raise
        try:
            process = self.runtime.start(c, on_output)
        except ContainerError as exc:
            if c.status is None:  # it failed before there was a process to exit
                c.state = "exited"
                c.status = ExitStatus(exc.exit_code, error=f"{exc.step}: {exc}")
                c.finished_at = time.time()
                c.stopped.set()
            self._after_exit(c)
            raise
        finally:
            self.quota.started(c.id)
        # (No c.stopped.clear() here: a created container's is clear already, and a
        # process that exits at once has set it by now — clearing it lost that exit.)
        threading.Thread(target=self._watch, args=(c,), daemon=True,
                         name=f"watch-{c.id[:12]}").start()
        self._save(c)
        return process

    def _admit_start(self, c: Container) -> None:
        """The host's quotas for a start: room among its running containers, and a
        slot of its start rate. The host's own terminal is not counted."""
        if c.config.system:
            return

        def running() -> dict[str, int]:
            return {r.id: self._counted_memory(r) for r in self.list(all=False, system=False)}
        refusal = self.quota.admit_start(c.id, self._counted_memory(c), not c.config.memory, running,
                                         build_step=getattr(self._in_build, "active", False))
        if refusal:
            self._refuse(refusal, c.subject())

    def _counted_memory(self, c: Container) -> int:
        """A container's memory limit; without one it could take anything, so it
        counts as the most a limit may be (see sandbox/quota.py)."""
        return c.config.memory or self.policy.max_memory

    def _refuse(self, refusal: Refusal, subject: dict) -> None:
        self.bus.emit("quota.reached", subject,
                      {"quota": refusal.quota, "limit": refusal.limit,
                       "retry_after": refusal.retry_after, "message": refusal.message},
                      host=self.host)
        raise QuotaReached(refusal)

    def _watch(self, c: Container) -> None:
        c.stopped.wait()
        self._after_exit(c)

    def _after_exit(self, c: Container) -> None:
        self._save(c)
        if c.config.auto_remove:
            self.remove(c, force=True)

    def run(self, config: ContainerConfig, on_output: OutputListener | None = None) -> ExitStatus:
        """create + start + wait (+ remove with auto_remove), as ``docker run``."""
        c = self.create(config)
        try:
            self.start(c, on_output)
        except ContainerError:
            return c.status
        return self.wait(c)

    def wait(self, ref: str | Container, timeout: float | None = None,
             condition: str = "not-running") -> ExitStatus:
        """Blocks until the container has exited (``not-running``, ``next-exit``: a
        created container is waited for through its start) or is removed (``removed``)."""
        c = self.get(ref, include_removed=True)
        if condition not in ("not-running", "next-exit", "removed"):
            raise EngineError(f"invalid wait condition {condition!r}: use not-running, next-exit or removed")
        if c.state == "created" and condition == "not-running":
            raise Conflict(f"container {c.name} has not been started")
        event = c.removed if condition == "removed" else c.stopped
        if not event.wait(timeout):
            raise EngineError(f"container {c.name} still running after {timeout} s", 408)
        return c.status

    def stop(self, ref: str | Container, timeout: float = 10) -> bool:
        """SIGTERM (or the image's STOPSIGNAL), then SIGKILL after ``timeout`` seconds.
        Returns False if it wasn't running."""
        c = self.get(ref)
        if c.state != "running" or c.process is None:
            return False
        name = (c.image.config.get("config") or {}).get("StopSignal") or "SIGTERM"
        try:
            sig = int(name) if str(name).isdigit() else int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            sig = int(signal.SIGTERM)
        self.bus.emit("container.stop", c.subject(), {"signal": sig, "timeout": timeout}, host=self.host)
        c.process.signal(sig)
        if not c.stopped.wait(max(0.0, timeout)):
            self.runtime.kill_all(c)
            c.stopped.wait(10)
        return True

    def kill(self, ref: str | Container, sig: int = 9) -> None:
        c = self.get(ref)
        if c.state != "running" or c.process is None:
            raise Conflict(f"container {c.name} is not running")
        self.bus.emit("container.kill", c.subject(), {"signal": sig}, host=self.host)
        c.process.signal(sig)

    def _attach_volumes(self, config: ContainerConfig, image: Image) -> None:
        """Named volumes are made on first use; the image's VOLUMEs get anonymous ones."""
        covered = {os.path.normpath(m.target) for m in config.mounts}
        for path in sorted((image.config.get("config") or {}).get("Volumes") or {}):
            if os.path.normpath(path) not in covered:
                config.mounts.append(Mount("", path, anonymous=True))
        for m in config.mounts:
            if m.volume is None and not m.anonymous:
                continue  # a host directory (only the operator's CLI may ask for one)
            try:
                volume, made = self.volumes.create(m.volume)
            except VolumeError as exc:
                raise EngineError(str(exc)) from None
            m.volume, m.source = volume.name, str(volume.mountpoint)
            if made:
                self.bus.emit("volume.created", {"volume": volume.name},
                              {"mountpoint": m.source, "anonymous": m.anonymous}, host=self.host)

    def remove(self, ref: str | Container, force: bool = False, volumes: bool = False) -> None:
        """Removes a container; its anonymous volumes too with ``volumes`` (or ``--rm``)."""
        c = self.get(ref, include_removed=True)
        if c.state == "removed":
            return
        if c.state == "running":
            if not force:
                raise Conflict(f"container {c.name} is running: stop it first or force the removal")
            self.runtime.kill_all(c)
            c.stopped.wait(10)
        with self._lock:
            if c.state == "removed":
                return
            c.state = "removed"
            self.containers.pop(c.id, None)
        self.runtime.release(c)
        self.runtime.remove_writable_layer(c)
        c.removed.set()
        self.bus.emit("container.removed", c.subject(), {}, host=self.host)
        if volumes or c.config.auto_remove:
            for m in c.config.mounts:
                if m.anonymous:
                    try:
                        self.remove_volume(m.volume)
                    except Conflict as exc:  # someone mounted it by name: it stays, as in Docker
                        log.info("keeping volume %s: %s", m.volume, exc)

    # ------------------------------------------------------------------ volumes

    def create_volume(self, name: str | None = None, labels: dict | None = None) -> Volume:
        try:
            volume, made = self.volumes.create(name, labels)
        except VolumeError as exc:
            raise EngineError(str(exc)) from None
        if made:
            self.bus.emit("volume.created", {"volume": volume.name},
                          {"mountpoint": str(volume.mountpoint)}, host=self.host)
        return volume

    def volume_users(self, name: str) -> list[str]:
        return [c.name for c in self.list() if any(m.volume == name for m in c.config.mounts)]

    def remove_volume(self, name: str) -> None:
        """Refused while any container (running or not) still has it."""
        try:
            self.volumes.remove(name, self.volume_users(name))
        except VolumeNotFound as exc:
            raise NotFound(str(exc)) from None
        except VolumeInUse as exc:
            raise Conflict(str(exc)) from None
        except VolumeError as exc:
            raise EngineError(str(exc)) from None
        self.bus.emit("volume.removed", {"volume": name}, {}, host=self.host)

    def exec(self, ref: str | Container, argv: list[str], **options) -> Process:
        c = self.get(ref)
        if not argv or not argv[0]:
            raise EngineError("exec needs a command")
        validate_command(ContainerConfig(c.config.image, list(argv), env=list(options.get("env") or [])),
                         self.policy)
        if not c.config.system and (refusal := self.quota.take("execs")):
            self._refuse(refusal, c.subject())
        return self.runtime.exec(c, argv, **options)

    # ------------------------------------------------------------------ images

    def commit(self, ref: str | Container, name: str | None = None, author: str = "",
               message: str = "", changes: dict | None = None) -> Image:
        """Container → image: its writable layer becomes a layer on its image's chain."""
        c = self.get(ref)
        upper = c.rw_dir / "upper"
        if not upper.is_dir():
            raise Conflict(f"container {c.name} has no writable layer to commit")
        if name:
            check_reference(name)
        parent = c.image
        # Under the store's lock until the image refers to its layer: a gc in
        # between would take the new blob for garbage.
        with self.images.lock():
            with self.images.writing_layer() as (out, layer):
                stats = write_upper_as_layer(upper, out, self.runtime.uid_base)
            config = committed_config(parent.config, c, layer_diff_id=layer["digest"],
                                      author=author, message=message, changes=changes or {})
            image = self.images.put_image(config, list(parent.manifest["layers"]) + [layer], name,
                                          keep=True)
        self.bus.emit("layer.created", {"layer": layer["digest"]},
                      {"from": "commit", "container": c.id, "size": layer["size"],
                       **dataclasses.asdict(stats)}, host=self.host)
        self.bus.emit("image.committed", {"image": image.id, "container": c.id},
                      {"name": image.name, "parent": parent.id, "layer": layer["digest"],
                       "layers": len(image.layers)}, host=self.host)
        return image

    def remove_image(self, ref: str, force: bool = False) -> dict:
        """``docker rmi``: untag, then collect what nothing uses any more."""
        def used_by(image_id: str) -> list[str]:
            return [c.name for c in self.list() if c.image.id == image_id]
        try:
            result = self.images.remove(ref, force=force, used_by=used_by)
        except ImageConflict as exc:
            raise Conflict(str(exc)) from None
        except ImageError as exc:
            raise NotFound(str(exc)) from None
        for name in result["untagged"]:
            self.bus.emit("image.untagged", {"image": name}, {}, host=self.host)
        result["collected"] = self.gc()
        for image_id in result["deleted"]:
            self.bus.emit("image.deleted", {"image": image_id}, {}, host=self.host)
        return result

    def gc(self) -> dict:
        removed = self.images.gc({c.image.id for c in self.list()})
        for chain in removed["layers"]:
            self.runtime.forget_layer(self.images.layer_dir(chain))
            self._layer_sizes.pop(chain, None)
            self.bus.emit("layer.removed", {"layer": chain}, {}, host=self.host)
        for digest in removed["blobs"]:
            self.bus.emit("blob.removed", {"blob": digest}, {}, host=self.host)
        return removed

    def build(self, context: Path, options, out=lambda line: None) -> Image:
        """``docker build``: see sandbox/builder.py (options: a builder.BuildOptions)."""
        self._admit_build()
        return self._build(Path(context), options, out)

    def _admit_build(self) -> None:
        if refusal := self.quota.take("builds"):
            self._refuse(refusal, {"host": host_dir_name(self.host)})

    def _build(self, context: Path, options, out) -> Image:
        from sandbox.builder import Builder
        # Its RUN steps are containers that take room on the host, but no start
        # slots: the build took its own slot.
        self._in_build.active = True
        try:
            return Builder(self).build(context, options, out)
        finally:
            self._in_build.active = False

    def build_context(self, context: Path | BinaryIO, options, out=lambda line: None) -> Image:
        """A build from a directory, or from a tar stream (what ``docker build`` sends)."""
        try:
            self._admit_build()
        except QuotaReached:
            if not isinstance(context, (str, os.PathLike)):
                # Read (and drop) the context: a client still sending it would see
                # a broken pipe instead of the reason.
                while context.read(1 << 20):
                    pass
            raise
        if isinstance(context, (str, os.PathLike)) and Path(context).is_dir():
            return self._build(Path(context), options, out)
        scratch = Path(tempfile.mkdtemp(prefix=".context-", dir=self.state_dir))
        try:
            if not isinstance(context, (str, os.PathLike)):
                with open(scratch / "context.tar", "wb") as spool:
                    shutil.copyfileobj(context, spool, 1 << 20)
                context = scratch / "context.tar"
            try:
                extract_layer(context, scratch / "context", overlay_whiteouts=False,
                              max_bytes=self.policy.max_context_bytes)
            except (UnsafeArchiveError, tarfile.TarError) as exc:
                raise EngineError(f"invalid build context: {exc}") from None
            return self._build(scratch / "context", options, out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def prune_build_cache(self) -> dict:
        """Forgets this host's build cache, then collects the layers only it kept."""
        cache = self.images.oci / "build-cache.json"
        with self.images.lock():
            try:
                entries = len(json.loads(cache.read_text()))
            except (OSError, ValueError):
                entries = 0
            cache.unlink(missing_ok=True)
        collected = self.gc()
        return {"entries": entries, **collected}

    def export_images(self, refs: list[str], out: BinaryIO) -> None:
        """``docker save``: a tar that is both an OCI layout and Docker's legacy format."""
        try:
            export_docker_archive(self.images, refs, out)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        self.bus.emit("image.exported", {"images": refs}, {"format": "docker-archive+oci"},
                      host=self.host)

    def import_images(self, source: Path | BinaryIO, name: str | None = None) -> list[Image]:
        """``docker load``: a ``docker save`` tar, an OCI layout dir or a tar of one."""
        try:
            if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
                images = import_oci(self.images, Path(source), name)
            else:
                images = import_docker_archive(self.images, source, name)
        except ValueError as exc:
            raise EngineError(f"invalid image archive: {exc}") from None
        for image in images:
            self.bus.emit("image.imported", {"image": image.id},
                          {"name": image.name, "layers": len(image.layers)}, host=self.host)
        return images

    def push(self, ref: str, destination: str, username: str | None = None,
             password: str | None = None, progress=lambda p: None) -> dict:
        """``docker push``: only the blobs the registry lacks move."""
        username, password = self._credentials(destination, username, password)
        try:
            return self.distribution.push(ref, destination, username, password, progress)
        except DistributionError as exc:
            raise EngineError(str(exc), exc.status if 400 <= exc.status < 600 else 500) from None
        except LookupError as exc:
            raise NotFound(str(exc)) from None

    def pull(self, reference: str, username: str | None = None, password: str | None = None,
             progress=lambda p: None) -> Image:
        """``docker pull``: only the layers this host's cache lacks move."""
        username, password = self._credentials(reference, username, password)
        try:
            image, _ = self.distribution.pull(reference, username, password, progress)
        except DistributionError as exc:
            raise EngineError(str(exc), exc.status if 400 <= exc.status < 600 else 500) from None
        except ValueError as exc:
            raise EngineError(f"pull of {reference} failed: {exc}") from None
        return image

    def _credentials(self, reference: str, username: str | None,
                     password: str | None) -> tuple[str | None, str | None]:
        """The student's own login when they gave one (docker login); else the host's
        for the registry the reference names, if it has one."""
        if username:
            return username, password
        return self.registry_credentials.get(reference.partition("/")[0], (None, None))

    def tree(self, known: str | None = None) -> dict:
        """The image tree for the browser: graph JSON, its Graphviz layout and its
        signature; only ``{signature, unchanged}`` if ``known`` is that signature."""
        signature, drawn, graph = self._current_tree()
        if signature == known:
            return {"signature": signature, "unchanged": True}
        return {"graph": drawn, "layout": self._tree_layout(graph, signature), "signature": signature}

    def _current_tree(self) -> tuple:
        """(signature, graph JSON, graph), built again only when this host's images
        (its index.json) or containers changed: a browser asks on every event."""
        key = self._tree_state()
        with self._tree_lock:
            if self._tree_last is not None and self._tree_last[0] == key:
                return self._tree_last[1]
        graph = self.tree_graph()
        current = (tree.signature(graph), tree.to_json(graph, omit=TREE_OMITTED), graph)
        with self._tree_lock:
            self._tree_last = (key, current)
        return current

    def _tree_state(self) -> tuple:
        try:
            st = os.stat(self.images.oci / "index.json")
            index = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            index = None
        return index, tuple((c.id, c.name, c.state, c.image.id, (c.rw_dir / "upper").is_dir())
                            for c in self.list(system=False)), \
            tuple(v.name for v in self.volumes.list())

    def tree_graph(self, images: list[tree.ImageInfo] | None = None):
        """The tree of this host's images and containers, as ``docker ps -a`` without
        the host's own terminal, and its volumes.

        A container's writable layer is measured when the tree is built again (its
        state changed, an image came or went): files a running container writes
        show at its next change, not byte by byte.
        """
        from sandbox.inside import walk_upper
        containers = []
        for c in self.list(system=False):
            upper = c.rw_dir / "upper"
            upper = upper if upper.is_dir() else None
            containers.append(tree.ContainerInfo(
                c.id, c.name, c.image.id, c.state, upper,
                upper_bytes=walk_upper(upper)[0] if upper else 0,
                mounts=[(m.volume, m.target) for m in c.config.mounts if m.volume]))
        volumes = [tree.VolumeInfo(v.name, v.anonymous) for v in self.volumes.list()]
        return tree.build_graph(self._tree_images() if images is None else images, containers,
                                size_of=self._layer_size, volumes=volumes)

    def _tree_images(self) -> list[tree.ImageInfo]:
        return [tree.ImageInfo(i.name, i.id, i.diff_ids, i.config.get("history", []), i.layers,
                               container=i.config.get("container"))
                for i in self.images.list(dangling=True)]

    def _layer_size(self, chain_id: str, layer_dir: Path) -> int:
        size = self._layer_sizes.get(chain_id)
        if size is None:
            size = self._layer_sizes[chain_id] = tree.layer_size(layer_dir)
        return size

    def _tree_layout(self, graph, signature: str) -> dict:
        with self._tree_lock:
            if signature in self._tree_layouts:
                self._tree_layouts.move_to_end(signature)
                return self._tree_layouts[signature]
        placed = tree.layout(graph)  # outside the lock: dot may take a while
        with self._tree_lock:
            self._tree_layouts[signature] = placed
            while len(self._tree_layouts) > TREE_LAYOUTS_KEPT:
                self._tree_layouts.popitem(last=False)
        return placed

    def tree_node(self, node: str) -> dict:
        """One node of the tree in detail (see tree.describe); for a container, also
        what its writable layer holds now."""
        graph = self._current_tree()[2]
        if node not in graph:
            raise NotFound(f"no node {node!r} in this host's image tree (it may have been removed)")
        found = tree.describe(graph, node, self.images.layer_dir, cap=TREE_LIST_CAP)
        if found["kind"] == "container":
            from sandbox.inside import walk_upper
            upper = graph.nodes[node]["upper_dir"]
            found["upper_bytes"], found["upper_files"], _ = walk_upper(Path(upper)) if upper else (0, 0, False)
        return found

    def tree_weak(self, layers: list[str] | None = None, path: str | None = None,
                  digest: str | None = None) -> dict:
        """Weak points: the given layers, or those that add or change ``path`` (whose
        content has sha256 ``digest``, if given), and every layer, image and container
        built on them."""
        if layers is None:
            images = self._tree_images()   # the search and the graph from one listing
            graph = self.tree_graph(images)
            layers = tree.layers_containing(images, path=path, file_digest=digest)
        else:
            graph = self._current_tree()[2]
        try:
            hit = tree.affected(graph, layers)
        except KeyError as exc:
            raise NotFound(str(exc).strip("'\"")) from None
        marked = list(dict.fromkeys(tree.layer_node(n.removeprefix("layer:")) for n in layers))
        chains = [n.removeprefix("layer:") for n in marked]
        # So a lesson can see that the student did the analysis, and what it found.
        self.bus.emit("weak.analyzed", {"layer": chains[0]} if chains else {},
                      {"layers": chains, "path": path, "images": len(hit["images"]),
                       "containers": len(hit["containers"]), "affected_layers": len(hit["layers"])},
                      host=self.host)
        return {"marked": marked, **hit,
                "count": {kind: len(nodes) for kind, nodes in hit.items()}}

    # ------------------------------------------------------------------ lookup

    def get(self, ref: str | Container, include_removed: bool = False) -> Container:
        if isinstance(ref, Container):
            if ref.state == "removed" and not include_removed:
                raise NotFound(f"no such container: {ref.name}")
            return ref
        with self._lock:
            if ref in self.containers:
                return self.containers[ref]
            by_name = [c for c in self.containers.values() if c.name == ref.lstrip("/")]
            if by_name:
                return by_name[0]
            by_prefix = [c for c in self.containers.values() if c.id.startswith(ref)] if len(ref) >= 3 else []
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise EngineError(f"container id prefix {ref!r} is ambiguous")
        raise NotFound(f"no such container: {ref}")

    def list(self, all: bool = True, system: bool = True) -> list[Container]:
        """Containers (``all``: not only the running ones; ``system``: the host terminal too)."""
        with self._lock:
            found = list(self.containers.values())
        return [c for c in found if (all or c.state == "running") and (system or not c.config.system)]

    def logs(self, ref: str | Container) -> list[dict]:
        c = self.get(ref)
        if not c.log_path.exists():
            return []
        with open(c.log_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _generate_name(self) -> str:
        adjectives = ("brave", "calm", "eager", "gentle", "keen", "lucid", "merry", "nimble",
                      "quiet", "sharp", "tidy", "vivid", "witty", "zesty")
        nouns = ("turing", "hopper", "lovelace", "ritchie", "thompson", "torvalds", "liskov",
                 "knuth", "dijkstra", "hamilton", "kay", "lamport", "wirth", "stallman")
        while True:
            name = f"{secrets.choice(adjectives)}_{secrets.choice(nouns)}_{secrets.randbelow(100)}"
            if not any(c.name == name for c in self.containers.values()):
                return name

    def _save(self, c: Container) -> None:
        if c.state == "removed" or not c.dir.exists():
            return
        record = {"id": c.id, "name": c.name, "image": c.image.name, "image_id": c.image.id,
                  "manifest_digest": c.image.manifest_digest,
                  "argv": c.argv, "state": c.state, "created": c.created_at,
                  "started": c.started_at, "finished": c.finished_at,
                  "status": c.status.__dict__ if c.status else None}
        tmp = c.dir / f"state.json.{threading.get_ident()}"
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, c.dir / "state.json")
        except FileNotFoundError:
            pass  # removed meanwhile (auto-remove): nothing left to record

    # ------------------------------------------------------------------ sampling, shutdown

    def _sample_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            for c in self.list(all=False):
                self.runtime.sample(c)

    def info(self) -> dict:
        containers = self.list()
        return {
            "version": VERSION,
            "state_dir": str(self.state_dir),
            "cgroup_driver": self.cgroups.name,
            "cgroup_version": self.cgroups.version,
            "private_mount_namespace": self.private_mounts,
            "containers": len(containers),
            "running": sum(c.state == "running" for c in containers),
            "images": len(self.images.list()),
        }

    @property
    def closed(self) -> bool:
        """Closed: its host was removed (or the daemon is stopping)."""
        return self._closed.is_set()

    def close(self) -> None:
        """Kills and removes every container, then the zygote and shared mounts."""
        if self._closed.is_set():
            return
        self._closed.set()
        atexit.unregister(self.close)
        for c in self.list():
            try:
                self.remove(c, force=True)
            except Exception:
                log.exception("removing %s at shutdown", c.id)
        self.runtime.close()
        self.cgroups.remove_all()
        self._lock_file.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class Policy:
    """What one container may ask for. Students are untrusted: these caps hold
    whatever a request says (the API and the CLI both go through them)."""
    max_memory: int = 2 * 1024**3
    max_pids: int = 4096
    max_writable: int = 2 * 1024**3
    max_timeout: float | None = None     # None: no cap on the wall-clock limit
    min_cpus: float = 0.1                # below this the shared zygote waits on a starved helper
    max_mounts: int = 32
    max_command_bytes: int = 128 * 1024  # argv + env
    max_context_bytes: int = 2 * 1024**3  # a build context, unpacked


FORBIDDEN_TARGETS = ("/proc", "/sys", "/dev")


def validate_config(config: ContainerConfig, policy: Policy = Policy()) -> None:
    if config.name is not None and not NAME_PATTERN.match(config.name):
        raise EngineError(f"invalid container name {config.name!r}: use letters, digits, "
                          "'_', '.', '-' (up to 128), starting with a letter or digit")
    if config.hostname is not None and not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$", config.hostname):
        raise EngineError(f"invalid hostname {config.hostname!r}")
    if config.memory is not None and not 4 * 1024**2 <= config.memory <= policy.max_memory:
        raise EngineError(f"memory limit must be between 4 MiB and {policy.max_memory // 1024**2} MiB "
                          "(e.g. -m 64m)")
    if config.pids_limit is not None and not 1 <= config.pids_limit <= policy.max_pids:
        raise EngineError(f"the pids limit must be between 1 and {policy.max_pids}")
    if config.cpus is not None and not (policy.min_cpus <= config.cpus <= os.cpu_count()):
        raise EngineError(f"--cpus must be between {policy.min_cpus} and {os.cpu_count()} on this machine")
    if not 1024**2 <= config.writable_size <= policy.max_writable:
        raise EngineError(f"the writable layer must be between 1 MiB and {policy.max_writable // 1024**2} MiB")
    if config.timeout is not None and config.timeout <= 0:
        raise EngineError("the timeout must be a positive number of seconds")
    if policy.max_timeout and (config.timeout is None or config.timeout > policy.max_timeout):
        config.timeout = min(config.timeout or policy.max_timeout, policy.max_timeout)
    validate_command(config, policy)
    validate_mounts(config, policy)


def validate_mounts(config: ContainerConfig, policy: Policy) -> None:
    if len(config.mounts) > policy.max_mounts:
        raise EngineError(f"too many volumes ({len(config.mounts)}; at most {policy.max_mounts})")
    for m in config.mounts:
        if m.volume is None and not Path(m.source).is_dir():
            raise EngineError(f"volume source {m.source} is not a directory on the host")
        target = os.path.normpath("/" + m.target.strip("/")) if m.target.strip("/") else "/"
        if ".." in m.target.split("/"):
            raise EngineError(f"volume target {m.target} may not contain '..'")
        if target == "/" or any(target == t or target.startswith(t + "/") for t in FORBIDDEN_TARGETS):
            raise EngineError(f"volume target {m.target}: a volume can't go on /, /proc, /sys or /dev")


def validate_command(config: ContainerConfig, policy: Policy) -> None:
    words = list(config.cmd or []) + list(config.entrypoint or []) + list(config.env)
    if any(not isinstance(w, str) or "\0" in w for w in words):
        raise EngineError("command, entrypoint and environment must be strings without NUL bytes")
    if config.cmd is not None and config.entrypoint is None and config.cmd and config.cmd[0] == "":
        raise EngineError("the command's first word is empty")
    for item in config.env:
        key = item.partition("=")[0]
        if not key or not re.match(r"^[^=\s]+$", key):
            raise EngineError(f"invalid environment variable {item!r}: expected NAME=value")
    size = sum(len(w.encode()) + 1 for w in words)
    if size > policy.max_command_bytes:
        raise EngineError(f"command and environment too long ({size} bytes; at most "
                          f"{policy.max_command_bytes})")


def committed_config(parent: dict, c: Container, layer_diff_id: str, author: str, message: str,
                     changes: dict | list[str]) -> dict:
    """The new image's config: the container's own settings on top of its image's,
    ``changes`` on top of those (CMD, ENV, … as ``docker commit --change`` sets them)."""
    now = images_rfc3339(time.time())
    run_config = dict(parent.get("config") or {})
    if c.config.cmd:
        run_config["Cmd"] = list(c.config.cmd)
    if c.config.entrypoint is not None:
        run_config["Entrypoint"] = list(c.config.entrypoint)
    run_config["Env"] = list(c.env)
    if c.config.workdir:
        run_config["WorkingDir"] = c.config.workdir
    if c.config.user:
        run_config["User"] = c.config.user
    if isinstance(changes, (list, tuple)):
        changes = changes_from_instructions(list(changes), run_config)
    allowed = {"Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels", "ExposedPorts",
               "Volumes", "StopSignal", "OnBuild"}
    unknown = set(changes) - allowed
    if unknown:
        raise EngineError(f"can't change {', '.join(sorted(unknown))} in a commit "
                          f"(allowed: {', '.join(sorted(allowed))})")
    check_change_types(changes)
    run_config.update(changes)
    history = list(parent.get("history") or [])
    entry = {"created": now, "created_by": " ".join(c.argv)}
    if author:
        entry["author"] = author
    if message:
        entry["comment"] = message
    history.append(entry)
    config = {k: v for k, v in parent.items() if k not in ("config", "history", "rootfs", "container")}
    # As Docker's: "container" names the container the image was committed from
    # (the image tree draws that edge while the container exists).
    config.update(created=now, container=c.id, config=run_config, history=history,
                  rootfs={"type": "layers",
                          "diff_ids": list(parent.get("rootfs", {}).get("diff_ids", [])) + [layer_diff_id]})
    if author:
        config["author"] = author
    return config


def check_change_types(changes: dict) -> None:
    """What a commit writes into an image config must have the config's types:
    a bad value would break every container later made from the image."""
    def strings(value):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    rules = {"Cmd": strings, "Entrypoint": strings, "OnBuild": strings,
             "Env": lambda v: strings(v) and all("=" in e for e in v),
             "WorkingDir": lambda v: isinstance(v, str), "User": lambda v: isinstance(v, str),
             "StopSignal": lambda v: isinstance(v, str),
             "Labels": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in [*v, *v.values()]),
             "ExposedPorts": lambda v: isinstance(v, dict), "Volumes": lambda v: isinstance(v, dict)}
    for key, value in changes.items():
        if value is not None and not rules[key](value):
            raise EngineError(f"invalid {key} in a commit's changes: {value!r}")


COMMIT_INSTRUCTIONS = ("cmd", "entrypoint", "env", "expose", "label", "onbuild", "user",
                       "volume", "workdir", "stopsignal")


def changes_from_instructions(lines: list[str], current: dict) -> dict:
    """``docker commit --change 'CMD ["x"]'``: Dockerfile instructions as config changes."""
    from sandbox import dockerfile as df
    changes: dict = {}
    view = dict(current)
    for line in lines:
        try:
            [instruction] = df.parse(line).instructions
            df.check_instruction(instruction)
        except (df.DockerfileError, ValueError) as exc:
            raise EngineError(f"invalid change {line!r}: {exc}") from None
        cmd = instruction.cmd
        if cmd not in COMMIT_INSTRUCTIONS:
            raise EngineError(f"{cmd.upper()} is not a change a commit can make "
                              f"(allowed: {', '.join(c.upper() for c in COMMIT_INSTRUCTIONS)})")
        if cmd in ("cmd", "entrypoint"):
            value = list(instruction.args) if instruction.json else ["/bin/sh", "-c", instruction.args[0]]
            changes["Cmd" if cmd == "cmd" else "Entrypoint"] = value
        elif cmd == "env":
            env = dict(item.split("=", 1) for item in view.get("Env") or [] if "=" in item)
            env.update(df.env_pairs(instruction))
            changes["Env"] = view["Env"] = [f"{k}={v}" for k, v in env.items()]
        elif cmd == "label":
            labels = dict(view.get("Labels") or {})
            labels.update(df.env_pairs(instruction))
            changes["Labels"] = view["Labels"] = labels
        elif cmd == "expose":
            ports = dict(view.get("ExposedPorts") or {})
            ports.update({p if "/" in p else f"{p}/tcp": {} for p in instruction.args})
            changes["ExposedPorts"] = view["ExposedPorts"] = ports
        elif cmd == "volume":
            volumes = dict(view.get("Volumes") or {})
            volumes.update({p: {} for p in instruction.args})
            changes["Volumes"] = view["Volumes"] = volumes
        elif cmd == "onbuild":
            changes["OnBuild"] = view["OnBuild"] = list(view.get("OnBuild") or []) + [instruction.args[0]]
        else:
            key = {"user": "User", "workdir": "WorkingDir", "stopsignal": "StopSignal"}[cmd]
            changes[key] = instruction.args[0]
    return changes
