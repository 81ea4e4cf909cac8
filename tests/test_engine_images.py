"""The image features through the engine and the glassbox command: the tree of
real images and containers, save/load, a tar build context, fsck, build."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from sandbox import tree
from sandbox.builder import BuildOptions
from sandbox.runtime import ContainerConfig

GLASSBOX = str(Path(sys.executable).parent / "glassbox")


def build(engine, context: Path, dockerfile: str, tag: str):
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return engine.build(context, BuildOptions(tags=[tag]))


def test_the_tree_of_real_images_and_containers(engine, state_dir):
    app1 = build(engine, state_dir / "c1", "FROM busybox\nRUN echo one > /one\n", "app1")
    app2 = build(engine, state_dir / "c2", "FROM app1\nRUN echo two > /two\n", "app2")
    other = build(engine, state_dir / "c3", "FROM busybox\nRUN echo other > /other\n", "other")
    c = engine.create(ContainerConfig("app2", ["true"]))
    graph = engine.tree_graph()
    busybox_layer = tree.layer_node(engine.images.get("busybox").diff_ids[0])
    # Pull needs the branch: busybox's layer, app1's, app2's, in order.
    assert [n for n in tree.ancestors(graph, tree.image_node(app2.id)) if n.startswith("layer:")] == \
        [tree.layer_node(chain) for chain in tree.chain_ids(app2.diff_ids)]
    assert tree.shared_layers(graph, tree.image_node(app2.id), tree.image_node(other.id)) == [busybox_layer]
    # A vulnerable /bin/busybox marks every image built on it, and the container.
    vulnerable = tree.layers_containing(
        [tree.ImageInfo(i.name, i.id, i.diff_ids, i.config.get("history", []), i.layers)
         for i in engine.images.list()], path="/bin/busybox")
    assert vulnerable == [busybox_layer]
    hit = tree.affected(graph, vulnerable)
    assert {tree.image_node(i.id) for i in (app1, app2, other)} <= set(hit["images"])
    assert tree.container_node(c.id) in hit["containers"]
    # Only app2 and its container stand on app2's own layer.
    top = [tree.layer_node(tree.chain_ids(app2.diff_ids)[-1])]
    assert tree.affected(graph, top)["images"] == [tree.image_node(app2.id)]
    drawn = engine.tree()
    assert {n["id"] for n in drawn["graph"]["nodes"]} == set(drawn["layout"]["nodes"])
    json.dumps(drawn)


def test_save_and_load_through_the_engine(engine, state_dir, events):
    build(engine, state_dir / "c", "FROM busybox\nRUN echo saved > /saved\n", "saved:v1")
    archive = io.BytesIO()
    engine.export_images(["saved:v1"], archive)
    engine.remove_image("saved:v1")
    archive.seek(0)
    [image] = engine.import_images(archive)
    assert image.name == "saved:v1"
    chunks = []
    engine.run(ContainerConfig("saved:v1", ["cat", "/saved"], auto_remove=True), lambda s, d: chunks.append(d))
    assert b"".join(chunks) == b"saved\n"
    kinds = [e.kind for e in events]
    assert "image.exported" in kinds and "image.imported" in kinds


def test_a_build_context_can_be_a_tar_stream(engine, events):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY hello /hello\nCMD [\"cat\", \"/hello\"]\n"),
                           ("hello", b"from a tar\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive.seek(0)
    engine.build_context(archive, BuildOptions(tags=["fromtar"]))
    chunks = []
    engine.run(ContainerConfig("fromtar", None, auto_remove=True), lambda s, d: chunks.append(d))
    assert b"".join(chunks) == b"from a tar\n"


def test_glassbox_build_and_fsck_commands(state_dir, host_unchanged):
    state = state_dir / "state"
    context = state_dir / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi\n")
    result = subprocess.run([GLASSBOX, "build", "--state-dir", str(state), "-t", "cli:v1", str(context)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Step 2/2 : RUN echo hi > /hi" in result.stdout and "Successfully tagged cli:v1" in result.stdout
    result = subprocess.run([GLASSBOX, "fsck", "--state-dir", str(state)], capture_output=True, text=True)
    assert result.returncode == 0 and "is consistent" in result.stdout
    # A crash mid-write (a partial blob) and a corrupted blob are both named.
    blobs = state / "oci" / "blobs" / "sha256"
    (blobs / ".tmp-crashed").write_bytes(b"half a layer")
    victim = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = subprocess.run([GLASSBOX, "fsck", "--state-dir", str(state)], capture_output=True, text=True)
    assert result.returncode == 1
    assert ".tmp-crashed" in result.stdout and f"blob sha256:{victim.name} is corrupt" in result.stdout


def test_commit_takes_changes_as_docker_commit_does(engine):
    c = engine.create(ContainerConfig("busybox", ["sh", "-c", "echo data > /data.txt"]))
    engine.start(c)
    engine.wait(c)
    image = engine.commit(c, "changed:v1", author="teacher", message="lesson 7",
                          changes=['CMD ["cat", "/data.txt"]', "ENV MODE=committed", "EXPOSE 8080",
                                   "LABEL lesson=7", "WORKDIR /srv"])
    config = image.config["config"]
    assert config["Cmd"] == ["cat", "/data.txt"] and "MODE=committed" in config["Env"]
    assert config["ExposedPorts"] == {"8080/tcp": {}} and config["Labels"] == {"lesson": "7"}
    assert config["WorkingDir"] == "/srv"
    assert image.config["history"][-1]["comment"] == "lesson 7"
    assert image.config["history"][-1]["author"] == "teacher"
    chunks = []
    engine.run(ContainerConfig("changed:v1", None, auto_remove=True), lambda s, d: chunks.append(d))
    assert b"".join(chunks) == b"data\n"
    import pytest
    from sandbox.engine import EngineError
    with pytest.raises(EngineError, match="RUN is not a change a commit can make"):
        engine.commit(c, "bad", changes=["RUN true"])


def test_two_hosts_share_a_state_dir_but_not_their_images_or_containers(state_dir, host_unchanged):
    from sandbox.engine import Engine
    node1 = Engine(state_dir / "state", host="node1", uid_base=200000)
    node2 = Engine(state_dir / "state", host="node2", uid_base=300000)
    try:
        build(node1, state_dir / "c", "FROM busybox\nRUN echo one > /one\n", "only-on-node1")
        assert "only-on-node1:latest" in [i.name for i in node1.images.list()]
        assert "only-on-node1:latest" not in [i.name for i in node2.images.list()]
        # The busybox layer is one directory on disk for both hosts.
        assert node1.images.get("busybox").layers == node2.images.get("busybox").layers
        a = node1.create(ContainerConfig("busybox", ["sleep", "30"]))
        b = node2.create(ContainerConfig("busybox", ["sleep", "30"]))
        node1.start(a)
        node2.start(b)
        assert [c.id for c in node1.list()] == [a.id] and [c.id for c in node2.list()] == [b.id]
        uids = {Path(f"/proc/{c.process.pid}/status").read_text().split("Uid:")[1].split()[0]
                for c in (a, b)}
        assert uids == {"200000", "300000"}  # each host's root is its own host uid
        assert node1.cgroup_root != node2.cgroup_root
    finally:
        node1.close()
        node2.close()


def test_a_context_that_unpacks_too_big_is_refused(engine):
    import gzip
    from sandbox.engine import EngineError
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        data = b"\0" * (8 << 20)
        info = tarfile.TarInfo("zeros")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    bomb = io.BytesIO(gzip.compress(payload.getvalue()))
    engine.policy.max_context_bytes = 1 << 20
    import pytest
    with pytest.raises(EngineError, match="unpacks to more than"):
        engine.build_context(bomb, BuildOptions())
    assert not list(engine.state_dir.glob(".context-*"))


def test_pruning_the_build_cache_frees_the_layers_only_it_kept(engine, state_dir):
    build(engine, state_dir / "c", "FROM busybox\nRUN echo cached > /cached\n", "pruned")
    engine.remove_image("pruned")
    layers_before = set(engine.images.layers_dir.iterdir())
    result = engine.prune_build_cache()
    assert result["entries"] >= 1 and result["layers"]
    assert set(engine.images.layers_dir.iterdir()) < layers_before
    assert engine.images.get("busybox").layers[0].is_dir()
