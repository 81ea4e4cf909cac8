"""The classroom registry's storage: blobs, repositories, tags and uploads, on disk.

No Flask here: app/registry.py turns HTTP requests into calls on a ``RegistryStore``,
and tests call it directly too. The layout is the one docker/distribution gives its
filesystem driver, so a reader who knows that registry finds their way around:

    blobs/sha256/<hex>                             every blob and manifest, once, by content
    repositories/<name>/_layers/<hex>              the blobs this repository may serve
    repositories/<name>/_manifests/revisions/<hex> its manifests (JSON: media type, subject, ...)
    repositories/<name>/_manifests/tags/<tag>      a tag: the digest it points at
    uploads/<id>/data, uploads/<id>/state.json     uploads in progress, never served
    tmp/                                           small files being written

Crash-safe because nothing becomes visible except by renaming a complete, fsynced file,
and a blob is renamed into ``blobs/`` only after its digest was checked. A crash leaves
at worst an upload or a file in ``tmp/``, which ``cleanup()`` removes once stale.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFESTS | INDEXES

GiB = 1 << 30
MAX_MANIFEST = 4 << 20     # the spec asks registries to take manifests of at least 4 MiB
STALE_AFTER = 3600.0       # seconds without a byte before an upload is abandoned
CLEANUP_EVERY = 60.0       # seconds between two automatic cleanups
READ_SIZE = 1 << 20

# The distribution spec's grammar (v1.1).
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
NAME = re.compile(rf"{COMPONENT.pattern}(?:/{COMPONENT.pattern})*")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
SHA256 = re.compile(r"sha256:([a-f0-9]{64})")
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
MAX_NAME = 255

# Statuses the spec (and docker/distribution) give each error code.
STATUS = {
    "BLOB_UNKNOWN": 404, "BLOB_UPLOAD_INVALID": 400, "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400, "MANIFEST_BLOB_UNKNOWN": 400, "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404, "NAME_INVALID": 400, "NAME_UNKNOWN": 404, "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401, "DENIED": 403, "UNSUPPORTED": 415, "TOOMANYREQUESTS": 429,
}


class RegistryError(Exception):
    """What a client did wrong, in the spec's words: one or more (code, message, detail)."""

    def __init__(self, code: str, message: str, detail=None, *, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status or STATUS[code]
        self.errors = [{"code": code, "message": message, "detail": detail}]

    def also(self, code: str, message: str, detail=None) -> RegistryError:
        self.errors.append({"code": code, "message": message, "detail": detail})
        return self


class UploadRangeInvalid(RegistryError):
    """A chunk that doesn't start where the upload ends: 416, and the client resumes."""

    def __init__(self, upload: Upload, message: str):
        super().__init__("BLOB_UPLOAD_INVALID", message, {"size": upload.size}, status=416)
        self.upload = upload


@dataclasses.dataclass
class Blob:
    digest: str
    size: int


@dataclasses.dataclass
class Upload:
    id: str
    name: str
    size: int        # bytes received so far


@dataclasses.dataclass
class Manifest:
    digest: str
    media_type: str
    data: bytes
    subject: str | None = None


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not valid_name(name):
        raise RegistryError(
            "NAME_INVALID", f"invalid repository name {name!r}: use lower-case letters and digits, "
            "separated by . _ __ or -, with / between path parts (at most 255 characters)",
            {"name": name})
    return name


def sha256_hex(digest: str) -> str:
    """The hex part of a sha256 digest; any other digest is refused with a reason."""
    match = SHA256.fullmatch(digest or "")
    if match:
        return match.group(1)
    if DIGEST.fullmatch(digest or ""):
        raise RegistryError("DIGEST_INVALID", f"{digest}: this registry stores sha256 digests "
                            "(64 lower-case hex digits) only", {"digest": digest})
    raise RegistryError("DIGEST_INVALID", f"{digest!r} is not a digest (sha256:<64 hex digits>)",
                        {"digest": digest})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


class RegistryStore:
    """One registry's content on disk, with its limits and transfer counters.

    ``classrooms``: whether the first path component of a repository name is a
    classroom, each with its own ``max_total`` bytes; without, the whole registry
    shares one. Safe to use from many threads (and processes: every upload is
    guarded by a file lock, every commit by a shared lock that ``garbage_collect``
    takes exclusively).
    """

    def __init__(self, root: Path | str, *, max_upload: int = 2 * GiB,
                 max_total: int = 20 * GiB, classrooms: bool = False, max_space: int | None = None):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.repositories_dir = self.root / "repositories"
        self.uploads = self.root / "uploads"
        self.tmp = self.root / "tmp"
        self.max_upload = max_upload
        self.max_total = max_total
        self.classrooms = classrooms
        # Bytes one owner's space may hold: the first two components of a repository name
        # (CLASS/student, play/host), so that one student can't fill what the class shares.
        self.max_space = max_space
        self._lock = threading.Lock()          # guards the fields below
        self._hashes: dict[str, tuple[int, "hashlib._Hash"]] = {}  # upload id -> (size, sha256 so far)
        self._counters: collections.Counter[str] = collections.Counter()
        self._ready = False
        self._last_cleanup = 0.0

    # --- counters ---------------------------------------------------------------------

    def count(self, what: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[what] += amount

    def stats(self) -> dict[str, int]:
        """What moved since this store was made: ``bytes_received`` (upload bodies),
        ``blob_bytes_written`` (new blobs), ``blob_bytes_served`` (blob bodies sent),
        and counts of blobs written, deduplicated, mounted, manifests written, ..."""
        names = ("bytes_received", "blob_bytes_written", "blob_bytes_served", "blobs_written",
                 "blobs_deduplicated", "blobs_mounted", "manifests_written",
                 "digest_mismatches", "uploads_broken_off")
        with self._lock:
            return {name: self._counters[name] for name in names}

    # --- paths and small files --------------------------------------------------------

    def _prepare(self) -> None:
        if not self._ready:
            for directory in (self.blobs, self.repositories_dir, self.uploads, self.tmp):
                directory.mkdir(parents=True, exist_ok=True)
            self._ready = True

    def _repository(self, name: str) -> Path:
        return self.repositories_dir / check_name(name)

    def _layer_link(self, name: str, hex_digest: str) -> Path:
        return self._repository(name) / "_layers" / hex_digest

    def _revision(self, name: str, hex_digest: str) -> Path:
        return self._repository(name) / "_manifests" / "revisions" / hex_digest

    def _tag(self, name: str, tag: str) -> Path:
        return self._repository(name) / "_manifests" / "tags" / tag

    def _write_atomically(self, path: Path, data: bytes) -> None:
        self._prepare()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    @contextlib.contextmanager
    def _gc_lock(self, exclusive: bool = False) -> Iterator[None]:
        """Commits hold it shared, garbage collection exclusive: a blob is never
        collected between being renamed into blobs/ and being linked."""
        self._prepare()
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def classroom_of(self, name: str) -> str:
        return name.split("/", 1)[0] if self.classrooms else ""

    @staticmethod
    def space_of(name: str) -> str:
        return "/".join(name.split("/")[:2])

    def room(self, name: str) -> tuple[int, str]:
        """Bytes that may still come in for repository ``name``, and which limit that is."""
        room = self.max_total - self.usage(self.classroom_of(name))
        if self.max_space is not None:
            space = self.max_space - self.usage(self.space_of(name))
            if space < room:
                return space, "space"
        return room, "classroom"

    # --- blobs ------------------------------------------------------------------------

    def blob(self, name: str, digest: str) -> Blob:
        """A blob this repository may serve, or BLOB_UNKNOWN."""
        hex_digest = sha256_hex(digest)
        try:
            if self._layer_link(name, hex_digest).exists():
                return Blob(digest, (self.blobs / hex_digest).stat().st_size)
        except FileNotFoundError:
            log.error("repository %s links blob %s, which is missing from blobs/", name, digest)
        raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name}",
                            {"digest": digest})

    def open_blob(self, name: str, digest: str) -> tuple[Blob, BinaryIO]:
        self.blob(name, digest)
        try:
            f = open(self.blobs / sha256_hex(digest), "rb")
        except FileNotFoundError:   # collected or deleted between the two looks
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name}",
                                {"digest": digest}) from None
        return Blob(digest, os.fstat(f.fileno()).st_size), f

    def delete_blob(self, name: str, digest: str) -> None:
        """Unlinks the blob from the repository; the bytes stay until garbage_collect()."""
        try:
            os.unlink(self._layer_link(name, sha256_hex(digest)))
        except FileNotFoundError:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name}",
                                {"digest": digest}) from None

    def mount_blob(self, name: str, digest: str, source: str) -> Blob | None:
        """Links a blob of ``source`` into ``name``, or None when source hasn't got it
        (the caller then starts a normal upload). Reading ``source`` must be allowed."""
        if not (SHA256.fullmatch(digest or "") and valid_name(source)):
            return None
        hex_digest = sha256_hex(digest)
        with self._gc_lock():
            if not (self._layer_link(source, hex_digest).exists()
                    and (self.blobs / hex_digest).exists()):
                return None
            self._link(name, hex_digest)
            size = (self.blobs / hex_digest).stat().st_size
        self.count("blobs_mounted")
        return Blob(digest, size)

    def _link(self, name: str, hex_digest: str) -> None:
        link = self._layer_link(name, hex_digest)
        if not link.exists():
            self._write_atomically(link, f"sha256:{hex_digest}\n".encode())

    # --- uploads ----------------------------------------------------------------------

    def start_upload(self, name: str) -> Upload:
        check_name(name)
        self._prepare()
        self._cleanup_now_and_then()
        self._check_room(name, 1)
        upload_id = uuid.uuid4().hex
        directory = self.uploads / upload_id
        directory.mkdir()
        (directory / "data").touch()
        # state.json last: an upload without it is half-made, and cleanup() takes it.
        state = json.dumps({"name": name, "started": time.time()}).encode()
        fd, tmp = tempfile.mkstemp(dir=directory)
        with open(fd, "wb") as f:
            f.write(state)
        os.rename(tmp, directory / "state.json")
        with self._lock:
            self._hashes[upload_id] = (0, hashlib.sha256())
        return Upload(upload_id, name, 0)

    @contextlib.contextmanager
    def _locked_upload(self, name: str, upload_id: str) -> Iterator[Upload]:
        """The upload, locked against every other request on it until the block ends."""
        unknown = RegistryError("BLOB_UPLOAD_UNKNOWN",
                                f"no upload {upload_id} in progress for repository {name}: "
                                "it finished, was cancelled or abandoned; start a new one",
                                {"upload": upload_id})
        if not UPLOAD_ID.fullmatch(upload_id):
            raise unknown
        directory = self.uploads / upload_id
        try:
            fd = os.open(directory / "state.json", os.O_RDONLY)
        except FileNotFoundError:
            raise unknown from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:      # finished or cancelled while we waited
                raise unknown
            state = json.loads(os.pread(fd, 1 << 16, 0))
            if state.get("name") != name:
                raise unknown
            yield Upload(upload_id, name, (directory / "data").stat().st_size)
        finally:
            os.close(fd)

    def upload_status(self, name: str, upload_id: str) -> Upload:
        with self._locked_upload(name, upload_id) as upload:
            return upload

    def append_upload(self, name: str, upload_id: str, body: BinaryIO, *,
                      start: int | None = None, length: int | None = None) -> Upload:
        """Appends a request body (``length`` bytes, or up to its end when None) to the upload.

        ``start``: where the client says the chunk begins (Content-Range); it must be
        the upload's current size. A body that breaks off is taken back entirely.
        """
        with self._locked_upload(name, upload_id) as upload:
            self._append(upload, body, start, length)
            return upload

    def finish_upload(self, name: str, upload_id: str, digest: str, body: BinaryIO | None = None,
                      *, start: int | None = None, length: int | None = None) -> Blob:
        """Appends the last chunk, checks the digest, and only then makes the blob
        visible and links it into the repository. A wrong digest deletes the upload."""
        hex_digest = sha256_hex(digest)
        with self._locked_upload(name, upload_id) as upload:
            if body is not None:
                self._append(upload, body, start, length)
            actual = self._upload_sha256(upload)
            if actual != hex_digest:
                self._discard(upload)
                self.count("digest_mismatches")
                log.warning("upload %s to %s: content is sha256:%s, client said %s; deleted",
                            upload.id, name, actual, digest)
                raise RegistryError(
                    "DIGEST_INVALID", f"the uploaded content's digest is sha256:{actual}, not "
                    f"{digest}; nothing was stored, upload the blob again", {"digest": digest})
            blob = self._commit(upload, hex_digest)
            self._discard(upload)
            return blob

    def cancel_upload(self, name: str, upload_id: str) -> None:
        with self._locked_upload(name, upload_id) as upload:
            self._discard(upload)

    def _append(self, upload: Upload, body: BinaryIO, start: int | None, length: int | None) -> None:
        if start is not None and start != upload.size:
            raise UploadRangeInvalid(upload, f"this chunk starts at byte {start}, but the upload "
                                     f"holds {upload.size} bytes: send from byte {upload.size}")
        room_in_blob = self.max_upload - upload.size
        room_in_class, _ = self.room(upload.name)
        if length is not None:
            self._check_limits(upload, length, room_in_blob, room_in_class)
        with self._lock:
            size, sha = self._hashes.get(upload.id, (-1, None))
        sha = sha.copy() if sha is not None and size == upload.size else None
        path = self.uploads / upload.id / "data"
        received = 0
        with open(path, "ab") as out:
            try:
                while length is None or received < length:
                    want = READ_SIZE if length is None else min(READ_SIZE, length - received)
                    try:
                        chunk = body.read(want)
                    except Exception as e:   # the client went away or sent broken chunks
                        raise RegistryError("BLOB_UPLOAD_INVALID", f"the request body broke off "
                                            f"after {received} bytes ({e!r})") from e
                    if not chunk:
                        break
                    received += len(chunk)
                    self._check_limits(upload, received, room_in_blob, room_in_class)
                    out.write(chunk)
                    if sha is not None:
                        sha.update(chunk)
                if length is not None and received < length:
                    raise RegistryError(
                        "BLOB_UPLOAD_INVALID", f"the request body ended after {received} of its "
                        f"{length} bytes; the upload stays at byte {upload.size}")
            except BaseException as e:
                # Take the partial chunk back: the upload stays as it was before this request.
                out.truncate(upload.size)
                log.info("upload %s to %s: chunk of %d bytes taken back (%s)", upload.id,
                         upload.name, received, e)
                self.count("uploads_broken_off")
                with self._lock:
                    self._hashes.pop(upload.id, None)
                raise
            finally:
                self.count("bytes_received", received)
        upload.size += received
        with self._lock:
            if sha is not None:
                self._hashes[upload.id] = (upload.size, sha)
            else:
                self._hashes.pop(upload.id, None)

    def _check_limits(self, upload: Upload, incoming: int, room_in_blob: int, room_in_class: int) -> None:
        if incoming > room_in_blob:
            self._discard(upload)
            raise RegistryError(
                "SIZE_INVALID", f"blob too large: this registry takes at most {self.max_upload} "
                f"bytes per blob; the upload was deleted", {"max_upload": self.max_upload}, status=413)
        if incoming > room_in_class:
            self._discard(upload)
            raise self._full(upload.name)

    def _check_room(self, name: str, incoming: int) -> None:
        if incoming > self.room(name)[0]:
            raise self._full(name)

    def _full(self, name: str) -> RegistryError:
        if self.room(name)[1] == "space":
            space = self.space_of(name)
            return RegistryError(
                "DENIED", f"{space}/ is full: one space may hold {self.max_space} bytes; delete "
                "images there before pushing more", {"max_space": self.max_space})
        where = f"classroom {self.classroom_of(name)}" if self.classrooms else "this registry"
        return RegistryError(
            "DENIED", f"{where} is full: it may hold {self.max_total} bytes; delete images "
            "(and have the instructor collect garbage) before pushing more",
            {"max_total": self.max_total})

    def _upload_sha256(self, upload: Upload) -> str:
        with self._lock:
            size, sha = self._hashes.get(upload.id, (-1, None))
        if sha is not None and size == upload.size:
            return sha.hexdigest()
        # Chunks came through another process, or before a restart: read it all again.
        sha = hashlib.sha256()
        with open(self.uploads / upload.id / "data", "rb") as f:
            while chunk := f.read(READ_SIZE):
                sha.update(chunk)
        return sha.hexdigest()

    def _commit(self, upload: Upload, hex_digest: str) -> Blob:
        data = self.uploads / upload.id / "data"
        target = self.blobs / hex_digest
        with self._gc_lock():
            if target.exists():
                self.count("blobs_deduplicated")
            else:
                with open(data, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(data, 0o644)
                os.rename(data, target)
                _fsync_dir(self.blobs)
                self.count("blobs_written")
                self.count("blob_bytes_written", upload.size)
            self._link(upload.name, hex_digest)
        return Blob(f"sha256:{hex_digest}", upload.size)

    def _discard(self, upload: Upload) -> None:
        shutil.rmtree(self.uploads / upload.id, ignore_errors=True)
        with self._lock:
            self._hashes.pop(upload.id, None)

    # --- manifests and tags -----------------------------------------------------------

    def put_manifest(self, name: str, reference: str, data: bytes, content_type: str | None) -> Manifest:
        """Keeps the manifest's exact bytes under its digest, and the tag if one was given."""
        check_name(name)
        if len(data) > MAX_MANIFEST:
            raise RegistryError("SIZE_INVALID", f"manifest too large: at most {MAX_MANIFEST} bytes",
                                {"max": MAX_MANIFEST}, status=413)
        hex_digest = hashlib.sha256(data).hexdigest()
        digest = f"sha256:{hex_digest}"
        tag = None
        if DIGEST.fullmatch(reference):
            if sha256_hex(reference) != hex_digest:
                raise RegistryError("DIGEST_INVALID", f"the manifest's digest is {digest}, "
                                    f"not {reference}", {"digest": reference})
        elif TAG.fullmatch(reference):
            tag = reference
        else:
            raise RegistryError("MANIFEST_INVALID", f"{reference!r} is neither a tag (letters, "
                                "digits, _ . -, at most 128) nor a digest", {"reference": reference})
        document = _parse_manifest(data)
        media_type = _manifest_media_type(document, content_type)
        self._check_references(name, document, media_type)
        record = _revision_record(document, media_type, len(data))
        with self._gc_lock():
            blob_path = self.blobs / hex_digest
            if not blob_path.exists():
                self._check_room(name, len(data))
                self._write_atomically(blob_path, data)
            self._write_atomically(self._revision(name, hex_digest), json.dumps(record).encode())
            if tag:
                self._write_atomically(self._tag(name, tag), f"{digest}\n".encode())
        self.count("manifests_written")
        return Manifest(digest, media_type, data, record.get("subject"))

    def _check_references(self, name: str, document: dict, media_type: str) -> None:
        """Everything a manifest points at must already be in this repository."""
        missing: RegistryError | None = None
        if media_type in IMAGE_MANIFESTS:
            if not isinstance(document.get("config"), dict) or not isinstance(document.get("layers"), list):
                raise RegistryError("MANIFEST_INVALID", "an image manifest needs a config "
                                    "descriptor and a list of layers")
            wanted = [document["config"], *document["layers"]]
            kind, exists = "blob", self._layer_link
        else:
            if not isinstance(document.get("manifests"), list):
                raise RegistryError("MANIFEST_INVALID", "an index needs a list of manifests")
            wanted, kind, exists = document["manifests"], "manifest", self._revision
        for descriptor in wanted:
            if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
                raise RegistryError("MANIFEST_INVALID", f"not a descriptor: {descriptor!r:.200}")
            if descriptor.get("urls") or "nondistributable" in str(descriptor.get("mediaType")) \
                    or "foreign" in str(descriptor.get("mediaType")):
                continue   # a layer fetched from elsewhere, never pushed to a registry
            digest = descriptor["digest"]
            try:
                hex_digest = sha256_hex(digest)
            except RegistryError as e:
                raise RegistryError("MANIFEST_INVALID", f"descriptor {digest!r}: {e}") from None
            if not exists(name, hex_digest).exists():
                message = f"{kind} {digest} is not in repository {name}: push it before the manifest"
                if missing is None:
                    missing = RegistryError("MANIFEST_BLOB_UNKNOWN", message, {"digest": digest})
                else:
                    missing.also("MANIFEST_BLOB_UNKNOWN", message, {"digest": digest})
            elif kind == "blob" and descriptor.get("size") != (self.blobs / hex_digest).stat().st_size:
                raise RegistryError("MANIFEST_INVALID", f"descriptor of {digest} says size "
                                    f"{descriptor.get('size')}, the blob has "
                                    f"{(self.blobs / hex_digest).stat().st_size} bytes")
        if missing:
            raise missing

    def get_manifest(self, name: str, reference: str) -> Manifest:
        hex_digest = self._resolve(name, reference)
        record = self._revision_record(name, hex_digest)
        try:
            data = (self.blobs / hex_digest).read_bytes()
        except FileNotFoundError:
            log.error("repository %s has manifest sha256:%s, missing from blobs/", name, hex_digest)
            raise self._manifest_unknown(name, reference) from None
        return Manifest(f"sha256:{hex_digest}", record["mediaType"], data, record.get("subject"))

    def delete_manifest(self, name: str, reference: str) -> None:
        """By digest: the manifest and every tag on it. By tag: only the tag."""
        if not DIGEST.fullmatch(reference):
            try:
                if not TAG.fullmatch(reference):
                    raise FileNotFoundError(reference)
                os.unlink(self._tag(name, reference))
            except FileNotFoundError:
                raise self._manifest_unknown(name, reference) from None
            return
        hex_digest = sha256_hex(reference)
        try:
            os.unlink(self._revision(name, hex_digest))
        except FileNotFoundError:
            raise self._manifest_unknown(name, reference) from None
        tags = self._repository(name) / "_manifests" / "tags"
        for tag in _listdir(tags):
            if _read_text(tags / tag) == reference:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tags / tag)

    def tags(self, name: str) -> list[str]:
        self._require_repository(name)
        return sorted(_listdir(self._repository(name) / "_manifests" / "tags"))

    def referrers(self, name: str, digest: str, artifact_type: str | None = None) -> list[dict]:
        """Descriptors of this repository's manifests whose ``subject`` is ``digest`` (v1.1)."""
        sha256_hex(digest)
        self._require_repository(name)
        found = []
        revisions = self._repository(name) / "_manifests" / "revisions"
        for hex_digest in sorted(_listdir(revisions)):
            record = self._revision_record(name, hex_digest)
            if record.get("subject") != digest:
                continue
            if artifact_type and record.get("artifactType") != artifact_type:
                continue
            descriptor = {"mediaType": record["mediaType"], "digest": f"sha256:{hex_digest}",
                          "size": record["size"]}
            for key in ("artifactType", "annotations"):
                if record.get(key):
                    descriptor[key] = record[key]
            found.append(descriptor)
        return found

    def _resolve(self, name: str, reference: str) -> str:
        if DIGEST.fullmatch(reference):
            hex_digest = sha256_hex(reference)
        elif TAG.fullmatch(reference):
            target = _read_text(self._tag(name, reference))
            if target is None:
                raise self._manifest_unknown(name, reference)
            hex_digest = sha256_hex(target)
        else:
            raise self._manifest_unknown(name, reference)
        return hex_digest

    def _revision_record(self, name: str, hex_digest: str) -> dict:
        text = _read_text(self._revision(name, hex_digest))
        if text is None:
            raise self._manifest_unknown(name, f"sha256:{hex_digest}")
        return json.loads(text)

    def _manifest_unknown(self, name: str, reference: str) -> RegistryError:
        self._require_repository(name)
        return RegistryError("MANIFEST_UNKNOWN", f"no manifest {reference} in repository {name}",
                             {"name": name, "reference": reference})

    def _require_repository(self, name: str) -> None:
        if not self._repository(name).is_dir():
            raise RegistryError("NAME_UNKNOWN", f"no repository {name} in this registry",
                                {"name": name})

    # --- the registry as a whole ------------------------------------------------------

    def repositories(self, under: str = "") -> list[str]:
        """Names of repositories (directories with _layers or _manifests), sorted."""
        found = []
        start = self.repositories_dir / under if under else self.repositories_dir

        def walk(directory: Path, name: str) -> None:
            entries = _listdir(directory)
            if name and ("_layers" in entries or "_manifests" in entries):
                found.append(name)
            for entry in entries:
                if not entry.startswith("_") and (directory / entry).is_dir():
                    walk(directory / entry, f"{name}/{entry}" if name else entry)

        walk(start, under)
        return sorted(found)

    def usage(self, classroom: str = "") -> int:
        """Bytes held under a namespace — a classroom, an owner's space, "" for the whole
        registry: each blob its repositories link counts once, and so does every upload
        in progress into them."""
        digests = set()
        for name in self.repositories(classroom):
            repository = self.repositories_dir / name
            digests.update(_listdir(repository / "_layers"))
            digests.update(_listdir(repository / "_manifests" / "revisions"))
        total = 0
        for hex_digest in digests:
            with contextlib.suppress(FileNotFoundError):
                total += (self.blobs / hex_digest).stat().st_size
        for upload_id in _listdir(self.uploads):
            directory = self.uploads / upload_id
            try:
                state = json.loads((directory / "state.json").read_bytes())
                name = state["name"]
                if not classroom or name == classroom or name.startswith(classroom + "/"):
                    total += (directory / "data").stat().st_size
            except (FileNotFoundError, ValueError, KeyError):
                continue
        return total

    def cleanup(self, max_age: float = STALE_AFTER) -> list[str]:
        """Removes uploads that received nothing for ``max_age`` seconds (and stray
        temporary files); returns the ids of the uploads removed."""
        now = time.time()
        removed = []
        for upload_id in _listdir(self.uploads):
            directory = self.uploads / upload_id
            try:
                last = max(p.stat().st_mtime for p in (directory, directory / "data")
                           if p.exists())
            except (FileNotFoundError, ValueError):
                continue
            if now - last < max_age or not _remove_if_idle(directory):
                continue
            with self._lock:
                self._hashes.pop(upload_id, None)
            removed.append(upload_id)
            log.info("removed upload %s: nothing received for %.0f s", upload_id, now - last)
        for name in _listdir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                if now - (self.tmp / name).stat().st_mtime >= max_age:
                    os.unlink(self.tmp / name)
        return removed

    def _cleanup_now_and_then(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_cleanup < CLEANUP_EVERY:
                return
            self._last_cleanup = now
        self.cleanup()

    def remove_namespace(self, namespace: str) -> int:
        """Deletes every repository under ``namespace/`` (a classroom that ended), then
        the blobs nothing else links; returns how many repositories went."""
        check_name(namespace)
        names = self.repositories(namespace)
        with self._gc_lock(exclusive=True):
            shutil.rmtree(self.repositories_dir / namespace, ignore_errors=True)
        self.garbage_collect()
        return len(names)

    def garbage_collect(self) -> list[str]:
        """Deletes blobs no repository links (after blob and manifest deletes); returns
        their digests. Commits wait meanwhile."""
        removed = []
        with self._gc_lock(exclusive=True):
            linked = set()
            for name in self.repositories():
                repository = self.repositories_dir / name
                linked.update(_listdir(repository / "_layers"))
                linked.update(_listdir(repository / "_manifests" / "revisions"))
            for hex_digest in _listdir(self.blobs):
                if hex_digest not in linked:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.blobs / hex_digest)
                        removed.append(f"sha256:{hex_digest}")
        if removed:
            log.info("garbage collection removed %d blobs", len(removed))
        return removed


