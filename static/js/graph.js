// A graph laid out by Graphviz on the server, drawn as SVG: what every graph
// of the page shares. Nodes and edges are keyed by id, so an update moves what
// stayed (a CSS transition glides it), grows what is new out of its parent and
// fades what went away, instead of redrawing the picture. Pan (drag), zoom
// (wheel, buttons, keys), fit; a current node moved with the arrow keys; nodes
// lit, dimmed or marked by class; a table of the same data for screen readers.
//
// What a node looks like is the caller's: `drawNode(g, node, box)` fills the
// node's <g>, whose origin is the node's centre. An edge the layout gives words
// (`label`, `label_at`) gets them drawn beside it, as `edgeText(edge, label)` says them.
const SVG = "http://www.w3.org/2000/svg";
const MIN_ZOOM = 0.01;
const MAX_ZOOM = 4;
const FIT_MAX_ZOOM = 1.5;  // a small graph is not blown up past this
const FIT_PAD = 16;        // px around the graph when fitted
const DRAG_PX = 4;         // a press that moves less than this is a click
const LEAVE_MS = 500;      // as long as the CSS fade-out
// Beyond this many nodes an update jumps: thousands of transitions at once
// would cost more frames than they are worth.
const ANIMATE_MAX_NODES = 1200;

export function svgEl(name, attrs = {}) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

// Cubic Bézier path through dot's B-spline control points (1 + 3n of them),
// with y turned downwards; `arrow` is where the arrowhead's tip is.
export function edgePath(points, arrow, height) {
  const p = ([x, y]) => `${round(x)},${round(height - y)}`;
  if (!points || !points.length) return "";
  let d = `M${p(points[0])}`;
  for (let i = 1; i + 2 < points.length; i += 3) {
    d += ` C${p(points[i])} ${p(points[i + 1])} ${p(points[i + 2])}`;
  }
  if (arrow) d += ` L${p(arrow)}`;
  return d;
}

function round(v) {
  return Math.round(v * 10) / 10;
}

const edgeKey = (source, target) => `${source}\u0000${target}`;

// Whether dot ranked the graph top to bottom (rankdir TB) rather than left to
// right: the nodes of a rank share one line, so ranks are the axis with the
// fewer distinct positions.
function isVertical(at) {
  const xs = new Set();
  const ys = new Set();
  for (const {x, y} of Object.values(at)) {
    xs.add(Math.round(x));
    ys.add(Math.round(y));
  }
  return ys.size <= xs.size;
}

export class GraphView {
  // svg: the <svg> (focusable); its first <g class="viewport"> holds
  // <g class="edges"> and <g class="nodes">, made here if missing.
  // idPrefix: DOM ids of the nodes (for aria-activedescendant).
  // originOf(id): the node a new node should grow out of, when not its parent's
  // line (null: the parent's).
  constructor({svg, idPrefix, drawNode, keyOf, describe, onActivate, onCurrent, onHover,
               onEscape, onZoom, originOf, edgeText, farZoom = 0.45}) {
    this.svg = svg;
    this.idPrefix = idPrefix;
    this.drawNode = drawNode;
    this.keyOf = keyOf || ((node, box) => JSON.stringify([node.label, box.width, box.height]));
    this.describe = describe || ((node) => node.label);
    this.onActivate = onActivate || (() => {});
    this.onCurrent = onCurrent || (() => {});
    this.onHover = onHover || (() => {});
    this.onEscape = onEscape || (() => {});
    this.onZoom = onZoom || (() => {});
    this.originOf = originOf || (() => null);
    this.edgeText = edgeText || ((edge, label) => label);
    this.farZoom = farZoom;

    this.viewport = svg.querySelector("g.viewport") || svg.appendChild(svgEl("g", {class: "viewport"}));
    this.edgeLayer = this.viewport.querySelector("g.edges")
      || this.viewport.appendChild(svgEl("g", {class: "edges"}));
    this.nodeLayer = this.viewport.querySelector("g.nodes")
      || this.viewport.appendChild(svgEl("g", {class: "nodes"}));

    this.nodes = new Map();     // id → {node, box, el, x, y}
    this.edges = new Map();     // key → {edge, el, text}
    this.parents = new Map();   // id → [source ids]
    this.children = new Map();  // id → [target ids]
    this.size = {width: 0, height: 0};
    this.view = {x: 0, y: 0, k: 1};
    this.autoFit = true;        // until the reader pans or zooms, updates re-fit
    this.current = null;        // the keyboard's node
    this.vertical = true;       // ranks top to bottom (dot's TB), or left to right (LR)
    this.hovered = null;
    this.domIds = 0;

    this.listen();
  }

