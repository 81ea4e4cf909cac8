"""Images in and out of the store: OCI image layouts and ``docker save`` tars.

Export
    ``export_oci`` writes a standalone OCI image layout (``oci-layout``,
    ``index.json``, ``blobs/sha256/…``). Each image is named in ``index.json`` by
    the annotation ``org.opencontainers.image.ref.name`` = its full name
    ("busybox:latest"). skopeo (``oci:DIR:REF``) and umoci (``--image DIR:REF``)
    both split their argument at the first ``:`` after the directory and look for
    an index entry whose ref name is exactly REF, so ``oci:DIR:busybox:latest``
    and ``--image DIR:busybox:latest`` find it (``localhost:5000/team/app:v1``
    works too). Without REF, umoci looks for "latest" and skopeo takes the only
    image or refuses. Blobs are hard links to the store's when on the same
    filesystem (so change them only by replacing the file), copies otherwise.

    ``export_docker_archive`` writes what moby 28's ``docker save`` does: a tar
    that is an OCI layout (``index.json`` entries annotated
    ``io.containerd.image.name`` = "docker.io/library/busybox:latest" and
    ``org.opencontainers.image.ref.name`` = "latest"; manifests whose layers are
    uncompressed tars named by their DiffID) and the legacy format
    (``manifest.json`` with ``Config``, ``RepoTags``, ``Layers`` as
    ``blobs/sha256/…`` paths; ``repositories``).

Import
    ``import_oci`` reads a layout as skopeo, umoci, buildx or ``docker save``
    write them: nested image indexes (one platform chosen: this machine's, or
    ``platform=``), OCI and Docker schema2 manifests, plain and gzip layers.
    ``import_docker_archive`` reads a ``docker save`` tar, preferring its OCI part
    and falling back to ``manifest.json`` (older Docker, skopeo's
    ``docker-archive:``), without extracting it: every member name is checked
    first (no ``..``, absolute paths, links leading out, devices), then files
    are read straight from the tar.

    Every blob's digest and size is checked as it is read or copied, every
    layer's uncompressed digest against the config's ``diff_ids``, and the
    counts of layers, diff_ids and history against each other. Any problem is a
    ``ValueError`` saying what and where; names are only set once everything is
    stored and unpacked, so a failed import tags nothing (blobs it already
    stored are unreferenced, and ``gc`` removes them).

    Names: skopeo (``oci:DIR:latest``) and umoci write a bare tag as the ref
    name; ``docker save`` adds the full name in ``io.containerd.image.name``. A
    full name ("busybox:latest", "docker.io/library/busybox:latest") is used as
    it is (made familiar). A bare tag alone is not enough to name an image, and
    the directory's name is an accident of where a file was put, so that is an
    error asking for ``name``: ``name="app"`` is the repository (giving
    "app:<tag>"), ``name="app:v1"`` the whole name of the one image imported.

    The store re-serializes a config canonically (sorted keys), so an image whose
    config bytes were not canonical (umoci's, Docker's) gets a new image id here;
    Glassbox's own exports round-trip with the same id.
"""
from __future__ import annotations

import bz2
import contextlib
import ctypes
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import platform as _platform
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

from .archive import UnsafeArchiveError, _entry_parts, extract_layer
from .images import (_GOARCH, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_LAYER_TAR, MEDIA_MANIFEST, REF_NAME,
                     Image, ImageStore, canonical_json, chain_ids, check_reference)

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
CONTAINERD_NAME = "io.containerd.image.name"