def _remove_if_idle(directory: Path) -> bool:
    """Removes an upload unless a request holds its lock right now."""
    try:
        fd = os.open(directory / "state.json", os.O_RDONLY)
    except FileNotFoundError:       # half-made: no request can be using it
        shutil.rmtree(directory, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _parse_manifest(data: bytes) -> dict:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError("MANIFEST_INVALID", f"the manifest is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise RegistryError("MANIFEST_INVALID", "the manifest is not a JSON object")
    if document.get("schemaVersion") != 2:
        raise RegistryError("MANIFEST_INVALID", "schemaVersion must be 2 (OCI, or Docker schema 2); "
                            f"got {document.get('schemaVersion')!r}")
    return document


def _manifest_media_type(document: dict, content_type: str | None) -> str:
    """The media type: what the client said, checked against what the manifest says."""
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise RegistryError("MANIFEST_INVALID", "mediaType must be a string")
    given = (content_type or "").split(";")[0].strip().lower() or None
    if given in ("application/octet-stream", "application/json"):
        given = None
    if given and declared and given != declared:
        raise RegistryError("MANIFEST_INVALID", f"Content-Type says {given} but the manifest's "
                            f"mediaType says {declared}")
    media_type = given or declared or (OCI_INDEX if "manifests" in document else OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        raise RegistryError("UNSUPPORTED", f"this registry keeps OCI and Docker schema 2 manifests "
                            f"and indexes, not {media_type}", {"mediaType": media_type})
    return media_type


def _revision_record(document: dict, media_type: str, size: int) -> dict:
    record: dict = {"mediaType": media_type, "size": size}
    subject = document.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        record["subject"] = subject["digest"]
    artifact_type = document.get("artifactType")
    if not artifact_type and isinstance(document.get("config"), dict):
        artifact_type = document["config"].get("mediaType")
    if isinstance(artifact_type, str):
        record["artifactType"] = artifact_type
    if isinstance(document.get("annotations"), dict):
        record["annotations"] = document["annotations"]
    return record
