"""The image tree on a known set of images, with real layer directories.

    scratch ─▶ A ─▶ B ─▶ app1:latest, app1:debug ─▶ c1, c2 (app1:latest)
               │ └─▶ C ─▶ app2:latest = app2:v1   ─▶ c3
               │ └─▶ D ─▶ <untagged>
               └─────────▶ busybox:latest

A is a busybox base layer; B (app1) adds a file, rewrites /etc/motd and
deletes /etc/passwd with a whiteout; C (app2) replaces /bin/busybox with a
patched copy; D (an old, now untagged build) deletes /bin/busybox and links
/sbin to /bin. app1:debug is app1 plus a config-only step: same layers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

import pytest

from sandbox import tree
from sandbox.tree import ContainerInfo, FileChange, ImageInfo

BUSYBOX_V1 = b"\x7fELF busybox 1.36 " + b"v" * 982          # 1000 bytes
BUSYBOX_V2 = b"\x7fELF busybox 1.37 patched " + b"p" * 1174  # 1200 bytes


class Symlink(str):
    pass


def make_layer(root: Path, name: str, files: dict[str, bytes | Symlink | None]) -> Path:
    """A layer directory as the store unpacks it: whiteouts are plain empty
    ``.wh.`` files, None is an empty directory."""
    layer = root / name
    layer.mkdir()
    for path, content in files.items():
        target = layer / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            target.mkdir()
        elif isinstance(content, Symlink):
            target.symlink_to(str(content))
        else:
            target.write_bytes(content)
    return layer


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def chain(parent: str, diff_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def step(created_by: str, empty: bool = False) -> dict:
    entry = {"created": "2024-01-01T00:00:00Z", "created_by": created_by}
    if empty:
        entry["empty_layer"] = True
    return entry


DIFF = {name: digest(f"layer {name}") for name in "ABCD"}
CHAIN_A = DIFF["A"]
CHAIN_AB = chain(CHAIN_A, DIFF["B"])
CHAIN_AC = chain(CHAIN_A, DIFF["C"])
CHAIN_AD = chain(CHAIN_A, DIFF["D"])
A, AB, AC, AD = (f"layer:{c}" for c in (CHAIN_A, CHAIN_AB, CHAIN_AC, CHAIN_AD))
APP1, APP1_DEBUG, APP2, BUSYBOX, OLD = (
    f"image:{digest(f'config {n}')}" for n in ("app1", "app1-debug", "app2", "busybox", "old"))


@pytest.fixture
def layers(tmp_path) -> dict[str, Path]:
    return {
        "A": make_layer(tmp_path, "A", {
            "/bin/busybox": BUSYBOX_V1, "/bin/sh": Symlink("busybox"),
            "/etc/passwd": b"r" * 100, "/etc/motd": b"m" * 50, "/tmp": None}),
        "B": make_layer(tmp_path, "B", {
            "/app/app1.py": b"1" * 200, "/etc/motd": b"M" * 80, "/etc/.wh.passwd": b""}),
        "C": make_layer(tmp_path, "C", {
            "/bin/busybox": BUSYBOX_V2, "/app/app2.py": b"2" * 300}),
        "D": make_layer(tmp_path, "D", {
            "/bin/.wh.busybox": b"", "/sbin": Symlink("/bin"), "/old.txt": b"o" * 10}),
    }


@pytest.fixture
def images(layers) -> list[ImageInfo]:
    base = step("ADD busybox.tar in /")

    def image(name, config, names, history):
        return ImageInfo(name, digest(f"config {config}"), [DIFF[n] for n in names],
                         history, [layers[n] for n in names])

    app1_history = [base, step("/bin/sh -c #(nop)  ENV APP=1", empty=True),
                    step("COPY app1.py /app/ && echo motd > /etc/motd && rm /etc/passwd"),
                    step('/bin/sh -c #(nop)  CMD ["python", "/app/app1.py"]', empty=True)]
    return [
        image("busybox:latest", "busybox", "A", [base]),
        image("app1:latest", "app1", "AB", app1_history),
        image("app1:debug", "app1-debug", "AB", [*app1_history, step("ENV DEBUG=1", empty=True)]),
        image("app2:latest", "app2", "AC", [base, step("COPY busybox-patched /bin/busybox")]),
        image("app2:v1", "app2", "AC", [base, step("COPY busybox-patched /bin/busybox")]),
        image(None, "old", "AD", [base, step("/bin/sh -c rm /bin/busybox")]),
    ]


@pytest.fixture
def containers(tmp_path) -> list[ContainerInfo]:
    app1, app2 = digest("config app1"), digest("config app2")
    return [ContainerInfo("c1", "web1", app1, "running", tmp_path / "c1-upper"),
            ContainerInfo("c2", "web2", app1, "exited"),
            ContainerInfo("c3", "api", app2, "created")]


@pytest.fixture
def graph(images, containers):
    return tree.build_graph(images, containers)


# ---------------------------------------------------------------- the graph

def test_chain_ids_follow_the_oci_formula():
    assert tree.chain_ids([]) == []
    assert tree.chain_ids([DIFF["A"]]) == [DIFF["A"]]
    assert tree.chain_ids([DIFF["A"], DIFF["B"]]) == [DIFF["A"], CHAIN_AB]


def test_graph_has_one_node_per_layer_chain_image_and_container(graph):
    assert set(graph.nodes) == {"scratch", A, AB, AC, AD, BUSYBOX, APP1, APP1_DEBUG, APP2, OLD,
                                "container:c1", "container:c2", "container:c3"}
    assert set(graph.edges) == {
        ("scratch", A), (A, AB), (A, AC), (A, AD),
        (A, BUSYBOX), (AB, APP1), (AB, APP1_DEBUG), (AC, APP2), (AD, OLD),
        (APP1, "container:c1"), (APP1, "container:c2"), (APP2, "container:c3")}
    kinds = {n: d["kind"] for n, d in graph.nodes(data=True)}
    assert [n for n, k in kinds.items() if k == "layer"] == [A, AB, AC, AD]


def test_layer_nodes_carry_diff_id_chain_id_step_and_size(graph):
    a, ab = graph.nodes[A], graph.nodes[AB]
    assert (a["diff_id"], a["chain_id"], a["created_by"]) == (DIFF["A"], CHAIN_A, "ADD busybox.tar in /")
    assert (ab["diff_id"], ab["chain_id"]) == (DIFF["B"], CHAIN_AB)
    # B's step is the non-empty history entry after A's, not the ENV before it.
    assert ab["created_by"].startswith("COPY app1.py")
    # A: busybox 1000 + passwd 100 + motd 50 (symlink and directory count 0); B: 200 + 80.
    assert (a["size"], ab["size"]) == (1150, 280)


def test_tags_of_one_image_share_a_node_and_untagged_images_have_none(graph):
    assert graph.nodes[APP2]["tags"] == ["app2:latest", "app2:v1"]
    assert graph.nodes[OLD]["tags"] == []
    assert graph.nodes[OLD]["label"].startswith("<none>")


def test_config_only_steps_are_listed_on_the_image_not_made_layers(graph):
    app1 = graph.nodes[APP1]
    assert app1["config_steps"] == ['/bin/sh -c #(nop)  ENV APP=1',
                                    '/bin/sh -c #(nop)  CMD ["python", "/app/app1.py"]']
    layers = tree.ancestors(graph, APP1)
    assert len(app1["history"]) == len(layers) + len(app1["config_steps"]) == 4
    assert [s["layer"] for s in app1["history"]] == [A, None, AB, None]
    # app1:debug adds one more config-only step: a new image on the same layer, no new layer.
    assert len(graph.nodes[APP1_DEBUG]["config_steps"]) == 3
    assert tree.ancestors(graph, APP1_DEBUG) == layers


def test_container_of_a_removed_image_is_still_shown(images):
    graph = tree.build_graph(images, [ContainerInfo("c9", "orphan", digest("gone"), "exited")])
    image = f"image:{digest('gone')}"
    assert graph.nodes[image]["missing"] is True
    assert list(graph.successors(image)) == ["container:c9"]


def test_mismatched_layer_dirs_are_refused(layers):
    bad = ImageInfo("x:latest", digest("x"), [DIFF["A"], DIFF["B"]], [], [layers["A"]])
    with pytest.raises(ValueError, match="2 diff_ids but 1 layer directories"):
        tree.build_graph([bad])


def test_graph_needs_no_layer_dirs(images):
    bare = [ImageInfo(i.name, i.id, i.diff_ids, i.history) for i in images]
    graph = tree.build_graph(bare)
    assert graph.nodes[A]["size"] is None
    assert tree.ancestors(graph, "app1") == [A, AB]


# ---------------------------------------------------------------- queries

def test_ancestors_are_the_branch_a_pull_needs_in_order(graph):
    assert tree.ancestors(graph, APP1) == [A, AB]
    assert tree.ancestors(graph, "app1:latest") == [A, AB]
    assert tree.ancestors(graph, "busybox") == [A]
    assert tree.ancestors(graph, "container:c1") == [A, AB, APP1]
    assert tree.ancestors(graph, "scratch") == []


def test_descendants_of_the_base_layer_are_everything_built_on_it(graph):
    below_a = tree.descendants(graph, A)
    assert set(below_a) == {AB, AC, AD, BUSYBOX, APP1, APP1_DEBUG, APP2, OLD,
                            "container:c1", "container:c2", "container:c3"}
    assert below_a.index(AB) < below_a.index(APP1) < below_a.index("container:c1")
    assert tree.descendants(graph, AC) == [APP2, "container:c3"]


def test_shared_layers_are_the_trunk_before_two_images_branch(graph):
    assert tree.shared_layers(graph, "app1", "app2") == [A]
    assert tree.shared_layers(graph, APP1, APP1_DEBUG) == [A, AB]
    assert tree.shared_layers(graph, "app2", "busybox") == [A]


def test_unknown_image_is_a_clear_error(graph):
    with pytest.raises(KeyError, match="no image 'nope'"):
        tree.ancestors(graph, "nope")


# ---------------------------------------------------------------- weak points

def test_layers_containing_a_path_are_those_that_add_or_modify_it(images):
    assert tree.layers_containing(images, path="/bin/busybox") == [A, AC]
    # D removes it (whiteout) and reaches /bin only through a symlink: neither counts.
    assert tree.layers_containing(images, path="/sbin/busybox") == []
    assert tree.layers_containing(images, path="/etc/passwd") == [A]


def test_layers_containing_a_file_digest(images):
    v1 = hashlib.sha256(BUSYBOX_V1).hexdigest()
    v2 = "sha256:" + hashlib.sha256(BUSYBOX_V2).hexdigest()
    assert tree.layers_containing(images, file_digest=v1) == [A]
    assert tree.layers_containing(images, file_digest=v2) == [AC]
    assert tree.layers_containing(images, path="/bin/busybox", file_digest=v2) == [AC]
    assert tree.layers_containing(images, path="/app/app2.py", file_digest=v2) == []
    with pytest.raises(ValueError):
        tree.layers_containing(images)


def test_a_vulnerable_base_layer_affects_every_image_and_container(graph):
    assert tree.affected(graph, [A]) == {
        "layers": sorted([A, AB, AC, AD]),
        "images": sorted([BUSYBOX, APP1, APP1_DEBUG, APP2, OLD]),
        "containers": ["container:c1", "container:c2", "container:c3"]}


def test_a_vulnerable_branch_layer_affects_only_its_branch(graph):
    assert tree.affected(graph, [CHAIN_AC]) == {
        "layers": [AC], "images": [APP2], "containers": ["container:c3"]}


def test_mark_vulnerable_from_a_file_search(graph, images):
    patched = "sha256:" + hashlib.sha256(BUSYBOX_V2).hexdigest()
    result = tree.mark_vulnerable(graph, tree.layers_containing(images, file_digest=patched),
                                  reason="CVE-0000-0001 in busybox 1.37")
    assert result["images"] == [APP2]
    assert graph.nodes[AC]["vulnerable"] is True
    assert graph.nodes[AC]["vulnerability"] == "CVE-0000-0001 in busybox 1.37"
    assert graph.nodes["container:c3"]["affected"] is True
    assert "vulnerable" not in graph.nodes[A] and "affected" not in graph.nodes[APP1]
    with pytest.raises(KeyError, match="no layer"):
        tree.mark_vulnerable(graph, ["sha256:" + "0" * 64])


# ---------------------------------------------------------------- layer inspection

def test_layer_changes_report_added_modified_and_removed_with_sizes(layers):
    base, app1 = tree.layer_changes([layers["A"], layers["B"]])
    assert base.added == [FileChange("/bin", "dir", 0), FileChange("/bin/busybox", "file", 1000),
                          FileChange("/bin/sh", "symlink", 0), FileChange("/etc", "dir", 0),
                          FileChange("/etc/motd", "file", 50), FileChange("/etc/passwd", "file", 100),
                          FileChange("/tmp", "dir", 0)]
    assert base.modified == base.removed == []
    assert base.size == 1150
    # /etc reappears in B only to hold motd and the whiteout: not a change of its own.
    assert app1.added == [FileChange("/app", "dir", 0), FileChange("/app/app1.py", "file", 200)]
    assert app1.modified == [FileChange("/etc/motd", "file", 80, previous_size=50)]
    assert app1.removed == [FileChange("/etc/passwd", "file", 100)]
    assert app1.size == 280


def test_removed_directory_is_listed_once_with_everything_under_it(tmp_path):
    lower = make_layer(tmp_path, "lower", {"/etc/nginx/nginx.conf": b"c" * 2000,
                                           "/etc/nginx/public/index.html": b"h" * 3000,
                                           "/etc/hosts": b"x" * 10})
    upper = make_layer(tmp_path, "upper", {"/etc/.wh.nginx": b""})
    _, changes = tree.layer_changes([lower, upper])
    assert changes.removed == [FileChange("/etc/nginx", "dir", 5000)]
    assert changes.added == changes.modified == []


def test_opaque_directory_hides_what_is_below_except_what_it_rewrites(tmp_path):
    lower = make_layer(tmp_path, "lower", {"/data/a": b"a" * 10, "/data/sub/b": b"b" * 20,
                                           "/data/keep": b"k" * 5})
    upper = make_layer(tmp_path, "upper", {"/data/.wh..wh..opq": b"", "/data/keep": b"K" * 7})
    _, changes = tree.layer_changes([lower, upper])
    assert changes.removed == [FileChange("/data/a", "file", 10), FileChange("/data/sub", "dir", 20)]
    assert changes.modified == [FileChange("/data/keep", "file", 7, previous_size=5)]


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts are device nodes: root only")
def test_overlay_upper_dir_whiteouts_count_as_removals(tmp_path):
    # A container's writable layer, as overlayfs leaves it: a 0/0 character device
    # for a deleted file, the opaque xattr on a directory whose lower contents are gone.
    lower = make_layer(tmp_path, "lower", {"/etc/passwd": b"p" * 10, "/data/sub/f": b"f" * 7})
    upper = make_layer(tmp_path, "upper", {"/etc": None, "/data": None})
    os.mknod(upper / "etc/passwd", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    try:
        os.setxattr(upper / "data", "trusted.overlay.opaque", b"y")
    except OSError as e:
        pytest.skip(f"no trusted xattrs on {tmp_path}: {e}")
    _, changes = tree.layer_changes([lower, upper])
    assert changes.removed == [FileChange("/data/sub", "dir", 7), FileChange("/etc/passwd", "file", 10)]
    assert changes.added == changes.modified == []
    assert tree.efficiency([lower, upper])["wasted_bytes"] == 17


def test_file_replaced_by_directory_is_modified(tmp_path):
    lower = make_layer(tmp_path, "lower", {"/conf": b"c" * 40})
    upper = make_layer(tmp_path, "upper", {"/conf/main": b"m" * 3})
    _, changes = tree.layer_changes([lower, upper])
    assert changes.modified == [FileChange("/conf", "dir", 0, previous_size=40)]
    assert changes.added == [FileChange("/conf/main", "file", 3)]


def test_directory_replaced_by_file_is_one_modification(tmp_path):
    lower = make_layer(tmp_path, "lower", {"/srv/site/index.html": b"i" * 30, "/srv/site/a.css": b"c" * 12})
    upper = make_layer(tmp_path, "upper", {"/srv/.wh..wh..opq": b"", "/srv/site": b"s" * 4})
    _, changes = tree.layer_changes([lower, upper])
    assert changes.modified == [FileChange("/srv/site", "file", 4, previous_size=42)]
    assert changes.removed == changes.added == []


def test_hard_links_count_their_bytes_once(tmp_path):
    layer = make_layer(tmp_path, "layer", {"/bin/busybox": BUSYBOX_V1})
    os.link(layer / "bin/busybox", layer / "bin/ls")
    (changes,) = tree.layer_changes([layer])
    assert changes.size == 1000


def test_efficiency_follows_dive(tmp_path):
    # Layer 0 (base): /bin/busybox 300 bytes.
    # Layer 1: /app/data 1000 bytes, /app/tmp 200 bytes.
    # Layer 2: /app/data overwritten with 500 bytes, /app/tmp deleted.
    #
    # dive counts every time a layer writes a path, and a removal as 0 bytes:
    #   /bin/busybox  300          cumulative  300, smallest 300
    #   /app/data     1000 + 500   cumulative 1500, smallest 500
    #   /app/tmp      200 + 0      cumulative  200, smallest   0
    # score  = (300 + 500 + 0) / (300 + 1500 + 200) = 800 / 2000 = 0.4
    # wasted = cumulative size of every path seen more than once = 1500 + 200 = 1700:
    #   dive counts the surviving 500-byte copy too, not only the 1000 bytes shadowed.
    # user size = every layer but the base = (1000 + 200) + 500 = 1700.
    layer_dirs = [make_layer(tmp_path, "0", {"/bin/busybox": b"b" * 300}),
                  make_layer(tmp_path, "1", {"/app/data": b"d" * 1000, "/app/tmp": b"t" * 200}),
                  make_layer(tmp_path, "2", {"/app/data": b"D" * 500, "/app/.wh.tmp": b""})]
    result = tree.efficiency(layer_dirs)
    assert result["score"] == pytest.approx(0.4)
    assert result["wasted_bytes"] == 1700
    assert result["user_size"] == 1700
    assert result["size"] == 2000
    assert result["inefficiencies"] == [
        {"path": "/app/data", "count": 2, "cumulative_size": 1500, "min_size": 500, "layers": [1, 2]},
        {"path": "/app/tmp", "count": 2, "cumulative_size": 200, "min_size": 0, "layers": [1, 2]}]


def test_efficiency_counts_each_file_of_a_removed_directory(tmp_path):
    # dive's own test case: nginx.conf 2000 then 5000, public 3000, athing 10000, then
    # /etc/nginx removed. Each file under the removed directory counts a 0:
    #   nginx.conf  2000 + 5000 + 0  cumulative 7000, smallest 0
    #   public      3000 + 0         cumulative 3000, smallest 0
    #   athing      10000            cumulative 10000, smallest 10000
    # score = 10000 / 20000 = 0.5; wasted = 7000 + 3000 = 10000.
    # (dive itself counts the removed directory once at its full size, 8000, as a
    # path of its own: 23000 / 28000 and 7000 wasted, which misses that public is gone.)
    layer_dirs = [make_layer(tmp_path, "0", {"/etc/nginx/nginx.conf": b"c" * 2000,
                                             "/etc/nginx/public": b"p" * 3000}),
                  make_layer(tmp_path, "1", {"/etc/nginx/nginx.conf": b"C" * 5000,
                                             "/etc/athing": b"a" * 10000}),
                  make_layer(tmp_path, "2", {"/etc/.wh.nginx": b""})]
    result = tree.efficiency(layer_dirs)
    assert result["score"] == pytest.approx(0.5)
    assert result["wasted_bytes"] == 10000
    assert [i["path"] for i in result["inefficiencies"]] == ["/etc/nginx/nginx.conf", "/etc/nginx/public"]


def test_efficiency_of_an_image_without_waste_is_one(layers):
    assert tree.efficiency([layers["A"]]) == {
        "score": 1.0, "wasted_bytes": 0, "user_size": 0, "size": 1150, "inefficiencies": []}
    assert tree.efficiency([])["score"] == 1.0


# ---------------------------------------------------------------- for the browser

def test_to_json_round_trips_through_json(graph):
    data = tree.to_json(graph)
    assert json.loads(json.dumps(data)) == data
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id[A]["kind"] == "layer" and by_id[A]["attributes"]["chain_id"] == CHAIN_A
    assert by_id["container:c1"]["attributes"]["upper_dir"].endswith("c1-upper")
    assert {(e["source"], e["target"]) for e in data["edges"]} == set(graph.edges)


def test_layout_places_every_node_with_scratch_on_top(graph):
    placed = tree.layout(graph)
    assert set(placed["nodes"]) == set(graph.nodes)
    for box in placed["nodes"].values():
        assert all(math.isfinite(box[k]) for k in ("x", "y", "width", "height"))
        assert box["width"] > 0 and box["height"] > 0
        assert 0 <= box["x"] <= placed["width"] and 0 <= box["y"] <= placed["height"]
    nodes = placed["nodes"]
    for child in graph.successors("scratch"):
        assert nodes["scratch"]["y"] > nodes[child]["y"]   # dot's y grows upwards
    assert nodes[A]["y"] > nodes[AB]["y"] > nodes[APP1]["y"] > nodes["container:c1"]["y"]
    assert {(e["source"], e["target"]) for e in placed["edges"]} == set(graph.edges)
    for edge in placed["edges"]:
        assert len(edge["points"]) >= 4 and (len(edge["points"]) - 1) % 3 == 0
        assert all(math.isfinite(v) for point in edge["points"] for v in point)


def test_layout_without_dot_is_a_clear_error(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tree.LayoutError, match="dot"):
        tree.layout(graph)


# ---------------------------------------------------------------- commit-back, storage, wide trees

E_DIFF = digest("layer E")
COMMITTED = f"image:{digest('config committed')}"


def committed_from(images, container_id: str | None) -> ImageInfo:
    """app1 plus one layer E, as ``docker commit`` of ``container_id`` makes it."""
    app1 = images[1]
    return ImageInfo("snap:latest", digest("config committed"), [*app1.diff_ids, E_DIFF],
                     [*app1.history, step("sh")], container=container_id)


def test_a_committed_image_hangs_from_its_container_by_a_committed_edge(images, containers):
    graph = tree.build_graph([*images, committed_from(images, "c1")], containers)
    top = f"layer:{chain(CHAIN_AB, E_DIFF)}"
    assert graph.edges["container:c1", COMMITTED]["kind"] == "committed"
    assert graph.edges[AB, top]["kind"] == "layer" and graph.edges[top, COMMITTED]["kind"] == "image"
    # Still a child of the container's image in the tree: its branch is its own layers.
    assert tree.ancestors(graph, COMMITTED) == [A, AB, top]
    assert tree.descendants(graph, "container:c1") == []
    assert COMMITTED in tree.affected(graph, [AB])["images"]
    assert {e["kind"] for e in tree.to_json(graph)["edges"] if e["target"] == COMMITTED} == {"image", "committed"}
    found = tree.describe(graph, "container:c1", lambda chain_id: Path("/nonexistent"))
    assert found["committed"] == [COMMITTED]


def test_the_committed_edge_goes_with_its_container(images, containers):
    graph = tree.build_graph([*images, committed_from(images, "c1")], containers[1:])
    assert COMMITTED in graph and "container:c1" not in graph
    assert [p for p in graph.predecessors(COMMITTED)] == [f"layer:{chain(CHAIN_AB, E_DIFF)}"]
    # A pulled image names a container of some build machine: no edge, no error.
    graph = tree.build_graph([*images, committed_from(images, "c-elsewhere")], containers)
    assert all(kind != "committed" for *_, kind in graph.edges(data="kind"))


def test_volumes_are_nodes_that_their_containers_mount_at_a_path(images, containers):
    containers[0].mounts = [("data", "/var/lib/data")]
    containers[2].mounts = [("data", "/srv"), ("f" * 64, "/cache")]
    volumes = [tree.VolumeInfo("data"), tree.VolumeInfo("logs"), tree.VolumeInfo("f" * 64, anonymous=True)]
    graph = tree.build_graph(images, containers, volumes=volumes)
    assert graph.nodes["volume:data"]["kind"] == "volume"
    assert graph.nodes["volume:logs"]["kind"] == "volume" and graph.degree("volume:logs") == 0
    assert graph.nodes[f"volume:{'f' * 64}"]["label"] == "f" * 12
    mounts = {(a, b, d["path"]) for a, b, d in graph.edges(data=True) if d["kind"] == "mounts"}
    assert mounts == {("container:c1", "volume:data", "/var/lib/data"),
                      ("container:c3", "volume:data", "/srv"),
                      ("container:c3", f"volume:{'f' * 64}", "/cache")}
    edges = tree.to_json(graph)["edges"]
    assert {"source": "container:c1", "target": "volume:data", "kind": "mounts",
            "path": "/var/lib/data"} in edges
    # Storage is no part of the tree: a weak base layer reaches no volume.
    assert set(tree.affected(graph, [A])) == {"layers", "images", "containers"}
    found = tree.describe(graph, "volume:data", lambda chain_id: Path("/nonexistent"))
    assert found["mounted_by"] == [{"container": "container:c1", "path": "/var/lib/data"},
                                   {"container": "container:c3", "path": "/srv"}]
    assert tree.describe(graph, "container:c3", lambda c: Path("/nonexistent"))["volumes"] == [
        {"volume": "volume:data", "path": "/srv"}, {"volume": f"volume:{'f' * 64}", "path": "/cache"}]


def test_a_volume_stays_on_the_map_after_its_container_is_removed(images, containers):
    containers[0].mounts = [("data", "/data")]
    before = tree.build_graph(images, containers, volumes=[tree.VolumeInfo("data")])
    after = tree.build_graph(images, containers[1:], volumes=[tree.VolumeInfo("data")])
    assert ("container:c1", "volume:data") in before.edges
    assert "volume:data" in after and "container:c1" not in after
    assert tree.signature(before) != tree.signature(after)


def test_a_container_node_carries_its_writable_layer_size_under_its_name(images, containers):
    containers[0].upper_bytes = 12_345
    graph = tree.build_graph(images, containers)
    assert graph.nodes["container:c1"]["upper_bytes"] == 12_345
    assert graph.nodes["container:c1"]["label"] == "web1\nrunning\nrw 12.3 kB"
    assert graph.nodes["container:c2"]["upper_bytes"] is None


def test_the_layout_gives_a_committed_edge_its_word_and_a_volume_its_place(images, containers):
    containers[0].mounts = [("data", "/data")]
    graph = tree.build_graph([*images, committed_from(images, "c1")], containers,
                             volumes=[tree.VolumeInfo("data")])
    placed = tree.layout(graph)
    routes = {(e["source"], e["target"]): e for e in placed["edges"]}
    commit = routes["container:c1", COMMITTED]
    assert commit["label"] == "commit" and all(math.isfinite(v) for v in commit["label_at"])
    assert "label" not in routes["container:c1", "volume:data"]
    nodes = placed["nodes"]
    assert nodes["container:c1"]["y"] > nodes[COMMITTED]["y"]   # the image grows below its container
    assert nodes["container:c1"]["y"] > nodes["volume:data"]["y"]


@pytest.mark.parametrize("width, height, rankdir", [
    (900, 300, "TB"), (901, 300, "LR"), (300, 900, "TB"), (5000, 100, "LR"), (10, 0, "LR"), (0, 0, "TB")])
def test_only_a_much_wider_than_tall_tree_is_laid_on_its_side(width, height, rankdir):
    assert tree.rankdir_for(width, height) == rankdir


def test_many_images_on_one_layer_are_laid_left_to_right_and_a_deep_chain_top_to_bottom():
    base = digest("layer base")
    wide = [ImageInfo(f"app{i}:latest", digest(f"config wide {i}"), [base, digest(f"layer {i}")])
            for i in range(30)]
    placed = tree.layout(tree.build_graph(wide))
    assert placed["rankdir"] == "LR"
    nodes = placed["nodes"]
    assert nodes["scratch"]["x"] < nodes[f"layer:{base}"]["x"] < nodes[f"image:{digest('config wide 0')}"]["x"]
    assert placed["width"] <= 3 * placed["height"]

    diffs = [digest(f"deep {i}") for i in range(8)]
    deep = tree.layout(tree.build_graph([ImageInfo("deep:latest", digest("config deep"), diffs)]))
    assert deep["rankdir"] == "TB"
