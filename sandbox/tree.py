"""The image tree: layers, images and containers as one graph.

Every image is a chain of layers from ``scratch``. A layer's place in the tree
is its ChainID, the digest of the whole stack below and including it, so two
images that start with the same layers meet in the same nodes and branch where
they differ. The tree is therefore *derived* from the images' layer chains (as
dockviz does), never read from a "parent" field: a parent field can be missing,
stale or lie; a chain of digests cannot.

    scratch ─▶ layer ─▶ layer ─▶ image ─▶ container
                    └─▶ layer ─▶ image ─▶ container

Node ids: ``scratch``, ``layer:<ChainID>``, ``image:<image id>``,
``container:<container id>``, ``volume:<name>``. Config-only build steps (``empty_layer`` history
entries, e.g. ENV or CMD) change no file, so they are not layers: they are
listed on the image they belong to.

Two kinds of edge lie across the tree rather than along it: ``committed``, from
a container to the image ``docker commit`` made of it (named by the image
config's ``container`` field, while that container exists), and ``mounts``,
from a container to each volume it mounts. A volume is storage that outlives
its containers, so it stays on the map after they are gone. The tree queries
(ancestors, descendants, weak points) follow only the tree's own edges.

Besides the graph this module inspects layer directories the way dive does:
what each layer adds, modifies and removes, and how much of an image is wasted
on files that are overwritten or deleted by a later layer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import graphviz
import networkx as nx

from sandbox.images import chain_ids  # noqa: F401 (part of this module's interface)

SCRATCH = "scratch"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# overlayfs marks an opaque upper directory with this xattr; "user." when
# mounted with userxattr (rootless), "trusted." otherwise.
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


# ---------------------------------------------------------------- inputs

@dataclass
class ImageInfo:
    """One image as the image store knows it (one per tag; untagged: name None)."""
    name: str | None
    id: str
    diff_ids: list[str]
    history: list[dict] = field(default_factory=list)
    layer_dirs: list[Path] = field(default_factory=list)
    container: str | None = None    # the config's "container": what it was committed from


@dataclass
class ContainerInfo:
    id: str
    name: str
    image_id: str
    state: str
    upper_dir: Path | None = None
    upper_bytes: int | None = None   # what its writable layer holds
    mounts: list[tuple[str, str]] = field(default_factory=list)   # (volume name, path inside)


@dataclass
class VolumeInfo:
    name: str
    anonymous: bool = False


# ---------------------------------------------------------------- the graph

def layer_node(chain_id: str) -> str:
    return f"layer:{chain_id}"


def image_node(image_id: str) -> str:
    return f"image:{image_id}"


def container_node(container_id: str) -> str:
    return f"container:{container_id}"


def volume_node(name: str) -> str:
    return f"volume:{name}"


# The edges of the tree itself: each node but scratch has one such parent.
TREE_EDGES = frozenset({"layer", "image", "container"})


def build_graph(images: Iterable[ImageInfo], containers: Iterable[ContainerInfo] = (),
                size_of: Callable[[str, Path], int] | None = None,
                volumes: Iterable[VolumeInfo] = ()) -> nx.DiGraph:
    """The tree of every layer, image and container, rooted at ``scratch``, with
    the volumes beside it.

    Edges point from what is below to what is built on it (or, for ``committed``
    and ``mounts``, from a container to what it made or uses). Each node has a
    ``kind`` (scratch, layer, image, container, volume) and a ``label``; see the
    module docstring for the ids. ``size_of(chain_id, layer_dir)`` gives a
    layer's size (default: ``layer_size``, a scan of its directory); a caller
    that keeps sizes by ChainID passes its own, since a layer never changes.
    """
    size_of = size_of or (lambda chain_id, layer_dir: layer_size(layer_dir))
    graph = nx.DiGraph()
    graph.add_node(SCRATCH, kind="scratch", label="scratch")
    images = list(images)
    for image in images:
        _add_image(graph, image, size_of)
    for volume in volumes:
        _add_volume(graph, volume)
    for container in containers:
        _add_container(graph, container)
    for image in images:
        source = container_node(image.container) if image.container else None
        if source in graph:
            graph.add_edge(source, image_node(image.id), kind="committed")
    return graph


def _add_image(graph: nx.DiGraph, image: ImageInfo, size_of: Callable[[str, Path], int]) -> None:
    if image.layer_dirs and len(image.layer_dirs) != len(image.diff_ids):
        raise ValueError(f"image {image.name or image.id} has {len(image.diff_ids)} diff_ids "
                         f"but {len(image.layer_dirs)} layer directories")
    chain = chain_ids(image.diff_ids)
    steps = _history_steps(image.history, chain)
    made_by = {step["layer"]: step for step in steps if step["layer"]}   # layer node -> step

    parent = SCRATCH
    for depth, (diff_id, chain_id) in enumerate(zip(image.diff_ids, chain)):
        node = layer_node(chain_id)
        if node not in graph:
            step = made_by.get(node, {})
            size = size_of(chain_id, image.layer_dirs[depth]) if image.layer_dirs else None
            graph.add_node(node, kind="layer", diff_id=diff_id, chain_id=chain_id, depth=depth,
                           created_by=step.get("created_by"), created=step.get("created"),
                           size=size, label=_layer_label(diff_id, step.get("created_by"), size))
        elif graph.nodes[node].get("size") is None and image.layer_dirs:
            graph.nodes[node]["size"] = size_of(chain_id, image.layer_dirs[depth])
        graph.add_edge(parent, node, kind="layer")
        parent = node

    node = image_node(image.id)
    if node in graph:  # the same image under another tag
        data = graph.nodes[node]
        if image.name and image.name not in data["tags"]:
            data["tags"] = sorted([*data["tags"], image.name])
            data["label"] = _image_label(data["tags"], image.id)
        return
    tags = [image.name] if image.name else []
    graph.add_node(node, kind="image", id=image.id, tags=tags, label=_image_label(tags, image.id),
                   top_layer=layer_node(chain[-1]) if chain else None,
                   history=steps,
                   config_steps=[s["created_by"] for s in steps if s["empty_layer"]])
    graph.add_edge(parent, node, kind="image")


def _history_steps(history: list[dict], chain: list[str]) -> list[dict]:
    """The image's history, each step tied to the layer it made (None for config-only steps).

    History entries that are not ``empty_layer`` correspond, in order, to the
    layers: that is the only link between them that OCI defines.
    """
    steps, layers = [], iter(layer_node(c) for c in chain)
    for entry in history:
        empty = bool(entry.get("empty_layer", False))
        steps.append({"created_by": entry.get("created_by"), "comment": entry.get("comment"),
                      "created": entry.get("created"), "empty_layer": empty,
                      "layer": None if empty else next(layers, None)})
    return steps


def _add_container(graph: nx.DiGraph, container: ContainerInfo) -> None:
    image = image_node(container.image_id)
    if image not in graph:
        # The image was removed under the container (docker rmi -f): show it,
        # marked missing, rather than hide the container.
        graph.add_node(image, kind="image", id=container.image_id, tags=[], missing=True,
                       label=_image_label([], container.image_id) + "\n(missing)",
                       top_layer=None, history=[], config_steps=[])
    node = container_node(container.id)
    label = f"{container.name}\n{container.state}"
    if container.upper_bytes is not None:
        label += f"\nrw {_human_size(container.upper_bytes)}"
    graph.add_node(node, kind="container", id=container.id, name=container.name,
                   image_id=container.image_id, state=container.state,
                   upper_dir=str(container.upper_dir) if container.upper_dir else None,
                   upper_bytes=container.upper_bytes, label=label)
    graph.add_edge(image, node, kind="container")
    for name, path in container.mounts:
        if volume_node(name) not in graph:   # removed under it (rm -f): still its mount
            _add_volume(graph, VolumeInfo(name))
        graph.add_edge(node, volume_node(name), kind="mounts", path=path)


def _add_volume(graph: nx.DiGraph, volume: VolumeInfo) -> None:
    # An anonymous volume's name is 64 hex digits: the first 12 say enough.
    label = _short(volume.name) if volume.anonymous else volume.name
    graph.add_node(volume_node(volume.name), kind="volume", name=volume.name,
                   anonymous=volume.anonymous, label=label)


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _step_text(created_by: str | None, width: int = 40) -> str:
    text = (created_by or "").replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").strip()
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _layer_label(diff_id: str, created_by: str | None, size: int | None) -> str:
    first = _short(diff_id) + (f" · {_human_size(size)}" if size is not None else "")
    step = _step_text(created_by)
    return f"{first}\n{step}" if step else first


def _image_label(tags: list[str], image_id: str) -> str:
    return "\n".join(tags) if tags else f"<none> {_short(image_id)}"


def _human_size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    scaled, unit = size / 1000, "kB"
    for bigger in ("MB", "GB"):
        if scaled < 1000:
            break
        scaled, unit = scaled / 1000, bigger
    return f"{scaled:.1f} {unit}"


# ---------------------------------------------------------------- queries

def find_image(graph: nx.DiGraph, ref: str) -> str:
    """The node of an image given as node id, image id ("sha256:…") or tag ("app1", "app1:latest")."""
    for candidate in (ref, image_node(ref)):
        if graph.nodes.get(candidate, {}).get("kind") == "image":
            return candidate
    tag = ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"
    for node, data in graph.nodes(data=True):
        if data["kind"] == "image" and tag in data["tags"]:
            return node
    raise KeyError(f"no image {ref!r} in the tree")


def _node(graph: nx.DiGraph, ref: str) -> str:
    if ref in graph:
        return ref
    if graph.nodes.get(layer_node(ref), {}).get("kind") == "layer":
        return layer_node(ref)
    return find_image(graph, ref)


def ancestors(graph: nx.DiGraph, node: str) -> list[str]:
    """Everything ``node`` stands on, from the lowest layer up (scratch excluded).

    For an image this is its branch: the layers a pull needs, in order.
    Every node has at most one parent, so this is a walk up the tree.
    """
    node = _node(graph, node)
    path = []
    parents = _tree_parents(graph, node)
    while parents and parents[0] != SCRATCH:
        path.append(parents[0])
        parents = _tree_parents(graph, parents[0])
    return path[::-1]


def _tree_parents(graph: nx.DiGraph, node: str) -> list[str]:
    return [p for p in graph.predecessors(node) if graph.edges[p, node].get("kind") in TREE_EDGES]


def _tree_only(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph without the edges that lie across the tree (committed, mounts)."""
    return nx.subgraph_view(graph, filter_edge=lambda a, b: graph.edges[a, b].get("kind") in TREE_EDGES)


