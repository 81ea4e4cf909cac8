"""Import and export of images, checked against the real tools: umoci and skopeo."""
from __future__ import annotations

import copy
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from sandbox.images import MEDIA_LAYER_TAR, REF_NAME, ImageStore, canonical_json
from sandbox.transfer import (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
                              export_docker_archive, export_oci, import_docker_archive, import_oci)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="layers are unpacked as root (owners kept)"),
    pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")),
                       reason="needs skopeo and umoci (Debian packages)"),
]

APP = "app:v1"


# --- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as d:
        yield Path(d)


def _app_layer(store: ImageStore) -> dict:
    """A layer on top of busybox with an owner, setuid, a symlink, a whiteout and an opaque dir."""
    entries = [
        ("bin/.wh.ls", tarfile.REGTYPE, 0o644, 0, b"", ""),    # deletes busybox's ls
        ("etc", tarfile.DIRTYPE, 0o755, 0, b"", ""),
        ("etc/.wh..wh..opq", tarfile.REGTYPE, 0o644, 0, b"", ""),  # hides passwd, group
        ("etc/motd", tarfile.REGTYPE, 0o644, 0, b"welcome to app\n", ""),
        ("srv", tarfile.DIRTYPE, 0o750, 1000, b"", ""),
        ("srv/data.txt", tarfile.REGTYPE, 0o640, 1000, b"owned by 1000\n" * 100, ""),
        ("srv/link", tarfile.SYMTYPE, 0o777, 0, b"", "data.txt"),
        ("srv/tool", tarfile.REGTYPE, 0o4755, 0, b"#!/bin/sh\necho tool\n", ""),
    ]
    with store.writing_layer() as (out, descriptor):
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, kind, mode, owner, data, target in entries:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, owner, owner, 1700000000
                info.linkname = target
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return descriptor


@pytest.fixture(scope="module")
def source():
    """A store with busybox, scratch and app:v1 (busybox plus a second, real layer)."""
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as d:
        store = ImageStore(Path(d) / "state")
        store.ensure_base_images()
        base = store.get("busybox")
        layer = _app_layer(store)
        config = copy.deepcopy(base.config)
        config["rootfs"]["diff_ids"].append(layer["digest"])
        config["history"].append({"created": config["created"], "created_by": "test: the app layer"})
        config["config"]["Cmd"] = ["/srv/tool"]
        store.put_image(config, list(base.manifest["layers"]) + [layer], APP)
        yield store
        # Tests change exported copies only by replacing files, never the store's (hard-linked) blobs.
        assert store.fsck() == []


@pytest.fixture
def policy(tmp):
    path = tmp / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def run(*argv, **kwargs) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{argv} failed: {result.stderr}"
    return result.stdout


def skopeo(policy, *args) -> str:
    return run("skopeo", "--policy", policy, *args)


def fresh(path: Path) -> ImageStore:
    store = ImageStore(path)
    store.ensure_base_images()
    return store


def names(store: ImageStore) -> list[str]:
    return [i.name for i in store.list()]


def _entry(path: str) -> tuple:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    detail = os.readlink(path) if stat.S_ISLNK(st.st_mode) else st.st_size if stat.S_ISREG(st.st_mode) else None
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail)


def listing(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size or link target), for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = _entry(full)
    return out


def merged_listing(layers: list[Path]) -> dict[str, tuple]:
    """What a container sees of stacked layer dirs: overlayfs whiteouts and opaque dirs applied."""
    view: dict[str, tuple] = {}

    def drop_below(path: str) -> None:
        for key in [k for k in view if k.startswith(path + "/")]:
            del view[key]

    for layer in layers:
        entries = listing(layer)
        for rel, entry in entries.items():
            full = layer / rel
            if stat.S_ISCHR(entry[0]) and os.lstat(full).st_rdev == 0:
                view.pop(rel, None)
                drop_below(rel)
            elif stat.S_ISDIR(entry[0]):
                try:
                    if os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                        drop_below(rel)
                except OSError:
                    pass
            elif rel in view:
                drop_below(rel)
        for rel, entry in entries.items():
            if not (stat.S_ISCHR(entry[0]) and os.lstat(layer / rel).st_rdev == 0):
                view[rel] = entry
    return view


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_file(path: Path, data: bytes) -> None:
    """Writes a new file at path (an exported blob may be a hard link to the store's)."""
    path.unlink()
    path.write_bytes(data)


