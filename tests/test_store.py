"""The image store: tags, removal with reference counting, gc, fsck after crashes, hosts.

Crashes are real ones where it matters: a child process that dies (``os._exit``)
in the middle of a write leaves exactly what a killed daemon would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandbox.archive import LayerEntry, write_layer_tar
from sandbox.engine import Conflict, NotFound
from sandbox.images import REF_NAME, Image, ImageError, ImageStore, chain_ids
from sandbox.runtime import ContainerConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the store unpacks layers as root")

ROOT = Path(__file__).resolve().parent.parent


def make_image(store: ImageStore, name: str | None, files: dict[str, bytes],
               parent: str = "busybox") -> Image:
    """An image of ``parent`` plus one layer holding ``files`` (no container needed)."""
    base = store.get(parent)
    with store.lock():
        with store.writing_layer() as (out, layer):
            write_layer_tar([LayerEntry.file(p, data) for p, data in files.items()], out)
    config = dict(base.config)
    config["rootfs"] = {"type": "layers", "diff_ids": base.diff_ids + [layer["digest"]]}
    config["history"] = list(base.config.get("history", [])) + [{"created_by": f"test: {name}"}]
    return store.put_image(config, list(base.manifest["layers"]) + [layer], name)


def commit_image(engine, run, name: str, command: str, image: str = "busybox") -> Image:
    status, out, c = run(command, image=image)
    assert status.code == 0, out.text()
    committed = engine.commit(c, name)
    engine.remove(c)
    return committed


def blob_names(store: ImageStore) -> set[str]:
    return {p.name for p in store.blobs.iterdir()}


def layer_names(store: ImageStore) -> set[str]:
    return {p.name for p in store.layers_dir.iterdir()}


def crash_in_child(root: Path, body: str) -> None:
    """Runs ``body`` in a new Python process on a store at ``root``; it must die with 9."""
    script = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from sandbox.archive import LayerEntry, write_layer_tar
        from sandbox.images import ImageStore
        store = ImageStore(Path(sys.argv[1]))
    """) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script, str(root)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr


# --- tags ---------------------------------------------------------------------------------

def test_tag_names_the_same_image_and_untag_removes_only_the_name(engine):
    store = engine.images
    busybox = store.get("busybox")
    tagged = store.tag("busybox", "classroom/box:v1")
    assert tagged.id == busybox.id and tagged.name == "classroom/box:v1"
    assert store.tags_of(busybox.id) == ["busybox:latest", "classroom/box:v1"]
    index = json.loads((store.oci / "index.json").read_text())
    assert {m["annotations"][REF_NAME] for m in index["manifests"]} == \
        {"busybox:latest", "scratch:latest", "classroom/box:v1"}
    assert store.tag("classroom/box:v1", "box").name == "box:latest"  # "latest" by default

    assert store.untag("classroom/box:v1") == "classroom/box:v1"
    with pytest.raises(ImageError, match="'classroom/box:v1' not found"):
        store.get("classroom/box:v1")
    assert store.get("busybox").id == busybox.id and store.get("box").id == busybox.id
    assert all(p.is_dir() for p in busybox.layers)


def test_bad_tags_and_unknown_names_are_clear_errors(engine):
    with pytest.raises(ValueError, match="invalid image name 'Box:v1'"):
        engine.images.tag("busybox", "Box:v1")
    with pytest.raises(ImageError, match="image 'nothing' not found"):
        engine.images.untag("nothing")
    with pytest.raises(NotFound, match="nothing"):
        engine.remove_image("nothing")


# --- removal ------------------------------------------------------------------------------

