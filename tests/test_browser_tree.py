"""The Image tree tab in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `glassbox up`. What the page draws is compared with what the server
answers to `tree` (and with the docker CLI's own view). Each test's final screen is kept
as a screenshot in test-artifacts/ (pass or fail)."""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest


from tests.test_browser import CHROMIUM, ARTIFACTS, browser, student, web  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh installs it)")


# ---------------------------------------------------------------- helpers

class Server:
    """The page's student as the server sees them: their host, and the server's answers."""

    def __init__(self, web, page):
        cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "session")
        self.web = web
        self.visitor = web.visitor(cookie=cookie)
        self.host = self.visitor.subscribe()["host"]

    def tree(self) -> dict:
        answer = self.visitor.call("tree")
        assert "error" not in answer, answer
        return answer

    def call(self, event: str, message: dict) -> dict:
        return self.visitor.call(event, message)

    def docker(self, *args: str, timeout: float = 120):
        done = self.web.docker(self.host, *args, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done

    def close(self) -> None:
        self.visitor.close()


@pytest.fixture
def server(web):
    made = []

    def connect(page) -> Server:
        made.append(Server(web, page))
        return made[-1]
    yield connect
    for one in made:
        one.close()


def open_tree(page) -> None:
    page.click("[role=tab][data-tab='tree']")
    page.wait_for_selector("#tree-svg g.node[data-id='scratch']", timeout=30_000)


def caught_up(page, server: Server, timeout: float = 30) -> dict:
    """Waits until the page draws the tree the server has now; returns that tree."""
    deadline = time.monotonic() + timeout
    while True:
        answer = server.tree()
        if page.evaluate("() => window.glassbox.tree.signature()") == answer["signature"]:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError("the page never drew the server's tree")
        time.sleep(0.3)


def drawn(page) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """The nodes ({id: kind}) and edges ({(source, target)}) the page shows."""
    nodes = page.eval_on_selector_all("#tree-svg g.node[data-id]",
                                      "gs => gs.map(g => [g.dataset.id, g.dataset.kind])")
    edges = page.eval_on_selector_all("#tree-svg path.edge[data-source][data-target]",
                                      "ps => ps.map(p => [p.dataset.source, p.dataset.target])")
    return dict(nodes), {tuple(e) for e in edges}


def served(answer: dict) -> tuple[dict[str, str], set[tuple[str, str]]]:
    graph = answer["graph"]
    return ({n["id"]: n["kind"] for n in graph["nodes"]},
            {(e["source"], e["target"]) for e in graph["edges"]})


# The tree's own edges; ``committed`` and ``mounts`` lie across it.
TREE_EDGES = {"layer", "image", "container"}


def parents_of(answer: dict) -> dict[str, str]:
    return {e["target"]: e["source"] for e in answer["graph"]["edges"] if e["kind"] in TREE_EDGES}


def image_tagged(answer: dict, tag: str) -> str:
    return next(n["id"] for n in answer["graph"]["nodes"]
                if n["kind"] == "image" and tag in n["attributes"].get("tags", []))


def ancestors(answer: dict, node: str) -> set[str]:
    parents, found = parents_of(answer), set()
    while node in parents:
        node = parents[node]
        found.add(node)
    return found


def lineage(answer: dict, node: str) -> set[str]:
    """A node, what it stands on and what is built on it."""
    children: dict[str, list[str]] = {}
    for child, parent in parents_of(answer).items():
        children.setdefault(parent, []).append(child)
    found, todo = {node} | ancestors(answer, node), [node]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def classed(page, name: str) -> set[str]:
    return set(page.eval_on_selector_all(f"#tree-svg g.node.{name}", "gs => gs.map(g => g.dataset.id)"))


def build_context(where: Path, files: dict[str, str]) -> str:
    """A build context (the docker CLI reads it and sends it to the daemon as a tar)."""
    for name, text in files.items():
        (where / name).write_text(text)
    return str(where)


THREE_STEPS = {
    "Dockerfile": "FROM busybox\n"
                  "RUN echo one > /one\n"
                  "COPY greeting.txt /greeting.txt\n"
                  "RUN rm /one && echo two > /two\n",
    "greeting.txt": "hello from the build context\n",
}


# ---------------------------------------------------------------- tests

def test_a_three_step_build_adds_its_layers_and_image_to_the_tree(web, student, server, tmp_path):
    page = student()
    me = server(page)
    open_tree(page)
    before = served(caught_up(page, me))
    assert drawn(page) == before

    me.docker("build", "-t", "app", build_context(tmp_path, THREE_STEPS))
    after = caught_up(page, me)
    nodes, edges = served(after)
    assert drawn(page) == (nodes, edges)

    # Exactly three new layers and one new image, chained on busybox's layer.
    new = {n: kind for n, kind in nodes.items() if n not in before[0]}
    assert sorted(new.values()) == ["image", "layer", "layer", "layer"]
    app = image_tagged(after, "app:latest")
    parents = parents_of(after)
    chain = [parents[app]]
    while parents.get(chain[-1], "scratch") != "scratch":
        chain.append(parents[chain[-1]])
    busybox = image_tagged(after, "busybox:latest")
    assert chain[3] == parents[busybox], "app does not stand on busybox's layer"
    assert set(chain[:3]) == {n for n, kind in new.items() if kind == "layer"}
    # The same layers as the docker CLI sees them, in order.
    diff_ids = me.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", "app").stdout
    attributes = {n["id"]: n["attributes"] for n in after["graph"]["nodes"]}
    assert [attributes[n]["diff_id"] for n in reversed(chain[:3])] == re.findall(r"sha256:[0-9a-f]{64}", diff_ids)[-3:]
    new_edges = edges - before[1]
    assert new_edges == {(chain[3], chain[2]), (chain[2], chain[1]), (chain[1], chain[0]), (chain[0], app)}

    # The last step's layer: what it added and what it removed (a whiteout).
    page.click(f"#tree-svg g.node[data-id='{chain[0]}']")
    page.wait_for_selector("#tree-details .files-removed", timeout=15_000)
    details = page.inner_text("#tree-details")
    assert attributes[chain[0]]["diff_id"] in details.replace("\n", "")
    page.click("#tree-details .files-added summary")
    page.click("#tree-details .files-removed summary")
    assert "/two" in page.inner_text("#tree-details .files-added")
    assert "/one" in page.inner_text("#tree-details .files-removed")
    assert not page.errors


def test_hovering_an_image_lights_its_branch_and_dims_the_rest(web, student, server, tmp_path):
    page = student()
    me = server(page)
    open_tree(page)
    me.docker("build", "-t", "app", build_context(tmp_path, THREE_STEPS))
    me.docker("run", "-d", "--name", "app-1", "app", "sleep", "300")
    answer = caught_up(page, me)
    app = image_tagged(answer, "app:latest")
    others = {n["id"] for n in answer["graph"]["nodes"] if n["kind"] == "image" and n["id"] != app}
    assert others, "a fresh host has busybox and scratch"

    page.hover(f"#tree-svg g.node[data-id='{app}']")
    branch = lineage(answer, app)
    assert classed(page, "lit") == branch
    assert classed(page, "dim") == set(served(answer)[0]) - branch
    assert others <= classed(page, "dim")
    # The branch's edges are lit too; the container hangs under app.
    lit_edges = set(map(tuple, page.eval_on_selector_all(
        "#tree-svg path.edge.lit", "ps => ps.map(p => [p.dataset.source, p.dataset.target])")))
    assert lit_edges == {e for e in served(answer)[1] if e[0] in branch and e[1] in branch}
    assert any(n.startswith("container:") for n in branch)

    # The search does the same for the images whose tag matches.
    page.mouse.move(2, 2)
    page.wait_for_function("() => !document.querySelector('#tree-svg g.node.lit')")
    page.fill("#tree-search", "app")
    page.wait_for_function("() => document.querySelector('#tree-search-status').textContent !== ''")
    assert classed(page, "lit") == branch
    assert classed(page, "dim") == set(served(answer)[0]) - branch
    page.wait_for_timeout(600)  # the dimming fades in (CSS): finished for the screenshot
    assert not page.errors


def test_commit_adds_a_child_image_under_the_containers_image(web, student, server):
    page = student()
    me = server(page)
    open_tree(page)
    ident = me.docker("run", "-d", "--name", "work", "busybox", "sh", "-c",
                      "echo changed > /changed; sleep 300").stdout.strip()
    container = f"container:{ident}"
    answer = caught_up(page, me)
    busybox = image_tagged(answer, "busybox:latest")
    assert parents_of(answer)[container] == busybox
    page.wait_for_selector(f"#tree-svg g.node[data-id='{container}'][data-state='running']", timeout=30_000)

    before = served(answer)[0]
    me.docker("commit", "work", "snap")
    answer = caught_up(page, me)
    nodes, edges = served(answer)
    assert drawn(page) == (nodes, edges)
    snap = image_tagged(answer, "snap:latest")
    parents = parents_of(answer)
    # snap is busybox's layers plus one new layer: the container's writable layer.
    assert {n: kind for n, kind in nodes.items() if n not in before} == {snap: "image", parents[snap]: "layer"}
    assert parents[parents[snap]] == parents[busybox]
    assert parents[container] == busybox  # the container stays an instance of busybox
    page.click(f"#tree-svg g.node[data-id='{parents[snap]}']")
    page.wait_for_selector("#tree-details .files-added", timeout=15_000)
    page.click("#tree-details .files-added summary")
    assert "/changed" in page.inner_text("#tree-details .files-added")
    assert not page.errors


def test_commit_grows_out_of_its_container_and_a_volume_outlives_it(web, student, server):
    page = student()
    me = server(page)
    open_tree(page)
    me.docker("volume", "create", "notes")
    ident = me.docker("run", "-d", "--name", "keeper", "-v", "notes:/notes", "busybox", "sh", "-c",
                      "echo kept > /notes/a.txt; head -c 3000 /dev/zero > /big").stdout.strip()
    me.docker("wait", "keeper")
    container = f"container:{ident}"
    answer = caught_up(page, me)
    page.wait_for_selector(f"#tree-svg g.node[data-id='{container}'][data-state='exited']", timeout=30_000)
    # Storage: the volume as a cylinder, mounted by the container; its writable layer's size under it.
    assert page.get_attribute("#tree-svg g.node[data-id='volume:notes']", "data-kind") == "volume"
    assert page.locator("#tree-svg g.node[data-id='volume:notes'] .rim").count() == 1
    mount = page.locator(f"#tree-svg path.edge[data-source='{container}'][data-target='volume:notes']")
    assert mount.get_attribute("data-kind") == "mounts"
    upper = next(n for n in answer["graph"]["nodes"] if n["id"] == container)["attributes"]["upper_bytes"]
    assert 3000 <= upper < 3100
    assert page.text_content(f"#tree-svg g.node[data-id='{container}'] .upper").startswith("rw 2.9")

    # Which node each new node grows out of, as the next render picks it.
    page.evaluate("""() => {
      const graph = window.glassbox.tree.view.graph;
      const origin = graph.origin.bind(graph);
      window.origins = {};
      graph.origin = (id, next, fresh) => {
        const from = origin(id, next, fresh);
        window.origins[id] = from ? from.node.id : null;
        return from;
      };
    }""")
    me.docker("commit", "keeper", "snap")
    answer = caught_up(page, me)
    nodes, edges = served(answer)
    assert drawn(page) == (nodes, edges)
    snap = image_tagged(answer, "snap:latest")
    new_layer = parents_of(answer)[snap]
    edge = f"#tree-svg path.edge[data-source='{container}'][data-target='{snap}']"
    assert page.get_attribute(edge, "data-kind") == "committed"
    assert page.eval_on_selector(edge, "p => getComputedStyle(p).strokeDasharray") not in ("", "none")
    label = page.locator(f"#tree-svg text.edge-label[data-source='{container}'][data-target='{snap}']")
    assert label.text_content() == "commit"
    assert page.evaluate("() => window.origins") == {new_layer: container, snap: container}
    page.wait_for_timeout(700)  # the growth has played out
    page.screenshot(path=str(ARTIFACTS / "test_commit_grows_out_of_its_container-commit.png"))

    page.click(f"#tree-svg g.node[data-id='{snap}']")
    page.wait_for_function("() => /keeper/.test(document.querySelector('#tree-details-body').innerText)")
    page.click("#tree-svg g.node[data-id='volume:notes']")
    page.wait_for_function("() => /\\/notes/.test(document.querySelector('#tree-details-body').innerText)")

    me.docker("rm", "keeper")
    answer = caught_up(page, me)
    assert drawn(page) == served(answer)
    assert "volume:notes" in drawn(page)[0] and container not in drawn(page)[0]
    page.wait_for_function("() => !document.querySelector('#tree-svg text.edge-label')")  # faded out
    # The volume's details follow: nothing mounts it now.
    page.wait_for_function("() => !/keeper/.test(document.querySelector('#tree-details-body').innerText)")
    page.click("#tree-details-close")
    page.click("#tree-fit")
    page.wait_for_timeout(700)
    assert not page.errors


def test_a_weak_point_file_marks_every_image_built_on_it_with_a_count(web, student, server, tmp_path):
    page = student()
    me = server(page)
    open_tree(page)
    me.docker("build", "-t", "app", build_context(tmp_path, THREE_STEPS))
    me.docker("run", "-d", "--name", "app-1", "app", "sleep", "300")
    answer = caught_up(page, me)

    page.fill("#tree-weak-path", "/bin/busybox")
    page.click("#tree-weak-go")
    page.wait_for_selector("#tree-weak-count[data-images]", timeout=30_000)
    weak = me.call("tree.weak", {"path": "/bin/busybox"})
    expected = set(weak["layers"]) | set(weak["images"]) | set(weak["containers"])
    assert classed(page, "weak") == expected
    # Every image with busybox's layer under it: busybox and app, not the empty scratch image.
    with_layers = {n["id"] for n in answer["graph"]["nodes"]
                   if n["kind"] == "image" and parents_of(answer)[n["id"]] != "scratch"}
    assert set(weak["images"]) == with_layers and len(with_layers) == 2
    assert len(weak["containers"]) == 1
    text = page.inner_text("#tree-weak-count")
    assert "2 images" in text and "1 container" in text
    # Marking the selected layer instead: the layer app's last step made.
    top = parents_of(answer)[image_tagged(answer, "app:latest")]
    page.click(f"#tree-svg g.node[data-id='{top}']")
    page.click("#tree-weak-mark")
    page.wait_for_function("() => document.querySelector('#tree-weak-count').dataset.images === '1'")
    built_on_top = lineage(answer, top) - ancestors(answer, top)
    assert classed(page, "weak") == built_on_top
    weak = me.call("tree.weak", {"layers": [top]})
    assert built_on_top == set(weak["layers"]) | set(weak["images"]) | set(weak["containers"])
    page.click("#tree-weak-clear")
    page.wait_for_function("() => !document.querySelector('#tree-svg g.node.weak')")
    assert page.inner_text("#tree-weak-count") == ""
    # Shown again, with the whole tree, for the screenshot.
    page.click("#tree-details-close")
    page.click("#tree-weak-go")
    page.wait_for_selector("#tree-weak-count[data-images]", timeout=30_000)
    assert not page.errors


def test_the_keyboard_walks_the_tree_and_the_table_lists_it(web, student, server):
    page = student()
    me = server(page)
    open_tree(page)
    answer = caught_up(page, me)
    parents = parents_of(answer)

    page.focus("#tree-svg")
    page.keyboard.press("Home")
    current = lambda: page.evaluate("() => document.querySelector('#tree-svg g.node.current')?.dataset.id")  # noqa: E731
    assert current() == "scratch"
    page.keyboard.press("ArrowDown")
    child = current()
    assert parents[child] == "scratch"
    page.keyboard.press("ArrowRight")
    back = "ArrowLeft"
    if current() == child:  # the rightmost of its rank: its neighbour is on the left
        page.keyboard.press("ArrowLeft")
        back = "ArrowRight"
    sibling = current()
    assert sibling != child and parents[sibling] == "scratch"
    page.keyboard.press(back)
    assert current() == child
    page.keyboard.press("ArrowUp")
    assert current() == "scratch"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#tree-details[data-id='{child}']:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_selector("#tree-details", state="hidden")

    page.click("#tree-table-toggle")
    rows = page.eval_on_selector_all("#tree-table tbody tr[data-id]", "rs => rs.map(r => r.dataset.id)")
    assert sorted(rows) == sorted(served(answer)[0])
    # Parents come before their children, as the tree is drawn.
    assert all(rows.index(parents[r]) < rows.index(r) for r in rows if r in parents)
    assert not page.errors


def test_the_tree_in_korean(web, student, server):
    page = student(locale="ko-KR")
    me = server(page)
    me.docker("run", "-d", "--name", "web", "busybox", "sleep", "300")
    assert page.inner_text("[role=tab][data-tab='tree']").strip() == "이미지 트리"
    open_tree(page)
    caught_up(page, me)
    label = page.text_content("#tree-svg g.node[data-kind='container'] .label")
    assert "실행 중" in label
    assert re.search(r"[\uac00-\ud7a3]", page.get_attribute("#tree-search", "placeholder"))
    assert page.inner_text("#tree-weak-go") == "영향 찾기"
    page.fill("#tree-weak-path", "/bin/busybox")
    page.click("#tree-weak-go")
    page.wait_for_selector("#tree-weak-count[data-images]", timeout=30_000)
    assert "이미지 1개" in page.inner_text("#tree-weak-count")
    assert "컨테이너 1개" in page.inner_text("#tree-weak-count")
    page.click("#tree-svg g.node[data-kind='container']")
    page.wait_for_selector("#tree-details .facts")
    assert page.inner_text("#tree-details h2").startswith("컨테이너")
    assert not page.errors


# ---------------------------------------------------------------- many images

def synthetic_tree(images: int) -> dict:
    """A `tree` answer for ``images`` images built from a few bases, laid out by the
    server's own code: what a classroom's busy host would look like."""
    from sandbox import tree
    sha = lambda text: "sha256:" + hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    bases = [[sha(f"base-{b}")] for b in range(3)]
    infos = [tree.ImageInfo(f"base{b}:latest", sha(f"base-image-{b}"), chain,
                            [{"created_by": f"/bin/sh -c #(nop) ADD file:base{b} in / "}])
             for b, chain in enumerate(bases)]
    for i in range(images - len(bases)):
        chain = [*bases[i % len(bases)], sha(f"app-{i}-a"), sha(f"app-{i}-b")]
        infos.append(tree.ImageInfo(f"app{i}:latest", sha(f"app-image-{i}"), chain,
                                    [{"created_by": "/bin/sh -c #(nop) ADD file:base in / "},
                                     {"created_by": f"/bin/sh -c apk add tool{i}"},
                                     {"created_by": f"/bin/sh -c echo {i} > /build"}]))
    graph = tree.build_graph(infos)
    return {"graph": tree.to_json(graph, omit=("history",)), "layout": tree.layout(graph),
            "signature": tree.signature(graph)}


def test_three_hundred_images_draw_in_a_second_and_read_when_zoomed(web, student):
    answer = synthetic_tree(300)
    page = student()
    open_tree(page)
    stats = page.evaluate("(answer) => window.glassbox.tree.draw(answer)", answer)
    assert stats["nodes"] == len(answer["graph"]["nodes"])
    assert page.eval_on_selector_all("#tree-svg g.node[data-kind='image']", "gs => gs.length") == 300
    # The budget (1 s at 300 images) on an idle machine; this one is shared.
    assert stats["frame_ms"] < 3000, stats
    # Fitted, the labels give way to the shape of the tree.
    assert "far" in page.get_attribute("#tree-svg", "class").split()
    # The wheel zooms where the pointer is; a drag pans (and opens nothing).
    box = page.locator("#tree-svg").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    zoom = lambda: float(page.get_attribute("#tree-svg", "data-zoom"))  # noqa: E731
    viewport = lambda: page.get_attribute("#tree-svg g.viewport", "transform")  # noqa: E731
    fitted = zoom()
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)
    page.wait_for_function("(k) => +document.querySelector('#tree-svg').dataset.zoom > k", arg=fitted)
    before = viewport()
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 40, steps=5)
    page.mouse.up()
    assert viewport() != before
    assert page.is_hidden("#tree-details")
    page.click("#tree-zoom-in")
    page.click("#tree-zoom-out")
    page.click("#tree-fit")
    assert zoom() == fitted
    # A search finds the images, and a click on one comes close enough to read it.
    page.fill("#tree-search", "app120")
    page.wait_for_function("() => document.querySelector('#tree-search-status').textContent !== ''")
    found = "image:sha256:" + hashlib.sha256(b"app-image-120").hexdigest()
    assert found in classed(page, "lit")
    assert "far" not in page.get_attribute("#tree-svg", "class").split()
    page.click("#tree-fit")
    assert "far" in page.get_attribute("#tree-svg", "class").split()
    # Fitted, an image is a speck: a click on it (dispatched: no pointer hits a speck
    # reliably) zooms to it.
    page.dispatch_event(f"#tree-svg g.node[data-id='{found}'] .shape", "click")
    page.wait_for_selector(f"#tree-details[data-id='{found}']:not([hidden])")
    assert "far" not in page.get_attribute("#tree-svg", "class").split()
    assert page.is_visible(f"#tree-svg g.node[data-id='{found}'] .label")
    assert "app120:latest" in page.get_attribute(f"#tree-svg g.node[data-id='{found}']", "aria-label")
    page.click("#tree-details-close")  # (its details are the host's to give, and this tree is not)
    assert not page.errors