def descendants(graph: nx.DiGraph, node: str) -> list[str]:
    """Every layer, image and container built on ``node``, nearest first (along the
    tree: an image committed from a container is built on its own layers)."""
    node = _node(graph, node)
    depth = nx.single_source_shortest_path_length(_tree_only(graph), node)
    return sorted((n for n in depth if n != node), key=lambda n: (depth[n], n))


def shared_layers(graph: nx.DiGraph, image_a: str, image_b: str) -> list[str]:
    """The layers two images have in common, lowest first: the trunk before they branch."""
    a = [n for n in ancestors(graph, find_image(graph, image_a)) if graph.nodes[n]["kind"] == "layer"]
    b = set(ancestors(graph, find_image(graph, image_b)))
    return [n for n in a if n in b]


def affected(graph: nx.DiGraph, vulnerable_layers: Iterable[str]) -> dict[str, list[str]]:
    """Everything whose chain includes a vulnerable layer.

    ``layers`` holds the vulnerable layers and every layer above them (their
    stacks contain the vulnerable one), ``images`` and ``containers`` every
    image and container built on any of them. Sorted, so results compare.
    """
    found: dict[str, set[str]] = {"layers": set(), "images": set(), "containers": set()}
    plural = {"layer": "layers", "image": "images", "container": "containers"}
    for layer in vulnerable_layers:
        node = _layer(graph, layer)
        for n in (node, *descendants(graph, node)):
            found[plural[graph.nodes[n]["kind"]]].add(n)
    return {kind: sorted(nodes) for kind, nodes in found.items()}


