"""Named volumes: storage that outlives the containers that use it.

A container's writable layer dies with the container; a volume is a directory
the engine keeps (``<state>/volumes/<host>/<name>/_data``) and mounts into
containers. Its data belongs to the container's mapped root on disk, so
container root can write it, and nothing in it is host root's.

Only host root may enter the volumes directory: the runtime opens a volume as
root (``open_tree``), so no container needs the path, and a host user who could
reach it would read students' data and run what they left there — a setuid
file in a volume makes its runner the mapped root of every container.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


class VolumeError(ValueError):
    pass


class VolumeNotFound(VolumeError, LookupError):
    pass


class VolumeInUse(VolumeError):
    pass


@dataclasses.dataclass
class Volume:
    name: str
    mountpoint: Path
    created: float
    labels: dict
    anonymous: bool

    def to_docker(self) -> dict:
        return {"Name": self.name, "Driver": "local", "Mountpoint": str(self.mountpoint),
                "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
                "Labels": self.labels, "Scope": "local", "Options": {},
                "Anonymous": self.anonymous}


class VolumeStore:
    def __init__(self, root: Path, owner: int):
        self.root = Path(root)
        self.owner = owner
        self._lock = threading.Lock()
        if self.root.is_dir():  # made by an engine that still let host users in (0711)
            os.chmod(self.root, 0o700)

    def _dir(self, name: str) -> Path:
        if not VOLUME_NAME.match(name or ""):
            raise VolumeError(f"invalid volume name {name!r}: letters, digits, '_', '.', '-' "
                              "(up to 128), starting with a letter or digit")
        return self.root / name

    def create(self, name: str | None = None, labels: dict | None = None) -> tuple[Volume, bool]:
        """Returns the volume and whether it was made now (an existing name is reused)."""
        anonymous = name is None
        name = name or secrets.token_hex(32)
        directory = self._dir(name)
        with self._lock:
            if (directory / "volume.json").exists():
                return self.get(name), False
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)  # host root only (see the module's docstring)
            tmp = self.root / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "_data").mkdir(parents=True)
            os.chmod(tmp, 0o700)
            os.chown(tmp / "_data", self.owner, self.owner)
            record = {"created": time.time(), "labels": labels or {}, "anonymous": anonymous}
            (tmp / "volume.json").write_text(json.dumps(record))
            os.rename(tmp, directory)
        return self.get(name), True

    def get(self, name: str) -> Volume:
        directory = self._dir(name)
        try:
            record = json.loads((directory / "volume.json").read_text())
        except FileNotFoundError:
            raise VolumeNotFound(f"no such volume: {name}") from None
        return Volume(name, directory / "_data", record["created"], record.get("labels", {}),
                      record.get("anonymous", False))

    def list(self) -> list[Volume]:
        if not self.root.is_dir():
            return []
        return [self.get(p.name) for p in sorted(self.root.iterdir())
                if not p.name.startswith(".") and (p / "volume.json").exists()]

    def remove(self, name: str, users: list[str]) -> None:
        self.get(name)
        if users:
            raise VolumeInUse(f"volume {name} is in use by container{'s' if len(users) > 1 else ''} "
                              f"{', '.join(users)}: remove {'them' if len(users) > 1 else 'it'} first")
        directory = self._dir(name)
        trash = self.root / f".{name}.removing"
        # A removal killed half-way leaves its trash; renaming onto it would fail.
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(directory, trash)  # gone at once for everyone; the data follows
        shutil.rmtree(trash, ignore_errors=True)
