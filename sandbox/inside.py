"""A container seen from inside and from outside, side by side.

The same container is a handful of things at once: to itself it is PID 1 and
a few children, user 0, a root filesystem; to the host it is some ordinary
process ids, an unprivileged uid, a cgroup directory and an overlay of layer
directories plus one writable one. ``describe`` puts both views in one record
for the web app's container panel (``GET /glassbox/containers/{id}/inside``).

Everything is read from the kernel (``/proc``, cgroupfs, the upper directory)
at the moment of the call, so the record shows what *is*, not what the runtime
intended. A running container can change while it is read: a process that
exits half-way is left out, a file that vanishes is not counted, and nothing
of that is an error.
"""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from sandbox import engine as engine_module
from sandbox import linux, tree

# The namespaces Linux has (lsns's order); the runtime unshares all but time.
NAMESPACE_TYPES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
COMMAND_CHARS = 200
# A student can fill the writable layer with small files; reading it must stay cheap.
UPPER_WALK_LIMIT = 100_000
OVERFLOW_UID = 65534   # what a uid with no mapping shows as inside a user namespace


def describe(engine, c) -> dict:
    """The inside/outside record of container ``c`` of ``engine``, as the API returns it."""
    running = c.state == "running" and c.process is not None and c.process.pid is not None
    host_pid = c.process.pid if running else None
    status = c.status if c.state == "exited" else None
    return {
        "id": c.id,
        "name": c.name,
        "image": c.image.name or c.image.id,
        "state": c.state,
        "exit_code": status.code if status else None,
        "oom_killed": bool(status and status.oom_killed),
        "host_pid": host_pid,
        "namespaces": namespaces(host_pid),
        "processes": processes(c, host_pid),
        "cgroup": cgroup_view(engine, c, running),
        "overlay": {"lower": lower_layers(c.image), "upper": upper_layer(c)},
    }


# ---------------------------------------------------------------- namespaces

def host_namespaces() -> dict[str, int]:
    """The namespaces the daemon was started in: its own, except for mnt.

    The engine leaves the mount namespace it started in for a private one (see
    ``enter_private_mount_namespace``), and noted the one it left. Every other
    namespace is still the one it started in. /proc/1 would be the obvious
    "host", but it may be unreadable (another user namespace) and isn't what a
    container was made from anyway.
    """
    inodes = linux.namespace_inodes("self", NAMESPACE_TYPES)
    if engine_module.host_mount_namespace is not None:
        inodes["mnt"] = engine_module.host_mount_namespace
    return inodes


def namespaces(host_pid: int | None) -> list[dict]:
    """Per namespace type: the container's PID 1's inode, the host's, and whether they are one."""
    host = host_namespaces()
    container = linux.namespace_inodes(host_pid, NAMESPACE_TYPES) if host_pid else {}
    rows = []
    for kind in NAMESPACE_TYPES:
        inside, outside = container.get(kind), host.get(kind)
        rows.append({"type": kind, "container": inside, "host": outside,
                     "shared": inside is not None and inside == outside})
    return rows


# ---------------------------------------------------------------- processes

def processes(c, host_pid: int | None) -> list[dict]:
    """Every process in the container's cgroup, with its ids as the container sees them.

    The container's pid of a process is its NSpid entry at the depth of the
    container's PID namespace (PID 1's last entry tells that depth), so a
    process that made a namespace of its own is still shown by its container
    pid. A member of the cgroup that is not in that namespace (an exec's helper,
    for the instant before it forks) has no pid inside and is left out.
    """
    cgroup = c.cgroup
    if host_pid is None or cgroup is None:
        return []
    try:
        members = cgroup.pids()
        depth = len(read_status(host_pid)["NSpid"].split()) - 1
        uid_map = read_uid_map(host_pid)
    except (OSError, KeyError):
        return []  # PID 1 exited (and took the others with it) while we looked
    statuses = {}
    for pid in members:
        try:
            statuses[pid] = read_status(pid)
        except OSError:
            pass   # exited meanwhile
    container_pids = {}
    for pid, fields in statuses.items():
        ns_pids = fields.get("NSpid", "").split()
        if len(ns_pids) > depth:
            container_pids[pid] = int(ns_pids[depth])
    rows = []
    for pid, inside in container_pids.items():
        fields = statuses[pid]
        try:
            command = command_line(pid) or fields.get("Name", "")
            host_uid = int(fields["Uid"].split()[1])   # effective uid
            parent = int(fields["PPid"])
        except (OSError, KeyError, IndexError, ValueError):
            continue
        rows.append({"pid": inside, "host_pid": pid, "ppid": container_pids.get(parent, 0),
                     "user": str(uid_inside(host_uid, uid_map)), "command": command})
    return sorted(rows, key=lambda row: row["pid"])