def mark_vulnerable(graph: nx.DiGraph, layers: Iterable[str], reason: str | None = None) -> dict[str, list[str]]:
    """Marks ``layers`` ``vulnerable`` and everything built on them ``affected``; returns affected()."""
    layers = [_layer(graph, layer) for layer in layers]
    for node in layers:
        graph.nodes[node]["vulnerable"] = True
        if reason:
            graph.nodes[node]["vulnerability"] = reason
    result = affected(graph, layers)
    for nodes in result.values():
        for node in nodes:
            graph.nodes[node]["affected"] = True
    return result


def _layer(graph: nx.DiGraph, ref: str) -> str:
    for node in (ref, layer_node(ref)):
        if graph.nodes.get(node, {}).get("kind") == "layer":
            return node
    raise KeyError(f"no layer {ref!r} in the tree (give a ChainID or a 'layer:<ChainID>' node)")


def layers_containing(images: Iterable[ImageInfo], path: str | None = None,
                      file_digest: str | None = None) -> list[str]:
    """The layers (as ``layer:<ChainID>`` nodes) that add or modify ``path``, or hold
    a file whose sha256 is ``file_digest``; with both, the file at ``path`` must
    have that digest. Lowest layer first, in the order the images came.

    Only what a layer itself carries counts: a path reached through a symlink
    in the layer is not in it (and is never followed out of the layer).
    """
    if path is None and file_digest is None:
        raise ValueError("give a path, a file digest, or both")
    want = None
    if file_digest is not None:
        want = file_digest.split(":", 1)[1] if file_digest.startswith("sha256:") else file_digest
        want = want.lower()
    found: list[str] = []
    for image in images:
        if not image.layer_dirs:
            continue
        if len(image.layer_dirs) != len(image.diff_ids):
            raise ValueError(f"image {image.name or image.id} has {len(image.diff_ids)} diff_ids "
                             f"but {len(image.layer_dirs)} layer directories")
        for chain_id, layer_dir in zip(chain_ids(image.diff_ids), image.layer_dirs):
            node = layer_node(chain_id)
            if node not in found and _layer_has(Path(layer_dir), path, want):
                found.append(node)
    return found