def test_remove_is_refused_while_a_container_uses_the_image_and_force_only_untags(engine, run, events):
    app = commit_image(engine, run, "app:v1", "echo from-app > /app.txt")
    top_chain = chain_ids(app.diff_ids)[-1]
    top_blob = app.diff_ids[-1]
    c = engine.create(ContainerConfig("app:v1", ["sleep", "30"], name="user-of-app"))
    engine.start(c)

    with pytest.raises(Conflict, match="unable to remove app:v1: it is used by container user-of-app"):
        engine.remove_image("app:v1")
    assert engine.images.get("app:v1").id == app.id

    result = engine.remove_image("app:v1", force=True)
    assert result["untagged"] == ["app:v1"]
    with pytest.raises(ImageError):
        engine.images.get("app:v1")
    # Its layers stay while the container runs on them, through any number of gcs.
    assert result["collected"]["layers"] == [] and top_blob not in result["collected"]["blobs"]
    assert engine.gc()["layers"] == []
    assert all(p.is_dir() for p in app.layers)
    assert engine.images.has_blob(top_blob)
    assert c.state == "running"
    chunks = []
    process = engine.exec(c, ["cat", "/app.txt"], on_output=lambda _s, data: chunks.append(data))
    assert process.done.wait(10) and process.status.code == 0
    assert b"".join(chunks) == b"from-app\n"

    engine.remove(c, force=True)
    collected = engine.gc()
    assert collected["layers"] == [top_chain]
    assert {top_blob, app.id, app.manifest_digest} <= set(collected["blobs"])
    assert not engine.images.layer_dir(top_chain).exists()
    assert not engine.images.has_blob(top_blob)
    busybox = engine.images.get("busybox")
    assert busybox.layers[0].is_dir() and engine.images.has_blob(busybox.diff_ids[0])
    kinds = [(e.kind, e.subject) for e in events]
    assert ("image.untagged", {"image": "app:v1"}) in kinds
    assert ("layer.removed", {"layer": top_chain}) in kinds
    assert ("blob.removed", {"blob": top_blob}) in kinds
    assert engine.images.fsck() == []


def test_remove_is_refused_while_a_child_image_exists_and_force_keeps_the_parents_layers(engine, run):
    parent = commit_image(engine, run, "app:v1", "echo one > /one.txt")
    child = commit_image(engine, run, "app:v2", "echo two > /two.txt", image="app:v1")
    assert [i.id for i in engine.images.children(parent)] == [child.id]

    with pytest.raises(Conflict, match="has dependent child image app:v2"):
        engine.remove_image("app:v1")

    result = engine.remove_image("app:v1", force=True)
    assert result["untagged"] == ["app:v1"]
    # The parent's own config and manifest go; its layers are the child's too and stay.
    assert {parent.id, parent.manifest_digest} <= set(result["collected"]["blobs"])
    assert result["collected"]["layers"] == []
    assert all(p.is_dir() for p in parent.layers)
    assert all(engine.images.has_blob(d) for d in parent.diff_ids)
    status, out, _ = run("cat /one.txt /two.txt", image="app:v2")
    assert (status.code, out.text()) == (0, "one\ntwo\n")
    assert engine.images.fsck() == []


def test_removing_one_of_two_tags_only_untags(engine, events):
    app = make_image(engine.images, "app:v1", {"hello.txt": b"hello\n"})
    engine.images.tag("app:v1", "app:stable")
    blobs, layers = blob_names(engine.images), layer_names(engine.images)

    result = engine.remove_image("app:stable")
    assert (result["untagged"], result["deleted"]) == (["app:stable"], [])
    assert result["collected"] == {"blobs": [], "layers": [], "partial": []}
    assert engine.images.get("app:v1").id == app.id
    assert (blob_names(engine.images), layer_names(engine.images)) == (blobs, layers)
    assert [e.kind for e in events if e.kind.startswith("image.")] == ["image.untagged"]

    result = engine.remove_image("app:v1")  # the last tag: now the image goes
    assert result["deleted"] == [app.id]
    assert not engine.images.layer_dir(chain_ids(app.diff_ids)[-1]).exists()
    assert [e.kind for e in events if e.kind.startswith("image.")] == \
        ["image.untagged", "image.untagged", "image.deleted"]


# --- garbage collection -------------------------------------------------------------------

def test_gc_removes_unreferenced_blobs_and_layer_dirs_and_keeps_busyboxs(engine):
    store = engine.images
    busybox = store.get("busybox")
    orphan = store.put_blob(b'{"nobody": "refers to me"}', "application/json")["digest"]
    stray_layer = store.layers_dir / ("ab" * 32)
    (stray_layer / "etc").mkdir(parents=True)
    kept = make_image(store, "kept:1", {"kept.txt": b"kept\n"})

    removed = engine.gc()
    assert removed["blobs"] == [orphan]
    assert removed["layers"] == ["sha256:" + "ab" * 32]
    assert not store.has_blob(orphan) and not stray_layer.exists()
    for image in (busybox, kept):
        assert all(store.has_blob(d) for d in [image.id, image.manifest_digest] + image.diff_ids)
        assert all(p.is_dir() for p in image.layers)
    assert engine.gc() == {"blobs": [], "layers": [], "partial": []}
    assert store.fsck() == []


