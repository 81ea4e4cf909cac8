"""The daemon as a registry client: push and pull as dockerd does them.

Push: for each blob, ``HEAD`` → skip when the registry has it ("Layer already
exists"); cross-mount when another repository of the registry has it
("Mounted from …"); upload only what is missing ("Pushed"); the manifest last.

Pull: the manifest → for each layer, skip when *this host's* image cache has
it ("Already exists"), download the rest ("Pull complete"), verify the digest,
unpack once. A blob another host on the same machine pulled is on disk
already, but it isn't in this host's cache: it moves over the network like
any other, exactly as it would between two real Docker hosts.

Every blob is an event (``blob.skipped``, ``blob.mounted``, ``blob.pushed``,
``blob.pulled``) with its digest and byte count: the browser draws what moved.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import ipaddress
import json
import os
import platform
import re
from typing import Callable
from urllib.parse import urlencode, urljoin, urlsplit

from sandbox.images import Image, ImageStore, check_reference

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
CHUNK = 1 << 20
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

Progress = Callable[[dict], None]


class DistributionError(Exception):
    """A push or pull failed; the message says what the registry answered."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Reference:
    registry: str      # "127.0.0.1:8000"
    repository: str    # "c1/alice/app"
    tag: str | None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        """``registry[:port]/path[:tag|@digest]``; the registry part is required here."""
        name, _, digest = text.partition("@")
        first, sep, rest = name.partition("/")
        if not sep or not ("." in first or ":" in first or first == "localhost"):
            raise DistributionError(f"{text!r} names no registry: write HOST:PORT/NAME[:TAG] "
                                    "(e.g. 127.0.0.1:8000/class/student/app:v1)", 400)
        last = rest.rsplit("/", 1)[-1]
        repository, tag = (rest.rsplit(":", 1) if ":" in last else (rest, None))
        if not re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
                            repository):
            raise DistributionError(f"invalid repository name {repository!r}", 400)
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise DistributionError(f"invalid digest {digest!r}", 400)
        return cls(first, repository, tag or (None if digest else "latest"), digest or None)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")