  // ------------------------------------------------------------ drawing

  // Draws `graph` ({nodes, edges}) at `layout` (dot's: points, y up).
  // Returns how long building the DOM took, in ms.
  render(graph, layout, {animate = true} = {}) {
    const started = performance.now();
    // Read before the new nodes are in: measuring after would lay out every
    // label once here and again for the frame (zoomed out, they are hidden).
    const view = this.viewSize();
    const height = layout.height || 0;
    this.size = {width: layout.width || 0, height};
    animate = animate && this.nodes.size > 0 && graph.nodes.length <= ANIMATE_MAX_NODES;
    this.svg.classList.toggle("still", !animate);

    this.parents = new Map();
    this.children = new Map();
    for (const edge of graph.edges) {
      if (!this.parents.has(edge.target)) this.parents.set(edge.target, []);
      this.parents.get(edge.target).push(edge.source);
      if (!this.children.has(edge.source)) this.children.set(edge.source, []);
      this.children.get(edge.source).push(edge.target);
    }

    this.vertical = isVertical(layout.nodes || {});
    const previous = this.nodes;
    const next = new Map();
    for (const node of graph.nodes) {
      const at = layout.nodes && layout.nodes[node.id];
      if (!at) continue;
      next.set(node.id, {node, box: {width: at.width, height: at.height},
                         x: round(at.x), y: round(height - at.y), el: null});
    }

    const entering = [];
    const fragment = document.createDocumentFragment();
    for (const [id, item] of next) {
      const old = previous.get(id);
      if (old) {
        item.el = old.el;
        previous.delete(id);
      } else {
        // Not focusable itself: the svg keeps the focus and points at the
        // keyboard's node with aria-activedescendant.
        item.el = svgEl("g", {class: "node", role: "button"});
        item.el.id = `${this.idPrefix}-${++this.domIds}`;
        item.el.dataset.id = id;
        item.el._graphId = id;
        fragment.append(item.el);
        if (animate) entering.push(item);
      }
      item.el.dataset.kind = item.node.kind;
      const key = this.keyOf(item.node, item.box);
      if (item.el._key !== key) {
        item.el._key = key;
        item.el.replaceChildren();
        this.drawNode(item.el, item.node, item.box);
        item.el.setAttribute("aria-label", this.describe(item.node));
      }
    }
    for (const old of previous.values()) this.leave(old.el);
    this.nodes = next;

    const wanted = new Map();
    const edgeFragment = document.createDocumentFragment();
    const enteringEdges = [];
    const edgeData = new Map((graph.edges || []).map((e) => [edgeKey(e.source, e.target), e]));
    for (const route of layout.edges || []) {
      const key = edgeKey(route.source, route.target);
      let item = this.edges.get(key);
      const d = edgePath(route.points, route.arrow, height);
      if (item) {
        this.edges.delete(key);
      } else {
        const el = svgEl("path", {class: "edge"});
        el.dataset.source = route.source;
        el.dataset.target = route.target;
        edgeFragment.append(el);
        item = {el};
        if (animate) enteringEdges.push(el);
      }
      if (item.d !== d) {
        item.d = d;
        item.el.setAttribute("d", d);
        if (animate) item.el.style.d = `path("${d}")`;
        else item.el.style.removeProperty("d");
      }
      this.edgeLabel(item, route, edgeData.get(key) || route, height, edgeFragment, enteringEdges, animate);
      wanted.set(key, item);
    }
    for (const old of this.edges.values()) {
      this.leave(old.el);
      if (old.text) this.leave(old.text);
    }
    this.edges = wanted;
    for (const edge of graph.edges || []) {
      const item = this.edges.get(edgeKey(edge.source, edge.target));
      if (item && edge.kind) item.el.dataset.kind = edge.kind;
    }

    // New nodes start where their parent is, small and clear, and grow into
    // place: the layer a build makes comes out of the one below it.
    const fresh = new Set(entering.map((item) => item.node.id));
    for (const item of entering) {
      const from = this.origin(item.node.id, next, fresh) || item;
      item.el.classList.add("entering");
      item.el.style.transform = `translate(${from.x}px, ${from.y}px) scale(0.2)`;
    }
    for (const el of enteringEdges) el.classList.add("entering");
    this.edgeLayer.append(edgeFragment);
    this.nodeLayer.append(fragment);
    if (animate && (entering.length || enteringEdges.length)) {
      // The start positions take effect before the moves (a style flush, no layout).
      getComputedStyle((entering[0] || {el: enteringEdges[0]}).el).opacity;
    }
    for (const item of next.values()) {
      item.el.style.transform = `translate(${item.x}px, ${item.y}px)`;
    }
    for (const item of entering) item.el.classList.remove("entering");
    for (const el of enteringEdges) el.classList.remove("entering");

    if (this.current && !this.nodes.has(this.current)) this.setCurrent(null);
    if (this.hovered && !this.nodes.has(this.hovered)) this.hovered = null;
    if (this.autoFit) this.fit(view);
    return performance.now() - started;
  }