# --- fsck and crashes -----------------------------------------------------------------------

def test_fsck_of_a_clean_store_is_empty(engine, run):
    assert engine.images.fsck() == []
    commit_image(engine, run, "app:v1", "touch /x")
    engine.images.tag("app:v1", "app:also")
    assert engine.images.fsck() == []


def test_fsck_names_every_crash_leftover_and_gc_removes_only_the_partial_ones(engine):
    store = engine.images
    corrupt = make_image(store, "corrupt:1", {"c.txt": b"will be corrupted\n"})
    missing = make_image(store, "missing:1", {"m.txt": b"will go missing\n"})

    # A daemon killed while streaming a layer in: the blob never got its name.
    crash_in_child(store.root, """
        with store.writing_layer() as (out, layer):
            out.write(b"half a tar" * 1000)
            os._exit(9)
    """)
    # A daemon killed while unpacking a layer: the directory never got its name.
    crash_in_child(store.root, """
        import sandbox.archive
        base = store.get("busybox")
        with store.writing_layer() as (out, layer):
            write_layer_tar([LayerEntry.file("h.txt", b"half\\n")], out)
        def die(self):
            os._exit(9)
        sandbox.archive._Unpacker.finish = die
        config = dict(base.config, rootfs={"type": "layers", "diff_ids": base.diff_ids + [layer["digest"]]},
                      history=base.config["history"] + [{"created_by": "half"}])
        store.put_image(config, base.manifest["layers"] + [layer], "half:1")
    """)
    # A disk that flipped a byte, and a blob someone deleted.
    corrupt_blob = store.blob_path(corrupt.diff_ids[-1])
    data = bytearray(corrupt_blob.read_bytes())
    data[600] ^= 0xFF
    corrupt_blob.write_bytes(bytes(data))
    store.blob_path(missing.diff_ids[-1]).unlink()

    partial_blobs = [p for p in store.blobs.iterdir() if p.name.startswith(".tmp-")]
    partial_layers = [p for p in store.layers_dir.iterdir() if p.name.startswith(".")]
    assert len(partial_blobs) == 1 and len(partial_layers) == 1
    with pytest.raises(ImageError):
        store.get("half:1")  # the crash came before index.json: no such tag

    problems = store.fsck()
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert f"partial blob write left behind: {partial_blobs[0]}" in text
    assert f"blob {corrupt.diff_ids[-1]} is corrupt" in text
    assert f"image missing:1: missing layer blob {missing.diff_ids[-1]}" in text
    assert f"partial layer extraction left behind: {partial_layers[0]}" in text

    live_blobs, live_chains = store.live()
    removed = engine.gc()
    assert sorted(removed["partial"]) == sorted([partial_blobs[0].name, partial_layers[0].name])
    assert not any(p.exists() for p in partial_blobs + partial_layers)
    # Never a referenced blob, corrupt or not; the half-unpacked layer's own blob
    # (complete, but named by nothing) is ordinary garbage.
    assert not set(removed["blobs"]) & live_blobs
    assert len(removed["blobs"]) == 1
    assert corrupt_blob.exists()
    on_disk = {"sha256:" + p.name for p in store.blobs.iterdir()}
    assert live_blobs - on_disk == {missing.diff_ids[-1]}
    assert {c.removeprefix("sha256:") for c in live_chains} <= layer_names(store)

    after = store.fsck()
    assert len(after) == 2 and "is corrupt" in after[0] and "missing layer blob" in after[1]


def test_a_crash_before_index_json_leaves_no_tag_pointing_at_anything(engine):
    store = engine.images
    names = [i.name for i in store.list()]
    index_before = (store.oci / "index.json").read_bytes()
    blobs, layers = blob_names(store), layer_names(store)

    # Every blob written and the layer unpacked; killed just before the commit point.
    crash_in_child(store.root, """
        base = store.get("busybox")
        with store.lock():
            with store.writing_layer() as (out, layer):
                write_layer_tar([LayerEntry.file("late.txt", b"late\\n")], out)
        config = dict(base.config, rootfs={"type": "layers", "diff_ids": base.diff_ids + [layer["digest"]]},
                      history=base.config["history"] + [{"created_by": "late"}])
        store._add_refs = lambda added: os._exit(9)
        store.put_image(config, base.manifest["layers"] + [layer], "late:1")
    """)
    new_blobs = blob_names(store) - blobs
    assert len(new_blobs) == 3  # layer, config, manifest: complete, but named by nothing
    assert len(layer_names(store) - layers) == 1
    assert (store.oci / "index.json").read_bytes() == index_before
    assert [i.name for i in store.list()] == names
    with pytest.raises(ImageError, match="'late:1' not found"):
        store.get("late:1")
    assert store.fsck() == []  # nothing referenced is incomplete

    removed = engine.gc()
    assert {d.removeprefix("sha256:") for d in removed["blobs"]} == new_blobs
    assert len(removed["layers"]) == 1
    assert (blob_names(store), layer_names(store)) == (blobs, layers)
    assert store.fsck() == []