def write_json_blob(layout: Path, obj) -> dict:
    data = canonical_json(obj)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def set_index(layout: Path, manifests: list[dict]) -> None:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": manifests}
    replace_file(layout / "index.json", json.dumps(index).encode())


# --- export_oci ----------------------------------------------------------------------------

def test_export_oci_layout(source, tmp):
    dest = tmp / "out" / "layout"
    refs = export_oci(source, ["busybox", APP, "busybox:latest"], dest)
    assert refs == ["busybox:latest", APP]
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    app = source.get(APP)
    entry = index["manifests"][1]
    assert entry["annotations"] == {REF_NAME: APP}
    assert entry["digest"] == app.manifest_digest
    assert entry["platform"]["os"] == "linux"
    blobs = sorted(p.name for p in (dest / "blobs" / "sha256").iterdir())
    wanted = {app.manifest_digest, app.id, source.get("busybox").manifest_digest,
              source.get("busybox").id} | {l["digest"] for l in app.manifest["layers"]}
    assert blobs == sorted(d[7:] for d in wanted)
    for name in blobs:  # same filesystem: hard links to the store's blobs
        assert os.stat(dest / "blobs/sha256" / name).st_ino == os.stat(source.blobs / name).st_ino
    assert os.listdir(dest.parent) == ["layout"]  # no temporary directory left next to it

    # Exporting again replaces the layout whole; a directory that is no layout is refused.
    export_oci(source, ["scratch"], dest)
    assert [m["annotations"][REF_NAME] for m in json.loads((dest / "index.json").read_text())["manifests"]] \
        == ["scratch:latest"]
    assert os.listdir(dest.parent) == ["layout"]
    other = tmp / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an OCI layout"):
        export_oci(source, ["busybox"], other)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(LookupError, match="not found"):
        export_oci(source, ["nosuch"], tmp / "x")
    assert not (tmp / "x").exists()


def test_export_oci_copies_across_filesystems(source, tmp, monkeypatch):
    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    export_oci(source, [APP], tmp / "copy")
    for blob in (tmp / "copy" / "blobs" / "sha256").iterdir():
        assert os.stat(blob).st_ino != os.stat(source.blobs / blob.name).st_ino
        assert sha(blob) == blob.name


@pytest.mark.parametrize("ref", ["busybox:latest", APP])
def test_umoci_unpack_of_export_gives_the_layer_files(source, tmp, ref):
    export_oci(source, [ref], tmp / "layout")
    run("umoci", "unpack", "--image", f"{tmp / 'layout'}:{ref}", tmp / "bundle")
    rootfs = tmp / "bundle" / "rootfs"
    image = source.get(ref)
    assert listing(rootfs) == merged_listing(image.layers)
    assert sha(rootfs / "bin/busybox") == sha(image.layers[0] / "bin/busybox")
    if ref == APP:
        assert not (rootfs / "bin/ls").exists() and not (rootfs / "etc/passwd").exists()
        assert (rootfs / "etc/motd").read_text() == "welcome to app\n"
        st = os.lstat(rootfs / "srv/data.txt")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
        assert stat.S_IMODE(os.lstat(rootfs / "srv/tool").st_mode) == 0o4755
        assert sha(rootfs / "srv/data.txt") == sha(image.layers[1] / "srv/data.txt")


# --- skopeo --------------------------------------------------------------------------------

