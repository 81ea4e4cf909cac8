"""Images: an OCI image layout on disk, plus each layer unpacked once.

``<root>/oci`` is a standard OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/…``), so umoci and skopeo read it as they would any other;
``index.json`` names each image by the annotation
``org.opencontainers.image.ref.name`` ("busybox:latest"). ``<root>/layers/<chain id>``
is each layer unpacked, the read-only lower directories a container's overlay
stacks up.

Two images are made here, with nothing fetched from the internet:
``busybox:latest`` — one layer holding Debian's static busybox and a hard link
per applet — and ``scratch:latest``, which has no layers at all. Building them
is reproducible: the same busybox binary gives the same bytes and digests.

Every file is written crash-safely (a temporary name in the same directory,
fsync, rename), blobs take their digest as name only once it is checked, and
``index.json`` is written last, so it never names anything incomplete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from .archive import LayerEntry, extract_layer, write_layer_tar

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX_BINARY = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_IMAGES = ("busybox:latest", "scratch:latest")

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


class ImageError(LookupError):
    """An image name or id that doesn't match an image here."""


@dataclasses.dataclass
class Image:
    name: str           # "busybox:latest"
    id: str             # "sha256:<hex of the config bytes>"
    config: dict        # the OCI image config
    layers: list[Path]  # unpacked layer directories, lowest first (none for scratch)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            diff_id = "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
        chain.append(diff_id)
    return chain


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def normalize_name(name: str) -> str:
    """"busybox" -> "busybox:latest"; a tag after the last path component stays."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(int(timestamp), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


class _TempFile:
    """A file written under a temporary name in the directory it will live in."""

    def __init__(self, directory: Path):
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        self.path = Path(name)
        self.file = open(fd, "wb")
        self._renamed = False

    def commit(self, dest: Path) -> None:
        """Flushes to disk, then gives the file its real name (atomic: same filesystem)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        os.fchmod(self.file.fileno(), 0o644)
        os.rename(self.path, dest)
        self._renamed = True
        _fsync_dir(dest.parent)

    def __enter__(self) -> _TempFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        if not self._renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _write_atomically(path: Path, data: bytes) -> None:
    with _TempFile(path.parent) as tmp:
        tmp.file.write(data)
        tmp.commit(path)


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.oci = self.root / "oci"
        self.blobs = self.oci / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self._index_cache: tuple[tuple, dict] | None = None

    # --- reading ----------------------------------------------------------------------------

    def _index(self) -> dict:
        """index.json, re-read only when the file has changed."""
        path = self.oci / "index.json"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, json.loads(path.read_bytes()))
        return self._index_cache[1]

    def _refs(self) -> dict[str, dict]:
        """Image name -> its manifest descriptor."""
        return {m["annotations"][REF_NAME]: m for m in self._index().get("manifests", [])
                if REF_NAME in m.get("annotations", {})}

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blobs / hexdigest

    def _read_json_blob(self, digest: str) -> dict:
        return json.loads(self.blob_path(digest).read_bytes())

    def _load(self, name: str, descriptor: dict) -> Image:
        manifest = self._read_json_blob(descriptor["digest"])
        config_digest = manifest["config"]["digest"]
        config = self._read_json_blob(config_digest)
        layers = [self.layers_dir / chain.removeprefix("sha256:")
                  for chain in chain_ids(config.get("rootfs", {}).get("diff_ids", []))]
        missing = [(path, layer) for path, layer in zip(layers, manifest.get("layers", []))
                   if not path.is_dir()]
        if missing:
            # A layer directory was removed: unpack it again from its blob.
            with self._lock():
                for path, layer in missing:
                    if not path.is_dir():
                        extract_layer(self.blob_path(layer["digest"]), path)
        return Image(name=name, id=config_digest, config=config, layers=layers)

    def list(self) -> list[Image]:
        return [self._load(name, desc) for name, desc in sorted(self._refs().items())]

    def get(self, name: str) -> Image:
        """An image by name ("busybox", "busybox:latest"), id ("sha256:…") or unique id prefix."""
        refs = self._refs()
        wanted = normalize_name(name)
        if wanted in refs:
            return self._load(wanted, refs[wanted])
        prefix = name.removeprefix("sha256:").lower()
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            matches = {}
            for ref, desc in sorted(refs.items()):
                image = self._load(ref, desc)
                if image.id.removeprefix("sha256:").startswith(prefix):
                    matches.setdefault(image.id, image)
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise ImageError(f"image id prefix {name!r} is ambiguous: it matches "
                                 f"{', '.join(sorted(matches))}; give more digits")
        here = ", ".join(sorted(refs)) or "none"
        raise ImageError(f"image {name!r} not found (images here: {here})")

    # --- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "images.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def ensure_base_images(self) -> None:
        """Makes busybox:latest and scratch:latest if they aren't here yet.

        Safe to call from several processes at once; when both exist it costs a
        stat (and, once per process, reading index.json).
        """
        if all(name in self._refs() for name in BASE_IMAGES):
            return
        with self._lock():
            self._init_layout()
            refs = self._refs()
            added = {}
            if "busybox:latest" not in refs:
                added["busybox:latest"] = self._build_busybox()
            if "scratch:latest" not in refs:
                added["scratch:latest"] = self._build_scratch()
            self._add_refs(added)

    def _init_layout(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        layout = self.oci / "oci-layout"
        if not layout.exists():
            _write_atomically(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))

    def _add_refs(self, added: dict[str, dict]) -> None:
        """Points names at manifests in index.json (the last write: the commit point)."""
        if not added:
            return
        index = dict(self._index())
        manifests = [m for m in index.get("manifests", [])
                     if m.get("annotations", {}).get(REF_NAME) not in added]
        for name, descriptor in sorted(added.items()):
            manifests.append({**descriptor, "annotations": {REF_NAME: name}})
        index.update(schemaVersion=2, mediaType=MEDIA_INDEX, manifests=manifests)
        _write_atomically(self.oci / "index.json", canonical_json(index))

    def _put_blob(self, data: bytes, media_type: str) -> dict:
        """Stores bytes under their digest; returns their OCI descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            _write_atomically(path, data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def _put_layer(self, entries: list[LayerEntry], mtime: int) -> dict:
        """Writes a layer blob and unpacks it; returns its descriptor (digest = DiffID)."""
        with _TempFile(self.blobs) as tmp:
            diff_id = "sha256:" + write_layer_tar(entries, tmp.file, mtime=mtime)
            tmp.file.flush()
            # Read back what reached the file before it may carry the digest's name.
            on_disk = "sha256:" + _sha256_file(tmp.path)
            if on_disk != diff_id:
                raise OSError(f"layer blob {tmp.path} reads back as {on_disk}, written as {diff_id}")
            size = os.fstat(tmp.file.fileno()).st_size
            path = self.blob_path(diff_id)
            if not path.exists():
                tmp.commit(path)
        return {"mediaType": MEDIA_LAYER_TAR, "digest": diff_id, "size": size}

    def _put_image(self, config: dict, layers: list[dict]) -> dict:
        """Writes the config and manifest blobs (layers must be stored); returns the manifest's descriptor."""
        for chain, layer in zip(chain_ids(config["rootfs"]["diff_ids"]), layers):
            path = self.layers_dir / chain.removeprefix("sha256:")
            if not path.is_dir():
                extract_layer(self.blob_path(layer["digest"]), path)
        config_desc = self._put_blob(canonical_json(config), MEDIA_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": config_desc, "layers": layers}
        return self._put_blob(canonical_json(manifest), MEDIA_MANIFEST)

    def _build_busybox(self) -> dict:
        binary = Path(os.path.realpath(BUSYBOX_BINARY))
        mtime = int(binary.stat().st_mtime)
        layer = self._put_layer(busybox_layer_entries(binary), mtime)
        created = rfc3339(mtime)
        config = {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "created": created,
            "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            "history": [{"created": created,
                         "created_by": f"glassbox: busybox-static {busybox_version(binary)} from Debian"}],
        }
        return self._put_image(config, [layer])

    def _build_scratch(self) -> dict:
        config = {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "created": rfc3339(0),
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        }
        return self._put_image(config, [])