def _layer_has(layer_dir: Path, path: str | None, digest: str | None) -> bool:
    if path is not None:
        target = _lookup(layer_dir, path)
        if target is None:
            return False
        # Not is_file(): it follows a symlink, and one in a student's layer may point
        # anywhere on this machine (a file to hash, or /dev/zero to hash forever).
        return digest is None or (stat.S_ISREG(target.lstat().st_mode) and _sha256(target) == digest)
    return any(entry.kind == "file" and _sha256(layer_dir / rel.lstrip("/")) == digest
               for rel, entry in _scan(layer_dir).entries.items())


def _lookup(layer_dir: Path, path: str) -> Path | None:
    """``path`` inside the layer, if the layer itself has it: every step below the
    last must be a real directory (not a symlink), the last must not be a whiteout."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"{path!r} is not an absolute path inside an image")
    current = layer_dir
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            return None
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            return None
        if last and (part.startswith(WHITEOUT_PREFIX) or _is_overlay_whiteout(st)):
            return None
    return current


def _sha256(path: Path) -> str:
    """The sha256 of a regular file in a layer; never of what a symlink points to."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------- layer inspection

@dataclass
class FileChange:
    path: str
    kind: str                         # file, dir, symlink or other
    size: int                         # added/modified: bytes in this layer; removed: bytes taken away
    previous_size: int | None = None  # modified only: what the path held below


@dataclass
class LayerChanges:
    index: int
    layer_dir: Path
    size: int                         # bytes of content this layer carries
    added: list[FileChange] = field(default_factory=list)
    modified: list[FileChange] = field(default_factory=list)
    removed: list[FileChange] = field(default_factory=list)


