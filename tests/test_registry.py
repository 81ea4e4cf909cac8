"""The classroom registry (app/registry.py over app/registry_store.py), served for real.

gunicorn serves the app as `glassbox up` does (one worker, threads) on a free loopback
port, over a temporary REGISTRY_ROOT. skopeo pushes and pulls through it; raw HTTP
(http.client, and a raw socket for a client that disappears) checks the protocol's
corners. The Flask test client is used only where gunicorn can't fake the situation
(a client that isn't on loopback) or to keep a limit test small; the store is called
directly for cleanup and garbage collection.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from pathlib import Path

import pytest

from app import create_app
from app.registry_store import RegistryStore

CHECKOUT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

USERS = {   # name: (password, role, classroom)
    "alice": ("alice-pw", "student", "c1"),
    "bob": ("bob-pw", "student", "c1"),
    "teach": ("teach-pw", "instructor", "c1"),
    "eve": ("eve-pw", "student", "c2"),
}

needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo (Debian package)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the busybox image is built as root")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- a registry served by gunicorn, and a raw HTTP client ------------------------------------

@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    def codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


@dataclasses.dataclass
class Registry:
    port: int
    root: Path
    classroom: bool = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                user: str | None = None, chunked: bool = False) -> Reply:
        headers = dict(headers or {})
        if user:
            credentials = f"{user}:{USERS[user][0]}".encode()
            headers["Authorization"] = "Basic " + b64encode(credentials).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def stats(self) -> dict:
        return self.request("GET", "/v2/_glassbox/stats", user="teach" if self.classroom else None).json()

    def push_blob(self, name: str, data: bytes, user: str | None = None) -> str:
        """A whole blob in one POST ?digest= (the monolithic upload)."""
        digest = sha256(data)
        reply = self.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data,
                             {"Content-Type": "application/octet-stream"}, user=user)
        assert reply.status == 201, reply.body
        return digest

    def push_image(self, name: str, tag: str, layer: bytes = b"layer bytes", user: str | None = None,
                   media_types=(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)) -> tuple[str, bytes]:
        manifest_type, config_type, layer_type = media_types
        config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": self.push_blob(name, config, user),
                       "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": self.push_blob(name, layer, user),
                        "size": len(layer)}],
        }).encode()
        reply = self.request("PUT", f"/v2/{name}/manifests/{tag}", manifest,
                             {"Content-Type": manifest_type}, user=user)
        assert reply.status == 201, reply.body
        return reply.headers["Docker-Content-Digest"], manifest

    def start_upload(self, name: str, user: str | None = None) -> str:
        reply = self.request("POST", f"/v2/{name}/blobs/uploads/", user=user)
        assert reply.status == 202, reply.body
        assert reply.headers["Range"] == "0-0"
        assert reply.headers["Docker-Upload-UUID"]
        return reply.headers["Location"]

    def blob_files(self) -> set[str]:
        return set(os.listdir(self.root / "blobs" / "sha256"))

    def uploads_of(self, name: str) -> list[str]:
        uploads = self.root / "uploads"
        return [u for u in os.listdir(uploads)
                if json.loads((uploads / u / "state.json").read_text())["name"] == name]

    def layer_links(self, name: str) -> set[str]:
        with contextlib.suppress(FileNotFoundError):
            return set(os.listdir(self.root / "repositories" / name / "_layers"))
        return set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(directory: Path, users: dict | None = None, **config):
    """gunicorn serving create_app(config) over a registry in ``directory``."""
    root = directory / "registry"
    config = {"REGISTRY_ROOT": str(root), **config}
    if users is not None:
        users_file = directory / "users.json"
        users_file.write_text(json.dumps({
            name: {"password": hashlib.sha256(password.encode()).hexdigest(), "role": role,
                   "classroom": classroom}
            for name, (password, role, classroom) in users.items()}))
        config["REGISTRY_USERS_FILE"] = str(users_file)
    port = _free_port()
    log = directory / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "8", "--no-control-socket",
               "-b", f"127.0.0.1:{port}", f"app:create_app({config!r})"]
    with open(log, "wb") as log_file:
        server = subprocess.Popen(command, cwd=CHECKOUT, stdout=log_file, stderr=subprocess.STDOUT)
    registry = Registry(port, root, classroom=users is not None)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if registry.request("GET", "/v2/").status in (200, 401):
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield registry
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="glassbox-test-registry-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(workdir):
    """An open registry (no classroom), as one person runs Glassbox on their own machine."""
    (workdir / "open").mkdir()
    with serving(workdir / "open") as registry:
        yield registry


@pytest.fixture(scope="module")
def classroom(workdir):
    """A registry for classrooms c1 (alice, bob, instructor teach) and c2 (eve)."""
    (workdir / "classroom").mkdir()
    with serving(workdir / "classroom", users=USERS) as registry:
        yield registry


@pytest.fixture(scope="module")
def layout(workdir):
    """busybox:latest as an OCI layout (one uncompressed layer), as `glassbox save` writes it."""
    from sandbox.images import ImageStore
    from sandbox.transfer import export_oci
    store = ImageStore(workdir / "images")
    store.ensure_base_images()
    export_oci(store, ["busybox:latest"], workdir / "layout")
    return workdir / "layout"


@pytest.fixture(scope="module")
def policy(workdir):
    path = workdir / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def skopeo(policy: Path, *args: str) -> str:
    done = subprocess.run(["skopeo", "--policy", str(policy), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"skopeo {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def skopeo_refused(policy: Path, *args: str) -> str:
    done = subprocess.run(["skopeo", "--policy", str(policy), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, f"skopeo {' '.join(args)} succeeded"
    return done.stderr


def layout_manifest(layout: Path) -> tuple[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return digest, layout_blob(layout, digest)


def layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def referenced(manifest: bytes) -> list[str]:
    document = json.loads(manifest)
    return [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]


# --- skopeo, the real client ------------------------------------------------------------------

def test_base_endpoint_says_registry_2_0(registry):
    reply = registry.request("GET", "/v2/")
    assert reply.status == 200
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@needs_skopeo
@needs_root
def test_skopeo_round_trip_keeps_manifest_and_blobs_byte_identical(registry, layout, policy, workdir):
    image = f"docker://{registry.host}/class/alice/busybox:v1"
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false",
           f"oci:{layout}:busybox:latest", image)

    # The registry keeps exactly the bytes the layout holds.
    digest, manifest = layout_manifest(layout)
    reply = registry.request("GET", "/v2/class/alice/busybox/manifests/v1",
                             headers={"Accept": OCI_MANIFEST})
    assert reply.status == 200
    assert reply.body == manifest
    assert reply.headers["Docker-Content-Digest"] == digest
    assert reply.headers["Content-Type"] == OCI_MANIFEST
    for blob in referenced(manifest):
        reply = registry.request("GET", f"/v2/class/alice/busybox/blobs/{blob}")
        assert reply.status == 200 and reply.body == layout_blob(layout, blob)
        assert reply.headers["Docker-Content-Digest"] == blob

    inspected = json.loads(skopeo(policy, "inspect", "--tls-verify=false", image))
    assert inspected["Digest"] == digest
    assert inspected["RepoTags"] == ["v1"]
    assert inspected["Layers"] == [layer["digest"] for layer in json.loads(manifest)["layers"]]
    tags = json.loads(skopeo(policy, "list-tags", "--tls-verify=false",
                             f"docker://{registry.host}/class/alice/busybox"))
    assert tags["Tags"] == ["v1"]

    # And gives them back unchanged.
    back = workdir / "pulled"
    skopeo(policy, "copy", "--preserve-digests", "--src-tls-verify=false", image,
           f"oci:{back}:busybox:latest")
    assert layout_manifest(back) == (digest, manifest)
    for blob in referenced(manifest):
        assert layout_blob(back, blob) == layout_blob(layout, blob)


@needs_skopeo
@needs_root
def test_registry_keeps_what_skopeo_sends_when_skopeo_may_change_the_image(registry, layout, policy,
                                                                          workdir):
    # Without --preserve-digests skopeo may gzip the uncompressed layer on the way (a new
    # layer and manifest digest, sent with chunked PATCHes), or, when its blob-info cache
    # (/var/lib/containers/cache) knows the registry holds the layer, mount it unchanged.
    # Either way the registry must keep exactly what was sent.
    image = f"docker://{registry.host}/class/alice/converted:v1"
    skopeo(policy, "copy", "--dest-tls-verify=false", f"oci:{layout}:busybox:latest", image)
    reply = registry.request("GET", "/v2/class/alice/converted/manifests/v1")
    manifest, digest = reply.body, reply.headers["Docker-Content-Digest"]
    assert sha256(manifest) == digest
    layers = json.loads(manifest)["layers"]
    for descriptor in [json.loads(manifest)["config"], *layers]:
        blob = registry.request("GET", f"/v2/class/alice/converted/blobs/{descriptor['digest']}").body
        assert (sha256(blob), len(blob)) == (descriptor["digest"], descriptor["size"])

    back = workdir / "pulled-converted"
    # (--preserve-digests: into an OCI layout skopeo would otherwise gzip an uncompressed layer)
    skopeo(policy, "copy", "--preserve-digests", "--src-tls-verify=false", image,
           f"oci:{back}:busybox:latest")
    assert layout_manifest(back) == (digest, manifest)
    for descriptor in layers:
        assert sha256(layout_blob(back, descriptor["digest"])) == descriptor["digest"]


@needs_skopeo
@needs_root
def test_second_push_of_the_same_image_uploads_no_blob_bytes(registry, layout, policy):
    image = f"docker://{registry.host}/class/alice/twice:v1"
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false",
           f"oci:{layout}:busybox:latest", image)
    before = registry.stats()
    assert before["bytes_received"] > 2_000_000    # the busybox layer went up once
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false",
           f"oci:{layout}:busybox:latest", image)
    after = registry.stats()
    assert after["bytes_received"] == before["bytes_received"]
    assert after["blob_bytes_written"] == before["blob_bytes_written"]
    assert after["manifests_written"] == before["manifests_written"] + 1


# --- uploads ----------------------------------------------------------------------------------

def test_wrong_digest_is_refused_and_nothing_is_stored(registry):
    data = b"what the client really sent\n"
    claimed = sha256(b"what it claims to have sent\n")
    location = registry.start_upload("up/wrong")
    assert registry.request("PATCH", location, data).status == 202
    reply = registry.request("PUT", f"{location}?digest={claimed}")
    assert reply.status == 400
    assert reply.codes() == ["DIGEST_INVALID"]
    assert reply.json()["errors"][0]["detail"] == {"digest": claimed}
    for digest in (claimed, sha256(data)):
        assert registry.request("HEAD", f"/v2/up/wrong/blobs/{digest}").status == 404
        assert digest.removeprefix("sha256:") not in registry.blob_files()
    assert registry.layer_links("up/wrong") == set()
    assert registry.request("GET", location).codes() == ["BLOB_UPLOAD_UNKNOWN"]   # data deleted


def test_interrupted_patch_leaves_no_blob_and_no_link(registry):
    location = registry.start_upload("up/interrupted")
    broken_before = registry.stats()["uploads_broken_off"]
    half = os.urandom(512 * 1024)
    with socket.create_connection(("127.0.0.1", registry.port)) as s:
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: {registry.host}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {1 << 20}\r\n\r\n"
                  .encode() + half)
    deadline = time.monotonic() + 10
    while registry.stats()["uploads_broken_off"] == broken_before:
        assert time.monotonic() < deadline, "the server never noticed the client leaving"
        time.sleep(0.05)

    assert half and sha256(half).removeprefix("sha256:") not in registry.blob_files()
    assert registry.layer_links("up/interrupted") == set()
    status = registry.request("GET", location)
    assert (status.status, status.headers["Range"]) == (204, "0-0")   # the half chunk was taken back
    # The upload can still be finished properly.
    assert registry.request("PATCH", location, half).headers["Range"] == f"0-{len(half) - 1}"
    assert registry.request("PUT", f"{location}?digest={sha256(half)}").status == 201


def test_chunked_patch_then_put(registry):
    data = os.urandom(3_000_000)
    location = registry.start_upload("up/chunked")
    pieces = (data[i:i + 100_000] for i in range(0, len(data), 100_000))
    reply = registry.request("PATCH", location, pieces, {"Content-Type": "application/octet-stream"},
                             chunked=True)
    assert reply.status == 202
    assert reply.headers["Range"] == f"0-{len(data) - 1}"
    assert reply.headers["Location"] == location
    reply = registry.request("PUT", f"{location}?digest={sha256(data)}")
    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == sha256(data)
    assert reply.headers["Location"] == f"/v2/up/chunked/blobs/{sha256(data)}"
    assert registry.request("GET", reply.headers["Location"]).body == data


def test_chunks_with_content_range_and_an_out_of_order_one(registry):
    data = bytes(range(256)) * 40
    location = registry.start_upload("up/ranges")
    first = registry.request("PATCH", location, data[:4000], {"Content-Range": "0-3999"})
    assert (first.status, first.headers["Range"]) == (202, "0-3999")
    skipped = registry.request("PATCH", location, data[5000:6000], {"Content-Range": "5000-5999"})
    assert skipped.status == 416
    assert skipped.headers["Range"] == "0-3999"   # where to resume
    assert skipped.headers["Location"] == location
    malformed = registry.request("PATCH", location, data[4000:5000], {"Content-Range": "4000-4998"})
    assert malformed.status == 416
    # The last chunk can come with the PUT.
    reply = registry.request("PUT", f"{location}?digest={sha256(data)}", data[4000:],
                             {"Content-Range": f"4000-{len(data) - 1}"})
    assert reply.status == 201, reply.body
    assert registry.request("GET", f"/v2/up/ranges/blobs/{sha256(data)}").body == data


def test_upload_status_and_cancel(registry):
    location = registry.start_upload("up/cancelled")
    registry.request("PATCH", location, b"12345")
    status = registry.request("GET", location)
    assert (status.status, status.headers["Range"], status.headers["Location"]) == (204, "0-4", location)
    assert registry.request("DELETE", location).status == 204
    gone = registry.request("PATCH", location, b"6")
    assert (gone.status, gone.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert registry.request("PUT", f"{location}?digest={sha256(b'12345')}").status == 404


def test_an_upload_answers_only_under_its_own_repository(registry):
    location = registry.start_upload("up/mine")
    elsewhere = location.replace("/up/mine/", "/up/other/")
    assert registry.request("PATCH", elsewhere, b"x").codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_monolithic_post_with_digest(registry):
    data = b"a whole blob in one request\n" * 100
    reply = registry.request("POST", f"/v2/up/whole/blobs/uploads/?digest={sha256(data)}", data)
    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == sha256(data)
    head = registry.request("HEAD", f"/v2/up/whole/blobs/{sha256(data)}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == sha256(data)
    wrong = registry.request("POST", f"/v2/up/whole/blobs/uploads/?digest={sha256(b'no')}", data)
    assert (wrong.status, wrong.codes()) == (400, ["DIGEST_INVALID"])
    assert registry.uploads_of("up/whole") == []


# --- blobs --------------------------------------------------------------------------------------

def test_range_get_answers_206_with_content_range(registry):
    data = bytes(range(256)) * 4
    digest = registry.push_blob("blobs/ranged", data)
    reply = registry.request("GET", f"/v2/blobs/ranged/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert reply.status == 206
    assert reply.body == data[10:20]
    assert reply.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert reply.headers["Docker-Content-Digest"] == digest
    tail = registry.request("GET", f"/v2/blobs/ranged/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert (tail.status, tail.body) == (206, data[1000:])
    beyond = registry.request("GET", f"/v2/blobs/ranged/blobs/{digest}", headers={"Range": "bytes=5000-6000"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_a_repository_serves_only_blobs_linked_into_it(registry):
    digest = registry.push_blob("blobs/owner", b"only mine\n")
    registry.push_blob("blobs/neighbour", b"something else\n")
    reply = registry.request("GET", f"/v2/blobs/neighbour/blobs/{digest}")
    assert (reply.status, reply.codes()) == (404, ["BLOB_UNKNOWN"])


def test_cross_repository_mount_201_or_a_normal_upload_202(registry):
    digest = registry.push_blob("mount/source", b"shared base layer\n")
    mounted = registry.request("POST", f"/v2/mount/target/blobs/uploads/?mount={digest}&from=mount/source")
    assert mounted.status == 201
    assert mounted.headers["Location"] == f"/v2/mount/target/blobs/{digest}"
    assert mounted.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", f"/v2/mount/target/blobs/{digest}").body == b"shared base layer\n"

    absent = sha256(b"nobody pushed this")
    fallback = registry.request("POST", f"/v2/mount/target/blobs/uploads/?mount={absent}&from=mount/source")
    assert fallback.status == 202
    assert "/v2/mount/target/blobs/uploads/" in fallback.headers["Location"]
    assert fallback.headers["Range"] == "0-0"
    wrong_source = registry.request("POST", f"/v2/mount/other/blobs/uploads/?mount={digest}&from=mount/nothing")
    assert wrong_source.status == 202


def test_delete_blob_unlinks_it_from_the_repository_only(registry):
    digest = registry.push_blob("del/one", b"to be unlinked\n")
    registry.request("POST", f"/v2/del/two/blobs/uploads/?mount={digest}&from=del/one")
    assert registry.request("DELETE", f"/v2/del/one/blobs/{digest}").status == 202
    assert registry.request("HEAD", f"/v2/del/one/blobs/{digest}").status == 404
    assert registry.request("HEAD", f"/v2/del/two/blobs/{digest}").status == 200
    again = registry.request("DELETE", f"/v2/del/one/blobs/{digest}")
    assert (again.status, again.codes()) == (404, ["BLOB_UNKNOWN"])


# --- manifests, tags, catalog -------------------------------------------------------------------

def test_manifest_by_tag_and_by_digest_keeps_bytes_and_media_type(registry):
    digest, manifest = registry.push_image("man/app", "v1",
                                           media_types=(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER))
    for reference in ("v1", digest):
        for method in ("GET", "HEAD"):
            reply = registry.request(method, f"/v2/man/app/manifests/{reference}")
            assert reply.status == 200
            assert reply.headers["Content-Type"] == DOCKER_MANIFEST
            assert reply.headers["Docker-Content-Digest"] == digest
            assert reply.headers["Content-Length"] == str(len(manifest))
            assert reply.body == (manifest if method == "GET" else b"")
    by_digest = registry.request("PUT", f"/v2/man/app/manifests/{digest}", manifest,
                                 {"Content-Type": DOCKER_MANIFEST})
    assert by_digest.status == 201
    assert by_digest.headers["Location"] == f"/v2/man/app/manifests/{digest}"
    unknown = registry.request("GET", "/v2/man/app/manifests/v2")
    assert (unknown.status, unknown.codes()) == (404, ["MANIFEST_UNKNOWN"])


def test_an_index_is_kept_with_its_media_type(registry):
    child, manifest = registry.push_image("man/multi", "amd64")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child,
                                       "size": len(manifest),
                                       "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    reply = registry.request("PUT", "/v2/man/multi/manifests/latest", index,
                             {"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert reply.status == 201
    got = registry.request("GET", "/v2/man/multi/manifests/latest")
    assert got.body == index and got.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    orphan = index.replace(child.encode(), sha256(b"no such manifest").encode())
    refused = registry.request("PUT", "/v2/man/multi/manifests/broken", orphan,
                               {"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert refused.codes() == ["MANIFEST_BLOB_UNKNOWN"]


def test_manifest_referencing_unknown_blobs_is_refused(registry):
    config = b'{"os": "linux"}'
    registry.push_blob("man/broken", config)
    missing = [sha256(b"layer one"), sha256(b"layer two")]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": 9} for d in missing],
    }).encode()
    reply = registry.request("PUT", "/v2/man/broken/manifests/v1", manifest,
                             {"Content-Type": OCI_MANIFEST})
    assert reply.status == 400
    assert reply.codes() == ["MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]
    assert [e["detail"]["digest"] for e in reply.json()["errors"]] == missing
    assert registry.request("GET", "/v2/man/broken/manifests/v1").status == 404

    # A blob of another repository doesn't count: it must be pushed (or mounted) here.
    elsewhere = registry.push_blob("man/elsewhere", b"layer one")
    assert elsewhere == missing[0]
    reply = registry.request("PUT", "/v2/man/broken/manifests/v1", manifest,
                             {"Content-Type": OCI_MANIFEST})
    assert reply.codes() == ["MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]


def test_bad_manifests_are_manifest_invalid_or_digest_invalid(registry):
    for body in (b"{not json", b"[1, 2]", json.dumps({"schemaVersion": 1}).encode()):
        reply = registry.request("PUT", "/v2/man/bad/manifests/v1", body, {"Content-Type": OCI_MANIFEST})
        assert (reply.status, reply.codes()) == (400, ["MANIFEST_INVALID"])
    digest, manifest = registry.push_image("man/bad", "good")
    wrong = registry.request("PUT", f"/v2/man/bad/manifests/{sha256(b'other')}", manifest,
                             {"Content-Type": OCI_MANIFEST})
    assert wrong.codes() == ["DIGEST_INVALID"]
    mismatch = registry.request("PUT", "/v2/man/bad/manifests/v2", manifest,
                                {"Content-Type": DOCKER_MANIFEST})
    assert mismatch.codes() == ["MANIFEST_INVALID"]
    schema1 = registry.request("PUT", "/v2/man/bad/manifests/v3", json.dumps({"schemaVersion": 2}).encode(),
                               {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"})
    assert (schema1.status, schema1.codes()) == (415, ["UNSUPPORTED"])


def test_tags_list_paginates_with_a_link_header(registry):
    for tag in ("v3", "v1", "latest", "v2"):
        registry.push_image("tags/app", tag)
    everything = registry.request("GET", "/v2/tags/app/tags/list")
    assert everything.json() == {"name": "tags/app", "tags": ["latest", "v1", "v2", "v3"]}
    assert "Link" not in everything.headers
    first = registry.request("GET", "/v2/tags/app/tags/list?n=2")
    assert first.json()["tags"] == ["latest", "v1"]
    assert first.headers["Link"] == '</v2/tags/app/tags/list?n=2&last=v1>; rel="next"'
    second = registry.request("GET", first.headers["Link"].split(">")[0].lstrip("<"))
    assert second.json()["tags"] == ["v2", "v3"]
    assert "Link" not in second.headers
    assert registry.request("GET", "/v2/tags/app/tags/list?last=v2").json()["tags"] == ["v3"]
    assert registry.request("GET", "/v2/tags/app/tags/list?n=0").json()["tags"] == []
    unknown = registry.request("GET", "/v2/tags/nothing/tags/list")
    assert (unknown.status, unknown.codes()) == (404, ["NAME_UNKNOWN"])


def test_catalog_lists_nested_repositories_with_pagination(registry):
    for name in ("zz/a", "zz/b/c", "zz/b/c/d"):     # zz: after every other test's repositories
        registry.push_image(name, "v1")
    names = registry.request("GET", "/v2/_catalog").json()["repositories"]
    assert names[-3:] == ["zz/a", "zz/b/c", "zz/b/c/d"]
    assert names == sorted(names)
    page = registry.request("GET", "/v2/_catalog?n=1&last=zz/a")
    assert page.json()["repositories"] == ["zz/b/c"]
    assert page.headers["Link"] == '</v2/_catalog?n=1&last=zz%2Fb%2Fc>; rel="next"'
    last_page = registry.request("GET", "/v2/_catalog?n=1&last=zz%2Fb%2Fc")
    assert last_page.json()["repositories"] == ["zz/b/c/d"]
    assert "Link" not in last_page.headers


def test_delete_manifest_by_digest_removes_its_tags_and_by_tag_only_the_tag(registry):
    digest, _ = registry.push_image("del/app", "v1")
    registry.request("PUT", "/v2/del/app/manifests/also", registry.request(
        "GET", "/v2/del/app/manifests/v1").body, {"Content-Type": OCI_MANIFEST})
    assert registry.request("DELETE", "/v2/del/app/manifests/also").status == 202
    assert registry.request("GET", "/v2/del/app/manifests/v1").status == 200
    assert registry.request("DELETE", f"/v2/del/app/manifests/{digest}").status == 202
    assert registry.request("GET", f"/v2/del/app/manifests/{digest}").codes() == ["MANIFEST_UNKNOWN"]
    assert registry.request("GET", "/v2/del/app/manifests/v1").codes() == ["MANIFEST_UNKNOWN"]
    assert registry.request("GET", "/v2/del/app/tags/list").json()["tags"] == []
    assert registry.request("DELETE", f"/v2/del/app/manifests/{digest}").status == 404


def test_referrers_list_manifests_whose_subject_is_the_digest(registry):
    subject, manifest = registry.push_image("ref/app", "v1")
    empty = b"{}"
    registry.push_blob("ref/app", empty)
    signature = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(manifest)},
    }).encode()
    put = registry.request("PUT", f"/v2/ref/app/manifests/{sha256(signature)}", signature,
                           {"Content-Type": OCI_MANIFEST})
    assert put.status == 201 and put.headers["OCI-Subject"] == subject
    reply = registry.request("GET", f"/v2/ref/app/referrers/{subject}")
    assert reply.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    assert reply.json()["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": sha256(signature),
                                          "size": len(signature),
                                          "artifactType": "application/example.sig"}]
    filtered = registry.request("GET", f"/v2/ref/app/referrers/{subject}?artifactType=other/type")
    assert filtered.json()["manifests"] == []
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"


def test_names_follow_the_spec(registry):
    for bad in ("Upper/case", "a//b", "-dash/x", "a/b_"):
        reply = registry.request("GET", f"/v2/{bad}/tags/list")
        assert (reply.status, reply.codes()) == (400, ["NAME_INVALID"]), bad
    reply = registry.request("GET", f"/v2/ok/name/blobs/sha256:{'X' * 64}")
    assert reply.codes() == ["DIGEST_INVALID"]


# --- classroom access ---------------------------------------------------------------------------

def test_classroom_registry_asks_for_credentials(classroom):
    for user in (None, "nobody"):
        headers = {"Authorization": "Basic " + b64encode(b"alice:wrong").decode()} if user else {}
        reply = classroom.request("GET", "/v2/", headers=headers)
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="glassbox"'
        assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert reply.codes() == ["UNAUTHORIZED"]
    assert classroom.request("GET", "/v2/", user="alice").status == 200
    bearer = "Bearer " + b64encode(b"bob:bob-pw").decode()
    assert classroom.request("GET", "/v2/", headers={"Authorization": bearer}).status == 200


@needs_skopeo
@needs_root
def test_students_push_only_under_their_own_name(classroom, layout, policy):
    source = f"oci:{layout}:busybox:latest"
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds",
           "alice:alice-pw", source, f"docker://{classroom.host}/c1/alice/x:v1")
    refused = skopeo_refused(policy, "copy", "--preserve-digests", "--dest-tls-verify=false",
                             "--dest-creds", "alice:alice-pw", source,
                             f"docker://{classroom.host}/c1/bob/x:v1")
    assert "alice may push only under c1/alice/" in refused
    reply = classroom.request("POST", "/v2/c1/bob/x/blobs/uploads/", user="alice")
    assert (reply.status, reply.codes()) == (403, ["DENIED"])
    digest, _ = layout_manifest(layout)
    reply = classroom.request("DELETE", f"/v2/c1/alice/x/manifests/{digest}", user="bob")
    assert (reply.status, reply.codes()) == (403, ["DENIED"])


@needs_skopeo
@needs_root
def test_classmates_pull_and_other_classrooms_cannot(classroom, layout, policy, workdir):
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds",
           "alice:alice-pw", f"oci:{layout}:busybox:latest", f"docker://{classroom.host}/c1/alice/y:v1")
    image = f"docker://{classroom.host}/c1/alice/y:v1"
    skopeo(policy, "copy", "--preserve-digests", "--src-tls-verify=false", "--src-creds", "bob:bob-pw", image,
           f"oci:{workdir / 'bob-pulled'}:y")
    assert layout_manifest(workdir / "bob-pulled") == layout_manifest(layout)
    refused = skopeo_refused(policy, "inspect", "--tls-verify=false", "--creds", "eve:eve-pw", image)
    assert "outside your classroom c2" in refused
    reply = classroom.request("GET", "/v2/c1/alice/y/manifests/v1", user="eve")
    assert (reply.status, reply.codes()) == (403, ["DENIED"])
    assert "unauthorized" in skopeo_refused(policy, "inspect", "--tls-verify=false", image)


@needs_skopeo
@needs_root
def test_the_instructor_pushes_anywhere_in_the_classroom(classroom, layout, policy):
    skopeo(policy, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds",
           "teach:teach-pw", f"oci:{layout}:busybox:latest",
           f"docker://{classroom.host}/c1/lesson/base:v1")
    reply = classroom.request("GET", "/v2/c1/lesson/base/tags/list", user="alice")
    assert reply.json()["tags"] == ["v1"]
    reply = classroom.request("POST", "/v2/c2/eve/z/blobs/uploads/", user="teach")
    assert (reply.status, reply.codes()) == (403, ["DENIED"])   # not their classroom


def test_catalog_shows_only_ones_own_classroom_and_mounts_need_read_access(classroom):
    digest = classroom.push_blob("c1/alice/shared", b"c1's layer\n", user="alice")
    classroom.push_blob("c2/eve/own", b"c2's layer\n", user="eve")
    assert all(name.startswith("c2/") for name in
               classroom.request("GET", "/v2/_catalog", user="eve").json()["repositories"])
    assert "c1/alice/shared" in classroom.request("GET", "/v2/_catalog", user="bob").json()["repositories"]
    stolen = classroom.request("POST", f"/v2/c2/eve/own/blobs/uploads/?mount={digest}&from=c1/alice/shared",
                               user="eve")
    assert stolen.status == 202      # a normal upload instead: eve may not read c1
    mounted = classroom.request("POST", f"/v2/c1/bob/copy/blobs/uploads/?mount={digest}&from=c1/alice/shared",
                                user="bob")
    assert mounted.status == 201
    assert classroom.request("GET", "/v2/_glassbox/stats", user="alice").codes() == ["DENIED"]


def test_open_registry_answers_only_loopback_clients(tmp_path):
    client = create_app({"REGISTRY_ROOT": str(tmp_path / "registry")}).test_client()
    refused = client.get("/v2/", environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert refused.status_code == 403
    assert refused.json["errors"][0]["code"] == "DENIED"
    assert "loopback" in refused.json["errors"][0]["message"]
    assert client.get("/v2/_catalog", environ_base={"REMOTE_ADDR": "192.168.1.2"}).status_code == 403
    for address in ("127.0.0.1", "127.4.5.6", "::1"):
        assert client.get("/v2/", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_users_are_checked_when_the_app_is_made(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        create_app({"REGISTRY_ROOT": str(tmp_path),
                    "REGISTRY_USERS": {"al": {"password": "plain", "role": "student", "classroom": "c1"}}})
    with pytest.raises(ValueError, match="role"):
        create_app({"REGISTRY_ROOT": str(tmp_path),
                    "REGISTRY_USERS": {"al": {"password": "0" * 64, "role": "admin", "classroom": "c1"}}})


# --- limits -------------------------------------------------------------------------------------

def test_a_blob_over_the_upload_limit_is_refused_and_deleted(tmp_path):
    app = create_app({"REGISTRY_ROOT": str(tmp_path / "registry"), "REGISTRY_MAX_UPLOAD": 1000})
    client = app.test_client()
    location = client.post("/v2/lim/big/blobs/uploads/").headers["Location"]
    assert client.patch(location, data=b"x" * 600).status_code == 202
    reply = client.patch(location, data=b"x" * 600)
    assert reply.status_code == 413
    assert reply.json["errors"][0]["code"] == "SIZE_INVALID"
    assert "1000 bytes per blob" in reply.json["errors"][0]["message"]
    assert client.get(location).status_code == 404
    assert os.listdir(tmp_path / "registry" / "uploads") == []
    monolithic = client.post(f"/v2/lim/big/blobs/uploads/?digest={sha256(b'y' * 2000)}", data=b"y" * 2000)
    assert monolithic.status_code == 413
    assert os.listdir(tmp_path / "registry" / "blobs" / "sha256") == []


def test_a_full_classroom_refuses_more(tmp_path):
    hashed = hashlib.sha256(b"pw").hexdigest()
    users = {"ann": {"password": hashed, "role": "student", "classroom": "c1"},
             "zed": {"password": hashed, "role": "student", "classroom": "c2"}}
    app = create_app({"REGISTRY_ROOT": str(tmp_path / "registry"), "REGISTRY_MAX_TOTAL": 3000,
                      "REGISTRY_USERS": users})
    client = app.test_client()

    def auth(name):
        return {"Authorization": "Basic " + b64encode(f"{name}:pw".encode()).decode()}

    first = b"a" * 2000
    assert client.post(f"/v2/c1/ann/x/blobs/uploads/?digest={sha256(first)}", data=first,
                       headers=auth("ann")).status_code == 201
    second = b"b" * 2000
    reply = client.post(f"/v2/c1/ann/x/blobs/uploads/?digest={sha256(second)}", data=second,
                        headers=auth("ann"))
    assert reply.status_code == 403
    assert "classroom c1 is full" in reply.json["errors"][0]["message"]
    # Another classroom has its own room.
    assert client.post(f"/v2/c2/zed/x/blobs/uploads/?digest={sha256(second)}", data=second,
                       headers=auth("zed")).status_code == 201


def test_one_student_cant_fill_what_the_class_shares(tmp_path):
    hashed = hashlib.sha256(b"pw").hexdigest()
    users = {"ann": {"password": hashed, "role": "student", "classroom": "c1"},
             "bo": {"password": hashed, "role": "student", "classroom": "c1"}}
    app = create_app({"REGISTRY_ROOT": str(tmp_path / "registry"), "REGISTRY_MAX_TOTAL": 10_000,
                      "REGISTRY_MAX_PER_SPACE": 3000, "REGISTRY_USERS": users})
    client = app.test_client()

    def push(user, repository, data):
        return client.post(f"/v2/c1/{user}/{repository}/blobs/uploads/?digest={sha256(data)}", data=data,
                           headers={"Authorization": "Basic " + b64encode(f"{user}:pw".encode()).decode()})
    assert push("ann", "x", b"a" * 2000).status_code == 201
    full = push("ann", "y", b"b" * 2000)           # another repository, the same space
    assert full.status_code == 403
    assert "c1/ann/ is full: one space may hold 3000 bytes" in full.json["errors"][0]["message"]
    assert push("bo", "x", b"b" * 2000).status_code == 201   # Bo has his own room
    # Uploads in progress count: two started side by side can't both fill the room.
    auth_bo = {"Authorization": "Basic " + b64encode(b"bo:pw").decode()}
    first = client.post("/v2/c1/bo/p/blobs/uploads/", headers=auth_bo).headers["Location"]
    second = client.post("/v2/c1/bo/q/blobs/uploads/", headers=auth_bo).headers["Location"]
    assert client.patch(first, data=b"d" * 900, headers=auth_bo).status_code == 202
    assert client.patch(second, data=b"e" * 900, headers=auth_bo).status_code == 403
    # A chunked upload stops at the same limit, and leaves nothing behind.
    auth = {"Authorization": "Basic " + b64encode(b"ann:pw").decode()}
    location = client.post("/v2/c1/ann/z/blobs/uploads/", headers=auth).headers.get("Location")
    assert client.patch(location, data=b"c" * 2000, headers=auth).status_code == 403
    client.delete(first, headers=auth_bo)
    assert os.listdir(tmp_path / "registry" / "uploads") == []


# --- the store on its own -----------------------------------------------------------------------

def test_cleanup_removes_stale_uploads_only(tmp_path):
    store = RegistryStore(tmp_path)
    stale, fresh = store.start_upload("s/a"), store.start_upload("s/a")
    old = time.time() - 2 * 3600
    for path in (tmp_path / "uploads" / stale.id, tmp_path / "uploads" / stale.id / "data"):
        os.utime(path, (old, old))
    assert store.cleanup() == [stale.id]
    assert os.listdir(tmp_path / "uploads") == [fresh.id]


def test_garbage_collection_removes_blobs_no_repository_links(tmp_path):
    store = RegistryStore(tmp_path)
    kept, dropped = b"kept", b"dropped"
    for data in (kept, dropped):
        upload = store.start_upload("gc/x")
        store.finish_upload("gc/x", upload.id, sha256(data), _Body(data), length=len(data))
    store.delete_blob("gc/x", sha256(dropped))
    assert store.garbage_collect() == [sha256(dropped)]
    assert store.blob("gc/x", sha256(kept)).size == len(kept)
    assert os.listdir(tmp_path / "blobs" / "sha256") == [sha256(kept).removeprefix("sha256:")]


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk
