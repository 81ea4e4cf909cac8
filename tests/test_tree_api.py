"""The image tree through the daemon's API (``/glassbox/tree``, ``/tree/node``, ``/tree/weak``)
and through the web app's Socket.IO relay, on images the real docker CLI builds.

One ``glassbox daemon`` serves the module. The three-step build is made once:

    FROM busybox
    RUN echo draft > /motd.txt        a layer (adds /motd.txt, 6 bytes)
    ENV STAGE=final                   config only: no layer
    COPY motd.txt /motd.txt           a layer (rewrites /motd.txt, 12 bytes: 18 wasted)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from sandbox.images import chain_ids
from tests.docker_harness import DOCKER, running_daemon, unix_request

pytestmark = [
    pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs containers: needs root"),
]

DOCKERFILE = """\
FROM busybox
RUN echo draft > /motd.txt
ENV STAGE=final
COPY motd.txt /motd.txt
"""
MOTD = "final words\n"


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("glassbox-test-tree-api-") as daemon:
        yield daemon


@pytest.fixture
def docker(daemon):
    """The daemon, with every container a test made removed after it."""
    yield daemon
    daemon.remove_containers()


def api(daemon, method: str, path: str, body=None, host: str = "default"):
    """(status, decoded JSON) of one request on a host's socket."""
    status, data = daemon.request(method, path, None if body is None else json.dumps(body),
                                  {"Content-Type": "application/json"}, host=host)
    return status, json.loads(data) if data else None


def control(daemon, method: str, path: str, body=None):
    """A request on the control socket, which manages hosts."""
    status, data = unix_request(daemon.state / "glassbox.sock", method, path,
                                None if body is None else json.dumps(body),
                                {"Content-Type": "application/json"})
    return status, json.loads(data) if data else None


def get_tree(daemon, host: str = "default") -> dict:
    status, body = api(daemon, "GET", "/glassbox/tree", host=host)
    assert status == 200, body
    return body


def node(daemon, ident: str, host: str = "default"):
    return api(daemon, "GET", f"/glassbox/tree/node?id={quote(ident, safe='')}", host=host)


def weak(daemon, body: dict, host: str = "default"):
    return api(daemon, "POST", "/glassbox/tree/weak", body, host=host)


def inspect(daemon, ref: str) -> dict:
    return json.loads(daemon.ok("image", "inspect", ref))[0]


def layer_nodes(daemon, ref: str) -> list[str]:
    """The image's layers as tree nodes, bottom to top, from what `docker inspect` says."""
    return [f"layer:{c}" for c in chain_ids(inspect(daemon, ref)["RootFS"]["Layers"])]


@pytest.fixture(scope="module")
def built(daemon):
    """The tree before and after the three-step build of ``three:v1``."""
    before = get_tree(daemon)
    context = daemon.top / "three"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "motd.txt").write_text(MOTD)
    daemon.ok("build", "-t", "three:v1", str(context))
    return {"before": before, "after": get_tree(daemon), "id": inspect(daemon, "three:v1")["Id"]}


# ---------------------------------------------------------------------- the tree

def test_a_three_step_build_adds_its_two_layers_and_one_image_and_nothing_else(daemon, built):
    before, after = built["before"], built["after"]
    base, run_layer, copy_layer = layer_nodes(daemon, "three:v1")
    assert base == layer_nodes(daemon, "busybox")[0]
    image = f"image:{built['id']}"

    known = {n["id"] for n in before["graph"]["nodes"]}
    added = {n["id"]: n for n in after["graph"]["nodes"] if n["id"] not in known}
    assert set(added) == {run_layer, copy_layer, image}     # ENV made no layer
    edges = lambda tree: {(e["source"], e["target"], e["kind"]) for e in tree["graph"]["edges"]}
    assert edges(after) - edges(before) == {(base, run_layer, "layer"), (run_layer, copy_layer, "layer"),
                                            (copy_layer, image, "image")}
    assert edges(before) <= edges(after)

    assert added[run_layer]["kind"] == added[copy_layer]["kind"] == "layer"
    assert "echo draft > /motd.txt" in added[run_layer]["attributes"]["created_by"]
    assert added[copy_layer]["attributes"]["created_by"].startswith("COPY")
    assert (added[run_layer]["attributes"]["size"], added[copy_layer]["attributes"]["size"]) == (6, 12)
    assert added[image]["attributes"]["tags"] == ["three:v1"]
    assert [step for step in added[image]["attributes"]["config_steps"] if "STAGE=final" in step]
    # Every node is placed, every edge drawn, and the answer says what it is.
    assert set(after["layout"]["nodes"]) == {n["id"] for n in after["graph"]["nodes"]}
    assert {(e["source"], e["target"]) for e in after["layout"]["edges"]} == \
        {(e["source"], e["target"]) for e in after["graph"]["edges"]}
    assert after["layout"]["width"] > 0 and after["layout"]["height"] > 0
    assert len(after["signature"]) == 16 and after["signature"] != before["signature"]


