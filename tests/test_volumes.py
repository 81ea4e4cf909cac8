"""Volumes: storage that outlives a container, named or made from an image's VOLUME."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from sandbox.builder import BuildOptions
from sandbox.engine import Conflict, EngineError, NotFound
from sandbox.runtime import ContainerConfig, Mount
from sandbox.volumes import VolumeNotFound

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def kinds(events, prefix="volume."):
    return [(e.kind, e.subject.get("volume")) for e in events if e.kind.startswith(prefix)]


@pytest.fixture
def volume_image(engine, state_dir):
    """"withvol:1": busybox with ``VOLUME /data``, built from a Dockerfile."""
    context = state_dir / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nVOLUME /data\nCMD [\"ls\", \"/data\"]\n")
    return engine.build(context, BuildOptions(tags=["withvol:1"]))


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_create_list_inspect_remove(engine, events):
    volume = engine.create_volume("myvol", labels={"lesson": "3"})
    assert volume.name == "myvol" and not volume.anonymous
    assert volume.mountpoint.is_dir() and volume.mountpoint.name == "_data"
    assert [v.name for v in engine.volumes.list()] == ["myvol"]
    inspected = engine.volumes.get("myvol").to_docker()
    assert inspected["Name"] == "myvol" and inspected["Driver"] == "local"
    assert inspected["Mountpoint"] == str(volume.mountpoint)
    assert inspected["Labels"] == {"lesson": "3"} and inspected["Anonymous"] is False
    assert engine.create_volume("myvol").created == volume.created  # the same volume again

    engine.remove_volume("myvol")
    assert engine.volumes.list() == []
    assert not volume.mountpoint.exists()
    with pytest.raises(VolumeNotFound, match="no such volume: myvol"):
        engine.volumes.get("myvol")
    with pytest.raises(NotFound, match="no such volume: myvol"):
        engine.remove_volume("myvol")
    assert kinds(events) == [("volume.created", "myvol"), ("volume.removed", "myvol")]


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "x" * 129, "with space", "-flag"])
def test_invalid_volume_names_are_refused_clearly(engine, name):
    with pytest.raises(EngineError, match="invalid volume name"):
        engine.create_volume(name)
    with pytest.raises(EngineError, match="invalid volume name"):
        engine.create(ContainerConfig("busybox", ["true"], mounts=[Mount(name, "/data", volume=name)]))
    assert engine.volumes.list() == [] and engine.list() == []


def test_invalid_volume_specs_are_refused_clearly():
    for spec in ("myvol:data", "myvol", ":/data", "myvol:/data:rx:extra"):
        with pytest.raises(ValueError, match="invalid volume"):
            Mount.parse(spec)
    assert Mount.parse("myvol:/data:ro") == Mount("myvol", "/data", True, volume="myvol")


def test_named_volume_keeps_data_after_its_container_and_mounts_read_only(engine, run, events):
    status, out, writer = run("echo kept > /data/note && ls -ln /data",
                              mounts=[Mount.parse("myvol:/data")])
    assert status.code == 0, out.text()
    assert out.text().split()[4:6] == ["0", "0"]  # container root's own file
    engine.remove(writer, volumes=True)  # a named volume is not the container's to take
    assert (engine.volumes.get("myvol").mountpoint / "note").read_text() == "kept\n"

    status, out, reader = run("cat /data/note; echo more > /data/other",
                              mounts=[Mount.parse("myvol:/data:ro")])
    assert status.code != 0
    assert out.text("stdout") == "kept\n"
    assert "Read-only file system" in out.text("stderr")
    assert not (engine.volumes.get("myvol").mountpoint / "other").exists()

    mounted = [e for e in events if e.kind == "volume.mounted"]
    assert [(e.subject["container"], e.detail["target"], e.detail["readonly"]) for e in mounted] == \
        [(writer.id, "/data", False), (reader.id, "/data", True)]
    assert kinds(events) == [("volume.created", "myvol"), ("volume.mounted", None),
                             ("volume.mounted", None)]


def test_volume_data_belongs_to_container_root_not_host_root(engine, run):
    status, out, _ = run("mkdir /data/dir && echo x > /data/dir/file", mounts=[Mount.parse("myvol:/data")])
    assert status.code == 0, out.text()
    data = engine.volumes.get("myvol").mountpoint
    root_uid = engine.runtime.uid_base
    for path in (data, data / "dir", data / "dir/file"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (root_uid, root_uid), path


def test_host_users_cannot_reach_volume_data(engine, run, state_dir):
    # A setuid file container root leaves in a volume is setuid-100000 on the host:
    # whoever ran it would be the mapped root of every container.
    status, out, _ = run("cp /bin/busybox /data/suid && chmod 4755 /data/suid && echo secret > /data/notes",
                         mounts=[Mount.parse("myvol:/data")])
    assert status.code == 0, out.text()
    data = engine.volumes.get("myvol").mountpoint
    assert os.stat(data / "suid").st_mode & 0o7777 == 0o4755
    os.chmod(state_dir, 0o755)  # as /var/lib/glassbox is (0711): the state dir is not the guard
    with pytest.raises(PermissionError):
        subprocess.run([str(data / "suid"), "true"], user=65534, group=65534)
    result = subprocess.run(["/bin/cat", str(data / "notes")], user=65534, group=65534,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert engine.volumes.root.stat().st_mode & 0o777 == 0o700
    # The container still gets it: the runtime opens the volume as host root.
    status, out, _ = run("cat /data/notes", mounts=[Mount.parse("myvol:/data:ro")])
    assert (status.code, out.text()) == (0, "secret\n")


def test_volume_removal_is_refused_while_any_container_has_it(engine, run, events):
    status, _, c = run("true", name="holder", mounts=[Mount.parse("myvol:/data")])
    assert status.code == 0 and c.state == "exited"
    with pytest.raises(Conflict, match="volume myvol is in use by container holder: remove it first"):
        engine.remove_volume("myvol")
    assert engine.volumes.get("myvol")

    engine.remove(c)
    engine.remove_volume("myvol")
    assert engine.volumes.list() == []
    assert ("volume.removed", "myvol") in kinds(events)


def test_image_volume_gets_an_anonymous_volume_per_container(engine, run, volume_image, events):
    assert volume_image.config["config"]["Volumes"] == {"/data": {}}
    status, out, first = run("echo first > /data/mine; ls /data", image="withvol:1")
    assert out.text() == "mine\n"
    status, out, second = run("ls -A /data", image="withvol:1")
    assert (status.code, out.text()) == (0, "")  # a fresh volume, not the first one's

    first_volume, second_volume = (c.config.mounts[0].volume for c in (first, second))
    assert first_volume != second_volume
    for name in (first_volume, second_volume):
        volume = engine.volumes.get(name)
        assert volume.anonymous and len(name) == 64

    engine.remove(first, volumes=True)   # docker rm -v: its anonymous volume goes
    engine.remove(second)                # docker rm: kept
    assert [v.name for v in engine.volumes.list()] == [second_volume]
    created = [e for e in events if e.kind == "volume.created"]
    assert [(e.subject["volume"], e.detail["anonymous"]) for e in created] == \
        [(first_volume, True), (second_volume, True)]
    assert ("volume.removed", first_volume) in kinds(events)
    engine.remove_volume(second_volume)


def test_auto_remove_takes_the_anonymous_volume_along(engine, volume_image):
    c = engine.create(ContainerConfig("withvol:1", ["touch", "/data/x"], auto_remove=True))
    name = c.config.mounts[0].volume
    assert engine.volumes.get(name).anonymous
    engine.start(c)
    assert engine.wait(c, timeout=30).code == 0
    assert wait_until(lambda: c.state == "removed" and not engine.volumes.list())


def test_named_volume_on_the_image_volume_path_replaces_the_anonymous_one(engine, run, volume_image):
    status, out, c = run("echo named > /data/f", image="withvol:1", mounts=[Mount.parse("mine:/data")])
    assert status.code == 0, out.text()
    assert [m.volume for m in c.config.mounts] == ["mine"]
    assert [v.name for v in engine.volumes.list()] == ["mine"]
    engine.remove(c, volumes=True)
    assert (engine.volumes.get("mine").mountpoint / "f").read_text() == "named\n"