  // The words on an edge, at the point dot kept for them; gone when the edge loses them.
  edgeLabel(item, route, edge, height, fragment, entering, animate) {
    if (!route.label || !route.label_at) {
      if (item.text) this.leave(item.text);
      item.text = null;
      return;
    }
    if (!item.text) {
      item.text = svgEl("text", {class: "edge-label"});
      item.text.dataset.source = route.source;
      item.text.dataset.target = route.target;
      fragment.append(item.text);
      if (animate) entering.push(item.text);
    }
    item.edge = edge;
    item.label = route.label;
    item.text.textContent = this.edgeText(edge, route.label);
    item.text.setAttribute("x", round(route.label_at[0]));
    item.text.setAttribute("y", round(height - route.label_at[1] + 3));
  }

  // Edge words drawn again (the language changed).
  relabelEdges() {
    for (const item of this.edges.values()) {
      if (item.text) item.text.textContent = this.edgeText(item.edge, item.label);
    }
  }

  // Where a new node grows from: the node the caller names (originOf), else the
  // nearest ancestor that was there before.
  origin(id, next, fresh) {
    const chosen = this.originOf(id);
    if (chosen && next.has(chosen) && !fresh.has(chosen)) return next.get(chosen);
    let parent = (this.parents.get(id) || [])[0];
    for (let hops = 0; parent && hops < 64; hops += 1) {
      const item = next.get(parent);
      if (item && !fresh.has(parent)) return item;
      parent = (this.parents.get(parent) || [])[0];
    }
    return null;
  }

  leave(el) {
    // Out of the contract's selectors at once (g.node, path.edge); gone after the fade.
    el.classList.remove("node", "edge", "lit", "dim");
    el.classList.add("leaving");
    setTimeout(() => el.remove(), this.svg.classList.contains("still") ? 0 : LEAVE_MS);
  }

  // Draws every node, and the words on edges, again (the language changed).
  redraw() {
    for (const item of this.nodes.values()) {
      item.el.replaceChildren();
      this.drawNode(item.el, item.node, item.box);
      item.el.setAttribute("aria-label", this.describe(item.node));
    }
    this.relabelEdges();
  }

  // A node's data changed without a new layout (a container's live state).
  update(id, change) {
    const item = this.nodes.get(id);
    if (!item) return false;
    change(item.node);
    item.el._key = this.keyOf(item.node, item.box);
    item.el.replaceChildren();
    this.drawNode(item.el, item.node, item.box);
    item.el.setAttribute("aria-label", this.describe(item.node));
    return true;
  }