@dataclass
class _Entry:
    kind: str
    size: int


@dataclass
class _ScannedLayer:
    entries: dict[str, _Entry]        # "/bin/busybox" -> what the layer has there
    whiteouts: set[str]               # paths this layer removes
    opaque: set[str]                  # directories whose lower contents this layer hides


def layer_changes(layer_dirs: list[Path]) -> list[LayerChanges]:
    """Per layer, lowest first: the files it adds, modifies (present below and
    again here) and removes (OCI whiteouts ``.wh.NAME``, ``.wh..wh..opq``, or
    overlay's own 0/0 character devices and opaque xattr in an upper dir).

    A removed directory is listed once, with the size of everything under it.
    Directories are listed only when new: every directory that holds a changed
    file reappears in the layer, and that is not a change of its own.
    """
    return [changes for changes, _, _ in _stack(layer_dirs)]


def efficiency(layer_dirs: list[Path]) -> dict:
    """dive's efficiency of an image made of ``layer_dirs`` (lowest first).

    Each time a layer writes a path counts that path's size; each time a layer
    removes a file counts 0 for it. Then, as dive computes it:
      score        = Σ_paths smallest size ÷ Σ_paths cumulative size (1.0 if nothing)
      wasted_bytes = Σ cumulative size of the paths written or removed more than once
      user_size    = bytes of every layer but the lowest (the base)
    One difference from dive: when a whole directory is removed, each file in
    it counts as removed (dive counts the directory once at its full size,
    which leaves the removed files out of the wasted bytes).
    """
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)   # path -> [(layer, size)]
    sizes = []
    for changes, layer, dropped in _stack(layer_dirs):
        sizes.append(changes.size)
        for path, entry in layer.entries.items():
            if entry.kind != "dir":
                seen[path].append((changes.index, entry.size))
        for path in dropped:
            seen[path].append((changes.index, 0))

    smallest = sum(min(size for _, size in hits) for hits in seen.values())
    cumulative = sum(size for hits in seen.values() for _, size in hits)
    inefficiencies = sorted(
        ({"path": path, "count": len(hits), "cumulative_size": sum(s for _, s in hits),
          "min_size": min(s for _, s in hits), "layers": [i for i, _ in hits]}
         for path, hits in seen.items() if len(hits) > 1),
        key=lambda item: (-item["cumulative_size"], item["path"]))
    wasted = sum(item["cumulative_size"] for item in inefficiencies)
    user_size = sum(sizes[1:])
    return {"score": smallest / cumulative if cumulative else 1.0,
            "wasted_bytes": wasted,
            "user_size": user_size,
            "size": sum(sizes),
            "inefficiencies": inefficiencies}


def _stack(layer_dirs: list[Path]) -> Iterator[tuple[LayerChanges, _ScannedLayer, list[str]]]:
    """Lays the layers one on another, yielding for each its changes, what it
    holds, and the files it made disappear without writing a new version."""
    below: dict[str, _Entry] = {}   # the merged view of the layers so far
    for index, layer_dir in enumerate(layer_dirs):
        layer = _scan(Path(layer_dir))
        changes, dropped = _apply(index, Path(layer_dir), layer, below)
        yield changes, layer, dropped