def read_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def read_uid_map(pid: int) -> list[tuple[int, int, int]]:
    """The container's uid map as the kernel holds it: (inside, outside, count) ranges.

    Read by the daemon, in the parent user namespace, "outside" is a host uid.
    """
    with open(f"/proc/{pid}/uid_map") as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


def uid_inside(host_uid: int, uid_map: list[tuple[int, int, int]]) -> int:
    for inside, outside, count in uid_map:
        if outside <= host_uid < outside + count:
            return inside + host_uid - outside
    return OVERFLOW_UID


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        raw = f.read(4 * COMMAND_CHARS)
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 1] + "…"


# ---------------------------------------------------------------- cgroup

def cgroup_view(engine, c, running: bool) -> dict:
    """Limits as the container was configured; usage as the cgroup reads now (null if none).

    The memory limit shown is the one asked for: the cgroup's own is larger by
    the writable layer's size, whose tmpfs pages are charged to it too.
    """
    cgroup = c.cgroup if running else None
    group = cgroup or engine.cgroups.get(c.id)   # where it is, or was and will be
    stats = {}
    if cgroup is not None:
        try:
            stats = cgroup.stats()
        except OSError:
            stats = {}
    cpu_usec = stats.get("cpu_usec")
    return {
        "driver": f"v{engine.cgroups.version}",
        "path": group.dirs.get("memory") or group.directories()[0],
        "limits": {"memory": c.config.memory, "pids": c.config.pids_limit, "cpus": c.config.cpus},
        "usage": {"memory": stats.get("memory_bytes"), "pids": stats.get("pids"),
                  "cpu_seconds": None if cpu_usec is None else cpu_usec / 1e6},
    }


# ---------------------------------------------------------------- overlay

_lower_cache: dict[str, list[dict]] = {}
_lower_lock = threading.Lock()


def lower_layers(image) -> list[dict]:
    """The image's layers, top first, as the image tree describes them.

    Sizes and build steps come from ``tree`` (one scan per layer, history
    matched to layers without the empty_layer steps). An image's layers never
    change, so the answer is kept per image id.
    """
    with _lower_lock:
        cached = _lower_cache.get(image.id)
    if cached is not None:
        return cached
    info = tree.ImageInfo(image.name, image.id, image.diff_ids, image.config.get("history", []),
                          image.layers)
    try:
        graph = tree.build_graph([info])
    except OSError:
        # A layer directory went missing (the image was removed under us): no sizes.
        graph = tree.build_graph([tree.ImageInfo(image.name, image.id, image.diff_ids,
                                                 image.config.get("history", []))])
        return layer_rows(graph, image)
    rows = layer_rows(graph, image)
    with _lower_lock:
        if len(_lower_cache) > 256:
            _lower_cache.clear()
        _lower_cache[image.id] = rows
    return rows


def layer_rows(graph, image) -> list[dict]:
    rows = []
    for chain_id in reversed(tree.chain_ids(image.diff_ids)):
        node = graph.nodes[tree.layer_node(chain_id)]
        rows.append({"chain_id": chain_id, "diff_id": node["diff_id"], "size": node["size"],
                     "created_by": node["created_by"]})
    return rows


def upper_layer(c) -> dict:
    """What the container has written so far: bytes and files in its upper directory.

    Bytes are file contents (a hard link's once), as a layer's size counts
    them; files are every entry but directories (whiteouts included: a delete
    is something the container wrote). ``limit`` is the writable layer's cap.
    """
    size, files, truncated = walk_upper(c.rw_dir / "upper")
    return {"bytes": size, "files": files, "limit": c.config.writable_size, "truncated": truncated}


def walk_upper(upper: Path, limit: int = UPPER_WALK_LIMIT) -> tuple[int, int, bool]:
    """(bytes, files, truncated) under ``upper``, looking at no more than ``limit`` entries."""
    size = files = seen = 0
    inodes: set[tuple[int, int]] = set()
    stack = [str(upper)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        return size, files, True
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we looked
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                        continue
                    files += 1
                    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in inodes:
                        size += st.st_size
                        if st.st_nlink > 1:
                            inodes.add((st.st_dev, st.st_ino))
        except OSError:
            continue  # not there (never started, or removed meanwhile)
    return size, files, False