def test_skopeo_accepts_the_export_and_its_copies_import_back(source, tmp, policy):
    layout = tmp / "layout"
    export_oci(source, ["busybox", APP], layout)
    app = source.get(APP)
    inspected = json.loads(skopeo(policy, "inspect", f"oci:{layout}:{APP}"))
    assert inspected["Digest"] == app.manifest_digest
    assert inspected["Layers"] == [l["digest"] for l in app.manifest["layers"]]
    raw = json.loads(skopeo(policy, "inspect", "--config", "--raw", f"oci:{layout}:{APP}"))
    assert raw["rootfs"]["diff_ids"] == app.diff_ids

    # skopeo's own copies, in the forms it writes them, come back as the same image.
    skopeo(policy, "copy", f"oci:{layout}:{APP}", f"oci:{tmp / 'full'}:{APP}")
    skopeo(policy, "copy", f"oci:{layout}:{APP}", f"oci:{tmp / 'bare'}:latest")
    skopeo(policy, "copy", f"oci:{layout}:{APP}", f"docker-archive:{tmp / 'app.tar'}:{APP}")
    written = json.loads((tmp / "bare" / "index.json").read_text())["manifests"][0]
    assert written["annotations"] == {REF_NAME: "latest"}  # skopeo writes exactly the ref given
    copied = json.loads((tmp / "bare" / "blobs/sha256" / written["digest"][7:]).read_bytes())
    assert {l["mediaType"] for l in copied["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    assert copied["config"]["digest"] == app.id  # config bytes untouched

    store = fresh(tmp / "store")
    [image] = import_oci(store, tmp / "full")
    assert (image.name, image.id) == (APP, app.id)
    assert [p.name for p in image.layers] == [p.name for p in app.layers]
    with pytest.raises(ValueError, match=r"only by the tag 'latest'.*name="):
        import_oci(store, tmp / "bare")
    [image] = import_oci(store, tmp / "bare", name="copied")
    assert (image.name, image.id) == ("copied:latest", app.id)
    [image] = import_oci(store, tmp / "bare", name="copied:v2")
    assert (image.name, image.id) == ("copied:v2", app.id)
    [image] = import_docker_archive(fresh(tmp / "store2"), tmp / "app.tar")
    assert (image.name, image.id) == (APP, app.id)
    assert listing(image.layers[1]) == listing(app.layers[1])
    assert store.fsck() == []


def test_skopeo_reads_our_docker_archive(source, tmp, policy):
    with open(tmp / "app.tar", "wb") as f:
        export_docker_archive(source, [APP], f)
    inspected = json.loads(skopeo(policy, "inspect", f"docker-archive:{tmp / 'app.tar'}"))
    assert inspected["RepoTags"] == []  # skopeo reports tags of a registry, not of the archive
    assert len(inspected["Layers"]) == 2
    skopeo(policy, "copy", f"docker-archive:{tmp / 'app.tar'}", f"oci:{tmp / 'back'}:{APP}")
    [image] = import_oci(fresh(tmp / "store"), tmp / "back")
    # skopeo re-serializes the config on this conversion, so its bytes (the image
    # id) change; what they say doesn't, and the import keeps skopeo's bytes.
    assert image.config == source.get(APP).config
    assert image.id == "sha256:" + hashlib.sha256(
        image_store_bytes(tmp / "store", image.id)).hexdigest()


def image_store_bytes(root: Path, digest: str) -> bytes:
    return (root / "oci" / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


# --- umoci-made images ---------------------------------------------------------------------

def test_an_image_made_by_umoci_imports_and_runs(tmp, engine):
    from sandbox.runtime import ContainerConfig
    layout, bundle = tmp / "layout", tmp / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:t")
    run("umoci", "unpack", "--image", f"{layout}:t", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir()
    shutil.copy2(os.path.realpath("/bin/busybox"), rootfs / "bin/busybox")
    os.symlink("busybox", rootfs / "bin/sh")
    (rootfs / "greeting").write_text("made by umoci\n")
    run("umoci", "repack", "--image", f"{layout}:t", bundle)
    run("umoci", "config", "--image", f"{layout}:t", "--config.cmd", "/bin/sh",
        "--config.cmd", "-c", "--config.cmd", "echo hello from umoci; /bin/busybox cat /greeting",
        "--config.env", "PATH=/bin")
    manifest_desc = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert manifest_desc["annotations"] == {REF_NAME: "t"}  # umoci's ref names are bare tags

    with pytest.raises(ValueError, match="only by the tag 't'"):
        import_oci(engine.images, layout)
    [image] = import_oci(engine.images, layout, name="umoci-made")
    assert image.name == "umoci-made:t"
    assert image.config["config"]["Cmd"][0] == "/bin/sh"
    assert os.path.islink(image.layers[0] / "bin/sh")

    chunks = []
    status = engine.run(ContainerConfig("umoci-made:t"), lambda stream, data: chunks.append(data))
    assert status.code == 0, status.describe()
    assert b"".join(chunks).decode() == "hello from umoci\nmade by umoci\n"


# --- docker save tars ----------------------------------------------------------------------

def test_docker_archive_round_trip(source, tmp, policy):
    out = io.BytesIO()
    export_docker_archive(source, ["busybox", APP, "busybox:latest"], out)
    again = io.BytesIO()
    export_docker_archive(source, ["busybox", APP], again)
    assert out.getvalue() == again.getvalue()  # reproducible

    busybox, app = source.get("busybox"), source.get(APP)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = tar.getnames()
        assert members[:2] == ["blobs", "blobs/sha256"]
        assert members[-4:] == ["index.json", "manifest.json", "oci-layout", "repositories"]
        blobs = {m[len("blobs/sha256/"):] for m in members[2:-4]}
        assert blobs == {d[7:] for d in {busybox.manifest_digest, busybox.id, app.manifest_digest,
                                         app.id, *app.diff_ids}}
        read = lambda name: tar.extractfile(name).read()
        assert read("oci-layout") == b'{"imageLayoutVersion": "1.0.0"}'
        manifest = json.loads(read("manifest.json"))
        assert manifest == [
            {"Config": f"blobs/sha256/{busybox.id[7:]}", "RepoTags": ["busybox:latest"],
             "Layers": [f"blobs/sha256/{d[7:]}" for d in busybox.diff_ids]},
            {"Config": f"blobs/sha256/{app.id[7:]}", "RepoTags": [APP],
             "Layers": [f"blobs/sha256/{d[7:]}" for d in app.diff_ids]}]
        assert json.loads(read("repositories")) == {"busybox": {"latest": busybox.diff_ids[-1][7:]},
                                                    "app": {"v1": app.diff_ids[-1][7:]}}
        index = json.loads(read("index.json"))
        assert [m["annotations"] for m in index["manifests"]] == [
            {"io.containerd.image.name": "docker.io/library/busybox:latest", REF_NAME: "latest"},
            {"io.containerd.image.name": "docker.io/library/app:v1", REF_NAME: "v1"}]
        assert index["manifests"][1]["digest"] == app.manifest_digest

    store = fresh(tmp / "store")
    images = import_docker_archive(store, io.BytesIO(out.getvalue()))
    assert [(i.name, i.id) for i in images] == [("busybox:latest", busybox.id), (APP, app.id)]
    imported = store.get(APP)
    for mine, theirs in zip(imported.layers, app.layers):
        assert mine.name == theirs.name
        assert listing(mine) == listing(theirs)

    # Only the legacy half (Docker before 25, skopeo's docker-archive:) is enough too.
    legacy = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar, \
            tarfile.open(fileobj=legacy, mode="w") as new:
        for member in tar.getmembers():
            if member.name not in ("index.json", "oci-layout"):
                new.addfile(member, tar.extractfile(member) if member.isfile() else None)
    legacy.seek(0)
    images = import_docker_archive(fresh(tmp / "legacy"), legacy)
    assert [(i.name, i.id) for i in images] == [("busybox:latest", busybox.id), (APP, app.id)]
    legacy.seek(0)
    images = import_docker_archive(fresh(tmp / "renamed"), legacy, name="renamed")
    assert [(i.name, i.id) for i in images] == [("renamed:latest", busybox.id), ("renamed:v1", app.id)]


def test_docker_archive_of_gzip_layers_holds_plain_tars(source, tmp, policy):
    """An image imported with gzip layers is saved with uncompressed ones, as docker save does."""
    layout = tmp / "layout"
    export_oci(source, [APP], layout)
    skopeo(policy, "copy", f"oci:{layout}:{APP}", f"oci:{tmp / 'gz'}:{APP}")
    middle = fresh(tmp / "middle")
    [image] = import_oci(middle, tmp / "gz")
    assert all(l["mediaType"].endswith("+gzip") for l in image.manifest["layers"])
    with open(tmp / "app.tar", "wb") as f:
        export_docker_archive(middle, [APP], f)
    with tarfile.open(tmp / "app.tar") as tar:
        index = json.loads(tar.extractfile("index.json").read())
        digest = index["manifests"][0]["digest"]
        manifest = json.loads(tar.extractfile(f"blobs/sha256/{digest[7:]}").read())
        assert [l["digest"] for l in manifest["layers"]] == image.diff_ids
        assert {l["mediaType"] for l in manifest["layers"]} == {MEDIA_LAYER_TAR}
    [back] = import_docker_archive(fresh(tmp / "last"), tmp / "app.tar")
    assert back.id == source.get(APP).id
    assert listing(back.layers[1]) == listing(source.get(APP).layers[1])


def test_gzip_compressed_docker_archive_from_a_pipe(source, tmp):
    out = io.BytesIO()
    export_docker_archive(source, ["busybox"], out)
    read, write = os.pipe()

    def feed():
        with os.fdopen(write, "wb") as w:
            w.write(gzip.compress(out.getvalue()))
    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read, "rb") as stream:  # not seekable: spooled, then read in place
        [image] = import_docker_archive(fresh(tmp / "store"), stream)
    feeder.join()
    assert image.id == source.get("busybox").id


def test_old_docker_layout_with_layer_symlinks(source, tmp, policy):
    """Docker before 25 listed <v1 id>/layer.tar, some of them symlinks to another layer.tar."""
    export_oci(source, [APP], tmp / "layout")
    skopeo(policy, "copy", f"oci:{tmp / 'layout'}:{APP}", f"docker-archive:{tmp / 'app.tar'}:{APP}")
    rewritten = io.BytesIO()
    with tarfile.open(tmp / "app.tar") as tar, tarfile.open(fileobj=rewritten, mode="w") as new:
        links = [m.name for m in tar.getmembers() if m.name.endswith("/layer.tar")]
        assert links and all(tar.getmember(n).issym() for n in links)
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                manifest = json.loads(data)
                by_target = {tar.getmember(n).linkname.rsplit("/", 1)[-1]: n for n in links}
                manifest[0]["Layers"] = [by_target[p] for p in manifest[0]["Layers"]]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    rewritten.seek(0)
    [image] = import_docker_archive(fresh(tmp / "store"), rewritten)
    assert (image.name, image.id) == (APP, source.get(APP).id)


# --- other shapes of layout ----------------------------------------------------------------

def test_nested_index_docker_schema2_and_platform_choice(source, tmp):
    """A Docker manifest list inside an OCI index; schema2 manifests with gzip layers."""
    layout = tmp / "layout"
    export_oci(source, ["busybox", "scratch"], layout)
    busybox, scratch = source.get("busybox"), source.get("scratch")
    machine = json.loads((layout / "index.json").read_text())["manifests"][0]["platform"]["architecture"]
    other = "arm64" if machine != "arm64" else "amd64"

    def schema2(image):
        layers = []
        for layer in image.manifest["layers"]:
            data = gzip.compress((layout / "blobs/sha256" / layer["digest"][7:]).read_bytes(), mtime=0)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            (layout / "blobs/sha256" / digest[7:]).write_bytes(data)
            layers.append({"mediaType": DOCKER_LAYER_GZIP, "digest": digest, "size": len(data)})
        config = {"mediaType": DOCKER_CONFIG, "digest": image.id,
                  "size": (layout / "blobs/sha256" / image.id[7:]).stat().st_size}
        return write_json_blob(layout, {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                        "config": config, "layers": layers})

    attestation = write_json_blob(layout, {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                                      "digest": scratch.id, "size": 1}, "layers": []})
    manifest_list = write_json_blob(layout, {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, **schema2(scratch), "platform": {"os": "linux", "architecture": other}},
        {"mediaType": DOCKER_MANIFEST, **attestation, "platform": {"os": "unknown", "architecture": "unknown"}},
        {"mediaType": DOCKER_MANIFEST, **schema2(busybox), "platform": {"os": "linux", "architecture": machine}},
    ]})
    outer = write_json_blob(layout, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                     "manifests": [{"mediaType": DOCKER_MANIFEST_LIST, **manifest_list}]})
    set_index(layout, [{"mediaType": "application/vnd.oci.image.index.v1+json", **outer,
                        "annotations": {REF_NAME: "multi:1.0"}}])

    store = fresh(tmp / "store")
    [image] = import_oci(store, layout)
    assert (image.name, image.id) == ("multi:1.0", busybox.id)
    assert image.manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert listing(image.layers[0]) == listing(busybox.layers[0])
    [image] = import_oci(store, layout, name="multi-other", platform=f"linux/{other}")
    assert (image.name, image.id) == ("multi-other:1.0", scratch.id)
    with pytest.raises(ValueError, match=r"no manifest for linux/s390x.*linux/" + other):
        import_oci(store, layout, name="x", platform="linux/s390x")