def test_a_crash_while_writing_index_json_keeps_the_old_index(engine):
    store = engine.images
    index_before = (store.oci / "index.json").read_bytes()
    # Killed at the commit point itself: the new index.json written, never renamed.
    crash_in_child(store.root, """
        os.rename = lambda *args: os._exit(9)
        store.tag("busybox", "never:1")
    """)
    leftovers = list(store.oci.glob(".tmp-*"))
    assert len(leftovers) == 1 and b"never:1" in leftovers[0].read_bytes()
    assert (store.oci / "index.json").read_bytes() == index_before
    with pytest.raises(ImageError):
        store.get("never:1")
    assert store.fsck() == [f"partial index write left behind: {leftovers[0]} "
                            "(index.json is intact; gc removes it)"]
    assert engine.gc()["partial"] == [leftovers[0].name]
    assert store.fsck() == [] and not leftovers[0].exists()


# --- one image set per host over shared blobs ---------------------------------------------

@pytest.fixture
def hosts(state_dir):
    root = state_dir / "shared"
    alice, bob = ImageStore(root, host="alice"), ImageStore(root, host="bob")
    alice.ensure_base_images()
    bob.ensure_base_images()
    return alice, bob


def test_each_host_has_its_own_tags_over_shared_blobs(hosts):
    alice, bob = hosts
    alice.tag("busybox", "alice/tool:1")
    assert alice.get("alice/tool:1").id == alice.get("busybox").id
    with pytest.raises(ImageError, match="'alice/tool:1' not found"):
        bob.get("alice/tool:1")
    assert [i.name for i in bob.list()] == ["busybox:latest", "scratch:latest"]

    busybox = alice.get("busybox")
    assert bob.get("busybox").id == busybox.id
    for digest in [busybox.id, busybox.manifest_digest] + busybox.diff_ids:
        assert os.path.samefile(alice.oci / "blobs/sha256" / digest[7:], bob.oci / "blobs/sha256" / digest[7:])
    assert alice.oci != bob.oci and alice.oci.parent == bob.oci.parent
    assert alice.get("busybox").layers == bob.get("busybox").layers  # unpacked once


@pytest.mark.parametrize("host", ["alice", "bob"])
def test_each_hosts_layout_is_readable_by_skopeo(hosts, host):
    store = dict(zip(["alice", "bob"], hosts))[host]
    store.tag("busybox", f"{host}-box:1")
    for ref in ("busybox:latest", f"{host}-box:1"):
        result = subprocess.run(["skopeo", "inspect", f"oci:{store.oci}:{ref}"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["Layers"] == store.get("busybox").diff_ids
    other = "bob" if host == "alice" else "alice"
    result = subprocess.run(["skopeo", "inspect", f"oci:{store.oci.parent / other}:{host}-box:1"],
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_gc_from_any_host_keeps_what_either_references(hosts):
    alice, bob = hosts
    mine = make_image(alice, "mine:1", {"alice.txt": b"alice\n"})
    theirs = make_image(bob, "theirs:1", {"bob.txt": b"bob\n"})
    default = ImageStore(alice.root)
    for store in (alice, bob, default):
        assert store.gc() == {"blobs": [], "layers": [], "partial": []}
    for image in (mine, theirs):
        assert all(alice.has_blob(d) for d in [image.id, image.manifest_digest] + image.diff_ids)
        assert all(p.is_dir() for p in image.layers)

    alice.untag("mine:1")
    removed = bob.gc()
    assert set(removed["blobs"]) == {mine.id, mine.manifest_digest, mine.diff_ids[-1]}
    assert removed["layers"] == [chain_ids(mine.diff_ids)[-1]]
    assert bob.get("theirs:1").id == theirs.id and alice.get("busybox").layers[0].is_dir()
    assert alice.fsck() == [] and bob.fsck() == []
