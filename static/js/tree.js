// The Image tree tab: every layer (by ChainID), image and container of the
// host as one tree from `scratch`, with its volumes beside it, laid out by
// Graphviz on the server and kept live from the events. An image committed
// from a container hangs from it by a dashed "commit" edge, and its new layer
// grows out of that container. Hover or focus a node and its branch lights up (what a
// pull of it needs, and what is built on it); click it for its details; mark a
// layer or a file as a weak point and see everything built on it.
import { containerOf, humanBytes, shortId } from "./events.js";
import { fillTable, GraphView, svgEl } from "./graph.js";
import { t } from "./i18n.js";

const REFRESH_MS = 250;
// Events after which the tree may look different.
const REFRESH_KINDS = /^(image\.|layer\.|build\.done$|blob\.pulled$|container\.(created|removed)$|process\.exited$|volume\.(created|removed)$)/;
const SEARCH_MS = 120;
const FILES_SHOWN = 200;  // per list in the details; the counts say how many there are
const LINE = 12;          // label line height, in dot's points
// The label fonts, as tree.css sets them: what text is measured in. dot sized
// the boxes for the server's labels in the regular weight of the same family.
const FONT = "10px Helvetica, Arial, sans-serif";
const STEP_FONT = "9px Helvetica, Arial, sans-serif";
const measure = document.createElement("canvas").getContext("2d");