def test_a_layers_details_list_the_files_its_step_added_or_changed(daemon, built):
    _, run_layer, copy_layer = layer_nodes(daemon, "three:v1")
    status, run = node(daemon, run_layer)
    assert status == 200, run
    diff_ids = inspect(daemon, "three:v1")["RootFS"]["Layers"]
    assert (run["id"], run["kind"], run["chain_id"], run["diff_id"]) == \
        (run_layer, "layer", run_layer.removeprefix("layer:"), diff_ids[1])
    assert run["size"] == 6 and "echo draft" in run["created_by"] and run["created"]
    assert run["changes"]["added"] == [{"path": "/motd.txt", "kind": "file", "size": 6}]
    assert (run["changes"]["added_count"], run["changes"]["modified_count"],
            run["changes"]["removed_count"]) == (1, 0, 0)

    status, copy = node(daemon, copy_layer)
    assert status == 200, copy
    assert copy["changes"]["added"] == [] and copy["changes"]["removed"] == []
    assert copy["changes"]["modified"] == [{"path": "/motd.txt", "kind": "file", "size": 12,
                                            "previous_size": 6}]


def test_an_images_details_give_its_layers_history_and_efficiency(daemon, built):
    layers = layer_nodes(daemon, "three:v1")
    status, image = node(daemon, f"image:{built['id']}")
    assert status == 200, image
    assert image["kind"] == "image" and image["tags"] == ["three:v1"]
    assert image["layers"] == layers
    sizes = [node(daemon, layer)[1]["size"] for layer in layers]
    assert image["size"] == sum(sizes)
    # History: four steps, the ENV tied to no layer.
    assert [step["layer"] for step in image["history"]] == [layers[0], layers[1], None, layers[2]]
    # /motd.txt is written twice (6 then 12 bytes): 18 bytes wasted, as dive counts them.
    efficiency = image["efficiency"]
    assert efficiency["wasted_bytes"] == 18 and efficiency["inefficiency_count"] == 1
    assert efficiency["inefficiencies"][0]["path"] == "/motd.txt"
    assert efficiency["user_size"] == 18 and 0 < efficiency["score"] < 1


def test_a_containers_details_give_its_image_and_writable_layer(docker, built):
    ident = docker.ok("run", "-d", "three:v1", "sh", "-c", "head -c 1000 /dev/zero > /written; sleep 30").strip()
    docker.ok("exec", ident, "sh", "-c", "while [ ! -s /written ]; do sleep 0.1; done")
    status, details = node(docker, f"container:{ident}")
    assert status == 200, details
    assert details["image"] == f"image:{built['id']}" and details["state"] == "running"
    assert details["name"] and details["upper_bytes"] >= 1000


def edges_of(answer: dict) -> dict:
    return {(e["source"], e["target"]): e for e in answer["graph"]["edges"]}