class RegistryClient:
    """HTTP/1.1 to one registry, plain HTTP (the classroom's registry is on loopback or
    the classroom's own network), with Basic credentials when it asks for them."""

    def __init__(self, registry: str, username: str | None = None, password: str | None = None,
                 timeout: float = 120):
        check_registry(registry)
        self.registry = registry
        self.timeout = timeout
        self.auth = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.auth = f"Basic {token}"

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                ok: tuple[int, ...] = (200,)) -> http.client.HTTPResponse:
        """One request; the caller reads (and closes) the response."""
        parts = urlsplit(path if "://" in path else f"http://{self.registry}{path}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        headers = dict(headers or {})
        if self.auth:
            headers["Authorization"] = self.auth
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise DistributionError(f"the registry {self.registry} is unreachable: {exc}", 502) from None
        response.conn = conn  # keep it open while the body is read
        if response.status not in ok:
            detail = response.read(64 * 1024)
            conn.close()
            raise DistributionError(f"{method} {target}: {response.status} {describe_error(detail)}",
                                    response.status)
        return response

    def location(self, response: http.client.HTTPResponse) -> str:
        return urljoin(f"http://{self.registry}/", response.getheader("Location") or "")


def check_registry(registry: str) -> None:
    """Students name registries; the daemon connects. Only the classroom's registries
    (``GLASSBOX_REGISTRIES``, comma-separated ``host:port``) and loopback ones may be
    reached — never an arbitrary address the daemon's network can see."""
    allowed = {r.strip() for r in os.environ.get("GLASSBOX_REGISTRIES", "").split(",") if r.strip()}
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if registry not in allowed and not loopback:
        raise DistributionError(f"the registry {registry} is not one this classroom may use "
                                f"(allowed: loopback{', ' + ', '.join(sorted(allowed)) if allowed else ''})", 403)


def describe_error(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]


class Distribution:
    """Push and pull for one Docker host (its image store and its event stream)."""

    def __init__(self, store: ImageStore, emit: Callable[[str, dict, dict], None]):
        self.store = store
        self.emit = emit
        self.sources_path = store.oci / "registry-sources.json"

    # ------------------------------------------------------------------ push

    def push(self, ref: str, destination: str, username: str | None = None,
             password: str | None = None, progress: Progress = lambda p: None) -> dict:
        image = self.store.get(ref)
        target = Reference.parse(destination)
        if target.digest:
            raise DistributionError("push to a tag, not to a digest", 400)
        client = RegistryClient(target.registry, username, password)
        client.request("GET", "/v2/", ok=(200,)).read()
        manifest_bytes = self.store.blob_path(image.manifest_digest).read_bytes()
        blobs = list(image.manifest["layers"]) + [image.manifest["config"]]
        stats = {"pushed": 0, "skipped": 0, "mounted": 0, "bytes_uploaded": 0}
        # The same, for the image's layers alone (the counts above include its config blob):
        # what the tree shows moving.
        layer_stats = {"layers_pushed": 0, "layers_skipped": 0, "layers_mounted": 0}
        sources = self._sources()
        for blob in blobs:
            digest, size = blob["digest"], blob["size"]
            is_layer = blob is not image.manifest["config"]
            short = digest.removeprefix("sha256:")[:12]
            subject = {"blob": digest, "repository": target.repository}
            progress({"status": "Preparing", "id": short})
            if self._has_blob(client, target.repository, digest):
                stats["skipped"] += 1
                layer_stats["layers_skipped"] += is_layer
                progress({"status": "Layer already exists", "id": short})
                self.emit("blob.skipped", subject, {"bytes": size, "direction": "push"})
                continue
            mounted_from = self._mount(client, target.repository, digest, sources.get(digest, []))
            if mounted_from:
                stats["mounted"] += 1
                layer_stats["layers_mounted"] += is_layer
                progress({"status": f"Mounted from {mounted_from}", "id": short})
                self.emit("blob.mounted", subject, {"bytes": size, "from": mounted_from})
                continue
            self._upload(client, target.repository, digest, size, progress, short)
            stats["pushed"] += 1
            layer_stats["layers_pushed"] += is_layer
            stats["bytes_uploaded"] += size
            progress({"status": "Pushed", "id": short})
            self.emit("blob.pushed", subject, {"bytes": size})
            sources.setdefault(digest, [])
        response = client.request(
            "PUT", f"/v2/{target.repository}/manifests/{target.tag}", body=manifest_bytes,
            headers={"Content-Type": image.manifest.get("mediaType", MANIFEST_TYPES[0])}, ok=(201,))
        response.read()
        manifest_digest = response.getheader("Docker-Content-Digest")
        expected = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        if manifest_digest and manifest_digest != expected:
            raise DistributionError(f"the registry stored the manifest as {manifest_digest}, "
                                    f"not {expected}")
        for blob in blobs:
            repos = sources.setdefault(blob["digest"], [])
            if target.repository not in repos:
                repos.append(target.repository)
        self._save_sources(sources)
        self.emit("image.pushed", {"image": image.id},
                  {"destination": str(target), "digest": expected, **stats, **layer_stats})
        progress({"status": f"{target.tag}: digest: {expected} size: {len(manifest_bytes)}"})
        progress({"aux": {"Tag": target.tag, "Digest": expected, "Size": len(manifest_bytes)}})
        return {"digest": expected, **stats}

    def _has_blob(self, client: RegistryClient, repository: str, digest: str) -> bool:
        response = client.request("HEAD", f"/v2/{repository}/blobs/{digest}", ok=(200, 404))
        response.read()
        response.conn.close()
        return response.status == 200

    def _mount(self, client: RegistryClient, repository: str, digest: str,
               known_in: list[str]) -> str | None:
        """Cross-repository mount from a repository we pushed (or pulled) it with."""
        for source in known_in:
            if source == repository:
                continue
            query = urlencode({"mount": digest, "from": source})
            response = client.request("POST", f"/v2/{repository}/blobs/uploads/?{query}", ok=(201, 202))
            response.read()
            if response.status == 201:
                return source
            # 202: the registry started a normal upload instead; let it go.
            location = client.location(response)
            client.request("DELETE", location, ok=(204, 404)).read()
        return None

    def _upload(self, client: RegistryClient, repository: str, digest: str, size: int,
                progress: Progress, short: str) -> None:
        response = client.request("POST", f"/v2/{repository}/blobs/uploads/", ok=(202,))
        response.read()
        location = client.location(response)
        separator = "&" if "?" in location else "?"
        progress({"status": "Pushing", "id": short, "progressDetail": {"current": 0, "total": size}})
        with open(self.store.blob_path(digest), "rb") as blob:
            client.request("PUT", f"{location}{separator}{urlencode({'digest': digest})}", body=blob,
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)}, ok=(201,)).read()

    # ------------------------------------------------------------------ pull

    def pull(self, reference: str, username: str | None = None, password: str | None = None,
             progress: Progress = lambda p: None, name: str | None = None) -> tuple[Image, dict]:
        ref = Reference.parse(reference)
        client = RegistryClient(ref.registry, username, password)
        manifest_bytes, media_type = self._manifest(client, ref, ref.digest or ref.tag)
        manifest = json.loads(manifest_bytes)
        if media_type in INDEX_TYPES or manifest.get("manifests"):
            choice = pick_platform(manifest)
            manifest_bytes, media_type = self._manifest(client, ref, choice)
            manifest = json.loads(manifest_bytes)
        progress({"status": f"Pulling from {ref.repository}", "id": ref.tag or ref.digest})
        have = self._cached_blobs()
        stats = {"pulled": 0, "skipped": 0, "bytes_downloaded": 0}
        layers = []
        with self.store.lock():  # a gc must not take what we store before the image refers to it
            for layer in manifest.get("layers", []):
                digest, size = layer["digest"], layer["size"]
                short = digest.removeprefix("sha256:")[:12]
                subject = {"blob": digest, "repository": ref.repository}
                if digest in have:
                    stats["skipped"] += 1
                    progress({"status": "Already exists", "id": short})
                    self.emit("blob.skipped", subject, {"bytes": size, "direction": "pull"})
                    layers.append(dict(layer))
                    continue
                progress({"status": "Pulling fs layer", "id": short})
                response = client.request("GET", f"/v2/{ref.repository}/blobs/{digest}")
                try:
                    progress({"status": "Downloading", "id": short,
                              "progressDetail": {"current": 0, "total": size}})
                    descriptor, _ = self.store.add_layer(response, layer["mediaType"], expected=digest)
                finally:
                    response.conn.close()
                if descriptor["size"] != size:
                    raise DistributionError(f"layer {digest}: got {descriptor['size']} bytes, "
                                            f"the manifest says {size}")
                stats["pulled"] += 1
                stats["bytes_downloaded"] += size
                progress({"status": "Pull complete", "id": short})
                self.emit("blob.pulled", subject, {"bytes": size})
                layers.append(dict(layer))
            config_desc = manifest["config"]
            response = client.request("GET", f"/v2/{ref.repository}/blobs/{config_desc['digest']}")
            try:
                config_bytes = response.read(16 << 20)
            finally:
                response.conn.close()
            if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != config_desc["digest"]:
                raise DistributionError(f"the config blob {config_desc['digest']} is corrupt")
            stats["bytes_downloaded"] += len(config_bytes)
            config = json.loads(config_bytes)
            if len(config.get("rootfs", {}).get("diff_ids", [])) != len(layers):
                raise DistributionError("the manifest's layers and the config's diff_ids disagree")
            tag = name or f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}"
            image = self.store.put_image(config, layers, check_reference(tag), config_bytes=config_bytes)
        sources = self._sources()
        for layer in layers:
            repos = sources.setdefault(layer["digest"], [])
            if ref.repository not in repos:
                repos.append(ref.repository)
        self._save_sources(sources)
        digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        progress({"status": f"Digest: {digest}"})
        progress({"status": f"Status: Downloaded newer image for {tag}" if stats["pulled"]
                  else f"Status: Image is up to date for {tag}"})
        self.emit("image.pulled", {"image": image.id}, {"reference": str(ref), "name": image.name, **stats})
        return image, stats

    def _manifest(self, client: RegistryClient, ref: Reference, reference: str) -> tuple[bytes, str]:
        response = client.request("GET", f"/v2/{ref.repository}/manifests/{reference}",
                                  headers={"Accept": ACCEPT})
        try:
            data = response.read(4 << 20)
        finally:
            response.conn.close()
        if reference.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != reference:
            raise DistributionError(f"the manifest {reference} is corrupt")
        media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
        return data, media_type

    def _cached_blobs(self) -> set[str]:
        """Layer blobs in this host's image cache (not merely somewhere on this disk)."""
        found = set()
        for image in self.store.list(dangling=True):
            found.update(layer["digest"] for layer in image.manifest.get("layers", []))
        return found

    def _sources(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.sources_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save_sources(self, sources: dict) -> None:
        tmp = self.sources_path.with_name(".registry-sources.json.tmp")
        tmp.write_text(json.dumps(sources))
        tmp.replace(self.sources_path)


def pick_platform(index: dict) -> str:
    for entry in index.get("manifests", []):
        p = entry.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture", GOARCH) == GOARCH:
            return entry["digest"]
    raise DistributionError(f"no linux/{GOARCH} image in this manifest list", 404)