def _apply(index: int, layer_dir: Path, layer: _ScannedLayer,
           below: dict[str, _Entry]) -> tuple[LayerChanges, list[str]]:
    entries = layer.entries
    changes = LayerChanges(index, layer_dir, size=sum(e.size for e in entries.values()))
    removed_size: dict[str, int] = defaultdict(int)    # removal root -> bytes under it
    previous_size: dict[str, int] = defaultdict(int)   # path rewritten here -> bytes it held below
    hidden, dropped = [], []

    for path, old in below.items():
        ups = list(_parents(path))
        for p in (path, *ups):
            if p in entries:
                previous_size[p] += old.size
        # Replaced: a file where a directory was (its contents go), or the reverse.
        replaced = any(entries.get(p, _DIR).kind != "dir" for p in ups) or \
            (old.kind != "dir" and entries.get(path, old).kind == "dir")
        if path in layer.whiteouts or any(p in layer.whiteouts for p in ups) or \
                any(p in layer.opaque for p in ups):
            hidden.append(path)
            if path not in entries and not replaced:
                # Reported once, at the highest removed path this layer does not rewrite.
                root = path
                for p in ups:
                    if p == "/" or p in entries or p in layer.opaque:
                        break
                    root = p
                removed_size[root] += old.size
        elif replaced:
            hidden.append(path)
        else:
            continue
        if old.kind != "dir" and entries.get(path, _DIR).kind == "dir":
            dropped.append(path)

    for path, entry in sorted(entries.items()):
        old = below.get(path)
        if old is None:
            changes.added.append(FileChange(path, entry.kind, entry.size))
        elif not (old.kind == "dir" and entry.kind == "dir"):
            changes.modified.append(FileChange(path, entry.kind, entry.size, previous_size[path]))
    changes.removed = [FileChange(root, below[root].kind, size) for root, size in sorted(removed_size.items())]

    for path in hidden:
        del below[path]
    below.update(entries)
    return changes, dropped


_DIR = _Entry("dir", 0)


def _parents(path: str) -> Iterator[str]:
    """The directories above a path, nearest first: /a/b/c gives /a/b, /a, /."""
    while path != "/":
        path = path.rsplit("/", 1)[0] or "/"
        yield path


