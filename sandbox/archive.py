"""Layer tars: written byte-for-byte reproducibly, and unpacked without trusting them.

A layer is a tar of the files it adds or changes. Its DiffID is the sha256 of
the uncompressed tar, so the same files must always give the same bytes:
entries sorted by path, one fixed mtime, owners 0:0 with no names, PAX format.

Unpacking is where a container runtime is most often attacked (runc's and
Docker's CVEs about ``..``, symlinks and hard links in layers): the extractor
here refuses any entry that would land outside the destination, never follows
a symlink while writing (every step is ``openat`` on a directory fd with
O_NOFOLLOW), and builds the result in a temporary directory that only becomes
``dest`` once every entry is in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

_CHUNK = 1 << 20


WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class UnsafeArchiveError(ValueError):
    """A layer tar holds an entry that must not be unpacked."""


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    """One path in a layer. ``path`` is relative to the layer's root ("bin/sh")."""

    path: str
    kind: str                 # "dir", "file", "symlink" or "hardlink"
    mode: int = 0o644         # permission bits, including setuid/setgid/sticky
    data: bytes | None = None  # a file's contents …
    source: Path | None = None  # … or the file on disk to copy them from
    target: str = ""          # a symlink's target, or the layer path a hard link shares

    @classmethod
    def dir(cls, path: str, mode: int = 0o755) -> LayerEntry:
        return cls(path, "dir", mode)

    @classmethod
    def file(cls, path: str, data: bytes | None = None, mode: int = 0o644,
             source: Path | None = None) -> LayerEntry:
        return cls(path, "file", mode, data=data, source=source)

    @classmethod
    def symlink(cls, path: str, target: str) -> LayerEntry:
        return cls(path, "symlink", 0o777, target=target)

    @classmethod
    def hardlink(cls, path: str, target: str) -> LayerEntry:
        return cls(path, "hardlink", 0, target=target)


class _HashingWriter:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)


def _clean_path(path: str) -> str:
    return posixpath.normpath(path.lstrip("/")).removeprefix("./")