def test_a_tar_of_a_layout_imports_too(source, tmp):
    export_oci(source, [APP], tmp / "layout")
    with tarfile.open(tmp / "layout.tar", "w") as tar:
        tar.add(tmp / "layout", arcname=".")
    [image] = import_oci(fresh(tmp / "store"), tmp / "layout.tar")
    assert (image.name, image.id) == (APP, source.get(APP).id)


# --- refusals ------------------------------------------------------------------------------

@pytest.fixture
def target(tmp):
    store = fresh(tmp / "target")
    before = names(store)
    yield store
    assert names(store) == before, "a failed import left a tag"
    store.gc()
    assert store.fsck() == []


def _layout(source, tmp) -> tuple[Path, dict, dict]:
    layout = tmp / "layout"
    export_oci(source, [APP], layout)
    desc = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    return layout, desc, manifest


def test_refuses_a_tampered_layer(source, tmp, target):
    """Two images, the second one broken: neither is tagged."""
    layout = tmp / "layout"
    export_oci(source, ["busybox", APP], layout)
    layer = source.get(APP).manifest["layers"][1]["digest"]
    blob = layout / "blobs/sha256" / layer[7:]
    data = bytearray(blob.read_bytes())
    data[600] ^= 1
    replace_file(blob, bytes(data))
    with pytest.raises(ValueError, match=r"image 'app:v1'.*layer 2 of 2.*blob content is sha256:\w+, "
                                         "not the " + layer):
        import_oci(target, layout, name="imported")