def test_docker_commit_draws_the_container_becoming_a_child_image(docker, built):
    ident = docker.ok("run", "-d", "three:v1", "sh", "-c", "echo snapshot > /snap.txt").strip()
    docker.ok("wait", ident)
    before = get_tree(docker)
    image_id = docker.ok("commit", ident, "snap:v1").strip()
    after = get_tree(docker)

    image, container = f"image:{image_id}", f"container:{ident}"
    new_layer = layer_nodes(docker, "snap:v1")[-1]
    assert layer_nodes(docker, "snap:v1")[:-1] == layer_nodes(docker, "three:v1")
    added = {(a, b, e["kind"]) for (a, b), e in edges_of(after).items()} - \
        {(a, b, e["kind"]) for (a, b), e in edges_of(before).items()}
    assert added == {(layer_nodes(docker, "three:v1")[-1], new_layer, "layer"), (new_layer, image, "image"),
                     (container, image, "committed")}
    # The image says where it came from, as Docker's does.
    assert docker.client.images.get("snap:v1").attrs["Container"] == ident
    route = {(e["source"], e["target"]): e for e in after["layout"]["edges"]}[container, image]
    assert route["label"] == "commit" and len(route["label_at"]) == 2
    status, details = node(docker, image)
    assert status == 200 and details["committed_from"] == container

    docker.ok("rm", ident)
    gone = get_tree(docker)
    assert image in {n["id"] for n in gone["graph"]["nodes"]}
    assert all(e["kind"] != "committed" for e in gone["graph"]["edges"])
    docker.ok("rmi", "snap:v1")


def test_volumes_are_drawn_with_their_mounts_and_stay_after_their_container(docker, built):
    docker.ok("volume", "create", "notes")
    try:
        ident = docker.ok("run", "-d", "-v", "notes:/notes", "three:v1", "sh", "-c",
                          "echo kept > /notes/a.txt; head -c 2000 /dev/zero > /scratch.bin").strip()
        docker.ok("wait", ident)
        answer = get_tree(docker)
        nodes = {n["id"]: n for n in answer["graph"]["nodes"]}
        container = f"container:{ident}"
        assert nodes["volume:notes"]["kind"] == "volume"
        assert nodes["volume:notes"]["attributes"] == {"name": "notes", "anonymous": False}
        mount = edges_of(answer)[container, "volume:notes"]
        assert mount["kind"] == "mounts" and mount["path"] == "/notes"
        # The writable layer holds the 2000 bytes written outside the volume, not the volume's file.
        assert 2000 <= nodes[container]["attributes"]["upper_bytes"] < 2100
        status, details = node(docker, "volume:notes")
        assert status == 200 and details["mounted_by"] == [{"container": container, "path": "/notes"}]

        docker.ok("rm", ident)
        after = get_tree(docker)
        assert "volume:notes" in {n["id"] for n in after["graph"]["nodes"]}
        assert not [e for e in after["graph"]["edges"] if e["target"] == "volume:notes"]
        assert after["signature"] != answer["signature"]
    finally:
        docker.remove_containers()
        docker.ok("volume", "rm", "notes")
    assert "volume:notes" not in {n["id"] for n in get_tree(docker)["graph"]["nodes"]}


@pytest.fixture(scope="module")
def child(daemon, built) -> str:
    """child:v1, FROM three:v1: one more layer, which removes /motd.txt and adds /child.txt."""
    context = daemon.top / "child"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM three:v1\nRUN rm /motd.txt && echo child > /child.txt\n")
    daemon.ok("build", "-t", "child:v1", str(context))
    return inspect(daemon, "child:v1")["Id"]


def test_a_layer_that_deletes_a_file_lists_it_as_removed(daemon, child):
    status, layer = node(daemon, layer_nodes(daemon, "child:v1")[-1])
    assert status == 200, layer
    assert layer["changes"]["removed"] == [{"path": "/motd.txt", "kind": "file", "size": 12}]
    assert layer["changes"]["added"] == [{"path": "/child.txt", "kind": "file", "size": 6}]
    assert layer["depth"] == 3


# ---------------------------------------------------------------------- weak points