  node(id) {
    const item = this.nodes.get(id);
    return item ? item.node : null;
  }

  element(id) {
    const item = this.nodes.get(id);
    return item ? item.el : null;
  }

  // ------------------------------------------------------------ the tree's shape

  ancestors(id) {
    const seen = new Set();
    const todo = [...(this.parents.get(id) || [])];
    while (todo.length) {
      const next = todo.pop();
      if (seen.has(next)) continue;
      seen.add(next);
      todo.push(...(this.parents.get(next) || []));
    }
    return seen;
  }

  descendants(id) {
    const seen = new Set();
    const todo = [...(this.children.get(id) || [])];
    while (todo.length) {
      const next = todo.pop();
      if (seen.has(next)) continue;
      seen.add(next);
      todo.push(...(this.children.get(next) || []));
    }
    return seen;
  }

  // A node with what it stands on and what is built on it.
  lineage(id) {
    return new Set([id, ...this.ancestors(id), ...this.descendants(id)]);
  }

  // ------------------------------------------------------------ classes

  // `ids`: the nodes to light (an edge is lit when both its ends are);
  // null: nothing lit, nothing dimmed.
  light(ids) {
    const on = ids != null;
    this.svg.classList.toggle("highlighting", on);
    for (const [id, item] of this.nodes) {
      const lit = on && ids.has(id);
      item.el.classList.toggle("lit", lit);
      item.el.classList.toggle("dim", on && !lit);
    }
    for (const item of this.edges.values()) {
      const lit = on && ids.has(item.el.dataset.source) && ids.has(item.el.dataset.target);
      item.el.classList.toggle("lit", lit);
      item.el.classList.toggle("dim", on && !lit);
      if (item.text) item.text.classList.toggle("dim", on && !lit);
    }
  }

  // One class on the given nodes (and the edges between two of them), off elsewhere.
  mark(className, ids) {
    ids = ids || new Set();
    for (const [id, item] of this.nodes) item.el.classList.toggle(className, ids.has(id));
    for (const item of this.edges.values()) {
      item.el.classList.toggle(className,
                               ids.has(item.el.dataset.source) && ids.has(item.el.dataset.target));
    }
  }

  // ------------------------------------------------------------ pan and zoom

  apply() {
    const {x, y, k} = this.view;
    this.viewport.setAttribute("transform", `translate(${round(x)},${round(y)}) scale(${k.toFixed(4)})`);
    const far = k < this.farZoom;
    if (far !== this.svg.classList.contains("far")) {
      this.svg.classList.toggle("far", far);
      this.onZoom(far);
    }
    this.svg.dataset.zoom = k.toFixed(3);
  }

  // Zoomed out so far that labels are hidden.
  far() {
    return this.view.k < this.farZoom;
  }

  viewSize() {
    return {width: this.svg.clientWidth, height: this.svg.clientHeight};
  }

  // The whole graph in view, centred; not larger than FIT_MAX_ZOOM.
  fit(view = this.viewSize()) {
    this.autoFit = true;
    const {width, height} = view;
    if (!width || !height || !this.size.width) return false;
    const k = Math.max(MIN_ZOOM, Math.min(FIT_MAX_ZOOM,
                                          (width - 2 * FIT_PAD) / this.size.width,
                                          (height - 2 * FIT_PAD) / this.size.height));
    this.view = {k, x: (width - this.size.width * k) / 2, y: Math.max(FIT_PAD, (height - this.size.height * k) / 2)};
    this.apply();
    return true;
  }

  // Those nodes in view, as large as fits (up to FIT_MAX_ZOOM): what a search found.
  fitTo(ids) {
    const items = [...ids].map((id) => this.nodes.get(id)).filter(Boolean);
    const {width, height} = this.viewSize();
    if (!items.length || !width || !height) return false;
    const left = Math.min(...items.map((i) => i.x - i.box.width / 2));
    const right = Math.max(...items.map((i) => i.x + i.box.width / 2));
    const top = Math.min(...items.map((i) => i.y - i.box.height / 2));
    const bottom = Math.max(...items.map((i) => i.y + i.box.height / 2));
    const k = Math.max(MIN_ZOOM, Math.min(FIT_MAX_ZOOM, (width - 2 * FIT_PAD) / (right - left || 1),
                                          (height - 2 * FIT_PAD) / (bottom - top || 1)));
    this.view = {k, x: width / 2 - ((left + right) / 2) * k, y: height / 2 - ((top + bottom) / 2) * k};
    this.autoFit = false;
    this.apply();
    return true;
  }

