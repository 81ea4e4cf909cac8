"""Container → layer: an overlay upper dir written as an OCI layer tar.

The upper dir holds exactly a container's changes, in overlayfs's spelling;
a layer says the same in OCI's. The translation:

- a 0/0 character device (overlay's whiteout)  → an empty ``.wh.NAME`` entry
- a directory with ``trusted.overlay.opaque=y`` → the directory + ``.wh..wh..opq``
- owners: on disk they are the container's mapped host ids (100000…); the
  layer records them as the container saw them (0…)

The walk never follows a symlink: every name is opened relative to its
directory's fd with O_NOFOLLOW, because the upper dir is the container's to
shape as it likes (it may still be running).
"""
from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from typing import BinaryIO

from sandbox.archive import OPAQUE, WHITEOUT

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OVERFLOW_ID = 65534


@dataclasses.dataclass
class CommitStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    bytes: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)


class _UpperWriter:
    def __init__(self, tar: tarfile.TarFile, id_base: int, id_count: int):
        self.tar = tar
        self.id_base = id_base
        self.id_count = id_count
        self.stats = CommitStats()
        self.links: dict[tuple[int, int], str] = {}

    def container_id(self, host_id: int) -> int:
        if self.id_base <= host_id < self.id_base + self.id_count:
            return host_id - self.id_base
        return OVERFLOW_ID  # not the container's: it saw it as nobody

    def info(self, path: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = self.container_id(st.st_uid)
        info.gid = self.container_id(st.st_gid)
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        return info

    def walk(self, dir_fd: int, prefix: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            path = f"{prefix}{name}"
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                info = tarfile.TarInfo(f"{prefix}{WHITEOUT}{name}")
                info.mtime = int(st.st_mtime)
                self.tar.addfile(info)
                self.stats.whiteouts += 1
            elif stat.S_ISDIR(st.st_mode):
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    info = self.info(path, st)
                    info.type = tarfile.DIRTYPE
                    self.tar.addfile(info)
                    self.stats.dirs += 1
                    if _is_opaque(fd):
                        marker = tarfile.TarInfo(f"{path}/{OPAQUE}")
                        marker.mtime = info.mtime
                        self.tar.addfile(marker)
                        self.stats.opaque_dirs += 1
                    self.walk(fd, f"{path}/")
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                info = self.info(path, st)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
                self.tar.addfile(info)
                self.stats.symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                info = self.info(path, st)
                if st.st_nlink > 1 and key in self.links:
                    info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
                    self.tar.addfile(info)
                    self.stats.hardlinks += 1
                    continue
                self.links[key] = path
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as content:
                    info.size = os.fstat(fd).st_size
                    self.tar.addfile(info, content)
                self.stats.files += 1
                self.stats.bytes += info.size
            else:
                # fifos and sockets: a layer may not carry them (extraction refuses them too).
                self.stats.skipped.append(path)


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


def write_upper_as_layer(upper: os.PathLike, out: BinaryIO, id_base: int,
                         id_count: int = 65536) -> CommitStats:
    """Writes the upper dir's changes to ``out`` as an uncompressed OCI layer tar."""
    root = os.open(upper, _DIR_FLAGS)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            writer = _UpperWriter(tar, id_base, id_count)
            writer.walk(root, "")
    finally:
        os.close(root)
    return writer.stats