def test_a_weak_busybox_binary_lights_every_image_built_on_busybox_and_their_containers(docker, built):
    scratch_context = docker.top / "fromscratch"
    scratch_context.mkdir(exist_ok=True)
    (scratch_context / "Dockerfile").write_text("FROM scratch\nCOPY motd.txt /motd.txt\n")
    (scratch_context / "motd.txt").write_text(MOTD)
    docker.ok("build", "-t", "plain:v1", str(scratch_context))
    on_three = docker.ok("create", "three:v1", "true").strip()
    on_busybox = docker.ok("create", "busybox", "true").strip()
    on_plain = docker.ok("create", "plain:v1", "/motd.txt").strip()

    status, hit = weak(docker, {"path": "/bin/busybox"})
    assert status == 200, hit
    busybox_layer = layer_nodes(docker, "busybox")[0]
    assert hit["marked"] == [busybox_layer]
    # Expected from the docker CLI alone: every image whose first layer is busybox's.
    ids = docker.ok("images", "-q", "--no-trunc").split()
    expected = {f"image:{i}" for i in ids
                if inspect(docker, i)["RootFS"]["Layers"][:1] == inspect(docker, "busybox")["RootFS"]["Layers"]}
    assert {f"image:{built['id']}", f"image:{inspect(docker, 'busybox')['Id']}"} <= expected
    assert set(hit["images"]) == expected
    assert f"image:{inspect(docker, 'plain:v1')['Id']}" not in hit["images"]
    assert set(hit["containers"]) == {f"container:{on_three}", f"container:{on_busybox}"}
    assert f"container:{on_plain}" not in hit["containers"]
    assert busybox_layer in hit["layers"] and set(layer_nodes(docker, "three:v1")) <= set(hit["layers"])
    assert hit["count"] == {"layers": len(hit["layers"]), "images": len(expected), "containers": 2}

    # Narrowed by the file's content: the same, and nothing for a digest no file has.
    digest = "sha256:" + hashlib.sha256(Path("/bin/busybox").resolve().read_bytes()).hexdigest()
    assert weak(docker, {"path": "/bin/busybox", "digest": digest})[1]["images"] == hit["images"]
    none = weak(docker, {"path": "/bin/busybox", "digest": "sha256:" + "0" * 64})[1]
    assert none["count"] == {"layers": 0, "images": 0, "containers": 0}


def test_a_weak_top_layer_lights_only_that_image_and_what_is_built_on_it(docker, built, child):
    top = layer_nodes(docker, "three:v1")[-1]
    on_three = docker.ok("create", "three:v1", "true").strip()
    docker.ok("create", "busybox", "true")

    status, hit = weak(docker, {"layers": [top]})
    assert status == 200, hit
    assert hit["marked"] == [top]
    assert set(hit["images"]) == {f"image:{built['id']}", f"image:{inspect(docker, 'child:v1')['Id']}"}
    assert hit["containers"] == [f"container:{on_three}"]
    assert set(hit["layers"]) == {top, layer_nodes(docker, "child:v1")[-1]}
    assert hit["count"] == {"layers": 2, "images": 2, "containers": 1}


def test_a_file_search_never_follows_a_symlink_out_of_the_layer(docker):
    """A student's layer may hold ``/leak -> /etc/passwd``: the daemon must not hash the
    machine's own file (that would tell the student whether a guess of it is right)."""
    context = docker.top / "leak"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("FROM busybox\nRUN ln -s /etc/passwd /leak\n")
    docker.ok("build", "-t", "leak:v1", str(context))
    mine = layer_nodes(docker, "leak:v1")[-1]
    assert weak(docker, {"path": "/leak"})[1]["marked"] == [mine]      # the symlink is in the layer
    host_passwd = "sha256:" + hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    status, hit = weak(docker, {"path": "/leak", "digest": host_passwd})
    assert status == 200 and hit["marked"] == [] and hit["count"]["images"] == 0


# ---------------------------------------------------------------------- hosts, inputs, changes

def test_another_hosts_socket_does_not_see_this_hosts_tree(daemon, built):
    status, made = control(daemon, "POST", "/glassbox/hosts", {"Name": "tree-other"})
    assert status == 201, made
    try:
        theirs = get_tree(daemon, host="tree-other")
        ids = {n["id"] for n in theirs["graph"]["nodes"]}
        assert f"image:{built['id']}" not in ids
        assert not set(layer_nodes(daemon, "three:v1")[1:]) & ids
        assert f"image:{inspect(daemon, 'busybox')['Id']}" in ids   # its own busybox
        assert node(daemon, f"image:{built['id']}", host="tree-other")[0] == 404
        assert weak(daemon, {"layers": [layer_nodes(daemon, "three:v1")[-1]]}, host="tree-other")[0] == 404
        hit = weak(daemon, {"path": "/motd.txt"}, host="tree-other")[1]
        assert hit["count"] == {"layers": 0, "images": 0, "containers": 0}
    finally:
        control(daemon, "DELETE", "/glassbox/hosts/tree-other")