def test_refuses_a_layer_that_would_escape(source, tmp, target):
    """Digests all correct, but the layer holds ../escape: unpacking refuses it."""
    layout, desc, manifest = _layout(source, tmp)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        tar.addfile(_info("../escape", size=3), io.BytesIO(b"out"))
    data = gzip.compress(plain.getvalue())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest[7:]).write_bytes(data)
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    config["rootfs"]["diff_ids"][1] = "sha256:" + hashlib.sha256(plain.getvalue()).hexdigest()
    manifest["config"] = {**manifest["config"], **write_json_blob(layout, config)}
    manifest["layers"][1] = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                             "digest": digest, "size": len(data)}
    set_index(layout, [{**desc, **write_json_blob(layout, manifest)}])
    with pytest.raises(ValueError, match=r"layer 2 of 2.*refused: entry '../escape' has a '..' component"):
        import_oci(target, layout)
    assert not (tmp / "escape").exists() and not (target.root / "escape").exists()


def test_refuses_a_tampered_config(source, tmp, target):
    layout, _, manifest = _layout(source, tmp)
    blob = layout / "blobs/sha256" / manifest["config"]["digest"][7:]
    replace_file(blob, blob.read_bytes().replace(b"/srv/tool", b"/srv/evil"))
    with pytest.raises(ValueError, match=r"config.*is corrupt: its content hashes to"):
        import_oci(target, layout)


