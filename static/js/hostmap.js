// The Host tab: the article's picture of a Docker host, live. The client (the
// docker CLI in the terminal, or this page) talks to the daemon's API; the
// daemon keeps the image cache, the containers and the volumes; the registry
// stands beside the host. A push or a pull moves blobs along the arrow between
// the two, one dot per blob event as it arrives, and the tally under the
// picture adds up the bytes of exactly those events.
import { humanBytes, shortId } from "./events.js";
import { svgEl } from "./graph.js";
import { t } from "./i18n.js";

const REFRESH_MS = 300;
// Events after which a count on the map may be different.
const REFRESH_KINDS = /^(image\.|layer\.|build\.done$|blob\.pulled$|container\.|process\.(started|exited)$|volume\.)/;
const DOTS_AT_ONCE = 24;   // a replayed backlog animates its last few blobs, not hundreds
const DOT_MS = 900;
const STAGGER_MS = 140;

// Where each box stands in the picture (viewBox 0 0 720 330).
const BOX = {
  client:     {x: 12,  y: 118, w: 120, h: 64},
  daemon:     {x: 196, y: 40,  w: 300, h: 46},
  images:     {x: 180, y: 150, w: 120, h: 66},
  containers: {x: 316, y: 150, w: 90,  h: 66},
  volumes:    {x: 420, y: 150, w: 90,  h: 66},
  registry:   {x: 588, y: 118, w: 120, h: 96},
};
const HOST = {x: 166, y: 12, w: 360, h: 222};
// The lane the blobs travel: from the image cache's right edge to the registry.
const LANE = {from: 526, to: 588, y: 262};

