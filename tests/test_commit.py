"""Container → image by commit: the upper dir becomes a layer, and the image runs.

One container makes every kind of change a layer must carry (a deleted lower
file, a replaced directory, a mode change, a chown, hard links, a symlink);
its commit is then checked three ways: by running the new image, by reading
the layer tar, and by unpacking the image with umoci.
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from sandbox.images import REF_NAME, chain_ids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

CHANGES = " && ".join([
    "rm /bin/vi",                                  # a lower file deleted → .wh.vi
    "rm -rf /usr/sbin && mkdir /usr/sbin && touch /usr/sbin/only",  # lower dir replaced → opaque
    "rm -rf /home && mkdir /home && touch /home/x",  # (empty lower dir replaced: opaque too)
    "chmod 600 /etc/group",                        # a lower file's mode changed
    "mkdir -p /srv && echo data > /srv/owned && chown 1000:1000 /srv/owned",
    "echo pair > /srv/a && ln /srv/a /srv/b",      # a hard link pair
    "ln -s /srv/a /srv/link",                      # a symlink
])

# What the new image's container (and umoci's bundle) must show.
LOOK = ("ls /bin/vi 2>&1; ls -A /usr/sbin; ls -A /home; "
        "stat -c '%n %a %u %g %h' /etc/group /srv/owned /srv/a /srv/b; "
        "readlink /srv/link; cat /srv/b")


@pytest.fixture
def committed(engine, run):
    """(container, image) after the changes above, committed as "changed:v1"."""
    status, out, c = run(CHANGES)
    assert status.code == 0, out.text()
    image = engine.commit(c, "changed:v1", author="Ada <ada@example.org>",
                          message="every kind of change",
                          changes={"Cmd": ["cat", "/srv/a"], "Env": ["PATH=/bin:/usr/bin", "LESSON=3"]})
    return c, image


def _layer_members(engine, image) -> dict[str, tarfile.TarInfo]:
    top = image.manifest["layers"][-1]
    with tarfile.open(engine.images.blob_path(top["digest"])) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_committed_image_runs_with_the_containers_changes(committed, run):
    _, image = committed
    status, out, _ = run(LOOK, image="changed:v1")
    assert status.code == 0, out.text()
    lines = out.text().splitlines()
    assert "No such file or directory" in lines[0]          # the deleted file is gone
    assert lines[1] == "only"                                # opaque: nothing of busybox's sbin
    assert lines[2] == "x"
    assert lines[3:7] == ["/etc/group 600 0 0 1",
                          "/srv/owned 644 1000 1000 1",     # as set inside, not 101000
                          "/srv/a 644 0 0 2",               # the hard link pair survived
                          "/srv/b 644 0 0 2"]
    assert lines[7:] == ["/srv/a", "pair"]


def test_commit_config_takes_author_message_and_changes(committed, engine, run):
    c, image = committed
    parent = engine.images.get("busybox")
    history = image.config["history"]
    assert len(history) == len(parent.config["history"]) + 1
    assert history[:-1] == parent.config["history"]
    assert history[-1]["author"] == "Ada <ada@example.org>"
    assert history[-1]["comment"] == "every kind of change"
    assert history[-1]["created_by"] == " ".join(c.argv)
    assert image.config["author"] == "Ada <ada@example.org>"
    assert image.config["config"]["Cmd"] == ["cat", "/srv/a"]
    assert image.config["config"]["Env"] == ["PATH=/bin:/usr/bin", "LESSON=3"]
    made_layers = [h for h in history if not h.get("empty_layer")]
    assert len(image.diff_ids) == len(image.manifest["layers"]) == len(made_layers) == 2
    assert image.diff_ids[:1] == parent.diff_ids
    # The layer blob is the uncompressed tar: its digest is its DiffID.
    assert image.manifest["layers"][-1]["digest"] == image.diff_ids[-1]
    assert image.layers == [engine.images.layer_dir(ch) for ch in chain_ids(image.diff_ids)]
    # The new Cmd and Env are what a container of it runs with.
    status, out, _ = run(None, image="changed:v1")
    assert (status.code, out.text()) == (0, "pair\n")
    status, out, _ = run("echo $LESSON", image="changed:v1")
    assert out.text() == "3\n"


def test_commit_emits_layer_created_and_image_committed(engine, run, events):
    status, _, c = run("touch /new")
    image = engine.commit(c, "evented:1")
    created = next(e for e in events if e.kind == "layer.created")
    assert created.subject == {"layer": image.diff_ids[-1]}
    assert created.detail["from"] == "commit" and created.detail["files"] == 1
    committed = next(e for e in events if e.kind == "image.committed")
    assert committed.subject == {"image": image.id, "container": c.id}
    assert committed.detail["name"] == "evented:1" and committed.detail["layers"] == 2


def test_layer_tar_spells_whiteouts_opaque_dirs_and_owners_as_oci_does(committed, engine):
    _, image = committed
    members = _layer_members(engine, image)
    assert "bin/.wh.vi" in members and members["bin/.wh.vi"].size == 0
    assert "usr/sbin/.wh..wh..opq" in members
    assert "home/.wh..wh..opq" in members
    assert "usr/sbin/only" in members and "home/x" in members
    assert not any(name.startswith("usr/sbin/") and name not in
                   ("usr/sbin/.wh..wh..opq", "usr/sbin/only") for name in members)
    # Owners as the container saw them; on disk they are the mapped host ids.
    owned = members["srv/owned"]
    assert (owned.uid, owned.gid) == (1000, 1000)
    assert all((m.uid, m.gid) == (0, 0) for name, m in members.items()
               if name != "srv/owned" and ".wh." not in name), \
        {n: (m.uid, m.gid) for n, m in members.items()}
    assert members["etc/group"].mode == 0o600
    links = [members["srv/a"], members["srv/b"]]
    assert sorted(m.type for m in links) == sorted([tarfile.REGTYPE, tarfile.LNKTYPE])
    link = next(m for m in links if m.islnk())
    assert link.linkname in ("srv/a", "srv/b") and link.linkname != link.name
    assert members["srv/link"].issym() and members["srv/link"].linkname == "/srv/a"


def test_upper_dir_on_disk_belongs_to_the_mapped_ids(committed, engine):
    c, _ = committed
    upper = c.rw_dir / "upper"
    assert os.stat(upper / "srv/owned").st_uid == engine.runtime.uid_base + 1000
    assert os.stat(upper / "srv/a").st_uid == engine.runtime.uid_base


def test_unpacked_layer_keeps_container_owners(committed):
    _, image = committed
    top = image.layers[-1]
    assert os.stat(top / "srv/owned").st_uid == 1000
    assert os.stat(top / "srv/a").st_nlink == 2


def test_umoci_unpacks_the_committed_image_to_the_same_view(committed, engine):
    _, image = committed
    layout = engine.images.oci
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"][REF_NAME] for m in index["manifests"]]
    assert "changed:v1" in names  # umoci's --image LAYOUT:REF looks REF up by this annotation
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as tmp:
        bundle = Path(tmp) / "bundle"
        result = subprocess.run(["umoci", "unpack", "--image", f"{layout}:changed:v1", str(bundle)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        rootfs = bundle / "rootfs"
        assert not os.path.lexists(rootfs / "bin/vi")
        assert (rootfs / "bin/sh").exists()
        assert sorted(os.listdir(rootfs / "usr/sbin")) == ["only"]
        assert sorted(os.listdir(rootfs / "home")) == ["x"]
        assert os.stat(rootfs / "etc/group").st_mode & 0o7777 == 0o600
        owned = os.stat(rootfs / "srv/owned")
        assert (owned.st_uid, owned.st_gid) == (1000, 1000)
        assert os.stat(rootfs / "srv/a").st_nlink == 2
        assert os.stat(rootfs / "srv/a").st_ino == os.stat(rootfs / "srv/b").st_ino
        assert os.readlink(rootfs / "srv/link") == "/srv/a"
        assert (rootfs / "srv/b").read_text() == "pair\n"
        # umoci also unpacks whiteouts as absences, never as files.
        assert not list(rootfs.rglob(".wh.*"))


def test_commit_of_a_committed_images_container_chains_the_layers(committed, engine, run):
    _, first = committed
    status, out, c2 = run("echo second > /srv/second && rm /srv/a", image="changed:v1")
    assert status.code == 0, out.text()
    second = engine.commit(c2, "changed:v2", message="second")
    assert len(second.diff_ids) == len(second.manifest["layers"]) == 3
    assert second.diff_ids[:2] == first.diff_ids
    assert second.manifest["layers"][:2] == first.manifest["layers"]
    assert len(second.config["history"]) == 3
    # The two lower layers are the same directories on disk, keyed by ChainID.
    assert second.layers[:2] == first.layers
    assert [p.name for p in second.layers] == [ch.removeprefix("sha256:")
                                               for ch in chain_ids(second.diff_ids)]
    assert all(p.is_dir() for p in second.layers)
    on_disk = sorted(p.name for p in engine.images.layers_dir.iterdir())
    assert on_disk == sorted(p.name for p in second.layers)
    assert engine.images.children(first) and engine.images.children(first)[0].id == second.id
    status, out, _ = run("cat /srv/second /srv/b; ls /srv/a 2>&1", image="changed:v2")
    lines = out.text().splitlines()
    assert lines[:2] == ["second", "pair"]
    assert "No such file" in lines[2]  # the whiteout in layer 3 hides layer 2's file


def test_commit_refuses_a_bad_name_and_unknown_changes(engine, run):
    from sandbox.engine import EngineError
    _, _, c = run("true")
    with pytest.raises(ValueError, match="invalid image name 'Bad Name'"):
        engine.commit(c, "Bad Name")
    with pytest.raises(EngineError, match="can't change Memory"):
        engine.commit(c, "ok:1", changes={"Memory": 1})
    assert [i.name for i in engine.images.list()] == ["busybox:latest", "scratch:latest"]


def test_committed_setuid_file_is_out_of_host_users_reach(engine, run, state_dir):
    status, out, c = run("cp /bin/busybox /suid && chmod 4755 /suid")
    assert status.code == 0, out.text()
    image = engine.commit(c, "suid:1")
    on_disk = os.stat(image.layers[-1] / "suid")
    # Unpacked with the owner the container saw (0): a setuid-root file on the host …
    assert (on_disk.st_uid, on_disk.st_mode & 0o7777) == (0, 0o4755)
    # … so only root may enter the layers; a host user can't run it even when the
    # state dir itself is reachable (/var/lib/glassbox is 0711).
    assert engine.images.layers_dir.stat().st_mode & 0o777 == 0o700
    os.chmod(state_dir, 0o755)
    with pytest.raises(PermissionError):
        subprocess.run([str(image.layers[-1] / "suid"), "true"], user=65534, group=65534)
    # Containers still run on the layer: the engine mounts it for them.
    status, out, _ = run("ls -ln /suid", image="suid:1")
    assert out.text().split()[0] == "-rwsr-xr-x" and out.text().split()[2:4] == ["0", "0"]