def test_refuses_a_missing_blob(source, tmp, target):
    layout, _, manifest = _layout(source, tmp)
    (layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]).unlink()
    with pytest.raises(ValueError, match=r"layer 1 of 2.*is missing"):
        import_oci(target, layout)


def test_refuses_counts_that_disagree(source, tmp, target):
    layout, desc, manifest = _layout(source, tmp)
    manifest["layers"] = manifest["layers"][:1]
    set_index(layout, [{**desc, **write_json_blob(layout, manifest)}])
    with pytest.raises(ValueError, match="counts disagree: the config has 2 diff_ids, the manifest 1 layers"):
        import_oci(target, layout)


def test_refuses_a_layer_that_is_not_its_diff_id(source, tmp, target):
    layout, desc, manifest = _layout(source, tmp)
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
    manifest["config"] = {**manifest["config"], **write_json_blob(layout, config)}
    set_index(layout, [{**desc, **write_json_blob(layout, manifest)}])
    with pytest.raises(ValueError, match="uncompressed, the layer is sha256:.*but the config's diff_id"):
        import_oci(target, layout)


def test_refuses_malformed_json(source, tmp, target):
    layout, desc, _ = _layout(source, tmp)
    replace_file(layout / "index.json", b'{"schemaVersion": 2, "manifests": [')
    with pytest.raises(ValueError, match=r"index.json: malformed JSON"):
        import_oci(target, layout)
    replace_file(layout / "oci-layout", b"")
    with pytest.raises(ValueError, match=r"oci-layout: malformed JSON"):
        import_oci(target, layout)
    (layout / "oci-layout").unlink()
    with pytest.raises(ValueError, match="not an OCI image layout"):
        import_oci(target, layout)