function el(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function label(x, y, key, className = "hm-label") {
  const text = svgEl("text", {x, y, class: className});
  text.dataset.i18n = key;
  text.textContent = t(key);
  return text;
}

// A blob event's place in a transfer: which way it went and what happened to it.
export function blobMove(event) {
  const d = event.detail || {};
  switch (event.kind) {
    case "blob.pushed": return {direction: "push", outcome: "pushed"};
    case "blob.mounted": return {direction: "push", outcome: "mounted"};
    case "blob.pulled": return {direction: "pull", outcome: "pulled"};
    case "blob.skipped": return {direction: d.direction === "pull" ? "pull" : "push", outcome: "skipped"};
    default: return null;
  }
}

export class HostMap {
  constructor({view, request}) {
    this.view = view;
    this.request = request;
    this.svg = view.querySelector("#hostmap-svg");
    this.box = view.querySelector("#hostmap-transfer");
    this.visible = false;
    this.dirty = true;
    this.inflight = false;
    this.again = false;
    this.timer = null;
    this.treeSig = null;
    this.counts = {images: 0, layers: 0, containers: 0, running: 0, volumes: 0};
    this.volumes = new Set();   // from volume.created / volume.removed
    this.transfer = null;       // the current (or last) push or pull
    this.drawPicture();
    this.showTransfer();
  }

  // ------------------------------------------------------------ the picture

  drawPicture() {
    const svg = this.svg;
    svg.setAttribute("viewBox", "0 0 720 330");
    const defs = svgEl("defs");
    const marker = svgEl("marker", {id: "hm-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"});
    marker.append(svgEl("path", {d: "M0,0 L10,5 L0,10 z", class: "hm-arrowhead"}));
    defs.append(marker);
    svg.append(defs);

    const host = svgEl("g", {class: "hm-host"});
    host.append(svgEl("rect", {x: HOST.x, y: HOST.y, width: HOST.w, height: HOST.h, rx: 10}),
                label(HOST.x + 10, HOST.y + 16, "hostmap.host", "hm-caption"));
    svg.append(host);

    const edges = svgEl("g", {class: "hm-edges"});
    const c = BOX.client, dmn = BOX.daemon, r = BOX.registry;
    edges.append(
      svgEl("path", {d: `M${c.x + c.w},${c.y + 20} C160,${c.y + 20} 160,${dmn.y + 23} ${dmn.x},${dmn.y + 23}`,
                     "marker-end": "url(#hm-arrow)"}));
    for (const part of ["images", "containers", "volumes"]) {
      const b = BOX[part];
      const x = b.x + b.w / 2;
      edges.append(svgEl("path", {d: `M${x},${dmn.y + dmn.h} L${x},${b.y}`, "marker-end": "url(#hm-arrow)"}));
    }
    // The daemon is the registry's client: pushes and pulls are its requests.
    edges.append(svgEl("path", {d: `M${dmn.x + dmn.w},${dmn.y + 23} C560,${dmn.y + 23} 560,${r.y + 24} ${r.x},${r.y + 24}`,
                                class: "hm-api", "marker-end": "url(#hm-arrow)"}));
    const lane = svgEl("path", {d: `M${BOX.images.x + 60},${BOX.images.y + BOX.images.h} L${BOX.images.x + 60},${LANE.y} ` +
                                   `L${r.x + r.w / 2},${LANE.y} L${r.x + r.w / 2},${r.y + r.h}`,
                                class: "hm-lane", "marker-start": "url(#hm-arrow)", "marker-end": "url(#hm-arrow)"});
    edges.append(lane);
    svg.append(edges);
    svg.append(label(380, LANE.y - 6, "hostmap.lane", "hm-edge-label"));
    svg.append(label(c.x + c.w / 2, c.y - 8, "hostmap.api_calls", "hm-edge-label"));

    const boxes = svgEl("g", {class: "hm-boxes"});
    const part = (name, key, lines) => {
      const b = BOX[name];
      const g = svgEl("g", {class: "hm-box", "data-part": name});
      g.append(svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, rx: 7}),
               label(b.x + b.w / 2, b.y + 18, key, "hm-title"));
      lines.forEach((line, i) => {
        const text = svgEl("text", {x: b.x + b.w / 2, y: b.y + 36 + i * 15, class: "hm-count"});
        text.dataset.count = line;
        g.append(text);
      });
      boxes.append(g);
    };
    part("client", "hostmap.client", ["client"]);
    part("daemon", "hostmap.daemon", ["daemon"]);
    part("images", "hostmap.images", ["images", "layers"]);
    part("containers", "hostmap.containers", ["containers"]);
    part("volumes", "hostmap.volumes", ["volumes"]);
    part("registry", "hostmap.registry", ["registry", "registry2"]);
    svg.append(boxes);
    this.dots = svgEl("g", {class: "hm-dots"});
    svg.append(this.dots);
    this.showCounts();
  }

  showCounts() {
    const n = this.counts;
    const texts = {
      client: t("hostmap.client_sub"),
      daemon: t("hostmap.daemon_sub"),
      images: t("hostmap.n_images", {n: n.images}),
      layers: t("hostmap.n_layers", {n: n.layers}),
      containers: t("hostmap.n_containers", {running: n.running, n: n.containers}),
      volumes: t("hostmap.n_volumes", {n: n.volumes}),
      registry: this.transfer ? this.transfer.repository : t("hostmap.registry_sub"),
      registry2: this.transfer ? t(`hostmap.direction.${this.transfer.direction}`) : "/v2/",
    };
    for (const node of this.svg.querySelectorAll("[data-count]")) {
      node.textContent = texts[node.dataset.count] ?? "";
    }
    for (const [key, value] of Object.entries(n)) this.svg.dataset[key] = String(value);
  }

  // ------------------------------------------------------------ counts

  setVisible(visible) {
    this.visible = visible;
    if (visible && this.dirty) this.refresh();
  }

  refreshSoon() {
    this.dirty = true;
    if (!this.visible) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }

  async refresh() {
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    this.dirty = false;
    const known = this.treeSig ? {signature: this.treeSig} : {};
    const [tree, containers] = await Promise.all([this.request("tree", known), this.request("containers")]);
    this.inflight = false;
    if (!tree.error && !tree.unchanged && tree.graph) {
      const nodes = tree.graph.nodes || [];
      this.treeSig = tree.signature ?? null;
      this.counts.images = nodes.filter((n) => n.kind === "image" && !(n.attributes || {}).missing).length;
      this.counts.layers = nodes.filter((n) => n.kind === "layer").length;
      // The tree lists every volume the daemon keeps: the exact set, whatever the
      // events kept in memory still say.
      this.volumes = new Set(nodes.filter((n) => n.kind === "volume")
        .map((n) => (n.attributes || {}).name || n.id.replace(/^volume:/, "")));
    }
    if (!containers.error && Array.isArray(containers.containers)) {
      const list = containers.containers;
      this.counts.containers = list.length;
      this.counts.running = list.filter((c) => c.State === "running").length;
      // Volumes a container uses count even if their creation is older than the events kept.
      for (const c of list) {
        for (const m of c.Mounts || []) if (m.Type === "volume" && m.Name) this.volumes.add(m.Name);
      }
    }
    this.counts.volumes = this.volumes.size;
    this.view.classList.toggle("hm-error", Boolean(tree.error || containers.error));
    this.showCounts();
    if (this.again) {
      this.again = false;
      this.refresh();
    }
  }

  // ------------------------------------------------------------ events

  onEvents(events) {
    let changed = false;
    const moved = [];
    for (const event of events) {
      if (event.kind === "volume.created") this.volumes.add((event.subject || {}).volume);
      if (event.kind === "volume.removed") this.volumes.delete((event.subject || {}).volume);
      const move = blobMove(event);
      if (move) moved.push(this.addBlob(event, move));
      if (event.kind === "image.pushed" || event.kind === "image.pulled") this.finish(event);
      changed = changed || REFRESH_KINDS.test(event.kind);
    }
    if (moved.length) {
      this.showTransfer();
      this.animate(moved.slice(-DOTS_AT_ONCE));
    }
    if (changed) this.refreshSoon();
  }

  // A push or a pull begins with its first blob event; image.pushed or
  // image.pulled ends it. A blob of another direction or repository (a push
  // that failed half-way, then a pull) starts a new one.
  addBlob(event, move) {
    const subject = event.subject || {};
    const repository = subject.repository || "";
    let tr = this.transfer;
    if (!tr || tr.done || tr.direction !== move.direction || tr.repository !== repository) {
      tr = this.transfer = {direction: move.direction, repository, done: false, reference: null,
                            blobs: [], bytes: {pushed: 0, pulled: 0, skipped: 0, mounted: 0}};
    }
    const bytes = Number((event.detail || {}).bytes) || 0;
    const blob = {seq: event.seq, digest: subject.blob, outcome: move.outcome, bytes,
                  from: (event.detail || {}).from || null, direction: move.direction};
    tr.blobs.push(blob);
    tr.bytes[move.outcome] += bytes;
    return blob;
  }

  finish(event) {
    const d = event.detail || {};
    const direction = event.kind === "image.pushed" ? "push" : "pull";
    if (!this.transfer || this.transfer.done || this.transfer.direction !== direction) {
      this.transfer = {direction, repository: "", done: false, reference: null, blobs: [],
                       bytes: {pushed: 0, pulled: 0, skipped: 0, mounted: 0}};
    }
    this.transfer.done = true;
    this.transfer.reference = d.destination || d.reference || null;
    this.showTransfer();
  }

  // ------------------------------------------------------------ the tally

  showTransfer() {
    const box = this.box;
    const tr = this.transfer;
    const count = (outcome) => (tr ? tr.blobs.filter((b) => b.outcome === outcome).length : 0);
    const data = {
      direction: tr ? tr.direction : "",
      state: tr ? (tr.done ? "done" : "moving") : "idle",
      pushedBytes: tr ? tr.bytes.pushed : 0,
      pulledBytes: tr ? tr.bytes.pulled : 0,
      skippedBytes: tr ? tr.bytes.skipped : 0,
      mountedBytes: tr ? tr.bytes.mounted : 0,
      skipped: count("skipped"),
      mounted: count("mounted"),
      transferred: count("pushed") + count("pulled"),
    };
    for (const [key, value] of Object.entries(data)) box.dataset[key] = String(value);
    box.replaceChildren();
    if (!tr) {
      box.append(el("p", "empty", t("hostmap.transfer.none")));
      return;
    }
    const title = el("h3", "hm-transfer-title",
                     t(`hostmap.transfer.${tr.direction}.${tr.done ? "done" : "moving"}`,
                       {ref: tr.reference || tr.repository}));
    const moved = tr.direction === "push" ? data.pushedBytes : data.pulledBytes;
    const tally = el("p", "hm-tally");
    tally.append(
      el("span", "hm-moved", t("hostmap.tally.moved", {n: data.transferred, bytes: humanBytes(moved),
                                                         exact: moved})),
      el("span", "hm-skipped", t("hostmap.tally.skipped", {n: data.skipped, bytes: humanBytes(data.skippedBytes),
                                                             exact: data.skippedBytes})));
    if (data.mounted) {
      tally.append(el("span", "hm-mounted", t("hostmap.tally.mounted", {n: data.mounted,
                                                                          bytes: humanBytes(data.mountedBytes)})));
    }
    const list = el("ul", "hm-blobs");
    for (const blob of tr.blobs) {
      const row = el("li", "hm-blob");
      row.dataset.digest = blob.digest || "";
      row.dataset.outcome = blob.outcome;
      row.dataset.bytes = String(blob.bytes);
      row.dataset.seq = String(blob.seq);
      row.append(el("span", "hm-mark", ""), el("code", null, shortId(blob.digest)),
                 el("span", "hm-outcome", t(`hostmap.outcome.${blob.outcome}.${blob.direction}`,
                                            {from: blob.from || "?"})),
                 el("span", "hm-bytes", humanBytes(blob.bytes)));
      list.append(row);
    }
    box.append(title, tally, list);
    this.showCounts();
  }

  // ------------------------------------------------------------ the dots

  // One dot per blob, along the lane: pushed and pulled ones cross it,
  // a skipped one stops half-way and fades (the other side had it), a
  // mounted one lights up inside the registry (it never left the host).
  animate(blobs) {
    if (!this.visible || document.hidden || typeof Element.prototype.animate !== "function") return;
    const hostX = BOX.images.x + 60;
    const regX = BOX.registry.x + BOX.registry.w / 2;
    blobs.forEach((blob, i) => {
      const dot = svgEl("rect", {x: -7, y: -7, width: 14, height: 14, rx: 3,
                                 class: `hm-dot hm-dot-${blob.outcome}`});
      dot.dataset.digest = blob.digest || "";
      this.dots.append(dot);
      const [from, to] = blob.direction === "push" ? [hostX, regX] : [regX, hostX];
      const at = (x) => `translate(${x}px, ${LANE.y}px)`;
      let frames;
      if (blob.outcome === "skipped") {
        frames = [{transform: at(from), opacity: 1}, {transform: at((from + to) / 2), opacity: 0.6},
                  {transform: at((from + to) / 2), opacity: 0}];
      } else if (blob.outcome === "mounted") {
        frames = [{transform: `translate(${regX}px, ${BOX.registry.y + BOX.registry.h - 10}px) scale(.3)`, opacity: 0},
                  {transform: `translate(${regX}px, ${BOX.registry.y + BOX.registry.h - 10}px) scale(1.2)`, opacity: 1},
                  {transform: `translate(${regX}px, ${BOX.registry.y + BOX.registry.h - 10}px) scale(1)`, opacity: 0}];
      } else {
        frames = [{transform: at(from), opacity: 1}, {transform: at(to), opacity: 1},
                  {transform: at(to), opacity: 0}];
      }
      const motion = dot.animate(frames, {duration: DOT_MS, delay: i * STAGGER_MS, easing: "ease-in-out",
                                          fill: "backwards"});
      motion.onfinish = () => dot.remove();
      motion.oncancel = () => dot.remove();
    });
  }

  // The daemon numbers its events from 1 again (a new host): what was drawn is another host's.
  clear() {
    this.transfer = null;
    this.volumes.clear();
    this.treeSig = null;
    this.showTransfer();
    this.refreshSoon();
  }

  relabel() {
    for (const node of this.svg.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    this.showCounts();
    this.showTransfer();
  }
}
