"""``glassbox bench graphs``: how long the image tree takes at 50, 300 and 1000 images.

Each size gets a synthetic image store of its own in a temporary state dir, made the
way a busy classroom's cache looks: a few base images (on busybox, or from scratch),
each the root of chains of child images that share their parents' layers and branch,
some images that differ from their parent only by a config step (same layers), some
with a second tag, and containers created (not started) on some of them. Images are
written straight through the image store (a small layer tar each, then the config and
manifest), so making 1000 takes seconds, not 1000 builds.

Measured per size, on the server:
  - ``Engine.tree()`` cold: a new engine on the store, nothing cached (images listed,
    layer sizes scanned, graph built, Graphviz run);
  - ``Engine.tree()`` when nothing changed (the host's index.json and containers are as
    they were: the last tree is reused);
  - ``Engine.tree()`` after a new tag: graph and layout made again, layer sizes cached;
  - ``Engine.tree()`` after that tag is removed: graph made again, its layout cached;
  - ``GET /glassbox/tree`` over the host's unix socket (the daemon's API on this engine),
    as the web app asks for it, and the JSON's size; and with the signature the caller
    has, when nothing changed (the answer is then the signature alone).
The browser's render time is the front-end's part: ``browser_render_times`` is where it
goes (it returns None until then, and the figures say so).
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sandbox.archive import LayerEntry, write_layer_tar
from sandbox.images import Image, ImageStore
from sandbox.runtime import ContainerConfig

SIZES = (50, 300, 1000)
TARGET_SECONDS_AT_300 = 1.0


def bench_graphs(sizes: tuple[int, ...] = SIZES, repeat: int = 5) -> dict:
    figures = {"bench": "graphs", "sizes": {}}
    for n in sizes:
        figures["sizes"][str(n)] = bench_size(n, repeat)
        print_size(n, figures["sizes"][str(n)])
    at_300 = figures["sizes"].get("300")
    if at_300:
        figures["target_at_300_s"] = TARGET_SECONDS_AT_300
        figures["meets_target"] = at_300["tree_cold"]["median_ms"] <= TARGET_SECONDS_AT_300 * 1000
        print(f"target: server layout <= {TARGET_SECONDS_AT_300:.0f} s at 300 images, cold: "
              f"{'met' if figures['meets_target'] else 'NOT met'}")
    return figures


# ---------------------------------------------------------------- a synthetic store

def make_store(engine, images: int, seed: int = 7) -> dict:
    """``images`` images (busybox and scratch included) on ``engine``'s host; returns
    what was made."""
    rng = random.Random(seed)
    store: ImageStore = engine.images
    made: list[Image] = [store.get("busybox")]
    bases = max(3, images // 60)
    tags = 0
    with store.lock():
        for i in range(bases):
            parent = made[0] if i % 3 else None          # every third base is FROM scratch
            # A base carries a few hundred files (a small distribution's worth), so
            # that scanning layers for their sizes costs what it costs in real life.
            made.append(_child(store, parent, f"base{i}", rng, files=400))
        while len(made) < images - 1:                     # scratch:latest is the last one
            # Mostly extend a recent image (a chain of builds), sometimes any (a branch).
            pool = made[-12:] if rng.random() < 0.7 else made
            parent = rng.choice(pool)
            name = f"app{len(made)}"
            if rng.random() < 0.08 and parent.diff_ids:  # ENV only: no new layer
                made.append(_config_child(store, parent, name))
            else:
                made.append(_child(store, parent, name, rng))
            if rng.random() < 0.05:
                store.tag(made[-1].name, f"{name}:stable")
                tags += 1
    return {"images": len(made) + 1, "extra_tags": tags,
            "layers": len({c for image in made for c in _chains(image)})}


def add_containers(engine, seed: int = 7) -> int:
    """About one container per ten images, created (not started) on random images.
    An engine starts with no containers (it removes what a previous one left), so
    each engine of the benchmark gets its own."""
    rng = random.Random(seed)
    names = sorted(image.name for image in engine.images.list())
    chosen = rng.sample(names, max(1, len(names) // 10))
    for name in chosen:
        engine.create(ContainerConfig(name, ["true"]))
    return len(chosen)


def _chains(image: Image) -> list[str]:
    return [p.name for p in image.layers]


def _child(store: ImageStore, parent: Image | None, name: str, rng: random.Random,
           files: int = 2) -> Image:
    """``parent`` (None: scratch) plus one small layer: new files, and often a
    rewrite of one the parent has (which dive counts as waste)."""
    entries = [LayerEntry.file(f"srv/{name}/file{k}.txt", (f"{name} {k}\n" * rng.randint(1, 40)).encode())
               for k in range(files)]
    if parent is not None and rng.random() < 0.4:
        entries.append(LayerEntry.file("etc/motd", f"built by {name}\n".encode() * rng.randint(1, 20)))
    with store.writing_layer() as (out, layer):
        write_layer_tar(entries, out, mtime=1_700_000_000)
    config = dict(parent.config) if parent else {"architecture": "amd64", "os": "linux", "config": {}}
    diff_ids = (parent.diff_ids if parent else []) + [layer["digest"]]
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["history"] = list(config.get("history", [])) + [
        {"created": "2024-01-01T00:00:00Z", "created_by": f"/bin/sh -c #(nop) COPY {name}/ /srv/{name}/"}]
    parent_layers = list(parent.manifest["layers"]) if parent else []
    return store.put_image(config, parent_layers + [layer], f"{name}:latest")


def _config_child(store: ImageStore, parent: Image, name: str) -> Image:
    config = dict(parent.config)
    config["history"] = list(config.get("history", [])) + [
        {"created": "2024-01-01T00:00:00Z", "created_by": f"/bin/sh -c #(nop)  ENV NAME={name}",
         "empty_layer": True}]
    return store.put_image(config, list(parent.manifest["layers"]), f"{name}:latest")


# ---------------------------------------------------------------- the measurements

def bench_size(n: int, repeat: int) -> dict:
    from sandbox.api import serve_host
    from sandbox.engine import Engine
    from app.engine_client import EngineClient

    workdir = Path(tempfile.mkdtemp(prefix="glassbox-bench-graphs-"))
    try:
        engine = Engine(workdir / "state")
        try:
            t0 = time.perf_counter()
            made = make_store(engine, n)
            made["make_s"] = round(time.perf_counter() - t0, 2)
        finally:
            engine.close()
        cold = []
        for _ in range(3):   # each time a new engine on the store: nothing is cached
            engine = Engine(workdir / "state")
            try:
                made["containers"] = add_containers(engine)
                cold.append(timed(engine.tree))
            finally:
                engine.close()
        engine = Engine(workdir / "state")
        server = None
        try:
            add_containers(engine)
            tree = engine.tree()
            unchanged = [timed(engine.tree) for _ in range(repeat)]
            relayout, rebuilt = [], []
            for i in range(repeat):
                engine.images.tag("busybox", f"bench-retag:{i}")
                relayout.append(timed(engine.tree))     # a new label: graph and layout again
                engine.images.untag(f"bench-retag:{i}")
                rebuilt.append(timed(engine.tree))      # back: graph again, layout cached
            sock = workdir / "host.sock"
            server = serve_host(str(sock), engine)
            client = EngineClient(str(sock), timeout=300)
            body = json.dumps(client.get_json("/glassbox/tree")).encode()
            over_socket = [timed(lambda: client.get_json("/glassbox/tree")) for _ in range(repeat)]
            asked = f"/glassbox/tree?signature={tree['signature']}"
            over_socket_unchanged = [timed(lambda: client.get_json(asked)) for _ in range(repeat)]
            nodes = {kind: sum(1 for node in tree["graph"]["nodes"] if node["kind"] == kind)
                     for kind in ("layer", "image", "container")}
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            engine.close()
        return {"store": made, "nodes": nodes, "edges": len(tree["graph"]["edges"]),
                "tree_cold": summary(cold),
                "tree_unchanged": summary(unchanged), "tree_after_tag": summary(relayout),
                "tree_layout_cached": summary(rebuilt),
                "api_tree": summary(over_socket), "api_tree_unchanged": summary(over_socket_unchanged),
                "json_bytes": len(body), "browser_render": browser_render_times(n, body)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"
BENCH_ORIGIN = "http://glassbox.bench"


def browser_render_times(n: int, tree_json: bytes, repeat: int = 3) -> dict | None:
    """Time for the browser (Debian's Chromium, headless) to draw ``tree_json`` (the
    answer of ``/glassbox/tree`` for ``n`` images) in the Image tree tab of the real
    page, from the JSON text to the first frame painted after it:
      - ``first``: into an empty tab (every node and edge made);
      - ``again``: the same tree once more under a new signature (every node kept:
        what an update that changes little costs).
    Each gives ``parse_ms`` (JSON.parse), ``draw_ms`` (the DOM built, classes set) and
    ``frame_ms`` (to the frame after: style, layout, paint). The page is served from
    the checkout with the app's own template and headers; it has no daemon behind it
    (draw() is what is measured, not the socket). None without Chromium or Playwright.
    """
    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    text = tree_json.decode()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route(f"{BENCH_ORIGIN}/**", _bench_route())
            page.goto(BENCH_ORIGIN + "/")
            page.wait_for_function("() => window.glassbox && window.glassbox.tree")
            # A tree of scratch alone first: the tab then shows what draw() is given
            # (and asks no server), and starts empty.
            page.evaluate("(t) => window.glassbox.tree.draw(t)", _SCRATCH_ONLY)
            page.click("[role=tab][data-tab='tree']")
            first, again = [], []
            for i in range(repeat):
                page.evaluate("(t) => window.glassbox.tree.draw(t)", _SCRATCH_ONLY)
                page.wait_for_timeout(50)   # the old nodes are gone
                first.append(page.evaluate(_DRAW, [text, f"first-{i}"]))
                again.append(page.evaluate(_DRAW, [text, f"again-{i}"]))
        finally:
            browser.close()
    def figures(runs: list[dict]) -> dict:
        return {key: summary([run[key] / 1000 for run in runs])   # (summary takes seconds)
                for key in ("parse_ms", "draw_ms", "frame_ms")}
    return {"nodes": first[0]["nodes"], "edges": first[0]["edges"],
            "first": figures(first), "again": figures(again)}


# JSON text → parsed → drawn → painted, timed inside the page.
_DRAW = """async ([text, signature]) => {
    const t0 = performance.now();
    const answer = JSON.parse(text);
    const parse_ms = performance.now() - t0;
    answer.signature = signature;
    const stats = await window.glassbox.tree.draw(answer);
    return {nodes: stats.nodes, edges: stats.edges, parse_ms,
            draw_ms: stats.draw_ms, frame_ms: stats.frame_ms + parse_ms};
}"""
_SCRATCH_ONLY = {"graph": {"nodes": [{"id": "scratch", "kind": "scratch", "label": "scratch",
                                      "attributes": {}}], "edges": []},
                 "layout": {"width": 54, "height": 36,
                            "nodes": {"scratch": {"x": 27, "y": 18, "width": 54, "height": 36}},
                            "edges": []},
                 "signature": "scratch-only"}


def _bench_route():
    """Serves the page as the web app does (its template, its headers), its static
    files and vendored libraries from the checkout; anything else (Socket.IO) 404s."""
    import mimetypes
    from flask import Response, render_template
    from app import CHECKOUT, create_app
    from app.web import VENDOR

    app = create_app({"TESTING": True, "SECRET_KEY": "bench"})
    with app.test_request_context("/"):
        page = app.process_response(Response(render_template(
            "index.html", host="bench", csrf_token="bench", lang="en")))
    headers = dict(page.headers)

    def serve(route):
        path = route.request.url[len(BENCH_ORIGIN):].split("?", 1)[0]
        if path == "/":
            return route.fulfill(status=200, headers=headers, body=page.get_data())
        if path.startswith("/static/"):
            file = (CHECKOUT / "static" / path[len("/static/"):]).resolve()
            inside = file.is_relative_to(CHECKOUT / "static")
        elif path[len("/vendor/"):] in VENDOR and path.startswith("/vendor/"):
            file, inside = CHECKOUT / "node_modules" / VENDOR[path[len("/vendor/"):]], True
        else:
            return route.fulfill(status=404, body="")
        if not inside or not file.is_file():
            return route.fulfill(status=404, body="")
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return route.fulfill(status=200, body=file.read_bytes(), content_type=kind)
    return serve


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1), "n": len(ms)}


def print_size(n: int, f: dict) -> None:
    store, nodes = f["store"], f["nodes"]
    print(f"{n} images: {store['images']} images ({store['extra_tags']} with a second tag), "
          f"{store['containers']} containers; the tree has {nodes['layer']} layers, "
          f"{nodes['image']} image nodes, {nodes['container']} containers, {f['edges']} edges "
          f"(store made in {store['make_s']} s)")
    print(f"  Engine.tree(): cold {f['tree_cold']['median_ms']} ms; nothing changed "
          f"{f['tree_unchanged']['median_ms']} ms; after a new tag (graph and layout again) "
          f"{f['tree_after_tag']['median_ms']} ms; graph again, layout cached "
          f"{f['tree_layout_cached']['median_ms']} ms")
    print(f"  GET /glassbox/tree over the socket: {f['api_tree']['median_ms']} ms "
          f"({f['json_bytes'] / 1e6:.2f} MB of JSON); with the signature, unchanged: "
          f"{f['api_tree_unchanged']['median_ms']} ms")
    render = f["browser_render"]
    print("  browser render: " + ("not measured yet (the front-end's part)" if render is None
                                  else json.dumps(render)))