def _docker_tar(source, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    out = io.BytesIO()
    export_docker_archive(source, [APP], out)
    evil = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar, \
            tarfile.open(fileobj=evil, mode="w", format=tarfile.PAX_FORMAT) as new:
        for member in tar.getmembers():
            new.addfile(member, tar.extractfile(member) if member.isfile() else None)
        for info, data in extra:
            new.addfile(info, io.BytesIO(data) if data is not None else None)
    evil.seek(0)
    return evil


def _info(name, kind=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


@pytest.mark.parametrize("member,message", [
    (_info("../evil", size=4), r"entry '../evil' has a '..' component"),
    (_info("/etc/evil", size=4), r"entry '/etc/evil' is an absolute path"),
    (_info("blobs/link", tarfile.SYMTYPE, linkname="/etc/shadow"), "symlink to '/etc/shadow', outside"),
    (_info("blobs/up", tarfile.SYMTYPE, linkname="../../x"), "symlink to '../../x', outside"),
    (_info("dev", tarfile.CHRTYPE), "is a device or fifo"),
])
def test_refuses_unsafe_docker_archive_members(source, target, member, message):
    evil = _docker_tar(source, [(member, b"evil" if member.size else None)])
    with pytest.raises(ValueError, match=message):
        import_docker_archive(target, evil)


def test_refuses_a_tampered_docker_archive(source, target):
    out = io.BytesIO()
    export_docker_archive(source, [APP], out)
    app = source.get(APP)
    layer = f"blobs/sha256/{app.diff_ids[1][7:]}"
    tampered = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar, \
            tarfile.open(fileobj=tampered, mode="w") as new:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None
            if member.name == layer:
                data = data.replace(b"owned by 1000", b"owned by 6666")
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    tampered.seek(0)
    with pytest.raises(ValueError, match=f"not the {app.diff_ids[1]} it claims to be"):
        import_docker_archive(target, tampered)


def test_refuses_a_docker_archive_without_images(target):
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w") as tar:
        tar.addfile(_info("hello.txt", size=2), io.BytesIO(b"hi"))
    empty.seek(0)
    with pytest.raises(ValueError, match="not a docker save archive"):
        import_docker_archive(target, empty)
    with pytest.raises(ValueError, match="not a readable tar"):
        import_docker_archive(target, io.BytesIO(b"this is no tar at all" * 100))