def write_layer_tar(entries: Iterable[LayerEntry], fileobj: BinaryIO, mtime: int = 0) -> str:
    """Writes a deterministic layer tar to ``fileobj``; returns its sha256 hex (the DiffID).

    Entries come out sorted by path, except hard links, which follow every
    other entry (sorted among themselves) so each one's target is already
    there when an extractor reaches it.
    """
    by_path: dict[str, LayerEntry] = {}
    for entry in entries:
        by_path[_clean_path(entry.path)] = entry
    plain = sorted(p for p, e in by_path.items() if e.kind != "hardlink")
    links = sorted(p for p, e in by_path.items() if e.kind == "hardlink")

    hashing = _HashingWriter(fileobj)
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in plain + links:
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mtime = int(mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = entry.mode & 0o7777
            content = None
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            elif entry.kind == "hardlink":
                target = _clean_path(entry.target)
                if by_path.get(target) is None or by_path[target].kind != "file":
                    raise ValueError(f"hard link {path!r} names {entry.target!r}, not a file in this layer")
                info.type, info.linkname = tarfile.LNKTYPE, target
                info.mode = by_path[target].mode & 0o7777
            elif entry.kind == "file":
                info.type = tarfile.REGTYPE
                if entry.source is not None:
                    content = open(entry.source, "rb")
                    info.size = os.fstat(content.fileno()).st_size
                else:
                    content = io.BytesIO(entry.data or b"")
                    info.size = len(entry.data or b"")
            else:
                raise ValueError(f"unknown layer entry kind {entry.kind!r} for {path!r}")
            try:
                tar.addfile(info, content)
            finally:
                if content is not None:
                    content.close()
    return hashing.sha.hexdigest()


# --- unpacking ------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _entry_parts(name: str, what: str) -> list[str]:
    """The path components of a tar name, refusing anything that could leave the root."""
    if name.startswith("/"):
        raise UnsafeArchiveError(f"{what} {name!r} is an absolute path")
    if "\0" in name:
        raise UnsafeArchiveError(f"{what} {name!r} contains a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} {name!r} has a '..' component")
    return parts


class _Unpacker:
    """Writes entries under one directory fd; every lookup is one name at a time."""

    def __init__(self, root_fd: int, as_root: bool, overlay_whiteouts: bool = False):
        self.root_fd = root_fd
        self.as_root = as_root
        self.overlay_whiteouts = overlay_whiteouts
        self.max_bytes: int | None = None
        self.written = 0
        self.dirs: list[tuple[list[str], int]] = []  # (parts, mtime), applied at the end

    def open_dir(self, parts: list[str], name: str, create: bool) -> int:
        """An fd for the directory ``parts``, made (0755) where missing if ``create``."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise UnsafeArchiveError(f"entry {name!r} refers to "
                                                 f"{'/'.join(parts[:i + 1])!r}, which is not in the layer")
                    os.mkdir(part, 0o755, dir_fd=fd)
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeArchiveError(f"entry {name!r} goes through the symlink "
                                             f"{'/'.join(parts[:i + 1])!r}")
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafeArchiveError(f"entry {name!r} goes through "
                                             f"{'/'.join(parts[:i + 1])!r}, which is not a directory")
                # O_NOFOLLOW: had the name been swapped for a symlink since the
                # stat, this open fails instead of following it.
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def clear(self, parent_fd: int, leaf: str, keep_dir: bool) -> bool:
        """Removes what's at ``leaf`` (a later entry replaces an earlier one).

        Returns True if a directory was kept in place.
        """
        try:
            st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(leaf, dir_fd=parent_fd)
        else:
            os.unlink(leaf, dir_fd=parent_fd)
        return False

    def own(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.as_root:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid bits

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = _entry_parts(name, "entry")
        if not parts:  # the layer's root itself ("./")
            os.fchmod(self.root_fd, member.mode & 0o7777)
            return
        if member.ischr() or member.isblk() or member.isfifo():
            kind = "character device" if member.ischr() else "block device" if member.isblk() else "fifo"
            raise UnsafeArchiveError(f"entry {name!r} is a {kind}; layers may not create those")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(f"entry {name!r} has unsupported tar type {member.type!r}")
        if member.issym():
            self._check_symlink(name, parts, member.linkname)
        link_parts = _entry_parts(member.linkname, f"hard link {name!r} ->") if member.islnk() else None

        parent_fd = self.open_dir(parts[:-1], name, create=True)
        leaf = parts[-1]
        if self.overlay_whiteouts and leaf.startswith(WHITEOUT) and member.isreg():
            try:
                self._whiteout(parent_fd, leaf)
            finally:
                os.close(parent_fd)
            return
        try:
            kept_dir = self.clear(parent_fd, leaf, keep_dir=member.isdir())
            if member.isdir():
                if not kept_dir:
                    os.mkdir(leaf, 0o700, dir_fd=parent_fd)
                fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd)
                try:
                    self.own(fd, member)
                finally:
                    os.close(fd)
                self.dirs.append((parts, int(member.mtime)))
            elif member.isreg():
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=parent_fd)
                try:
                    src = tar.extractfile(member)
                    while chunk := src.read(_CHUNK):
                        self.written += len(chunk)
                        if self.max_bytes is not None and self.written > self.max_bytes:
                            # A small compressed archive may unpack to anything (a "gzip bomb").
                            raise UnsafeArchiveError(f"the archive unpacks to more than "
                                                     f"{self.max_bytes} bytes (at {name!r})")
                        os.write(fd, chunk)
                    self.own(fd, member)
                    os.utime(fd, (member.mtime, member.mtime))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif member.issym():
                os.symlink(member.linkname, leaf, dir_fd=parent_fd)
                if self.as_root:
                    os.chown(leaf, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
                os.utime(leaf, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
            else:
                self._link(name, link_parts, parent_fd, leaf)
        finally:
            os.close(parent_fd)

    def _whiteout(self, parent_fd: int, leaf: str) -> None:
        """An OCI whiteout as overlayfs spells it, so the layer works as a lower dir:
        ``.wh..wh..opq`` -> the opaque xattr on the directory, ``.wh.NAME`` -> a 0/0
        character device NAME (which hides NAME in the layers below)."""
        if leaf == OPAQUE:
            os.setxattr(parent_fd, "trusted.overlay.opaque", b"y")
            return
        hidden = leaf[len(WHITEOUT):]
        if not hidden or hidden in (".", ".."):
            raise UnsafeArchiveError(f"whiteout {leaf!r} names nothing")
        self.clear(parent_fd, hidden, keep_dir=False)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)

    @staticmethod
    def _check_symlink(name: str, parts: list[str], target: str) -> None:
        # An absolute target is resolved inside the container's root, so it can't
        # leave it; a relative one must stay inside too, counted from the link's dir.
        if target.startswith("/"):
            return
        if not target:
            raise UnsafeArchiveError(f"symlink {name!r} has an empty target")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"symlink {name!r} -> {target!r} points outside the layer")

    def _link(self, name: str, link_parts: list[str], parent_fd: int, leaf: str) -> None:
        if not link_parts:
            raise UnsafeArchiveError(f"hard link {name!r} has no target")
        src_fd = self.open_dir(link_parts[:-1], name, create=False)
        try:
            try:
                st = os.stat(link_parts[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeArchiveError(f"hard link {name!r} -> {'/'.join(link_parts)!r}: "
                                         f"target is not in the layer (yet)") from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeArchiveError(f"hard link {name!r} points at a directory")
            # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW links the
            # entry itself, never what a symlink points to.
            os.link(link_parts[-1], leaf, src_dir_fd=src_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        finally:
            os.close(src_fd)

    def finish(self) -> None:
        # Directory mtimes last: writing their entries changed them.
        for parts, mtime in reversed(self.dirs):
            fd = self.open_dir(parts, "/".join(parts), create=False)
            try:
                os.utime(fd, (mtime, mtime))
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def extract_layer(tar_path: str | os.PathLike, dest: Path, overlay_whiteouts: bool = True,
                  max_bytes: int | None = None) -> None:
    """Unpacks a layer tar (plain or compressed) into the new directory ``dest``.

    Raises UnsafeArchiveError, naming the entry, for absolute paths, ``..``,
    relative symlinks that point outside, hard links outside or to missing
    targets, paths through symlinks, and device nodes or fifos. On any failure
    nothing is left behind; ``dest`` appears only complete.

    Owners (when running as root), modes including setuid, and mtimes are kept.
    Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) become overlayfs whiteouts (a 0/0
    character device, the opaque xattr) unless ``overlay_whiteouts`` is False. Extended
    attributes (PAX ``SCHILY.xattr.*``, e.g. file capabilities) are not applied.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise FileExistsError(f"layer directory {dest} already exists")
    tmp = tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    try:
        root_fd = os.open(tmp, _DIR_FLAGS)
        try:
            os.fchmod(root_fd, 0o755)
            unpacker = _Unpacker(root_fd, as_root=os.geteuid() == 0,
                                 overlay_whiteouts=overlay_whiteouts)
            unpacker.max_bytes = max_bytes
            with tarfile.open(tar_path, mode="r|*") as tar:
                for member in tar:
                    unpacker.add(tar, member)
            unpacker.finish()
            os.fsync(root_fd)
        finally:
            os.close(root_fd)
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