function el(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// "/bin/sh -c #(nop)  CMD ["sh"]" → "CMD ["sh"]", "/bin/sh -c apk add x" → "RUN apk add x".
export function stepText(createdBy) {
  const text = String(createdBy || "")
    .replace(/^\/bin\/sh -c #\(nop\)\s*/, "")
    .replace(/^\/bin\/sh -c /, "RUN ");
  return text.split(/\s+/).filter(Boolean).join(" ");
}

// The text, cut with "…" to fit `width` px in `font`. dot sized the box for
// the server's label, in its own idea of the font: measuring here keeps a
// label inside its box whatever font the browser found.
function clip(text, width, font) {
  measure.font = font;
  if (measure.measureText(text).width <= width) return text;
  let lo = 0;
  let hi = text.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (measure.measureText(`${text.slice(0, mid)}…`).width <= width) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

// A server's id of a node of `kind`, whether or not it came with its prefix.
function nodeId(kind, id) {
  return String(id).startsWith(`${kind}:`) ? String(id) : `${kind}:${id}`;
}

function stateWord(state) {
  const key = `state.${state}`;
  const word = t(key);
  return word === key ? String(state || "") : word;
}

function count(noun, n) {
  return t(`tree.n.${noun}.${n === 1 ? "one" : "other"}`, {n});
}

// What a node is called in the table, the details and for a screen reader.
export function nodeName(node) {
  const a = node.attributes || {};
  switch (node.kind) {
    case "scratch":
      return "scratch";
    case "layer":
      return shortId(a.diff_id || a.chain_id || node.id.replace(/^layer:/, ""));
    case "image":
      return (a.tags || []).length ? a.tags.join(", ") : `<none> ${shortId(a.id || node.id.replace(/^image:/, ""))}`;
    case "container":
      return a.name || shortId(a.id || node.id.replace(/^container:/, ""));
    case "volume": {
      const name = a.name || node.id.replace(/^volume:/, "");
      return a.anonymous ? shortId(name) : name;
    }
    default:
      return node.label || node.id;
  }
}

// What a container's writable layer holds, as said under its name.
function upperText(node) {
  const bytes = humanBytes((node.attributes || {}).upper_bytes);
  return bytes ? t("tree.upper_short", {bytes}) : null;
}

function labelLines(node) {
  const a = node.attributes || {};
  switch (node.kind) {
    case "layer": {
      const size = humanBytes(a.size);
      return [shortId(a.diff_id) + (size ? ` · ${size}` : ""), stepText(a.created_by)].filter(Boolean);
    }
    case "image":
      return [...(a.tags || []).length ? a.tags : [nodeName(node)], ...(a.missing ? [t("tree.missing")] : [])];
    case "container":
      return [nodeName(node), stateWord(a.state), upperText(node)].filter(Boolean);
    default:
      return [nodeName(node)];
  }
}

function drawNode(g, node, box) {
  const w = box.width;
  const h = box.height;
  if (node.kind === "container") {
    g.append(svgEl("ellipse", {class: "shape", rx: w / 2, ry: h / 2}));
    g.dataset.state = (node.attributes || {}).state || "";
  } else if (node.kind === "volume") {
    // A cylinder, as dot's: a body and the front of its top rim.
    const ry = Math.min(h * 0.15, 7);
    const [l, r, top, bottom] = [-w / 2, w / 2, -h / 2 + ry, h / 2 - ry];
    g.append(svgEl("path", {class: "shape", d: `M${l},${top} A${w / 2},${ry} 0 0 1 ${r},${top} `
      + `L${r},${bottom} A${w / 2},${ry} 0 0 1 ${l},${bottom} Z`}));
    g.append(svgEl("path", {class: "rim", d: `M${l},${top} A${w / 2},${ry} 0 0 0 ${r},${top}`}));
  } else {
    const rx = node.kind === "image" ? Math.min(h / 2, 14) : 3;
    g.append(svgEl("rect", {class: "shape", x: -w / 2, y: -h / 2, width: w, height: h, rx}));
  }
  const lines = labelLines(node);
  const text = svgEl("text", {class: "label"});
  const top = -((lines.length - 1) * LINE) / 2 + 3.5;
  const room = node.kind === "container" ? w * 0.78 : w - 8;
  lines.forEach((line, i) => {
    const span = svgEl("tspan", {x: 0, y: top + i * LINE});
    const step = i > 0 && node.kind === "layer";
    if (step) span.setAttribute("class", "step");
    if (node.kind === "container" && i === 2) span.setAttribute("class", "upper");
    span.textContent = clip(line, room, step ? STEP_FONT : FONT);
    text.append(span);
  });
  g.append(text);
  // Shown only when a weak point reaches this node.
  const badge = svgEl("g", {class: "weak-badge", transform: `translate(${w / 2 - 3},${-h / 2 + 3})`});
  badge.append(svgEl("circle", {r: 6}));
  const mark = svgEl("text", {y: 3.5});
  mark.textContent = "!";
  badge.append(mark);
  g.append(badge);
}

function describe(node) {
  const a = node.attributes || {};
  switch (node.kind) {
    case "layer":
      return t("tree.aria.layer", {name: nodeName(node), size: humanBytes(a.size) || "?",
                                   step: stepText(a.created_by) || "—"});
    case "image":
      return t("tree.aria.image", {name: nodeName(node)});
    case "container": {
      const said = t("tree.aria.container", {name: nodeName(node), state: stateWord(a.state)});
      return upperText(node) ? `${said}, ${upperText(node)}` : said;
    }
    case "volume":
      return t("tree.aria.volume", {name: nodeName(node)});
    default:
      return t("tree.aria.scratch");
  }
}

function keyOf(node, box) {
  const a = node.attributes || {};
  return JSON.stringify([node.kind, node.label, a.state, a.tags, a.size, a.diff_id, a.created_by,
                         a.missing, a.upper_bytes, box.width, box.height]);
}

export class ImageTree {
  constructor({view, request}) {
    this.view = view;
    this.request = request;
    const $ = (selector) => view.querySelector(selector);
    this.ui = {
      svg: $("#tree-svg"), search: $("#tree-search"), searchStatus: $("#tree-search-status"),
      zoomIn: $("#tree-zoom-in"), zoomOut: $("#tree-zoom-out"), fit: $("#tree-fit"),
      tableToggle: $("#tree-table-toggle"), tableWrap: $("#tree-table-wrap"), table: $("#tree-table"),
      status: $("#tree-status"), details: $("#tree-details"), detailsTitle: $("#tree-details-title"),
      detailsBody: $("#tree-details-body"), detailsClose: $("#tree-details-close"),
      weakPath: $("#tree-weak-path"), weakGo: $("#tree-weak-go"), weakMark: $("#tree-weak-mark"),
      weakClear: $("#tree-weak-clear"), weakCount: $("#tree-weak-count"),
    };
    this.graph = new GraphView({
      svg: this.ui.svg, idPrefix: "tree-node", drawNode, keyOf, describe,
      onActivate: (id) => this.select(id),
      onCurrent: (id, byKey) => this.moved(id, byKey),
      onHover: () => this.applyLight(),
      onEscape: () => this.escape(),
      onZoom: (far) => this.hint(far),
      originOf: (id) => this.committedOrigin(id),
      edgeText: (edge, label) => (edge && edge.kind === "committed" ? t("tree.edge.committed") : label),
    });
    this.committedFrom = new Map();   // image id → the container it was committed from

    this.answer = null;          // the last `tree` answer drawn
    this.sig = null;             // its signature
    this.asked = null;           // the signature of the last answer the server gave
    this.visible = false;
    this.dirty = true;           // the tree may have changed while the tab was hidden
    this.needsFit = true;        // drawn while hidden: fit when shown
    this.inflight = false;
    this.again = false;
    this.timer = 0;
    this.query = "";
    this.searchSet = null;       // the lineages of the images the search matches
    this.selected = null;
    this.details = null;         // the last `tree.node` answer shown
    this.weak = null;            // {query, ids, answer}
    this.weakQuery = null;       // the query in flight or shown
    this.error = null;
    this.pinned = false;         // showing an answer given to draw() (a benchmark's), not the host's
    this.stats = {nodes: 0, edges: 0, build_ms: null, draw_ms: null, frame_ms: null};

    this.listen();
    new ResizeObserver(() => {
      if (this.visible && (this.graph.autoFit || this.needsFit)) this.needsFit = !this.graph.fit();
    }).observe(this.ui.svg);
  }

  listen() {
    const ui = this.ui;
    let searchTimer = 0;
    ui.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.search(ui.search.value), SEARCH_MS);
    });
    ui.search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        clearTimeout(searchTimer);
        this.search(ui.search.value);
      }
    });
    ui.zoomIn.addEventListener("click", () => this.graph.zoomBy(1.25));
    ui.zoomOut.addEventListener("click", () => this.graph.zoomBy(0.8));
    ui.fit.addEventListener("click", () => this.graph.fit());
    ui.tableToggle.addEventListener("click", () => this.showTable(ui.tableToggle.getAttribute("aria-pressed") !== "true"));
    ui.table.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-id]");
      if (button) this.select(button.dataset.id);
    });
    ui.detailsClose.addEventListener("click", () => this.select(null));
    ui.weakGo.addEventListener("click", () => this.weakPath());
    ui.weakPath.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.weakPath();
    });
    ui.weakMark.addEventListener("click", () => {
      if (this.selected && this.selected.startsWith("layer:")) this.findWeak({layers: [this.selected]});
    });
    ui.weakClear.addEventListener("click", () => this.clearWeak());
    ui.svg.addEventListener("blur", () => this.applyLight());
  }

  // Zoomed out past reading, the hint says how to get back to the labels.
  hint(far) {
    const box = this.view.querySelector("#tree-hint");
    box.dataset.i18n = far ? "tree.hint_far" : "tree.hint";
    box.textContent = t(box.dataset.i18n);
  }

  // The keyboard's node moved (or the graph got focus): light its branch,
  // and, moved by a key, come close enough to read it.
  moved(id, byKey) {
    if (id && byKey && this.graph.far()) this.graph.zoomTo(id, 1);
    this.applyLight();
  }

  // ------------------------------------------------------------ inputs

  setVisible(visible) {
    this.visible = visible;
    if (!visible) return;
    if (this.needsFit || this.graph.autoFit) this.needsFit = !this.graph.fit();
    if ((this.dirty || !this.answer) && !this.pinned) this.refresh();
  }

  onEvents(events) {
    let changed = false;
    for (const event of events) {
      const d = event.detail || {};
      const container = containerOf(event);
      if (container && !d.exec) {
        if (event.kind === "process.started") this.setState(container, "running");
        if (event.kind === "process.exited") this.setState(container, "exited");
      }
      changed = changed || REFRESH_KINDS.test(event.kind);
    }
    if (changed) this.refreshSoon();
  }

  // A container's live state, before the next `tree` answer says so too.
  setState(container, state) {
    this.graph.update(nodeId("container", container), (node) => {
      node.attributes = {...node.attributes, state};
    });
  }

  refreshSoon() {
    this.dirty = true;
    if (!this.visible || this.pinned) return;  // drawn when the tab is shown
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }

  async refresh() {
    this.pinned = false;
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    this.dirty = false;
    if (!this.answer) this.status("tree.loading");
    // With the signature of what is drawn, the server answers just
    // {unchanged: true} when nothing changed (no graph, no layout to send).
    const known = this.asked && this.asked === this.sig ? {signature: this.asked} : {};
    const answer = await this.request("tree", known);
    this.inflight = false;
    if (this.pinned) {
      // draw() was given another tree meanwhile: it stays until the next refresh().
    } else if (answer.error) {
      this.error = answer.error;
      this.status("tree.error", {error: answer.error});
    } else if (answer.unchanged || (answer.signature != null && answer.signature === this.sig)) {
      if (this.error) {
        this.error = null;
        this.showStatus();
      }
    } else if (!answer.graph || !answer.layout) {
      this.error = "no graph";
      this.status("tree.error", {error: t("tree.bad_answer")});
    } else {
      this.error = null;
      this.asked = answer.signature ?? null;
      this.draw(answer);
    }
    if (this.again) {
      this.again = false;
      this.refresh();
    }
  }

  // ------------------------------------------------------------ drawing

  // Draws a `tree` answer. Resolves, with the render's figures, once the
  // browser has painted it (or at once when the tab is hidden).
  draw(answer, {animate = true} = {}) {
    const started = performance.now();
    this.answer = answer;
    this.sig = answer.signature ?? null;
    const {graph, layout} = answer;
    this.committedFrom = new Map(graph.edges.filter((e) => e.kind === "committed")
      .map((e) => [e.target, e.source]));
    const build = this.graph.render(graph, layout, {animate: animate && this.visible});
    // Shown, render() fitted it (unless the reader had moved the view); hidden,
    // it has no size to fit yet: that waits for the tab.
    this.needsFit = !this.visible && (this.needsFit || this.graph.autoFit);
    this.recomputeSearch();
    this.applyLight();
    if (this.weak) {
      this.graph.mark("weak", this.weak.ids);
      this.graph.mark("weak-source", new Set((this.weak.answer.marked || []).map((id) => nodeId("layer", id))));
      this.findWeak(this.weak.query, {quiet: true});  // what was built since is affected too
    }
    this.graph.mark("selected", this.selected ? new Set([this.selected]) : null);
    if (this.selected && !this.graph.node(this.selected)) this.select(null);
    else if (this.selected) this.refreshDetails(this.selected);
    if (this.tableShown()) this.renderTable();
    this.showStatus();
    const drawn = performance.now();
    this.stats = {nodes: graph.nodes.length, edges: graph.edges.length, build_ms: build,
                  draw_ms: drawn - started, frame_ms: null, signature: this.sig};
    const stats = this.stats;
    return new Promise((resolve) => {
      if (!this.visible || document.hidden) {
        resolve(stats);
        return;
      }
      // The first frame callback comes before that frame's paint; the second after it.
      requestAnimationFrame(() => requestAnimationFrame(() => {
        stats.frame_ms = performance.now() - started;
        resolve(stats);
      }));
    });
  }

  // Draws a tree given from outside (a benchmark's) and keeps it: live updates
  // wait for the next refresh().
  pin(answer) {
    this.pinned = true;
    return this.draw(answer, {animate: false});
  }

  status(key, params) {
    this.ui.status.textContent = key ? t(key, params) : "";
    this.ui.status.hidden = !key;
    this.ui.status.classList.toggle("error", key === "tree.error");
    this.statusKey = key ? [key, params] : null;
  }

  showStatus() {
    const onlyScratch = this.answer && this.answer.graph.nodes.every((n) => n.kind === "scratch");
    this.status(onlyScratch ? "tree.empty" : null);
  }

  // A committed image, and the layer it adds, grow out of the container they
  // were made of: that layer is the container's writable layer.
  committedOrigin(id) {
    if (this.committedFrom.has(id)) return this.committedFrom.get(id);
    for (const child of this.graph.children.get(id) || []) {
      if (this.committedFrom.has(child)) return this.committedFrom.get(child);
    }
    return null;
  }

  // ------------------------------------------------------------ light

  // Lit: the branch of the node under the pointer, or of the keyboard's node
  // while the graph has focus; else what the search found; else nothing.
  applyLight() {
    const focused = document.activeElement === this.ui.svg ? this.graph.current : null;
    const about = this.graph.hovered || focused;
    if (about && about !== "scratch") this.graph.light(this.graph.lineage(about));
    else this.graph.light(this.searchSet);
  }

  search(value) {
    this.query = value.trim().toLowerCase();
    this.recomputeSearch();
    this.applyLight();
    if (this.tableShown()) this.renderTable();
    // Show what was found, with the layer each stands on.
    if (this.matches && this.matches.length && this.visible) {
      const shown = new Set(this.matches);
      for (const id of this.matches) for (const parent of this.graph.parents.get(id) || []) shown.add(parent);
      this.graph.fitTo(shown);
    }
  }

  recomputeSearch() {
    const status = this.ui.searchStatus;
    if (!this.query || !this.answer) {
      this.searchSet = null;
      this.matches = null;
      status.textContent = "";
      return;
    }
    const q = this.query;
    this.matches = this.answer.graph.nodes.filter((node) => {
      if (node.kind !== "image") return false;
      const a = node.attributes || {};
      return (a.tags || []).some((tag) => tag.toLowerCase().includes(q))
        || shortId(a.id || "").startsWith(q);
    }).map((node) => node.id);
    this.searchSet = new Set();
    for (const id of this.matches) {
      for (const n of this.graph.lineage(id)) this.searchSet.add(n);
    }
    status.textContent = this.matches.length
      ? count("images", this.matches.length)
      : t("tree.search_none", {query: this.query});
  }

  escape() {
    this.select(null);
    this.graph.setCurrent(null);
    this.graph.hovered = null;
    this.applyLight();
  }

  // ------------------------------------------------------------ details

  async select(id) {
    this.selected = id && this.graph.node(id) ? id : null;
    this.graph.mark("selected", this.selected ? new Set([this.selected]) : null);
    this.ui.weakMark.disabled = !(this.selected && this.selected.startsWith("layer:"));
    const box = this.ui.details;
    if (!this.selected) {
      box.hidden = true;
      this.details = null;
      return;
    }
    const node = this.graph.node(id);
    // A click on a speck: come close enough to read it.
    if (this.graph.far() && this.visible && !this.tableShown()) this.graph.zoomTo(id, 1);
    box.hidden = false;
    box.dataset.id = id;
    box.dataset.kind = node.kind;
    this.ui.detailsTitle.textContent = `${t(`tree.kind.${node.kind}`)} ${nodeName(node)}`;
    this.ui.detailsBody.replaceChildren(el("p", "muted", t("tree.details.loading")));
    if (node.kind === "scratch") {
      this.details = {id, kind: "scratch"};
      this.renderDetails(node, this.details);
      return;
    }
    requestAnimationFrame(() => this.graph.reveal(id));  // the box took room from the picture
    const answer = await this.request("tree.node", {id});
    if (this.selected !== id) return;
    this.details = answer;
    this.renderDetails(node, answer);
  }

  // The selected node's details again, the tree having changed (a volume's
  // container removed, a container's writable layer grown), without moving the view.
  async refreshDetails(id) {
    if (id === "scratch") return;
    const answer = await this.request("tree.node", {id});
    const node = this.graph.node(id);
    if (this.selected !== id || !node || answer.error) return;
    this.details = answer;
    this.renderDetails(node, answer);
  }

  renderDetails(node, answer) {
    const body = this.ui.detailsBody;
    if (answer.error) {
      body.replaceChildren(el("p", "error", t("tree.details.error", {error: answer.error})));
      return;
    }
    const facts = el("dl", "facts");
    const fact = (key, value, className) => {
      if (value == null || value === "") return;
      const dd = el("dd", className);
      if (value instanceof Node) dd.append(value);
      else dd.textContent = String(value);
      facts.append(el("dt", null, t(`tree.f.${key}`)), dd);
    };
    const parts = [facts];
    switch (answer.kind || node.kind) {
      case "scratch":
        body.replaceChildren(el("p", null, t("tree.scratch_about")));
        return;
      case "layer": {
        fact("diff_id", answer.diff_id, "digest");
        fact("chain_id", answer.chain_id, "digest");
        fact("size", humanBytes(answer.size));
        fact("created_by", answer.created_by, "command");
        fact("created", answer.created);
        parts.push(this.changes(answer.changes || {}));
        break;
      }
      case "image": {
        const a = node.attributes || {};
        fact("tags", (answer.tags || a.tags || []).join(", ") || "<none>");
        fact("id", answer.image_id || String(answer.id || "").replace(/^image:/, ""), "digest");
        fact("size", humanBytes(answer.size));
        const eff = answer.efficiency || {};
        if (eff.score != null) fact("efficiency", t("tree.efficiency_value", {score: (eff.score * 100).toFixed(1)}));
        if (eff.wasted_bytes != null) fact("wasted", humanBytes(eff.wasted_bytes));
        if (Array.isArray(answer.layers)) fact("layers", String(answer.layers.length));
        if (answer.committed_from) fact("committed_from", this.nameOf("container", answer.committed_from));
        parts.push(this.waste(eff), this.history(answer.history || a.history || []));
        break;
      }
      case "container": {
        fact("name", answer.name);
        fact("state", stateWord(answer.state));
        const image = answer.image && this.graph.node(nodeId("image", answer.image));
        fact("image", image ? nodeName(image) : shortId(String(answer.image || "").replace(/^image:/, "")));
        if (answer.upper_bytes != null) {
          fact("upper", answer.upper_files != null
            ? t("tree.upper_value", {bytes: humanBytes(answer.upper_bytes), files: answer.upper_files})
            : humanBytes(answer.upper_bytes));
        }
        if ((answer.volumes || []).length) {
          fact("volumes", answer.volumes.map((m) => `${this.nameOf("volume", m.volume)} → ${m.path}`).join(", "));
        }
        break;
      }
      case "volume": {
        fact("name", answer.name);
        fact("mounted_by", (answer.mounted_by || []).length
          ? answer.mounted_by.map((m) => `${this.nameOf("container", m.container)} → ${m.path}`).join(", ")
          : t("tree.volume_unused"));
        parts.push(el("p", "muted", t("tree.volume_about")));
        break;
      }
      default:
        break;
    }
    body.replaceChildren(...parts.filter(Boolean));
  }

  nameOf(kind, id) {
    const node = this.graph.node(nodeId(kind, id));
    return node ? nodeName(node) : shortId(String(id).replace(`${kind}:`, ""));
  }

  // Files added, modified and removed by a layer, as `dive` lists them.
  changes(changes) {
    const box = el("div", "changes");
    let any = false;
    for (const what of ["added", "modified", "removed"]) {
      const paths = Array.isArray(changes[what]) ? changes[what] : [];
      const total = changes[`${what}_count`] ?? paths.length;
      if (!total) continue;
      any = true;
      const section = el("details", `files files-${what}`);
      section.dataset.what = what;
      section.append(el("summary", null, t(`tree.files.${what}`, {count: total})));
      const list = el("ul");
      for (const change of paths.slice(0, FILES_SHOWN)) {
        // A path, or {path, kind, size, previous_size}.
        const item = el("li", null, typeof change === "string" ? change : change.path);
        if (change && change.size != null && what !== "removed") {
          const size = change.previous_size != null
            ? `${humanBytes(change.previous_size)} → ${humanBytes(change.size)}` : humanBytes(change.size);
          item.append(" ", el("span", "muted", size));
        }
        list.append(item);
      }
      if (total > Math.min(paths.length, FILES_SHOWN)) {
        list.append(el("li", "muted", t("tree.files.more", {count: total - Math.min(paths.length, FILES_SHOWN)})));
      }
      section.append(list);
      box.append(section);
    }
    if (!any) box.append(el("p", "muted", t("tree.files.none")));
    return box;
  }

  // The paths that cost the most: written by one layer, then overwritten or
  // removed by a later one (dive's "inefficiencies").
  waste(efficiency) {
    const items = (efficiency.inefficiencies || []).slice(0, 5);
    if (!items.length) return null;
    const box = el("div", "waste");
    box.append(el("h3", null, t("tree.f.waste")));
    const list = el("ul");
    for (const item of items) {
      list.append(el("li", null, t("tree.waste_item", {path: item.path, count: item.count,
                                                        bytes: humanBytes(item.cumulative_size)})));
    }
    box.append(list);
    return box;
  }

  history(steps) {
    if (!steps.length) return null;
    const box = el("div", "history");
    box.append(el("h3", null, t("tree.f.history")));
    const list = el("ol");
    for (const step of steps) {
      const item = el("li", step.empty_layer ? "config-only" : null);
      item.append(el("code", null, stepText(step.created_by) || "—"));
      if (step.empty_layer) item.append(" ", el("span", "muted", t("tree.history_config")));
      list.append(item);
    }
    box.append(list);
    return box;
  }

  // ------------------------------------------------------------ weak points

  weakPath() {
    const path = this.ui.weakPath.value.trim();
    if (!path) {
      this.weakText(t("tree.weak.need_path"), true);
      this.ui.weakPath.focus();
      return;
    }
    this.findWeak({path});
  }

  async findWeak(query, {quiet = false} = {}) {
    this.weakQuery = query;
    if (!quiet) this.weakText(t("tree.weak.finding"));
    const answer = await this.request("tree.weak", query);
    if (this.weakQuery !== query) return;  // cleared, or another asked since
    if (answer.error) {
      this.weak = null;
      this.graph.mark("weak", null);
      this.weakText(t("tree.weak.error", {error: answer.error}), true);
      this.ui.weakClear.hidden = false;
      return;
    }
    const ids = new Set();
    for (const [list, kind] of [["layers", "layer"], ["images", "image"], ["containers", "container"]]) {
      for (const id of answer[list] || []) ids.add(nodeId(kind, id));
    }
    this.weak = {query, ids, answer};
    this.graph.mark("weak", ids);
    // The layers that hold the file (or were marked), apart from those above them.
    this.graph.mark("weak-source", new Set((answer.marked || []).map((id) => nodeId("layer", id))));
    if (this.tableShown()) this.renderTable();
    this.ui.weakClear.hidden = false;
    this.showWeakCount();
  }

  showWeakCount() {
    if (!this.weak) return;
    const {query, answer} = this.weak;
    const n = answer.count || {};
    const layers = n.layers ?? (answer.layers || []).length;
    const images = n.images ?? (answer.images || []).length;
    const containers = n.containers ?? (answer.containers || []).length;
    const what = query.path ? query.path : nodeName(this.graph.node(query.layers[0]) || {kind: "layer", id: query.layers[0]});
    this.weakText(layers || images || containers
      ? t("tree.weak.count", {images: count("images", images), containers: count("containers", containers),
                              layers: count("layers", layers), what})
      : t("tree.weak.none", {what}));
    const box = this.ui.weakCount;
    box.dataset.images = String(images);
    box.dataset.containers = String(containers);
    box.dataset.layers = String(layers);
  }

  weakText(text, error = false) {
    const box = this.ui.weakCount;
    box.textContent = text;
    box.classList.toggle("error", error);
  }

  clearWeak() {
    this.weakQuery = null;
    this.weak = null;
    this.graph.mark("weak", null);
    this.graph.mark("weak-source", null);
    this.weakText("");
    for (const key of ["images", "containers", "layers"]) delete this.ui.weakCount.dataset[key];
    this.ui.weakClear.hidden = true;
    if (this.tableShown()) this.renderTable();
  }

  // ------------------------------------------------------------ the table

  tableShown() {
    return this.ui.tableToggle.getAttribute("aria-pressed") === "true";
  }

  showTable(on) {
    this.ui.tableToggle.setAttribute("aria-pressed", String(on));
    this.ui.tableWrap.hidden = !on;
    this.ui.svg.classList.toggle("behind-table", on);
    this.view.querySelector("#tree-hint").hidden = on;  // it speaks of the picture
    if (on) this.renderTable();
    else this.ui.table.tBodies[0]?.replaceChildren();
  }

  renderTable() {
    if (!this.answer) return;
    const columns = [
      {key: "kind", label: t("tree.col.kind")},
      {key: "name", label: t("tree.col.name"), rowHeader: true},
      {key: "parent", label: t("tree.col.parent")},
      {key: "size", label: t("tree.col.size"), className: "num"},
      {key: "note", label: t("tree.col.note")},
    ];
    const byId = new Map(this.answer.graph.nodes.map((n) => [n.id, n]));
    const rows = [];
    for (const node of this.treeOrder(byId)) {
      if (this.searchSet && !this.searchSet.has(node.id)) continue;
      const parentId = (this.graph.parents.get(node.id) || [])[0];
      const parent = parentId && byId.get(parentId);
      const name = el("button", "link", nodeName(node));
      name.type = "button";
      name.dataset.id = node.id;
      const a = node.attributes || {};
      const notes = [];
      if (node.kind === "container") notes.push(stateWord(a.state), upperText(node));
      if (node.kind === "layer" && a.created_by) notes.push(stepText(a.created_by));
      const weak = this.weak && this.weak.ids.has(node.id);
      if (weak) notes.push(t("tree.note.weak"));
      notes.splice(0, notes.length, ...notes.filter(Boolean));
      rows.push({id: node.id, kind: node.kind, classes: weak ? ["weak"] : [], cells: {
        kind: t(`tree.kind.${node.kind}`), name,
        parent: !parent ? "—" : parent.kind === "scratch" ? "scratch"
          : `${t(`tree.kind.${parent.kind}`)} ${nodeName(parent)}`,
        size: node.kind === "layer" ? humanBytes(a.size) || "—" : "",
        note: notes.join(" · "),
      }});
    }
    fillTable(this.ui.table, columns, rows);
  }

  // Every node once, each after its parent and its branch together (depth
  // first), siblings in the order they are drawn: the tree read as a list.
  treeOrder(byId) {
    const at = this.answer.layout.nodes || {};
    const across = this.graph.vertical ? "x" : "y";
    const sign = this.graph.vertical ? 1 : -1;  // dot's y grows upwards
    const position = (id) => sign * ((at[id] || {})[across] || 0);
    const order = [];
    const seen = new Set();
    const visit = (id) => {
      if (seen.has(id) || !byId.has(id)) return;
      seen.add(id);
      order.push(byId.get(id));
      const kids = [...(this.graph.children.get(id) || [])].sort((a, b) => position(a) - position(b));
      for (const kid of kids) visit(kid);
    };
    const roots = [...byId.keys()].filter((id) => !(this.graph.parents.get(id) || []).length);
    for (const id of roots.sort((a, b) => position(a) - position(b))) visit(id);
    for (const id of byId.keys()) visit(id);  // (a cycle would leave some out)
    return order;
  }

  // ------------------------------------------------------------ language

  relabel() {
    this.graph.redraw();
    if (this.statusKey) this.status(...this.statusKey);
    this.recomputeSearch();
    if (this.weak) this.showWeakCount();
    if (this.selected) {
      const node = this.graph.node(this.selected);
      if (node) {
        this.ui.detailsTitle.textContent = `${t(`tree.kind.${node.kind}`)} ${nodeName(node)}`;
        if (this.details) this.renderDetails(node, this.details);
      }
    }
    if (this.tableShown()) this.renderTable();
  }

  signature() {
    return this.sig;
  }
}
