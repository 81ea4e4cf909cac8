// The Build tab: the host's latest build, Dockerfile → image. The Dockerfile
// on the left, each instruction tied to what it made (a layer, or only a
// change of the image's configuration); on the right the same steps as a
// chain from the base image to the finished image.
//
// Everything comes from the build's own events, in order: `build.started`
// (the Dockerfile and its steps), `build.step` (a step begins; the one before
// it has ended), `layer.created` / `build.cache_hit` (what a step made or
// reused), the RUN steps' temporary containers (`container.created` …
// `container.removed`) and `build.done` (or `build.failed`). A step that ends with none of these
// changed only the configuration. The backlog a page gets on (re)connecting
// replays the same events, so a reload shows the latest build as it was.
import { t } from "./i18n.js";
import { humanBytes, shortId } from "./events.js";

const SVG = "http://www.w3.org/2000/svg";
const ROW = 44;             // px between two steps in the chain
const SHOW_IN_TREE_TRIES = 40;

function el(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function svg(name, attributes = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

// One step of a build, as the events tell it.
function newStep({index, instruction, original, line, end_line: endLine}, trigger = false) {
  return {index, instruction, original, line, endLine: endLine || line, trigger,
          state: "waiting", cached: false, layer: null, chain: null, size: null,
          containers: new Map()};
}

export class BuildView {
  constructor({view, request, showInTree}) {
    this.view = view;
    this.request = request;
    this.showInTree = showInTree;
    const $ = (selector) => view.querySelector(selector);
    this.ui = {
      status: $("#build-status"), empty: $("#build-empty"), main: $("#build-main"),
      file: $("#build-file"), list: $("#build-dockerfile"), truncated: $("#build-truncated"),
      graph: $("#build-graph"), details: $("#build-details"),
    };
    this.build = null;       // the latest build seen
    this.selected = null;    // the step whose layer is shown
    this.visible = false;
    this.ui.list.addEventListener("click", (e) => {
      const row = e.target.closest("li[data-step]");
      if (row) this.select(Number(row.dataset.step));
    });
    this.ui.graph.addEventListener("click", (e) => {
      const node = e.target.closest("[data-step]");
      if (node) this.select(Number(node.dataset.step));
    });
    this.ui.status.addEventListener("click", (e) => {
      const link = e.target.closest("button[data-node]");
      if (link) this.showInTree(link.dataset.node);
    });
    this.render();
  }

  setVisible(visible) {
    this.visible = visible;
  }

  relabel() {
    this.render();
  }

  // ------------------------------------------------------------ events

  onEvents(events) {
    let changed = false;
    for (const event of events) changed = this.apply(event) || changed;
    if (changed) this.render();
  }

  apply(event) {
    const d = event.detail || {};
    const subject = event.subject || {};
    if (event.kind === "build.started") {
      this.start(subject.build, d);
      return true;
    }
    const build = this.build;
    if (!build) return false;
    if (subject.build && subject.build !== build.id) return false;
    switch (event.kind) {
      case "build.step":
        this.begin(d);
        return true;
      case "layer.created":
        if (!subject.build) return false;  // a docker commit's layer
        Object.assign(this.stepAt(d.step) || {}, {state: "built", layer: d.layer, chain: d.chain, size: d.size});
        return true;
      case "build.cache_hit": {
        const step = this.stepAt(d.step);
        if (step) Object.assign(step, {state: d.layer ? "cached" : "config-only", cached: true,
                                       layer: d.layer, chain: d.chain || null});
        return true;
      }
      case "build.failed":
        if (build.current) build.current.state = "failed";
        build.current = null;
        build.failed = {step: d.step, error: d.error || ""};
        return true;
      case "build.done":
        this.end();
        build.done = {image: d.image, tags: d.tags || [], seconds: d.seconds};
        return true;
      case "container.created":
      case "container.removed":
        return this.temporary(event);
      default:
        return false;
    }
  }

  start(id, d) {
    const steps = (d.steps || []).map((s) => newStep(s));
    this.build = {id, file: d.file || "Dockerfile", text: d.dockerfile || "", truncated: !!d.truncated,
                  tags: d.tags || [], total: d.total || steps.length, steps, byNumber: new Map(),
                  current: null, done: null, failed: null};
    this.selected = null;
    this.ui.details.hidden = true;
  }

  // A step begins: the one before it has ended. Steps are matched by their
  // text and line, since a base's ONBUILD triggers shift the numbering.
  begin(d) {
    const build = this.build;
    this.end();
    // (The text in build.started is cut after STEP_SHOWN characters: a prefix then.)
    let step = build.steps.find((s) => s.state === "waiting" && s.line === d.line
      && String(d.instruction || "").startsWith(s.original));
    if (!step) {
      const at = build.current ? build.steps.indexOf(build.current) + 1 : build.steps.length;
      step = newStep({index: d.step, instruction: String(d.instruction || "").split(/\s/)[0].toUpperCase(),
                      original: d.instruction, line: null}, true);
      build.steps.splice(at, 0, step);
    }
    step.number = d.step;
    step.state = "running";
    build.byNumber.set(d.step, step);
    build.total = d.total || build.total;
    build.current = step;
  }

  // The running step ended: with no layer and no cache hit, it only changed
  // the configuration (FROM only chose the base).
  end() {
    const step = this.build && this.build.current;
    if (step && step.state === "running") step.state = step.instruction === "FROM" ? "base" : "config-only";
    if (this.build) this.build.current = null;
  }

  stepAt(number) {
    return this.build.byNumber.get(number) || null;
  }

  // A RUN step's container: it appears while the step runs, then goes away.
  temporary(event) {
    const id = event.subject && event.subject.container;
    const step = this.build.current;
    if (!id) return false;
    if (event.kind === "container.created") {
      if (!step || step.instruction !== "RUN") return false;
      step.containers.set(id, {gone: false});
      return true;
    }
    for (const s of this.build.steps) {
      if (s.containers.has(id)) {
        s.containers.get(id).gone = true;
        return true;
      }
    }
    return false;
  }

  // ------------------------------------------------------------ drawing

  render() {
    const build = this.build;
    this.ui.empty.hidden = !!build;
    this.ui.main.hidden = !build;
    if (!build) {
      this.ui.status.replaceChildren();
      return;
    }
    this.ui.file.textContent = build.file;
    this.ui.truncated.hidden = !build.truncated;
    this.renderStatus();
    this.renderDockerfile();
    this.renderGraph();
  }

  renderStatus() {
    const build = this.build;
    const box = this.ui.status;
    const counts = {built: 0, cached: 0};
    for (const s of build.steps) {
      if (s.state === "built") counts.built += 1;
      if (s.cached) counts.cached += 1;
    }
    box.dataset.state = build.done ? "done" : build.failed ? "failed" : "running";
    if (build.failed) {
      box.replaceChildren(el("span", "error", t("build.status.failed", build.failed)));
      return;
    }
    if (!build.done) {
      const running = build.current;
      box.replaceChildren(el("span", "spinner"), el("span", null, t("build.status.running", {
        file: build.file, step: running ? running.number : 0, total: build.total})));
      return;
    }
    const done = build.done;
    const link = el("button", "link", t("build.show_tree"));
    link.type = "button";
    link.dataset.node = `image:${done.image}`;
    box.replaceChildren(el("span", null, t("build.status.done", {
      image_short: shortId(done.image), tags: done.tags.length ? done.tags.join(", ") : t("build.status.untagged"),
      seconds: done.seconds, built: counts.built, cached: counts.cached})), " ", link);
    box.dataset.image = done.image;
  }

  badge(step) {
    switch (step.state) {
      case "running": return el("span", "badge badge-running", t("build.running"));
      case "cached": return el("span", "badge badge-cached", t("build.cached"));
      case "built": return el("span", "badge badge-built", `${t("build.built")} ${shortId(step.layer)}`);
      case "config-only":
        return el("span", "badge badge-config", step.cached ? `${t("build.cached")} · ${t("build.config_only")}`
          : t("build.config_only"));
      case "base": return el("span", "badge badge-base", t("build.base"));
      case "failed": return el("span", "badge badge-failed", t("build.failed"));
      default: return el("span", "badge badge-waiting", t("build.waiting"));
    }
  }

  // The Dockerfile as written, each instruction's lines one row; comments and
  // blank lines in between are shown too, dimmed.
  renderDockerfile() {
    const build = this.build;
    const lines = build.text.split("\n");
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    const rows = [];
    let next = 1;  // the next line of the file not yet shown
    const other = (from, to) => {
      for (let n = from; n <= to && n <= lines.length; n++) {
        const row = el("li", "build-other");
        row.append(el("span", "build-line", String(n)), el("code", null, lines[n - 1]));
        rows.push(row);
      }
    };
    for (const step of build.steps) {
      const row = el("li", `build-step ${step.state}`);
      if (step.cached) row.classList.add("cached");
      if (step.trigger) row.classList.add("trigger");
      row.dataset.step = step.index;
      row.dataset.instruction = step.instruction;
      if (step.layer) row.dataset.layer = step.layer;
      if (step.chain) row.dataset.chain = step.chain;
      // A list item still (the Dockerfile is a list of lines), focusable and chosen with
      // Enter; the chosen one is the list's current item.
      row.tabIndex = 0;
      if (this.selected === step.index) row.setAttribute("aria-current", "step");
      if (step.line && step.line <= lines.length) {
        other(next, step.line - 1);
        const own = lines.slice(step.line - 1, step.endLine).join("\n");
        row.append(el("span", "build-line", String(step.line)), el("code", null, own));
        next = step.endLine + 1;
      } else {
        row.append(el("span", "build-line", step.trigger ? "↳" : ""),
                   el("code", null, step.trigger ? `${t("build.trigger")}: ${step.original}` : step.original));
      }
      row.append(this.badge(step));
      const temporary = [...step.containers].map(([id, c]) => el("span", `build-container${c.gone ? " gone" : ""}`,
        t(c.gone ? "build.container_gone" : "build.container", {id: shortId(id)})));
      if (temporary.length) {
        const box = el("span", "build-containers");
        box.append(...temporary);
        row.append(box);
      }
      rows.push(row);
    }
    other(next, lines.length);
    this.ui.list.replaceChildren(...rows);
    this.ui.list.onkeydown = (e) => {
      const row = e.target.closest("li[data-step]");
      if (row && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        this.select(Number(row.dataset.step));
      }
    };
  }

  // The chain of steps: base image at the top, then one node per step (a
  // filled box for a layer, a dashed one for a configuration-only step), then
  // the finished image. A RUN's temporary container sits beside its step.
  renderGraph() {
    const build = this.build;
    const box = this.ui.graph;
    const steps = build.steps;
    const height = (steps.length + 1) * ROW + 20;
    box.setAttribute("viewBox", `0 0 300 ${height}`);
    box.setAttribute("height", String(height));
    const edges = svg("g", {class: "edges"});
    const nodes = svg("g", {class: "nodes"});
    const x = 20;
    steps.forEach((step, i) => {
      const y = 10 + i * ROW;
      if (i > 0) edges.append(svg("line", {x1: x + 10, y1: y - ROW + 28, x2: x + 10, y2: y}));
      const g = svg("g", {class: `build-node ${step.state}${step.cached ? " cached" : ""}`,
                          "data-step": step.index, transform: `translate(${x},${y})`});
      const layerish = step.state === "built" || (step.state === "cached" && step.layer);
      g.append(svg("rect", {width: 160, height: 28, rx: layerish ? 3 : 14}));
      const label = svg("text", {x: 8, y: 18});
      const what = layerish ? shortId(step.layer) : step.state === "base" ? step.original.replace(/^FROM\s+/i, "")
        : t(`build.${step.state === "config-only" ? "config_only" : step.state}`);
      label.textContent = `${step.instruction} · ${what}`.slice(0, 26);
      g.append(label);
      const title = svg("title");
      title.textContent = step.original;
      g.append(title);
      if (this.selected === step.index) g.classList.add("selected");
      [...step.containers].forEach(([id, c], k) => {
        const tmp = svg("g", {class: `build-tmp${c.gone ? " gone" : ""}`, transform: `translate(${180 + k * 8},2)`});
        tmp.append(svg("rect", {width: 90, height: 24, rx: 12}));
        const text = svg("text", {x: 8, y: 16});
        text.textContent = shortId(id).slice(0, 10);
        tmp.append(text);
        g.append(tmp);
      });
      nodes.append(g);
    });
    if (build.done) {
      const y = 10 + steps.length * ROW;
      edges.append(svg("line", {x1: x + 10, y1: y - ROW + 28, x2: x + 10, y2: y}));
      const g = svg("g", {class: "build-node image", transform: `translate(${x},${y})`});
      g.append(svg("rect", {width: 200, height: 28, rx: 6}));
      const label = svg("text", {x: 8, y: 18});
      label.textContent = `${build.done.tags[0] || ""} ${shortId(build.done.image)}`.trim();
      g.append(label);
      nodes.append(g);
    }
    box.replaceChildren(edges, nodes);
  }

  // ------------------------------------------------------------ details

  // A step's layer: what the image tree knows of it (its files), and a way there.
  async select(index) {
    const step = this.build && this.build.steps.find((s) => s.index === index);
    if (!step) return;
    this.selected = index;
    this.render();
    const box = this.ui.details;
    box.hidden = false;
    box.dataset.step = String(index);
    const title = el("h3", null, step.original);
    if (!step.chain) {
      const own = ["base", "waiting", "running", "failed"].includes(step.state);
      box.replaceChildren(title, el("p", "muted", own ? t(`build.${step.state}`) : t("build.layer_none")));
      return;
    }
    const id = `layer:${step.chain}`;
    box.dataset.node = id;
    box.replaceChildren(title, el("p", "muted", t("build.layer_loading")));
    const answer = await this.request("tree.node", {id});
    if (this.selected !== index) return;
    const show = el("button", "link", t("build.show_tree"));
    show.type = "button";
    show.addEventListener("click", () => this.showInTree(id));
    if (answer.error) {
      box.replaceChildren(title, el("p", "error", t("build.layer_error", {error: answer.error})), show);
      return;
    }
    const changes = answer.changes || {};
    const facts = el("p", null, `${t("build.layer", {layer_short: shortId(answer.diff_id || step.layer)})} · `
      + `${humanBytes(answer.size) || "?"} · ${t("build.layer_files", {
        added: changes.added_count || 0, modified: changes.modified_count || 0, removed: changes.removed_count || 0})}`);
    const files = el("ul", "build-files");
    for (const what of ["added", "modified", "removed"]) {
      for (const change of (changes[what] || []).slice(0, 8)) {
        files.append(el("li", `change-${what}`, `${what === "added" ? "+" : what === "removed" ? "−" : "~"} ${change.path}`));
      }
    }
    box.replaceChildren(title, facts, files, show);
  }
}

// How the tab shows a node of the image tree: switch to it, wait for the
// tree to hold the node, select it.
export function treeShower({openTab, tree}) {
  return async (id) => {
    openTab();
    for (let i = 0; i < SHOW_IN_TREE_TRIES; i++) {
      if (tree.graph.node(id)) {
        tree.select(id);
        return true;
      }
      if (i === 0) tree.refresh();
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return false;
  };
}
