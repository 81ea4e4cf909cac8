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
import gzip
import re
import shutil
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import platform
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from .archive import LayerEntry, _HashingWriter, _fsync_dir, extract_layer, write_layer_tar

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
    name: str | None    # "busybox:latest" (None: known by id only)
    id: str             # "sha256:<hex of the config bytes>"
    config: dict        # the OCI image config
    layers: list[Path]  # unpacked layer directories, lowest first (none for scratch)
    manifest_digest: str | None = None
    manifest: dict | None = None

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


HOST_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Docker's reference grammar, simplified: [registry[:port]/]path[:tag]
REFERENCE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                       r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$")


def check_reference(name: str) -> str:
    """A valid image name with its tag ("app" -> "app:latest"), or a clear error."""
    if not name or len(name) > 255 or not REFERENCE.match(name):
        raise ValueError(f"invalid image name {name!r}: use lower-case letters, digits and "
                         "separators (. _ -), '/' between path parts, and ':tag'")
    return normalize_name(name)


class Conflict(Exception):
    """The store refuses a removal: something still uses the image."""


class ImageStore:
    """One Docker host's images (its image cache), over blobs and layers shared on disk.

    ``<root>/oci`` is the default host's OCI layout and holds every blob;
    another host's layout is ``<root>/images/<host>``, whose ``blobs`` is a link to
    the shared one — each is a layout skopeo and umoci can read. Every write
    happens under ``images.lock``; ``index.json`` is always written last, so a
    crash never leaves a name pointing at something incomplete.
    """

    def __init__(self, root: Path, host: str = "default"):
        if not HOST_PATTERN.match(host):
            raise ValueError(f"invalid host name {host!r}")
        self.root = Path(root)
        self.host = host
        self.shared = self.root / "oci"
        self.oci = self.shared if host == "default" else self.root / "images" / host
        self.blobs = self.shared / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self._index_cache: tuple[tuple, dict] | None = None
        self._thread_lock = threading.RLock()
        self._lock_depth = 0

    # --- reading ----------------------------------------------------------------------------

    def _index(self, layout: Path | None = None) -> dict:
        """index.json, re-read only when the file has changed."""
        path = (layout or self.oci) / "index.json"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
        if layout not in (None, self.oci):
            return json.loads(path.read_bytes())
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
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blobs / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_json_blob(self, digest: str) -> dict:
        return json.loads(self.blob_path(digest).read_bytes())

    _read_json_blob = read_json_blob

    def layer_dir(self, chain_id: str) -> Path:
        return self.layers_dir / chain_id.removeprefix("sha256:")

    def _load(self, name: str | None, descriptor: dict) -> Image:
        manifest = self.read_json_blob(descriptor["digest"])
        config_digest = manifest["config"]["digest"]
        config = self.read_json_blob(config_digest)
        layers = [self.layer_dir(chain) for chain in chain_ids(config.get("rootfs", {}).get("diff_ids", []))]
        missing = [(path, layer) for path, layer in zip(layers, manifest.get("layers", []))
                   if not path.is_dir()]
        if missing:
            # A layer directory was removed: unpack it again from its blob.
            with self._lock():
                for path, layer in missing:
                    if not path.is_dir():
                        extract_layer(self.blob_path(layer["digest"]), path)
        return Image(name=name, id=config_digest, config=config, layers=layers,
                     manifest_digest=descriptor["digest"], manifest=manifest)

    def list(self, dangling: bool = False) -> list[Image]:
        """Tagged images; with ``dangling``, also the untagged ones this host keeps
        (``docker build`` without ``-t``: ``<none>:<none>``)."""
        images = [self._load(name, desc) for name, desc in sorted(self._refs().items())]
        if dangling:
            images += [self._load(None, desc) for desc in self._dangling()]
        return images

    def _dangling(self) -> list[dict]:
        return [m for m in self._index().get("manifests", []) if REF_NAME not in m.get("annotations", {})]

    def get(self, name: str) -> Image:
        """An image by name ("busybox", "busybox:latest"), id ("sha256:…") or unique id prefix."""
        refs = self._refs()
        wanted = normalize_name(name)
        if wanted in refs:
            return self._load(wanted, refs[wanted])
        prefix = name.removeprefix("sha256:").lower()
        if len(prefix) >= 4 and all(c in "0123456789abcdef" for c in prefix):
            matches = {}
            candidates = sorted(refs.items()) + [(None, desc) for desc in self._dangling()]
            for ref, desc in candidates:
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

    def tags_of(self, image_id: str) -> list[str]:
        return sorted(name for name, desc in self._refs().items()
                      if self._load(name, desc).id == image_id)

    def children(self, image: Image) -> list[Image]:
        """Images whose layer chain extends this one's (built from chains, not a parent field)."""
        mine = image.diff_ids
        if not mine:
            return []  # every image "extends" scratch; none depends on it
        out = {}
        for other in self.list():
            theirs = other.diff_ids
            if other.id != image.id and len(theirs) > len(mine) and theirs[:len(mine)] == mine:
                out.setdefault(other.id, other)
        return list(out.values())

    # --- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self):
        """The store's write lock: across processes (flock) and re-entrant in this one."""
        with self._thread_lock:
            if self._lock_depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_file = open(self.root / "images.lock", "a")
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                    self._lock_file.close()

    lock = _lock

    def ensure_base_images(self) -> None:
        """Makes busybox:latest and scratch:latest if they aren't here yet.

        Safe to call from several processes at once; when both exist it costs a
        stat (and, once per process, reading index.json).
        """
        if all(name in self._refs() for name in BASE_IMAGES):
            self._protect_layers()  # a state dir made before layers were kept private
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
        self._protect_layers()
        for layout in {self.shared, self.oci}:
            layout.mkdir(parents=True, exist_ok=True)
            marker = layout / "oci-layout"
            if not marker.exists():
                _write_atomically(marker, canonical_json({"imageLayoutVersion": "1.0.0"}))
        if self.oci != self.shared and not (self.oci / "blobs").exists():
            os.symlink(os.path.relpath(self.shared / "blobs", self.oci), self.oci / "blobs")

    def _protect_layers(self) -> None:
        """Only root may enter ``layers``.

        An unpacked layer keeps its owners and modes, so a setuid file a container
        committed (or a Dockerfile or an imported image put there) is a setuid-*host*-
        root file here: any host user who can reach it becomes root. Containers
        don't need the path (their lower dirs are mounted by the engine), so,
        like Docker's /var/lib/docker, nobody else gets in.
        """
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(os.stat(self.layers_dir).st_mode) != 0o700:
                os.chmod(self.layers_dir, 0o700)

    def _add_refs(self, added: dict[str, dict]) -> None:
        """Points names at manifests in index.json (the last write: the commit point)."""
        if added:
            self._write_index(set(added), added)

    def _write_index(self, drop: set[str], add: dict[str, dict], undangle: str | None = None) -> None:
        """index.json without the names in ``drop`` (and the untagged entry of
        ``undangle``), with the names in ``add``."""
        index = dict(self._index())
        manifests = [m for m in index.get("manifests", [])
                     if m.get("annotations", {}).get(REF_NAME) not in drop
                     and not (REF_NAME not in m.get("annotations", {}) and m["digest"] == undangle)]
        for name, descriptor in sorted(add.items()):
            entry = {k: v for k, v in descriptor.items() if k in ("mediaType", "digest", "size")}
            manifests.append({**entry, "annotations": {REF_NAME: name}})
        index.update(schemaVersion=2, mediaType=MEDIA_INDEX, manifests=manifests)
        _write_atomically(self.oci / "index.json", canonical_json(index))

    def put_blob(self, data: bytes, media_type: str) -> dict:
        """Stores bytes under their digest; returns their OCI descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self.blobs.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    _put_blob = put_blob

    def put_blob_file(self, source: BinaryIO, media_type: str, expected: str | None = None) -> dict:
        """Streams a blob in; it takes its digest as name only once verified."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        with _TempFile(self.blobs) as tmp:
            sha, size = hashlib.sha256(), 0
            while chunk := source.read(1 << 20):
                sha.update(chunk)
                tmp.file.write(chunk)
                size += len(chunk)
            digest = "sha256:" + sha.hexdigest()
            if expected and expected != digest:
                raise ValueError(f"blob content is {digest}, not the {expected} it claims to be")
            path = self.blob_path(digest)
            if not path.exists():
                tmp.commit(path)
        return {"mediaType": media_type, "digest": digest, "size": size}

    @contextlib.contextmanager
    def writing_layer(self):
        """Yields (file to write a layer tar into, dict that gets its descriptor).

        The tar is hashed as it is written and takes its digest (= DiffID) as
        its name only when complete and on disk.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        result: dict = {}
        with _TempFile(self.blobs) as tmp:
            writer = _HashingWriter(tmp.file)
            yield writer, result
            digest = "sha256:" + writer.sha.hexdigest()
            size = tmp.file.tell()
            path = self.blob_path(digest)
            if path.exists():
                tmp.file.close()
            else:
                tmp.commit(path)
            result.update(mediaType=MEDIA_LAYER_TAR, digest=digest, size=size)

    def add_layer(self, tar: BinaryIO, media_type: str = MEDIA_LAYER_TAR,
                  expected: str | None = None) -> tuple[dict, str]:
        """Stores a layer blob (plain or gzip); returns its descriptor and its DiffID."""
        descriptor = self.put_blob_file(tar, media_type, expected)
        if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
            with gzip.open(self.blob_path(descriptor["digest"]), "rb") as plain:
                sha = hashlib.sha256()
                while chunk := plain.read(1 << 20):
                    sha.update(chunk)
            return descriptor, "sha256:" + sha.hexdigest()
        return descriptor, descriptor["digest"]

    def put_image(self, config: dict, layers: list[dict], name: str | None = None,
                  keep: bool = False, config_bytes: bytes | None = None) -> Image:
        """Writes config and manifest (layer blobs must be stored), unpacks, tags.

        Untagged, the image is kept (listed as dangling) only with ``keep``;
        otherwise it lives as long as something else refers to it. ``config_bytes``:
        the config exactly as another tool wrote it, so the image keeps its id.
        """
        if config_bytes is not None and json.loads(config_bytes) != config:
            raise ValueError("config_bytes do not hold the given config")
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        history = [h for h in config.get("history", []) if not h.get("empty_layer")]
        if len(diff_ids) != len(layers) or (config.get("history") and len(history) != len(diff_ids)):
            raise ValueError(f"inconsistent image: {len(diff_ids)} diff_ids, {len(layers)} layers, "
                             f"{len(history)} history entries that made a layer")
        with self._lock():
            self._init_layout()
            descriptor = self._put_image(config, layers, config_bytes)
            if name:
                self._add_refs({check_reference(name): descriptor})
            elif keep and all(m["digest"] != descriptor["digest"] for m in self._index().get("manifests", [])):
                index = dict(self._index())
                index["manifests"] = list(index.get("manifests", [])) + [descriptor]
                index.update(schemaVersion=2, mediaType=MEDIA_INDEX)
                _write_atomically(self.oci / "index.json", canonical_json(index))
        return self._load(normalize_name(name) if name else None, descriptor)

    def _put_image(self, config: dict, layers: list[dict], config_bytes: bytes | None = None) -> dict:
        """Writes the config and manifest blobs (layers must be stored); returns the manifest's descriptor."""
        for chain, layer in zip(chain_ids(config["rootfs"]["diff_ids"]), layers):
            path = self.layer_dir(chain)
            if not path.is_dir():
                extract_layer(self.blob_path(layer["digest"]), path)
        config_desc = self.put_blob(config_bytes if config_bytes is not None else canonical_json(config),
                                    MEDIA_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": config_desc, "layers": layers}
        return self.put_blob(canonical_json(manifest), MEDIA_MANIFEST)

    def image_by_id(self, image_id: str) -> Image:
        """An image known by its config digest, tagged or not (e.g. a container's)."""
        for name, desc in self._refs().items():
            image = self._load(name, desc)
            if image.id == image_id:
                return image
        raise ImageError(f"image {image_id} is not tagged here")

    def tag(self, ref: str, name: str) -> Image:
        image = self.get(ref)
        name = check_reference(name)
        descriptor = {"mediaType": MEDIA_MANIFEST, "digest": image.manifest_digest,
                      "size": self.blob_path(image.manifest_digest).stat().st_size}
        with self._lock():
            self._write_index(set(), {name: descriptor}, undangle=image.manifest_digest)
        return self.get(name)

    def untag(self, name: str) -> str:
        wanted = normalize_name(name)
        with self._lock():
            if wanted not in self._refs():
                raise ImageError(f"image {name!r} not found")
            self._write_index({wanted}, {})
        return wanted

    def remove(self, ref: str, force: bool = False, used_by=lambda image_id: []) -> dict:
        """``docker rmi``: untag; delete only what nothing uses any more.

        An image with another tag is only untagged. One that a container or a
        child image still uses is refused, or with ``force`` only untagged: its
        layers stay, and garbage collection keeps them while anything uses them.
        """
        image = self.get(ref)
        by_name = normalize_name(ref) == image.name
        names = [normalize_name(ref)] if by_name else self.tags_of(image.id)
        others = [t for t in self.tags_of(image.id) if t not in names]
        if others:
            for name in names:
                self.untag(name)
            return {"untagged": names, "deleted": []}
        users = used_by(image.id)
        children = [c.name or c.id for c in self.children(image)]
        if (users or children) and not force:
            reasons = []
            if users:
                reasons.append(f"is used by container{'s' if len(users) > 1 else ''} {', '.join(users)}")
            if children:
                reasons.append(f"has dependent child image{'s' if len(children) > 1 else ''} "
                               f"{', '.join(sorted(children))}")
            raise Conflict(f"unable to remove {image.name or image.id}: it {' and '.join(reasons)} "
                           "(force only untags it; its layers stay while they are used)")
        for name in names:
            self.untag(name)
        if image.name is None:  # a dangling image, by id: forget it
            with self._lock():
                self._write_index(set(), {}, undangle=image.manifest_digest)
        return {"untagged": names, "deleted": [image.id]}

    # --- garbage and checks --------------------------------------------------------------

    def layouts(self) -> list[Path]:
        hosts = self.root / "images"
        return [self.shared] + (sorted(p for p in hosts.iterdir() if p.is_dir()) if hosts.is_dir() else [])

    def live(self, extra_configs: set[str] = frozenset()) -> tuple[set[str], set[str]]:
        """(blob digests, layer chain ids) that something still references.

        Roots: every host's index.json, every container on disk (its image's
        manifest, config and layers), every build cache entry, and ``extra_configs``.
        """
        configs = set(extra_configs)
        blobs, chains = self._cache_roots()
        manifests, container_configs = self._container_roots()
        configs |= container_configs
        descriptors = [{"digest": d} for d in manifests]
        for layout in self.layouts():
            descriptors += self._index(layout).get("manifests", [])
        for desc in descriptors:
            blobs.add(desc["digest"])
            try:
                manifest = self.read_json_blob(desc["digest"])
            except (OSError, ValueError):
                continue
            configs.add(manifest["config"]["digest"])
            blobs.update(layer["digest"] for layer in manifest.get("layers", []))
        for digest in configs:
            blobs.add(digest)
            try:
                config = self.read_json_blob(digest)
            except (OSError, ValueError):
                continue
            chains.update(chain_ids(config.get("rootfs", {}).get("diff_ids", [])))
        return blobs, chains

    def _container_roots(self) -> tuple[set[str], set[str]]:
        """(manifest digests, config digests) of the images containers on disk were made from."""
        manifests, configs = set(), set()
        for state in (self.root / "containers").glob("**/state.json"):
            try:
                record = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            if record.get("manifest_digest"):
                manifests.add(record["manifest_digest"])
            if record.get("image_id"):
                configs.add(record["image_id"])
        return manifests, configs

    def _cache_roots(self) -> tuple[set[str], set[str]]:
        """(layer blobs, chain ids) the build caches keep for later builds."""
        blobs, chains = set(), set()
        for layout in self.layouts():
            try:
                entries = json.loads((layout / "build-cache.json").read_text())
            except (OSError, ValueError):
                continue
            for entry in entries.values():
                if entry.get("layer"):
                    blobs.add(entry["layer"]["digest"])
                if entry.get("chain"):
                    chains.add(entry["chain"])
        return blobs, chains

    def gc(self, extra_configs: set[str] = frozenset()) -> dict:
        """Deletes blobs and unpacked layers that nothing references, and partial writes."""
        removed = {"blobs": [], "layers": [], "partial": []}
        with self._lock():
            blobs, chains = self.live(extra_configs)
            if self.blobs.is_dir():
                for path in self.blobs.iterdir():
                    if path.name.startswith(".tmp-"):
                        path.unlink()
                        removed["partial"].append(path.name)
                    elif "sha256:" + path.name not in blobs:
                        path.unlink()
                        removed["blobs"].append("sha256:" + path.name)
            if self.layers_dir.is_dir():
                for path in self.layers_dir.iterdir():
                    if path.name.startswith("."):  # an extraction that never finished
                        shutil.rmtree(path, ignore_errors=True)
                        removed["partial"].append(path.name)
                    elif "sha256:" + path.name not in chains:
                        shutil.rmtree(path, ignore_errors=True)
                        removed["layers"].append("sha256:" + path.name)
            # An index.json (or oci-layout) write that died before its rename; every
            # such write holds this lock, so none is in progress now.
            for layout in self.layouts():
                for path in layout.glob(".tmp-*"):
                    path.unlink()
                    removed["partial"].append(path.name)
        return removed

    def fsck(self) -> list[str]:
        """Every problem with the store, in words; an empty list means all is well."""
        problems: list[str] = []
        if self.blobs.is_dir():
            for path in sorted(self.blobs.iterdir()):
                if path.name.startswith(".tmp-"):
                    problems.append(f"partial blob write left behind: {path} (unreferenced; gc removes it)")
                    continue
                actual = _sha256_file(path)
                if actual != path.name:
                    problems.append(f"blob sha256:{path.name} is corrupt: its content hashes to sha256:{actual}")
        for layout in self.layouts():
            for path in sorted(layout.glob(".tmp-*")):
                problems.append(f"partial index write left behind: {path} (index.json is intact; "
                                "gc removes it)")
            for desc in self._index(layout).get("manifests", []):
                name = desc.get("annotations", {}).get(REF_NAME, desc["digest"])
                where = f"{layout.name}: image {name}"
                try:
                    manifest = self.read_json_blob(desc["digest"])
                    config = self.read_json_blob(manifest["config"]["digest"])
                except FileNotFoundError as exc:
                    problems.append(f"{where}: missing blob {Path(exc.filename).name}")
                    continue
                except (ValueError, KeyError) as exc:
                    problems.append(f"{where}: unreadable manifest or config ({exc})")
                    continue
                for layer in manifest.get("layers", []):
                    if not self.has_blob(layer["digest"]):
                        problems.append(f"{where}: missing layer blob {layer['digest']}")
                diff_ids = config.get("rootfs", {}).get("diff_ids", [])
                made = [h for h in config.get("history", []) if not h.get("empty_layer")]
                if len(diff_ids) != len(manifest.get("layers", [])):
                    problems.append(f"{where}: {len(diff_ids)} diff_ids but {len(manifest.get('layers', []))} layers")
                if config.get("history") and len(made) != len(diff_ids):
                    problems.append(f"{where}: {len(made)} history entries made a layer, "
                                    f"but there are {len(diff_ids)} diff_ids")
                for chain in chain_ids(diff_ids):
                    if not self.layer_dir(chain).is_dir():
                        problems.append(f"{where}: layer {chain} is not unpacked (it will be, from its blob)")
        if self.layers_dir.is_dir():
            for path in self.layers_dir.iterdir():
                if path.name.startswith("."):
                    problems.append(f"partial layer extraction left behind: {path} (gc removes it)")
        return problems

    # --- the base images ---------------------------------------------------------------

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
                         "created_by": f"glassbox: busybox {busybox_version(binary)}, static"}],
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
    """The binary's own banner: the base image's id must depend on the binary alone (an
    answer from dpkg that failed once under load gave one store another busybox id)."""
    banner = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
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