def busybox_version(binary: Path = BUSYBOX_BINARY) -> str:
    """The Debian package's version of busybox-static, else the binary's own banner."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "busybox-static"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except OSError:
        pass
    banner = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10).stdout
    # "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
    first = banner.splitlines()[0] if banner else ""
    return first.removeprefix("BusyBox ").removesuffix(" multi-call binary.") or "unknown"


def busybox_layer_entries(binary: Path = BUSYBOX_BINARY) -> list[LayerEntry]:
    """bin/busybox, a hard link to it at every applet's path, and a minimal /etc."""
    applets = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.split()
    entries = [LayerEntry.dir(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc",
                                          "dev", "proc", "sys", "home", "var")]
    entries += [LayerEntry.dir("tmp", 0o1777), LayerEntry.dir("root", 0o700)]
    entries.append(LayerEntry.file("bin/busybox", source=binary, mode=0o755))
    seen = {"bin/busybox"}
    for applet in applets:
        path = applet.strip("/")
        if path and path not in seen:
            seen.add(path)
            entries.append(LayerEntry.hardlink(path, "bin/busybox"))
    # Any applet directory not made above (none with Debian's list) gets one.
    dirs = {e.path for e in entries if e.kind == "dir"}
    for path in sorted(seen):
        parent = os.path.dirname(path)
        while parent and parent not in dirs:
            dirs.add(parent)
            entries.append(LayerEntry.dir(parent))
            parent = os.path.dirname(parent)
    entries.append(LayerEntry.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                   b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
    entries.append(LayerEntry.file("etc/group", b"root:x:0:\nnobody:x:65534:\n"))
    return entries