@pytest.mark.parametrize("method, path, body, status, words", [
    ("GET", "/glassbox/tree/node", None, 400, "give the node's id"),
    ("GET", "/glassbox/tree/node?id=", None, 400, "give the node's id"),
    ("GET", "/glassbox/tree/node?id=busybox", None, 400, "malformed node id"),
    ("GET", "/glassbox/tree/node?id=layer%3Asha256%3A..%2F..%2Fetc", None, 400, "malformed node id"),
    ("GET", "/glassbox/tree/node?id=image%3Asha256%3A" + "a" * 64 + "%00", None, 400, "malformed node id"),
    ("GET", "/glassbox/tree/node?id=" + "x" * 5000, None, 400, "malformed node id"),
    ("GET", "/glassbox/tree/node?id=image%3Asha256%3A" + "a" * 64, None, 404, "no node"),
    ("GET", "/glassbox/tree/node?id=container%3A" + "b" * 64, None, 404, "no node"),
    ("GET", "/glassbox/tree?signature=zz", None, 400, "signature"),
    ("POST", "/glassbox/tree/weak", None, 400, "JSON body is required"),
    ("POST", "/glassbox/tree/weak", [], 400, "JSON object"),
    ("POST", "/glassbox/tree/weak", {}, 400, "either layers"),
    ("POST", "/glassbox/tree/weak", {"layers": [], "path": "/bin/sh"}, 400, "either layers"),
    ("POST", "/glassbox/tree/weak", {"layers": []}, 400, "non-empty list"),
    ("POST", "/glassbox/tree/weak", {"layers": "layer:sha256:" + "a" * 64}, 400, "non-empty list"),
    ("POST", "/glassbox/tree/weak", {"layers": [7]}, 400, "malformed layer id"),
    ("POST", "/glassbox/tree/weak", {"layers": ["image:sha256:" + "a" * 64]}, 400, "malformed layer id"),
    ("POST", "/glassbox/tree/weak", {"layers": ["layer:sha256:" + "a" * 64] * 1001}, 400, "at most 1000"),
    ("POST", "/glassbox/tree/weak", {"layers": ["layer:sha256:" + "a" * 64]}, 404, "no layer"),
    ("POST", "/glassbox/tree/weak", {"layers": ["layer:sha256:" + "a" * 64], "digest": "x"}, 400,
     "digest goes with path"),
    ("POST", "/glassbox/tree/weak", {"path": "bin/busybox"}, 400, "absolute path"),
    ("POST", "/glassbox/tree/weak", {"path": ["/bin/busybox"]}, 400, "absolute path"),
    ("POST", "/glassbox/tree/weak", {"path": "/bin/\u0000busybox"}, 400, "NUL"),
    ("POST", "/glassbox/tree/weak", {"path": "/" + "a" * 5000}, 400, "at most 4096"),
    ("POST", "/glassbox/tree/weak", {"path": "/bin/../etc/shadow"}, 400, "'..'"),
    ("POST", "/glassbox/tree/weak", {"path": "/bin/busybox", "digest": "md5:abc"}, 400, "sha256"),
    ("POST", "/glassbox/tree/weak", {"path": "/bin/busybox", "host": "other"}, 400, "unknown field 'host'"),
])
def test_bad_inputs_get_a_clear_400_or_404(daemon, method, path, body, status, words):
    got, answer = api(daemon, method, path, body)
    assert got == status, answer
    assert words in answer["message"]