MANIFEST_TYPES = {MEDIA_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {MEDIA_INDEX, DOCKER_MANIFEST_LIST}
CONFIG_TYPES = {MEDIA_CONFIG, DOCKER_CONFIG}
LAYER_TYPES = {
    MEDIA_LAYER_TAR, MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_FOREIGN_LAYER,
}

MAX_JSON = 16 << 20      # index, manifest, config: JSON read whole, so bounded
MAX_INDEX_DEPTH = 8
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20

_GZIP, _ZSTD, _XZ, _BZIP2 = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh"


# --- names ----------------------------------------------------------------------------------

def _split_tag(name: str) -> tuple[str, str | None]:
    """("busybox", "latest") from "busybox:latest"; a registry port is not a tag."""
    head, _, last = name.rpartition("/")
    if ":" in last:
        repo, _, tag = last.partition(":")
        return (f"{head}/{repo}" if head else repo), tag
    return name, None


def familiar_name(name: str) -> str:
    """Docker's short form: "docker.io/library/busybox:latest" -> "busybox:latest"."""
    for registry in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(registry):
            rest = name[len(registry):]
            if rest.startswith("library/") and "/" not in rest[len("library/"):]:
                rest = rest[len("library/"):]
            return rest
    return name


def full_name(name: str) -> str:
    """Docker's normalized form: "busybox:latest" -> "docker.io/library/busybox:latest"."""
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if slash else f"docker.io/library/{name}"


def _is_bare_tag(ref: str) -> bool:
    return "/" not in ref and ":" not in ref and "@" not in ref


# --- reading sources (a directory, or a tar read in place) ------------------------------

class _Missing(ValueError):
    pass


class _DirSource:
    """An OCI layout on disk. Symlinks are followed (a store's host layout links its blobs)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.label = str(root)

    def open(self, path: str) -> BinaryIO:
        full = self.root / path
        try:
            # O_NONBLOCK: a fifo planted at a blob's name must not hang the import.
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise _Missing(f"{path} is missing") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{path} is not a regular file")
        return open(fd, "rb")

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()


class _TarSource:
    """A tar's members, checked up front, read without extracting anything.

    Refused: names that are absolute or contain ``..``, devices and fifos,
    symlinks that are absolute or lead out of the archive, hard links to
    anything but a file earlier in it. Files are then found by resolving
    symlinks among the members, never on the host.
    """

    def __init__(self, fileobj: BinaryIO, label: str):
        self.label = label
        try:
            self.tar = tarfile.open(fileobj=fileobj, mode="r:")
            members = self.tar.getmembers()
        except tarfile.TarError as exc:
            raise ValueError(f"{label}: not a readable tar archive ({exc})") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            parts = _entry_parts(member.name, f"{label}: entry")
            key = "/".join(parts)
            if not key:
                continue
            what = f"{label}: entry {member.name!r}"
            if member.ischr() or member.isblk() or member.isfifo():
                raise UnsafeArchiveError(f"{what} is a device or fifo; an image archive holds "
                                         "only files, directories and links")
            if member.issym():
                target = member.linkname
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(key), target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise UnsafeArchiveError(f"{what} is a symlink to {target!r}, outside the archive")
            elif member.islnk():
                target = "/".join(_entry_parts(member.linkname, f"{what}: hard link to"))
                if not (target in self.members and self.members[target].isfile()):
                    raise UnsafeArchiveError(f"{what} is a hard link to {member.linkname!r}, "
                                             "which is not a file earlier in the archive")
            elif not (member.isreg() or member.isdir()):
                raise UnsafeArchiveError(f"{what} has unsupported tar type {member.type!r}")
            self.members[key] = member

    def _member(self, path: str) -> tarfile.TarInfo | None:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if not done:
                    return None
                done.pop()
                continue
            here = "/".join(done + [part])
            member = self.members.get(here)
            if member is not None and member.issym():
                hops += 1
                if hops > 40:
                    raise ValueError(f"{self.label}: too many levels of symlinks at {here!r}")
                parts = [p for p in member.linkname.split("/") if p not in ("", ".")] + parts
                continue
            done.append(part)
        member = self.members.get("/".join(done))
        if member is not None and member.islnk():
            member = self.members.get("/".join(_entry_parts(member.linkname, "hard link to")))
        return member

    def open(self, path: str) -> BinaryIO:
        member = self._member(path)
        if member is None:
            raise _Missing(f"{path} is missing from the archive")
        if not member.isfile():
            raise ValueError(f"{path} is not a regular file in the archive")
        return self.tar.extractfile(member)

    def exists(self, path: str) -> bool:
        member = self._member(path)
        return member is not None and member.isfile()


def _read(src, path: str, where: str, limit: int = MAX_JSON) -> bytes:
    try:
        with src.open(path) as f:
            data = f.read(limit + 1)
    except _Missing as exc:
        raise ValueError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if len(data) > limit:
        raise ValueError(f"{where}: {path} is larger than {limit} bytes; refusing to read it whole")
    return data


def _parse_json(data: bytes, where: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: malformed JSON ({exc})") from None


def _blob_path(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _short(digest: str) -> str:
    return digest[:19]


def _check_descriptor(desc, where: str, need_media_type: bool = True) -> dict:
    if not isinstance(desc, dict):
        raise ValueError(f"{where}: a descriptor must be a JSON object, not {type(desc).__name__}")
    digest = desc.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        if isinstance(digest, str) and re.match(r"^[a-z0-9]+([+._-][a-z0-9]+)*:", digest) \
                and not digest.startswith("sha256:"):
            raise ValueError(f"{where}: digest {digest!r} uses an algorithm other than sha256, "
                             "which this store does not support")
        raise ValueError(f"{where}: {digest!r} is not a sha256 digest")
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{where}: descriptor of {_short(digest)} has no valid size ({size!r})")
    if need_media_type and not isinstance(desc.get("mediaType"), str):
        raise ValueError(f"{where}: descriptor of {_short(digest)} has no mediaType")
    annotations = desc.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ValueError(f"{where}: annotations of {_short(digest)} must map strings to strings")
    return desc


def _read_json_blob(src, desc: dict, where: str):
    """A small blob, checked against its descriptor's size and digest, parsed."""
    digest = desc["digest"]
    data = _read(src, _blob_path(digest), where)
    if len(data) != desc["size"]:
        raise ValueError(f"{where}: blob {digest} is {len(data)} bytes, but its descriptor "
                         f"says {desc['size']}")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ValueError(f"{where}: blob {digest} is corrupt: its content hashes to {actual}")
    return _parse_json(data, f"{where} (blob {_short(digest)})")


def _check_config(config, where: str) -> list[str]:
    """The config's diff_ids, once the config has been checked to describe a Linux image."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the image config must be a JSON object")
    if config.get("os", "linux") != "linux":
        raise ValueError(f"{where}: the image is for {config.get('os')!r}; only linux images run here")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ValueError(f"{where}: the config has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids", [])
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in diff_ids):
        raise ValueError(f"{where}: the config's rootfs.diff_ids must be a list of sha256 digests")
    history = config.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{where}: the config's history must be a list of objects")
    made = [h for h in history if not h.get("empty_layer")]
    if history and len(made) != len(diff_ids):
        raise ValueError(f"{where}: counts disagree: {len(made)} history entries made a layer, "
                         f"but the config has {len(diff_ids)} diff_ids")
    return diff_ids


# --- import plans: everything read and checked before anything is stored ---------------

@dataclasses.dataclass
class _Layer:
    path: str               # in the source
    digest: str | None      # the blob's own digest, where the source states it
    size: int | None
    where: str


@dataclasses.dataclass
class _Plan:
    key: str                # the image's identity in the source (manifest digest, config path)
    where: str
    config: dict
    diff_ids: list[str]
    layers: list[_Layer]
    full_names: list[str]   # names it carries ("docker.io/library/busybox:latest")
    bare_tag: str | None    # or only a tag ("latest")
    names: list[str] = dataclasses.field(default_factory=list)
    config_bytes: bytes | None = None  # as the source wrote them: the image id is their digest


def _wanted_platform(spec: str | None) -> tuple[str, str, str | None]:
    if spec:
        parts = spec.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {spec!r} is not os/architecture[/variant]")
        return parts[0], parts[1], parts[2] if len(parts) == 3 else None
    machine = _platform.machine()
    return "linux", _GOARCH.get(machine, machine), {"armv7l": "v7", "armv6l": "v6"}.get(machine)


def _platform_text(desc: dict) -> str:
    p = desc.get("platform") or {}
    if not isinstance(p, dict) or not p:
        return "(no platform)"
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


def _is_attestation(desc: dict) -> bool:
    p = desc.get("platform") or {}
    return (desc.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"
            or (isinstance(p, dict) and p.get("os") == "unknown"))


def _choose(descs: list[dict], where: str, wanted: tuple) -> dict | None:
    """The one manifest to import from several: by platform, as docker pull picks."""
    candidates = [d for d in descs if d["mediaType"] in MANIFEST_TYPES | INDEX_TYPES
                  and not _is_attestation(d)]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    os_, arch, variant = wanted
    matches = [d for d in candidates if isinstance(d.get("platform"), dict)
               and d["platform"].get("os") == os_ and d["platform"].get("architecture") == arch]
    if variant and any(d["platform"].get("variant") == variant for d in matches):
        matches = [d for d in matches if d["platform"].get("variant") == variant]
    if not matches:
        have = ", ".join(sorted({_platform_text(d) for d in candidates}))
        raise ValueError(f"{where}: no manifest for {os_}/{arch} among {len(candidates)} "
                         f"(platforms: {have}); pass platform= to choose one")
    if len({d["digest"] for d in matches}) > 1:
        raise ValueError(f"{where}: {len(matches)} different manifests for {os_}/{arch}; "
                         "cannot tell which to import")
    return matches[0]


def _index_manifests(index, where: str) -> list[dict]:
    if not isinstance(index, dict):
        raise ValueError(f"{where}: an image index must be a JSON object")
    if index.get("schemaVersion") != 2:
        raise ValueError(f"{where}: schemaVersion is {index.get('schemaVersion')!r}, not 2")
    media_type = index.get("mediaType")
    if media_type is not None and media_type not in INDEX_TYPES:
        raise ValueError(f"{where}: mediaType {media_type!r} is not an image index")
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ValueError(f"{where}: has no 'manifests' list")
    return [_check_descriptor(d, f"{where}: manifests[{i}]") for i, d in enumerate(manifests)]


def _resolve(src, descs: list[dict], where: str, wanted: tuple, depth: int = 0) -> dict | None:
    """Follows image indexes (choosing a platform) down to one image manifest's descriptor."""
    desc = _choose(descs, where, wanted)
    if desc is None or desc["mediaType"] in MANIFEST_TYPES:
        return desc
    if depth >= MAX_INDEX_DEPTH:
        raise ValueError(f"{where}: image indexes nested more than {MAX_INDEX_DEPTH} deep")
    inner = f"{where}, index {_short(desc['digest'])}"
    index = _read_json_blob(src, desc, inner)
    return _resolve(src, _index_manifests(index, inner), inner, wanted, depth + 1)


def _plan_manifest(src, desc: dict, where: str) -> _Plan | None:
    """An image manifest and its config, checked; None for an artifact that is no image."""
    where = f"{where}, manifest {_short(desc['digest'])}"
    manifest = _read_json_blob(src, desc, where)
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: a manifest must be a JSON object")
    if manifest.get("schemaVersion") != 2:
        raise ValueError(f"{where}: schemaVersion is {manifest.get('schemaVersion')!r}, not 2")
    inner_type = manifest.get("mediaType")
    if inner_type is not None and inner_type != desc["mediaType"]:
        raise ValueError(f"{where}: the manifest says it is {inner_type!r}, but the index "
                         f"that points to it says {desc['mediaType']!r}")
    if "manifests" in manifest:
        raise ValueError(f"{where}: is an image index, but was named as an image manifest")
    config_desc = _check_descriptor(manifest.get("config"), f"{where}: config")
    if config_desc["mediaType"] not in CONFIG_TYPES:
        return None
    layers = manifest.get("layers", [])
    if not isinstance(layers, list):
        raise ValueError(f"{where}: 'layers' must be a list")
    planned = []
    for i, layer in enumerate(layers):
        lw = f"{where}: layer {i + 1} of {len(layers)}"
        layer = _check_descriptor(layer, lw)
        media_type = layer["mediaType"]
        if media_type not in LAYER_TYPES:
            raise ValueError(f"{lw}: media type {media_type!r} is not a filesystem layer")
        if media_type.endswith("zstd"):
            raise ValueError(f"{lw}: zstd-compressed layers are not supported here "
                             "(copy the image with gzip, e.g. skopeo copy --dest-compress-format gzip)")
        planned.append(_Layer(_blob_path(layer["digest"]), layer["digest"], layer["size"],
                              f"{lw} ({_short(layer['digest'])})"))
    config_where = f"{where}, config {_short(config_desc['digest'])}"
    config = _read_json_blob(src, config_desc, config_where)
    diff_ids = _check_config(config, config_where)
    if len(diff_ids) != len(planned):
        raise ValueError(f"{where}: counts disagree: the config has {len(diff_ids)} diff_ids, "
                         f"the manifest {len(planned)} layers")
    raw = _read(src, _blob_path(config_desc["digest"]), config_where)
    return _Plan(desc["digest"], where, config, diff_ids, planned, [], None, config_bytes=raw)


def _oci_plans(src, wanted: tuple) -> list[_Plan]:
    layout = _parse_json(_read(src, "oci-layout", f"{src.label}: not an OCI image layout"),
                         f"{src.label}: oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise ValueError(f"{src.label}: oci-layout has imageLayoutVersion {version!r}, not 1.x")
    where = f"{src.label}: index.json"
    entries = _index_manifests(_parse_json(_read(src, "index.json", where), where), where)
    groups: dict[tuple, list[dict]] = {}
    for desc in entries:
        annotations = desc.get("annotations", {})
        groups.setdefault((annotations.get(CONTAINERD_NAME), annotations.get(REF_NAME)), []).append(desc)
    plans: dict[str, _Plan] = {}
    for (containerd_name, ref), descs in groups.items():
        label = containerd_name or ref
        gwhere = f"{src.label}: image {label!r}" if label else f"{src.label}: unnamed image"
        desc = _resolve(src, descs, gwhere, wanted)
        plan = _plan_manifest(src, desc, gwhere) if desc else None
        if plan is None:
            continue  # not an image (a signature, an attestation, an artifact)
        plan = plans.setdefault(plan.key, plan)
        if containerd_name:
            name = containerd_name.split("@")[0]
            if _split_tag(name)[1] is None:
                name += f":{ref if ref and _is_bare_tag(ref) else 'latest'}"
            plan.full_names.append(name)
        elif ref and not _is_bare_tag(ref):
            plan.full_names.append(ref)
        elif ref:
            plan.bare_tag = plan.bare_tag or ref
    if not plans:
        raise ValueError(f"{src.label}: index.json names no container image")
    return list(plans.values())


def _legacy_plans(src) -> list[_Plan]:
    """manifest.json of a docker save tar: [{"Config", "RepoTags", "Layers"}, …]."""
    where = f"{src.label}: manifest.json"
    items = _parse_json(_read(src, "manifest.json", where), where)
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: must be a non-empty list of images")
    plans: dict[str, _Plan] = {}
    for i, item in enumerate(items):
        iwhere = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise ValueError(f"{iwhere}: needs a 'Config' path")
        config_path = item["Config"]
        raw = _read(src, config_path, iwhere)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        named = re.search(r"(?:^|/)([0-9a-f]{64})(?:\.json)?$", config_path)
        if named and "sha256:" + named.group(1) != digest:
            raise ValueError(f"{iwhere}: config {config_path} is corrupt: its content hashes to {digest}")
        config_where = f"{iwhere}, config {_short(digest)}"
        config = _parse_json(raw, config_where)
        diff_ids = _check_config(config, config_where)
        paths = item.get("Layers", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"{iwhere}: 'Layers' must be a list of paths")
        if len(paths) != len(diff_ids):
            raise ValueError(f"{iwhere}: counts disagree: the config has {len(diff_ids)} diff_ids, "
                             f"'Layers' lists {len(paths)} files")
        layers = []
        for n, path in enumerate(paths):
            blob = re.fullmatch(r"(?:\./)?blobs/sha256/([0-9a-f]{64})", path)
            layers.append(_Layer(path, "sha256:" + blob.group(1) if blob else None, None,
                                 f"{iwhere}: layer {n + 1} of {len(paths)} ({path})"))
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{iwhere}: 'RepoTags' must be a list of names")
        plan = plans.setdefault(digest, _Plan(digest, iwhere, config, diff_ids, layers, [], None,
                                              config_bytes=raw))
        plan.full_names += tags
    return list(plans.values())


def _assign_names(plans: list[_Plan], name: str | None, label: str) -> None:
    """Each plan's final names, or a clear error; all checked before anything is stored."""
    override_tag = None
    if name:
        repo, override_tag = _split_tag(name)
        if override_tag and len(plans) > 1:
            raise ValueError(f"{label}: holds {len(plans)} images, but the name {name!r} has a tag "
                             "and can name only one; give a repository without a tag")
    owner: dict[str, str] = {}
    for plan in plans:
        if name and override_tag:
            wanted = [name]
        elif name:
            tags = [_split_tag(n)[1] for n in plan.full_names] or [plan.bare_tag]
            wanted = [f"{repo}:{t or 'latest'}" for t in tags]
        elif plan.full_names:
            wanted = [familiar_name(n) for n in plan.full_names]
        elif plan.bare_tag:
            raise ValueError(f"{plan.where}: the layout names this image only by the tag "
                             f"{plan.bare_tag!r} (as skopeo's oci:DIR:TAG and umoci write it), "
                             f"which says nothing of its repository; pass name='REPO' to tag it "
                             f"REPO:{plan.bare_tag}, or name='REPO:TAG'")
        else:
            raise ValueError(f"{plan.where}: the image has no name in the layout; pass name='REPO:TAG'")
        for n in wanted:
            try:
                checked = check_reference(n)
            except ValueError as exc:
                raise ValueError(f"{plan.where}: {exc}") from None
            if owner.setdefault(checked, plan.key) != plan.key:
                raise ValueError(f"{label}: two different images would both be tagged {checked}")
            if checked not in plan.names:
                plan.names.append(checked)


# --- storing ----------------------------------------------------------------------------

def _compression(f: BinaryIO) -> str | None:
    head = f.read(6)
    f.seek(0)
    for magic, kind in ((_GZIP, "gzip"), (_ZSTD, "zstd"), (_XZ, "xz"), (_BZIP2, "bzip2")):
        if head.startswith(magic):
            return kind
    return None


def _store_layer(store: ImageStore, src, layer: _Layer) -> tuple[dict, str]:
    """Copies one layer blob into the store, verified; returns (descriptor, DiffID)."""
    try:
        with src.open(layer.path) as f:
            kind = _compression(f)
            if kind not in (None, "gzip"):
                raise ValueError(f"{kind}-compressed layers are not supported here (only plain and gzip)")
            media_type = MEDIA_LAYER_GZIP if kind == "gzip" else MEDIA_LAYER_TAR
            try:
                descriptor, diff_id = store.add_layer(f, media_type, expected=layer.digest)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise ValueError(f"the layer is not a valid gzip stream ({exc})") from None
    except _Missing as exc:
        raise ValueError(f"{layer.where}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{layer.where}: {exc}") from None
    if layer.size is not None and descriptor["size"] != layer.size:
        raise ValueError(f"{layer.where}: blob is {descriptor['size']} bytes, but its descriptor "
                         f"says {layer.size}")
    return descriptor, diff_id


def _store_plans(store: ImageStore, src, plans: list[_Plan]) -> list[Image]:
    """Copies and checks every layer, unpacks them, then (only then) writes and tags images."""
    images: list[Image] = []
    with store.lock():  # gc must not take blobs stored here before an image references them
        stored: dict[str, tuple[dict, str]] = {}
        ready: list[tuple[_Plan, list[dict]]] = []
        for plan in plans:
            descriptors = []
            for layer, diff_id in zip(plan.layers, plan.diff_ids):
                if layer.path not in stored:
                    stored[layer.path] = _store_layer(store, src, layer)
                descriptor, actual = stored[layer.path]
                if actual != diff_id:
                    raise ValueError(f"{layer.where}: uncompressed, the layer is {actual}, but the "
                                     f"config's diff_id for it is {diff_id}")
                descriptors.append(descriptor)
            # Unpack now, so that storing the images below cannot fail half way through.
            # 0700 as the store keeps it: unpacked layers may hold setuid files.
            store.layers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for chain, descriptor, layer in zip(chain_ids(plan.diff_ids), descriptors, plan.layers):
                path = store.layer_dir(chain)
                if not path.is_dir():
                    try:
                        extract_layer(store.blob_path(descriptor["digest"]), path)
                    except (tarfile.TarError, EOFError, zlib.error) as exc:
                        raise ValueError(f"{layer.where}: not a readable tar ({exc})") from None
                    except UnsafeArchiveError as exc:
                        raise ValueError(f"{layer.where}: refused: {exc}") from None
            ready.append((plan, descriptors))
        for plan, descriptors in ready:
            for name in plan.names:
                images.append(store.put_image(plan.config, descriptors, name,
                                              config_bytes=plan.config_bytes))
    return images


# --- import -----------------------------------------------------------------------------

@contextlib.contextmanager
def _tar_source(tar: BinaryIO | str | os.PathLike, label: str | None = None):
    """A _TarSource over a (possibly compressed, possibly unseekable) tar."""
    with contextlib.ExitStack() as stack:
        if isinstance(tar, (str, os.PathLike)):
            label = label or str(tar)
            f = stack.enter_context(open(tar, "rb"))
        else:
            label = label or str(getattr(tar, "name", "") or "archive")
            f = tar
            if not (hasattr(f, "seekable") and f.seekable()):
                spool = stack.enter_context(tempfile.TemporaryFile())
                shutil.copyfileobj(f, spool, _CHUNK)
                spool.seek(0)
                f = spool
        start = f.tell()
        head = f.read(6)
        f.seek(start)
        opener = {_GZIP: gzip.GzipFile, _BZIP2: bz2.BZ2File, _XZ: lzma.LZMAFile}
        for magic, cls in opener.items():
            if head.startswith(magic):
                plain = stack.enter_context(tempfile.TemporaryFile())
                try:
                    shutil.copyfileobj(cls(fileobj=f) if cls is gzip.GzipFile else cls(f), plain, _CHUNK)
                except (OSError, EOFError, lzma.LZMAError) as exc:
                    raise ValueError(f"{label}: cannot decompress ({exc})") from None
                plain.seek(0)
                f = plain
                break
        source = _TarSource(f, label)
        stack.callback(source.tar.close)
        yield source


def import_oci(store: ImageStore, src: Path, name: str | None = None,
               platform: str | None = None) -> list[Image]:
    """Imports the images of an OCI layout (a directory, or a tar of one); one Image per name.

    ``name`` = "REPO" tags each image REPO:<its tag>; "REPO:TAG" names the only
    image. ``platform`` ("linux/arm64") chooses from multi-platform indexes
    (default: this machine's).
    """
    src = Path(src)
    wanted = _wanted_platform(platform)
    if src.is_dir():
        source = _DirSource(src)
        plans = _oci_plans(source, wanted)
        _assign_names(plans, name, str(src))
        return _store_plans(store, source, plans)
    if not src.exists():
        raise ValueError(f"{src}: no such OCI layout")
    with _tar_source(src) as source:
        plans = _oci_plans(source, wanted)
        _assign_names(plans, name, str(src))
        return _store_plans(store, source, plans)


def import_docker_archive(store: ImageStore, tar: BinaryIO | Path, name: str | None = None,
                          platform: str | None = None) -> list[Image]:
    """Imports a ``docker save`` tar (``docker load``); one Image per name it gets.

    Its OCI part (``index.json``) is preferred; ``manifest.json`` is used when
    there is none, or when the OCI part is unusable but manifest.json works
    (Docker 25.0's first OCI output listed no layers in its manifests).
    """
    with _tar_source(tar) as source:
        has_oci = source.exists("index.json") and source.exists("oci-layout")
        has_legacy = source.exists("manifest.json")
        if not (has_oci or has_legacy):
            raise ValueError(f"{source.label}: not a docker save archive "
                             "(no manifest.json, no index.json and oci-layout)")
        if has_oci:
            try:
                plans = _oci_plans(source, _wanted_platform(platform))
                _assign_names(plans, name, source.label)
            except ValueError as oci_error:
                if not has_legacy or isinstance(oci_error, UnsafeArchiveError):
                    raise
                try:
                    plans = _legacy_plans(source)
                    _assign_names(plans, name, source.label)
                except ValueError:
                    raise oci_error from None
        else:
            plans = _legacy_plans(source)
            _assign_names(plans, name, source.label)
        return _store_plans(store, source, plans)


# --- export -----------------------------------------------------------------------------

def _images_for_export(store: ImageStore, refs: Iterable[str]) -> list[tuple[Image, list[str]]]:
    """(image, its names to export) in the order given; an image named twice appears once."""
    by_id: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image = store.get(ref)
        entry = by_id.setdefault(image.id, (image, []))
        if image.name and image.name not in entry[1]:
            entry[1].append(image.name)
    if not by_id:
        raise ValueError("no images to export")
    for image, _ in by_id.values():
        needed = [image.manifest_digest, image.id] + [l["digest"] for l in image.manifest.get("layers", [])]
        for digest in needed:
            if not store.blob_path(digest).is_file():
                raise ValueError(f"image {image.name or image.id}: blob {digest} is missing from the "
                                 "store (glassbox fsck says more)")
    return list(by_id.values())


def _platform_of(config: dict) -> dict:
    p = {"architecture": config.get("architecture"), "os": config.get("os")}
    if config.get("variant"):
        p["variant"] = config["variant"]
    return {k: v for k, v in p.items() if v}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _link_or_copy(src: Path, dest: Path, digest: str) -> None:
    """A hard link when on the same filesystem; else a copy, checked against its digest."""
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    sha = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            sha.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if "sha256:" + sha.hexdigest() != digest:
        raise ValueError(f"store blob {digest} is corrupt: it hashes to sha256:{sha.hexdigest()} "
                         "(glassbox fsck says more)")
    os.chmod(dest, 0o644)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replaceable(dest: Path) -> bool:
    """dest may be replaced: absent, an empty directory, or an OCI layout (a previous export)."""
    if not os.path.lexists(dest):
        return True
    if dest.is_symlink() or not dest.is_dir():
        return False
    return not any(dest.iterdir()) or (dest / "oci-layout").is_file()


def _put_dir_in_place(tmp: Path, dest: Path) -> None:
    if os.path.lexists(dest) and any(dest.iterdir()):
        if not _exchange(tmp, dest):
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            tmp = old
        shutil.rmtree(tmp, ignore_errors=True)  # now the old layout
    else:
        os.rename(tmp, dest)  # over an empty directory, or where there was none
    _fsync_path(dest.parent)


def export_oci(store: ImageStore, refs: list[str], dest: Path) -> list[str]:
    """Writes the images as a standalone OCI layout at ``dest``; returns the ref names in it.

    The layout is built in a temporary directory next to ``dest`` and renamed
    into place, so ``dest`` is never half written. An existing ``dest`` is
    replaced only if it is an empty directory or an OCI layout.
    """
    dest = Path(dest)
    if not _replaceable(dest):
        raise ValueError(f"{dest} exists and is not an OCI layout; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        with store.lock():  # gc must not remove a blob between finding and linking it
            exported = _images_for_export(store, refs)
            entries, copied = [], set()
            for image, names in exported:
                digests = [image.manifest_digest, image.id] + [l["digest"] for l in image.manifest["layers"]]
                for digest in digests:
                    if digest not in copied:
                        _link_or_copy(store.blob_path(digest), blobs / digest.removeprefix("sha256:"), digest)
                        copied.add(digest)
                size = store.blob_path(image.manifest_digest).stat().st_size
                for name in names:
                    entry = {"mediaType": MEDIA_MANIFEST, "digest": image.manifest_digest, "size": size,
                             "annotations": {REF_NAME: name}}
                    if _platform_of(image.config):
                        entry["platform"] = _platform_of(image.config)
                    entries.append(entry)
        _write_file(tmp / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
        _write_file(tmp / "index.json", canonical_json(index))
        for d in (blobs, blobs.parent, tmp):
            _fsync_path(d)
        if not _replaceable(dest):
            raise ValueError(f"{dest} appeared meanwhile and is not an OCI layout; not replacing it")
        _put_dir_in_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [e["annotations"][REF_NAME] for e in entries]


class _Verifying:
    """Reads a file, hashing it; check() raises if it wasn't what it was supposed to be."""

    def __init__(self, f: BinaryIO, digest: str, what: str):
        self.f, self.digest, self.what = f, digest, what
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        return data

    def check(self) -> None:
        if "sha256:" + self.sha.hexdigest() != self.digest:
            raise ValueError(f"{self.what} {self.digest} is corrupt in the store: it hashes to "
                             f"sha256:{self.sha.hexdigest()}; the archive written is incomplete")


def _tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.mode, info.size = 0o644, size
    return info


def _go_json(obj) -> bytes:
    """As Go's encoding/json writes it: compact, fields in the order given."""
    return json.dumps(obj, separators=(",", ":")).encode()


def export_docker_archive(store: ImageStore, refs: list[str], out: BinaryIO) -> None:
    """Writes the images as ``docker save`` (moby 28) does: an OCI layout plus manifest.json.

    Layers go in uncompressed, named by their DiffID (gzip layers of imported
    images are decompressed, and checked, on the way). Blobs are opened under
    the store's lock and streamed after it is released, so a slow reader of
    ``out`` holds up no one. Should a store blob turn out corrupt while
    streaming, a ValueError says so and what was written is incomplete.
    """
    with contextlib.ExitStack() as stack:
        blobs: dict[str, tuple[BinaryIO, int, str]] = {}   # digest -> (open file, size, what)
        manifest_items, index_entries, repositories = [], [], {}
        with store.lock():
            exported = _images_for_export(store, refs)
            for image, names in exported:
                config_file = stack.enter_context(open(store.blob_path(image.id), "rb"))
                blobs[image.id] = (config_file, os.fstat(config_file.fileno()).st_size, "config")
                layer_descs = []
                for layer, diff_id in zip(image.manifest["layers"], image.diff_ids):
                    if diff_id not in blobs:
                        src = stack.enter_context(open(store.blob_path(layer["digest"]), "rb"))
                        if layer["digest"] != diff_id:  # compressed: docker save holds plain tars
                            plain = stack.enter_context(tempfile.TemporaryFile())
                            sha = hashlib.sha256()
                            try:
                                with gzip.GzipFile(fileobj=src) as z:
                                    while chunk := z.read(_CHUNK):
                                        sha.update(chunk)
                                        plain.write(chunk)
                            except (OSError, EOFError, zlib.error) as exc:
                                raise ValueError(f"image {image.name}: layer {layer['digest']} "
                                                 f"cannot be decompressed ({exc})") from None
                            if "sha256:" + sha.hexdigest() != diff_id:
                                raise ValueError(f"image {image.name}: layer {layer['digest']} "
                                                 f"uncompresses to sha256:{sha.hexdigest()}, "
                                                 f"not its diff_id {diff_id}")
                            plain.seek(0)
                            src = plain
                        blobs[diff_id] = (src, os.fstat(src.fileno()).st_size, "layer")
                    layer_descs.append({"mediaType": MEDIA_LAYER_TAR, "digest": diff_id,
                                        "size": blobs[diff_id][1]})
                stored = store.blob_path(image.manifest_digest).read_bytes()
                if all(l["digest"] == d for l, d in zip(image.manifest["layers"], image.diff_ids)) \
                        and all(l.get("mediaType") == MEDIA_LAYER_TAR for l in image.manifest["layers"]):
                    manifest = stored  # already what docker save writes: keep its digest
                else:
                    manifest = canonical_json({
                        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                        "config": {"mediaType": MEDIA_CONFIG, "digest": image.id,
                                   "size": blobs[image.id][1]},
                        "layers": layer_descs})
                manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
                blobs[manifest_digest] = (io.BytesIO(manifest), len(manifest), "manifest")
                familiar = [familiar_name(n) for n in names]
                for n in familiar:
                    repo, tag = _split_tag(n)
                    index_entries.append({
                        "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest),
                        "annotations": {CONTAINERD_NAME: full_name(n), REF_NAME: tag or "latest"}})
                    if image.diff_ids:
                        repositories.setdefault(repo, {})[tag or "latest"] = \
                            image.diff_ids[-1].removeprefix("sha256:")
                manifest_items.append({
                    "Config": _blob_path(image.id), "RepoTags": familiar or None,
                    "Layers": [_blob_path(d) for d in image.diff_ids]})
        # The lock is released: the open files keep their contents even if gc ran now.
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index_entries}
        files = {
            "index.json": _go_json(index),
            "manifest.json": _go_json(manifest_items) + b"\n",
            "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        }
        if repositories:
            files["repositories"] = json.dumps(repositories, sort_keys=True,
                                               separators=(",", ":")).encode() + b"\n"
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info("blobs", directory=True))
            tar.addfile(_tar_info("blobs/sha256", directory=True))
            for digest in sorted(blobs):
                f, size, what = blobs[digest]
                reader = _Verifying(f, digest, what) if what != "manifest" else f
                tar.addfile(_tar_info(_blob_path(digest), size), reader)
                if what != "manifest":
                    reader.check()
            for name in sorted(files):
                tar.addfile(_tar_info(name, len(files[name])), io.BytesIO(files[name]))