def _scan(layer_dir: Path) -> _ScannedLayer:
    """What one layer directory holds, without following any symlink in it.

    Sizes are what the layer's tar would carry: a regular file's length, 0 for
    directories, symlinks and devices, and a hard link's bytes only once.
    """
    layer = _ScannedLayer({}, set(), set())
    seen_inodes: set[tuple[int, int]] = set()
    stack = [("", str(layer_dir))]
    while stack:
        rel_dir, real_dir = stack.pop()
        if rel_dir and _has_opaque_xattr(real_dir):
            layer.opaque.add(rel_dir)
        with os.scandir(real_dir) as it:
            names = sorted(it, key=lambda e: e.name)
        for entry in names:
            path = f"{rel_dir}/{entry.name}"
            if entry.name == OPAQUE_MARKER:
                layer.opaque.add(rel_dir or "/")
                continue
            if entry.name.startswith(WHITEOUT_PREFIX):
                layer.whiteouts.add(f"{rel_dir}/{entry.name[len(WHITEOUT_PREFIX):]}")
                continue
            st = entry.stat(follow_symlinks=False)
            if _is_overlay_whiteout(st):
                layer.whiteouts.add(path)
            elif stat.S_ISDIR(st.st_mode):
                layer.entries[path] = _Entry("dir", 0)
                stack.append((path, entry.path))
            elif stat.S_ISREG(st.st_mode):
                inode = (st.st_dev, st.st_ino)
                size = 0 if inode in seen_inodes else st.st_size
                if st.st_nlink > 1:
                    seen_inodes.add(inode)
                layer.entries[path] = _Entry("file", size)
            else:
                layer.entries[path] = _Entry("symlink" if stat.S_ISLNK(st.st_mode) else "other", 0)
    return layer


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _has_opaque_xattr(directory: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(directory, name, follow_symlinks=False) == b"y":
                return True
        except OSError:   # no such xattr, no xattrs here, or trusted.* needs root
            pass
    return False


def layer_size(layer_dir: Path) -> int:
    """Bytes of content a layer directory carries (as ``LayerChanges.size`` counts them)."""
    return sum(e.size for e in _scan(Path(layer_dir)).entries.values())


# ---------------------------------------------------------------- for the browser

def to_json(graph: nx.DiGraph, omit: Iterable[str] = ()) -> dict:
    """``{"nodes": [{id, kind, label, attributes}], "edges": [{source, target, kind, …}]}``,
    without the attributes named in ``omit``; an edge carries its own data too
    (a ``mounts`` edge its ``path``)."""
    left_out = {"kind", "label", *omit}
    nodes = []
    for node, data in graph.nodes(data=True):
        attributes = {k: _plain(v) for k, v in data.items() if k not in left_out}
        nodes.append({"id": node, "kind": data["kind"], "label": data["label"], "attributes": attributes})
    edges = [{**{k: _plain(v) for k, v in data.items()}, "source": a, "target": b, "kind": data.get("kind")}
             for a, b, data in graph.edges(data=True)]
    return {"nodes": nodes, "edges": edges}


def describe(graph: nx.DiGraph, node: str, layer_dir: Callable[[str], Path], cap: int = 200) -> dict:
    """One node in detail, for the browser's panel; ``layer_dir(chain_id)`` is where
    a layer is unpacked.

    A layer: its step, and the files it adds, modifies and removes over the layers
    below it (at most ``cap`` of each, and how many in all). An image: its tags, its
    layers bottom to top, their total size, its history and its efficiency. A
    container: its image and state (what its writable layer holds is the engine's
    to measure: it may be changing).
    """
    data = graph.nodes[node]
    below = [n for n in ancestors(graph, node) if graph.nodes[n]["kind"] == "layer"] \
        if data["kind"] != "volume" else []
    found = {"id": node, "kind": data["kind"]}
    if data["kind"] == "layer":
        changes = layer_changes([layer_dir(graph.nodes[n]["chain_id"]) for n in (*below, node)])[-1]
        lists = {what: getattr(changes, what) for what in ("added", "modified", "removed")}
        found.update({k: data[k] for k in ("chain_id", "diff_id", "size", "created_by", "created", "depth")},
                     changes={**{what: [_file_change(c) for c in items[:cap]] for what, items in lists.items()},
                              **{f"{what}_count": len(items) for what, items in lists.items()}})
    elif data["kind"] == "image":
        result = efficiency([layer_dir(graph.nodes[n]["chain_id"]) for n in below])
        result["inefficiency_count"] = len(result["inefficiencies"])
        result["inefficiencies"] = result["inefficiencies"][:cap]
        found.update(image_id=data["id"], tags=data["tags"], missing=data.get("missing", False),
                     size=sum(graph.nodes[n]["size"] or 0 for n in below), layers=below,
                     history=data["history"], config_steps=data["config_steps"], efficiency=result)
    elif data["kind"] == "container":
        found.update(container_id=data["id"], name=data["name"], state=data["state"],
                     image=image_node(data["image_id"]),
                     volumes=[{"volume": v, "path": graph.edges[node, v]["path"]}
                              for v in graph.successors(node) if graph.nodes[v]["kind"] == "volume"],
                     committed=[i for i in graph.successors(node)
                                if graph.edges[node, i].get("kind") == "committed"])
    elif data["kind"] == "volume":
        found.update(name=data["name"], anonymous=data["anonymous"],
                     mounted_by=[{"container": c, "path": graph.edges[c, node]["path"]}
                                 for c in graph.predecessors(node)])
    if data["kind"] == "image":
        found["committed_from"] = next((c for c in graph.predecessors(node)
                                        if graph.edges[c, node].get("kind") == "committed"), None)
    return found


def _file_change(change: FileChange) -> dict:
    return {k: v for k, v in dataclasses.asdict(change).items() if v is not None}


def signature(graph: nx.DiGraph) -> str:
    """A short hash of what the picture shows: node ids and labels, and edges, in
    the graph's order (which is also what dot's layout depends on). Equal
    signatures, equal layouts; a new tag, layer, container or state changes it."""
    sha = hashlib.sha256()
    for node, data in graph.nodes(data=True):
        sha.update(f"n\0{node}\0{data['label']}\0".encode())
    for a, b, kind in graph.edges(data="kind"):
        sha.update(f"e\0{a}\0{b}\0{kind}\0".encode())
    return sha.hexdigest()[:16]


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    return value


class LayoutError(RuntimeError):
    pass


_SHAPES = {"scratch": "box", "layer": "box", "image": "box", "container": "ellipse",
           "volume": "cylinder"}
# An edge drawn with words on it: dot leaves room for them and says where they go.
_EDGE_LABELS = {"committed": "commit"}
# A tree this many times wider than tall reads better on its side (left to right).
WIDE = 3.0


def rankdir_for(width: float, height: float) -> str:
    """``LR`` when a top-to-bottom layout of ``width`` × ``height`` is much wider than
    tall (more than ``WIDE`` times): many images on few layers. Else ``TB``."""
    return "LR" if width > WIDE * max(height, 1.0) else "TB"


def layout(graph: nx.DiGraph) -> dict:
    """Positions for drawing the tree, computed by Graphviz's ``dot``: top to bottom
    from scratch, or left to right when that would be much wider than tall
    (``rankdir_for``); ``rankdir`` says which.

    All figures are in points (1/72 inch) in dot's coordinates: the origin is
    the bottom-left corner and y grows upwards, so the browser draws a node at
    ``height - y``. Node x, y are the centre. Edge ``points`` are the B-spline
    control points (1 + 3n of them); ``arrow`` is where the arrowhead points;
    an edge with words on it (a ``committed`` one: "commit") has ``label`` and
    ``label_at``, the centre of the words.
    """
    placed = _dot(graph, "TB")
    if rankdir_for(placed["width"], placed["height"]) == "LR":
        placed = _dot(graph, "LR")
    return placed


def _dot(graph: nx.DiGraph, rankdir: str) -> dict:
    names = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    dot = graphviz.Digraph(graph_attr={"rankdir": rankdir, "nodesep": "0.3", "ranksep": "0.4"},
                           node_attr={"fontname": "Helvetica", "fontsize": "10"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    for node, data in graph.nodes(data=True):
        label = "\\n".join(line.replace("\\", "\\\\") for line in str(data["label"]).split("\n"))
        dot.node(names[node], label=graphviz.nohtml(label), shape=_SHAPES.get(data["kind"], "box"))
    for a, b, kind in graph.edges(data="kind"):
        if kind in _EDGE_LABELS:
            dot.edge(names[a], names[b], label=_EDGE_LABELS[kind], style="dashed")
        else:
            dot.edge(names[a], names[b])
    try:
        out = json.loads(dot.pipe(format="json0"))
    except graphviz.ExecutableNotFound as e:
        raise LayoutError("Graphviz's `dot` was not found on PATH; the tree layout needs it "
                          "(Debian: apt-get install graphviz)") from e
    except graphviz.CalledProcessError as e:
        raise LayoutError(f"dot failed: {e.stderr.decode(errors='replace') if e.stderr else e}") from e

    by_name = {name: node for node, name in names.items()}
    by_gvid = {}
    nodes = {}
    for obj in out.get("objects", []):
        if obj.get("name") not in by_name or "pos" not in obj:
            continue
        node = by_name[obj["name"]]
        by_gvid[obj["_gvid"]] = node
        x, y = _point(obj["pos"])
        nodes[node] = {"x": x, "y": y, "width": float(obj["width"]) * 72, "height": float(obj["height"]) * 72}
    edges = []
    for edge in out.get("edges", []):
        points, arrow = [], None
        for token in edge.get("pos", "").split():
            if token.startswith("e,"):
                arrow = _point(token[2:])
            elif not token.startswith("s,"):
                points.append(_point(token))
        route = {"source": by_gvid[edge["tail"]], "target": by_gvid[edge["head"]],
                 "points": points, "arrow": arrow}
        if "lp" in edge:
            route.update(label=edge.get("label"), label_at=_point(edge["lp"]))
        edges.append(route)
    _, _, width, height = (float(v) for v in out["bb"].split(","))
    return {"width": width, "height": height, "rankdir": rankdir, "nodes": nodes, "edges": edges}


def _point(text: str) -> list[float]:
    x, y = (float(v) for v in text.split(",")[:2])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise LayoutError(f"dot gave a non-finite position {text!r}")
    return [x, y]