def test_the_signature_changes_when_an_image_is_tagged_and_only_then(daemon, built):
    first = get_tree(daemon)
    again = get_tree(daemon)
    assert again["signature"] == first["signature"] and again["layout"] == first["layout"]
    assert api(daemon, "GET", f"/glassbox/tree?signature={first['signature']}")[1] == \
        {"signature": first["signature"], "unchanged": True}

    daemon.ok("tag", "three:v1", "three:also")
    try:
        tagged = get_tree(daemon)
        assert tagged["signature"] != first["signature"]
        image = next(n for n in tagged["graph"]["nodes"] if n["id"] == f"image:{built['id']}")
        assert image["attributes"]["tags"] == ["three:also", "three:v1"]
        assert "graph" in api(daemon, "GET", f"/glassbox/tree?signature={first['signature']}")[1]
    finally:
        daemon.ok("rmi", "three:also")
    assert get_tree(daemon)["signature"] == first["signature"]


def test_a_layers_cached_size_goes_when_gc_removes_the_layer(engine):
    """Sizes are kept by ChainID (a layer never changes); once rmi and gc remove the
    layer, the same layer made again is measured again."""
    from sandbox import tree
    from tests.test_store import make_image

    image = make_image(engine.images, "sized:v1", {"data.bin": b"d" * 100})
    chain = chain_ids(image.diff_ids)[-1]

    def size() -> int:
        return next(n["attributes"]["size"] for n in engine.tree()["graph"]["nodes"]
                    if n["id"] == tree.layer_node(chain))

    stray = image.layers[-1] / "stray.bin"   # in the unpacked directory, not in the blob
    stray.write_bytes(b"s" * 50)
    assert size() == 150                      # measured once ...
    stray.unlink()
    engine.images.tag("sized:v1", "sized:v2")  # (a change, so that the tree is made again)
    assert size() == 150                      # ... and kept: the directory is not scanned again

    engine.remove_image("sized:v1")
    assert chain in engine.remove_image("sized:v2")["collected"]["layers"]
    again = make_image(engine.images, "sized:v1", {"data.bin": b"d" * 100})
    assert again.diff_ids == image.diff_ids   # the same layer, unpacked afresh
    assert size() == 100                      # measured anew, not the removed layer's 150


# ---------------------------------------------------------------------- through the web app

@pytest.fixture(scope="module")
def web():
    from sandbox.webharness import WebApp
    app = WebApp()
    try:
        yield app
    finally:
        app.stop()


def test_the_browser_gets_its_own_hosts_tree_through_socketio(web):
    student, other = web.visitor(), web.visitor()
    try:
        host = student.subscribe()["host"]
        other.subscribe()
        assert web.docker(host, "tag", "busybox", "mine:v1").returncode == 0

        drawn = student.call("tree")
        assert "error" not in drawn, drawn
        images = {n["id"]: n for n in drawn["graph"]["nodes"] if n["kind"] == "image"}
        mine = next(i for i, n in images.items() if "mine:v1" in n["attributes"]["tags"])
        assert set(drawn["layout"]["nodes"]) == {n["id"] for n in drawn["graph"]["nodes"]}
        assert student.call("tree", {"signature": drawn["signature"]}) == \
            {"signature": drawn["signature"], "unchanged": True}
        # The other visitor's host has no such tag.
        theirs = other.call("tree")
        assert not [n for n in theirs["graph"]["nodes"] if "mine:v1" in n["attributes"].get("tags", [])]

        details = student.call("tree.node", {"id": mine})
        assert details["tags"] == ["busybox:latest", "mine:v1"] and details["efficiency"]["score"] == 1.0
        [base] = details["layers"]
        layer = student.call("tree.node", {"id": base})
        assert "/bin/busybox" in [c["path"] for c in layer["changes"]["added"]]

        hit = student.call("tree.weak", {"path": "/bin/busybox"})
        assert hit["marked"] == [base] and mine in hit["images"] and hit["count"]["images"] == len(hit["images"])
        assert student.call("tree.weak", {"layers": [base]})["images"] == hit["images"]

        assert "error" in student.call("tree.node", {"id": 5})
        assert "error" in student.call("tree.node", {"id": "x" * 201})
        assert "malformed node id" in student.call("tree.node", {"id": "image:nope"})["error"]
        assert "absolute path" in student.call("tree.weak", {"path": "bin"})["error"]
        assert "either layers" in student.call("tree.weak", {})["error"]
        assert "error" in student.call("tree.weak", {"layers": [base], "path": "/x"})
    finally:
        student.close()
        other.close()