  // Zooms by `factor` keeping the point (px, py) of the svg where it is.
  zoomBy(factor, px, py) {
    const {width, height} = this.viewSize();
    if (px == null) [px, py] = [width / 2, height / 2];
    const {x, y, k} = this.view;
    const k2 = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, k * factor));
    this.view = {k: k2, x: px - (px - x) * (k2 / k), y: py - (py - y) * (k2 / k)};
    this.autoFit = false;
    this.apply();
  }

  panBy(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.autoFit = false;
    this.apply();
  }

  // Pans (never zooms) so that the node is in view, with a margin.
  reveal(id) {
    const item = this.nodes.get(id);
    if (!item) return;
    const {width, height} = this.viewSize();
    const {x, y, k} = this.view;
    const sx = x + item.x * k;
    const sy = y + item.y * k;
    const margin = 40;
    const halfW = (item.box.width * k) / 2;
    const halfH = (item.box.height * k) / 2;
    let dx = 0;
    let dy = 0;
    if (sx - halfW < margin || sx + halfW > width - margin) dx = width / 2 - sx;
    if (sy - halfH < margin || sy + halfH > height - margin) dy = height / 2 - sy;
    if (dx || dy) this.panBy(dx, dy);
  }

  // Zooms in far enough to read a node's label, centred on it.
  zoomTo(id, k = 1) {
    const item = this.nodes.get(id);
    if (!item) return;
    const {width, height} = this.viewSize();
    this.view = {k, x: width / 2 - item.x * k, y: height / 2 - item.y * k};
    this.autoFit = false;
    this.apply();
  }

  // ------------------------------------------------------------ keyboard

  setCurrent(id, {reveal = true} = {}) {
    if (this.current) {
      const old = this.element(this.current);
      if (old) old.classList.remove("current");
    }
    this.current = id && this.nodes.has(id) ? id : null;
    if (this.current) {
      const el = this.element(this.current);
      el.classList.add("current");
      this.svg.setAttribute("aria-activedescendant", el.id);
      if (reveal) this.reveal(this.current);
    } else {
      this.svg.removeAttribute("aria-activedescendant");
    }
    this.onCurrent(this.current, reveal);
  }

  // The node an arrow key leads to, as drawn: towards the root the parent,
  // away from it the child nearest in line, across the neighbours on the same
  // rank (siblings first, since dot draws them side by side).
  neighbour(id, key) {
    const here = this.nodes.get(id);
    if (!here) return null;
    const [along, across] = this.vertical ? ["y", "x"] : ["x", "y"];
    const [up, down, back, forth] = this.vertical
      ? ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"]
      : ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"];
    if (key === up) return (this.parents.get(id) || []).find((p) => this.nodes.has(p)) || null;
    if (key === down) {
      const kids = (this.children.get(id) || []).filter((c) => this.nodes.has(c));
      const off = (c) => Math.abs(this.nodes.get(c)[across] - here[across]);
      kids.sort((a, b) => off(a) - off(b));
      return kids[0] || null;
    }
    if (key !== back && key !== forth) return null;
    const rank = [...this.nodes.values()].filter((item) => Math.abs(item[along] - here[along]) < 1)
      .sort((a, b) => a[across] - b[across]);
    const i = rank.findIndex((item) => item.node.id === id);
    const other = rank[key === back ? i - 1 : i + 1];
    return other ? other.node.id : null;
  }

  root() {
    for (const [id] of this.nodes) {
      if (!(this.parents.get(id) || []).length) return id;
    }
    return null;
  }

  onKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const key = e.key;
    let handled = true;
    if (key.startsWith("Arrow")) {
      const next = this.current ? this.neighbour(this.current, key) : this.root();
      if (next) this.setCurrent(next);
    } else if (key === "Home") {
      this.setCurrent(this.root());
    } else if (key === "Enter" || key === " ") {
      if (this.current) this.onActivate(this.current);
    } else if (key === "Escape") {
      this.onEscape();
    } else if (key === "+" || key === "=") {
      this.zoomBy(1.25);
    } else if (key === "-") {
      this.zoomBy(0.8);
    } else if (key === "0") {
      this.fit();
    } else {
      handled = false;
    }
    if (handled) e.preventDefault();
  }

  // ------------------------------------------------------------ pointer

  listen() {
    const svg = this.svg;
    let press = null;        // {x, y, viewX, viewY, dragging}
    let swallowClick = false;

    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = svg.getBoundingClientRect();
      // Pixel deltas from a touchpad are small and many; line deltas from a wheel few.
      const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
      this.zoomBy(Math.exp(-delta * 0.0015), e.clientX - r.left, e.clientY - r.top);
    }, {passive: false});

    svg.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      press = {x: e.clientX, y: e.clientY, viewX: this.view.x, viewY: this.view.y, dragging: false,
               id: e.pointerId};
    });
    svg.addEventListener("pointermove", (e) => {
      if (press && press.id === e.pointerId) {
        const dx = e.clientX - press.x;
        const dy = e.clientY - press.y;
        if (!press.dragging && Math.hypot(dx, dy) >= DRAG_PX) {
          press.dragging = true;
          svg.setPointerCapture(e.pointerId);
          svg.classList.add("panning");
        }
        if (press.dragging) {
          this.view.x = press.viewX + dx;
          this.view.y = press.viewY + dy;
          this.autoFit = false;
          this.apply();
        }
        return;
      }
      this.hoverAt(e.target);
    });
    const release = (e) => {
      if (!press || press.id !== e.pointerId) return;
      swallowClick = press.dragging;
      press = null;
      svg.classList.remove("panning");
    };
    svg.addEventListener("pointerup", release);
    svg.addEventListener("pointercancel", release);
    svg.addEventListener("pointerleave", () => {
      if (!press) this.hoverAt(null);
    });
    svg.addEventListener("click", (e) => {
      if (swallowClick) {
        swallowClick = false;
        return;
      }
      const g = e.target.closest && e.target.closest("g.node");
      if (!g) return;
      this.setCurrent(g._graphId, {reveal: false});
      this.onActivate(g._graphId);
    });
    svg.addEventListener("keydown", (e) => this.onKey(e));
    svg.addEventListener("focus", () => {
      if (!this.current) this.setCurrent(this.root(), {reveal: false});
      else this.onCurrent(this.current, false);
    });
  }

  hoverAt(target) {
    const g = target && target.closest ? target.closest("g.node") : null;
    const id = g ? g._graphId : null;
    if (id === this.hovered) return;
    this.hovered = id;
    this.onHover(id);
  }
}

// A table of the same data (one row per node) for those who don't see the
// picture. columns: [{key, label, rowHeader}]; rows: [{id, kind, cells: {key: text or
// Node}, classes}].
export function fillTable(table, columns, rows) {
  const head = table.tHead || table.createTHead();
  const headRow = document.createElement("tr");
  for (const column of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = column.label;
    headRow.append(th);
  }
  head.replaceChildren(headRow);
  const body = table.tBodies[0] || table.createTBody();
  const fragment = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.id = row.id;
    if (row.kind) tr.dataset.kind = row.kind;
    for (const name of row.classes || []) tr.classList.add(name);
    for (const column of columns) {
      const cell = document.createElement(column.rowHeader ? "th" : "td");
      if (column.rowHeader) cell.scope = "row";
      const value = row.cells[column.key];
      if (value instanceof Node) cell.append(value);
      else cell.textContent = value == null ? "" : String(value);
      if (column.className) cell.className = column.className;
      tr.append(cell);
    }
    fragment.append(tr);
  }
  body.replaceChildren(fragment);
}
