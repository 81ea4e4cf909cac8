// The Containers tab: the host's containers, and a panel that shows one of
// them from inside and from outside — namespaces, processes, cgroup, overlay —
// and where it is in its life cycle.
//
// Two sources feed it: `inside` answers (polled while the container runs) and
// the event stream (immediate). The life cycle only moves forward (Glassbox
// does not restart containers), so the furthest state either source has seen
// is the current one.
import { Chart, POINTS } from "./charts.js";
import { containerOf, humanBytes, shortId } from "./events.js";
import { t } from "./i18n.js";

const POLL_MS = 1500;
const RANK = {created: 0, running: 1, exited: 2, oom: 2, removed: 3};
// Events that change what `docker ps` shows.
const LIST_KINDS = /^(container\.|process\.(started|exited)|oom\.killed)/;

function el(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function containerName(entry) {
  const names = entry.Names || [];
  return names.length ? names[0].replace(/^\//, "") : shortId(entry.Id);
}

function stateWord(state) {
  const key = `state.${state}`;
  const word = t(key);
  return word === key ? state : word;
}

export class Containers {
  constructor({view, list, empty, count, panel, request, terminals, isConnected, onError}) {
    this.view = view;
    this.listEl = list;
    this.emptyEl = empty;
    this.countEl = count;
    this.panel = panel;
    this.request = request;
    this.terminals = terminals;
    this.isConnected = isConnected;
    this.onError = onError;

    this.entries = [];           // last `containers` answer
    this.listLoaded = false;
    this.lives = new Map();      // id → {state, code, oom, name, image} from events
    this.samples = new Map();    // id → [{t, memory, memoryLimit, pids, pidsLimit, cpu}]
    this.selectedId = null;
    this.inside = null;          // last `inside` answer for the selected one
    this.insideError = null;
    this.visible = false;
    this.pollTimer = 0;
    this.listTimer = 0;
    this.soonTimer = 0;
    this.inflight = false;
    this.again = false;
    this.lastEnd = null;         // exited or oom: the end the removed one took

    const $ = (selector) => panel.querySelector(selector);
    this.ui = {
      title: $("#panel-title"), id: $("#panel-id"), image: $("#panel-image"),
      message: $("#panel-message"), shell: $("#panel-shell"), attach: $("#panel-attach"),
      close: $("#panel-close"), lifecycle: $("#lifecycle"),
      exitedLabel: $("#lifecycle [data-state=exited] .state-label"),
      namespaces: $("#namespaces tbody"), namespacesEmpty: $("#namespaces-empty"),
      processes: $("#processes tbody"), processesEmpty: $("#processes-empty"),
      cgroupPath: $("#cgroup-path"), charts: $("#cgroup-charts"),
      layers: $("#overlay-layers"), layersEmpty: $("#overlay-empty"),
      upperBar: $("#overlay-upper-bar"), upperFill: $("#overlay-upper-fill"),
      upperText: $("#overlay-upper-text"),
    };
    this.charts = {
      memory: new Chart(this.ui.charts, "memory"),
      pids: new Chart(this.ui.charts, "pids"),
      cpu: new Chart(this.ui.charts, "cpu"),
    };

    list.addEventListener("click", (e) => {
      const item = e.target.closest("li.container");
      if (item) this.select(item.dataset.id);
    });
    this.ui.close.addEventListener("click", () => this.select(null));
    this.ui.shell.addEventListener("click", () => this.openTerminal("exec"));
    this.ui.attach.addEventListener("click", () => this.openTerminal("attach"));
    document.addEventListener("visibilitychange", () => this.schedulePoll());
  }

  // ------------------------------------------------------------ inputs

  setVisible(visible) {
    this.visible = visible;
    if (visible && this.selectedId) this.fetchInside();
    else this.schedulePoll();
  }

  onEvents(events) {
    let list = false;
    let inside = false;
    let charts = false;
    for (const event of events) {
      const id = containerOf(event);
      if (!id) continue;
      if (event.kind === "cgroup.sampled") {
        this.addSample(id, event);
        charts = charts || id === this.selectedId;
        continue;
      }
      this.track(id, event);
      list = list || LIST_KINDS.test(event.kind);
      inside = inside || id === this.selectedId;
    }
    if (list) this.refreshSoon();
    if (inside) this.insideSoon();
    else if (charts && this.visible) this.renderCharts();
  }

  track(id, event) {
    const life = this.lives.get(id) || {state: null, code: null, oom: false, name: null, image: null};
    const d = event.detail || {};
    life.name = (event.subject && event.subject.name) || life.name;
    if (event.kind === "container.created") life.image = d.image;
    const advance = (state) => {
      if (life.state == null || RANK[state] >= RANK[life.state]) life.state = state;
    };
    switch (event.kind) {
      case "container.created":
        advance("created");
        break;
      case "process.started":
        if (!d.exec) advance("running");
        break;
      case "process.exited":
        if (!d.exec) {
          life.code = d.exit_code;
          life.oom = Boolean(d.oom_killed);
          advance(life.oom ? "oom" : "exited");
        }
        break;
      case "oom.killed":
        if (id === this.selectedId) this.flashOom();
        break;
      case "container.removed":
        advance("removed");
        break;
      default:
        break;
    }
    this.lives.set(id, life);
  }

  addSample(id, event) {
    const d = event.detail || {};
    this.pushPoint(id, {t: event.time, memory: d.memory_bytes, memoryLimit: d.memory_limit_bytes,
                        pids: d.pids, pidsLimit: d.pids_limit,
                        cpu: d.cpu_usec == null ? null : d.cpu_usec / 1e6});
  }

  pushPoint(id, point) {
    const points = this.samples.get(id) || [];
    points.push(point);
    if (points.length > POINTS + 1) points.splice(0, points.length - POINTS - 1);
    this.samples.set(id, points);
  }

  // ------------------------------------------------------------ the list

  refreshSoon() {
    clearTimeout(this.listTimer);
    this.listTimer = setTimeout(() => this.refresh(), 200);
  }

  async refresh() {
    const answer = await this.request("containers", {});
    if (answer.error) {
      this.onError("containers", answer.error);
      this.emptyEl.textContent = t("containers.error", {error: answer.error});
      this.emptyEl.hidden = false;
      return;
    }
    this.entries = Array.isArray(answer.containers) ? answer.containers : [];
    this.listLoaded = true;
    this.renderList();
    if (this.selectedId) this.renderPanel();
  }

  renderList() {
    const existing = new Map([...this.listEl.children].map((li) => [li.dataset.id, li]));
    let previous = null;
    for (const entry of this.entries) {
      let li = existing.get(entry.Id);
      existing.delete(entry.Id);
      if (!li) {
        li = el("li", "container");
        li.dataset.id = entry.Id;
        const button = el("button", "container-open");
        button.type = "button";
        button.append(el("span", "c-name"), el("span", "c-image"), el("span", "c-state"),
                      el("span", "c-status"));
        li.append(button);
      }
      const name = containerName(entry);
      li.dataset.state = entry.State || "";
      li.querySelector(".c-name").textContent = name;
      li.querySelector(".c-image").textContent = entry.Image || "";
      const state = li.querySelector(".c-state");
      state.textContent = stateWord(entry.State || "");
      state.dataset.state = entry.State || "";
      li.querySelector(".c-status").textContent = entry.Status || "";
      li.querySelector("button").title = `${name} · ${entry.Id}`;
      if (entry.Id === this.selectedId) li.setAttribute("aria-current", "true");
      else li.removeAttribute("aria-current");
      // Keep the server's order (newest first) without re-inserting rows
      // that are already in place, which would drop keyboard focus.
      const want = previous ? previous.nextElementSibling : this.listEl.firstElementChild;
      if (want !== li) this.listEl.insertBefore(li, want);
      previous = li;
    }
    for (const li of existing.values()) li.remove();
    this.emptyEl.textContent = t("containers.empty");
    this.emptyEl.hidden = this.entries.length > 0;
    this.countEl.textContent = this.entries.length ? String(this.entries.length) : "";
  }

  entry(id) {
    return this.entries.find((entry) => entry.Id === id) || null;
  }

  // ------------------------------------------------------------ the panel

  select(id) {
    clearTimeout(this.pollTimer);
    this.selectedId = id;
    this.lastEnd = null;
    this.inside = null;
    this.insideError = null;
    for (const li of this.listEl.children) {
      if (li.dataset.id === id) li.setAttribute("aria-current", "true");
      else li.removeAttribute("aria-current");
    }
    this.panel.hidden = !id;
    if (!id) return;
    this.renderPanel();
    // Bring the panel's top into view, but don't scroll the list away when
    // it already shows.
    const view = this.view.getBoundingClientRect();
    const top = this.panel.getBoundingClientRect().top;
    if (top < view.top || top > view.bottom - 80) this.panel.scrollIntoView({block: "start"});
    this.fetchInside();
  }

  insideSoon() {
    clearTimeout(this.soonTimer);
    this.soonTimer = setTimeout(() => this.fetchInside(), 150);
  }

  async fetchInside() {
    const id = this.selectedId;
    if (!id) return;
    if (this.inflight) {
      this.again = true;
      return;
    }
    if (!this.isConnected()) {
      this.schedulePoll();
      return;
    }
    clearTimeout(this.pollTimer);
    this.inflight = true;
    const answer = await this.request("inside", {id});
    this.inflight = false;
    if (id === this.selectedId) {
      if (answer.error) {
        this.insideError = answer.error;
      } else {
        this.inside = answer;
        this.insideError = null;
        this.addUsage(id, answer);
      }
      this.renderPanel();
    }
    if (this.again) {
      this.again = false;
      this.fetchInside();
      return;
    }
    this.schedulePoll();
  }

  // `inside` readings fill the charts only when the sampler is quiet
  // (it samples twice a second; mixing both would plot the same moment twice).
  addUsage(id, answer) {
    const usage = (answer.cgroup && answer.cgroup.usage) || {};
    if (answer.state !== "running" || usage.memory == null) return;
    const points = this.samples.get(id) || [];
    const now = Date.now() / 1000;
    if (points.length && now - points[points.length - 1].t < 2) return;
    const limits = answer.cgroup.limits || {};
    this.pushPoint(id, {t: now, memory: usage.memory, memoryLimit: limits.memory,
                        pids: usage.pids, pidsLimit: limits.pids, cpu: usage.cpu_seconds});
  }

  schedulePoll() {
    clearTimeout(this.pollTimer);
    if (this.selectedId && this.visible && !document.hidden && this.state().state === "running") {
      this.pollTimer = setTimeout(() => this.fetchInside(), POLL_MS);
    }
  }

  // Where the selected container is in its life, from every source at hand.
  state() {
    const id = this.selectedId;
    const life = this.lives.get(id) || {};
    const inside = this.inside && this.inside.id === id ? this.inside : null;
    const entry = this.entry(id);
    let state = null;
    const consider = (candidate) => {
      if (candidate in RANK && (state == null || RANK[candidate] > RANK[state])) state = candidate;
    };
    consider(life.state);
    if (inside) consider(inside.state === "exited" && inside.oom_killed ? "oom" : inside.state);
    if (entry) consider(entry.State);
    // Gone from `docker ps -a` and unreadable: it was removed.
    if (this.listLoaded && !entry && this.insideError) consider("removed");
    const oom = Boolean(life.oom || (inside && inside.state === "exited" && inside.oom_killed));
    if (state === "exited" && oom) state = "oom";
    let code = life.code;
    if (code == null && inside) code = inside.exit_code;
    return {state: state || "created", code, oom};
  }

  renderPanel() {
    const id = this.selectedId;
    if (!id) return;
    const entry = this.entry(id);
    const inside = this.inside && this.inside.id === id ? this.inside : null;
    const life = this.lives.get(id) || {};
    const {state, code} = this.state();

    this.ui.title.textContent = (inside && inside.name) || (entry && containerName(entry))
      || life.name || shortId(id);
    this.ui.id.textContent = shortId(id);
    this.ui.id.title = id;
    this.ui.image.textContent = (inside && inside.image) || (entry && entry.Image) || life.image || "";
    this.panel.dataset.state = state;
    this.ui.shell.disabled = state !== "running";
    this.ui.attach.hidden = state !== "running";

    let message = null;
    if (state === "removed") message = t("panel.removed");
    else if (this.insideError) message = t("panel.error", {error: this.insideError});
    else if (!inside) message = t("panel.loading");
    else if (state !== "running") message = t("panel.not_running");
    this.ui.message.textContent = message || "";
    this.ui.message.hidden = !message;
    this.ui.message.classList.toggle("error", Boolean(this.insideError) && state !== "removed");

    if (!this.lastEnd && life.code != null) this.lastEnd = life.oom ? "oom" : "exited";
    this.renderLifecycle(state, code);
    if (inside) {
      this.renderNamespaces(inside.namespaces || []);
      this.renderProcesses(inside.processes || []);
      this.renderOverlay(inside.overlay || {});
      const cgroup = inside.cgroup || {};
      this.ui.cgroupPath.textContent = cgroup.path
        ? t("overlay.driver", {driver: cgroup.driver || "", path: cgroup.path}) : "";
    } else if (!this.insideError) {
      this.renderNamespaces([]);
      this.renderProcesses([]);
      this.renderOverlay({});
      this.ui.cgroupPath.textContent = "";
    }
    this.renderCharts();
  }

  renderLifecycle(state, code) {
    const svg = this.ui.lifecycle;
    const reached = RANK[state];
    for (const node of svg.querySelectorAll("[data-state]")) {
      const name = node.dataset.state;
      const current = name === state;
      node.classList.toggle("current", current);
      // The states passed through on the way here (exited and oom are two
      // ends of one step: only the one taken counts).
      const passed = RANK[name] < reached && !(name === "exited" || name === "oom");
      node.classList.toggle("passed", passed || (state === "removed" && this.lastEnd === name));
      if (current) node.setAttribute("aria-current", "step");
      else node.removeAttribute("aria-current");
    }
    if (state === "exited" || state === "oom") this.lastEnd = state;
    this.ui.exitedLabel.textContent = state === "exited" && code != null
      ? t("state.exited_code", {code}) : t("state.exited");
    svg.setAttribute("aria-label", `${t("panel.lifecycle")}: ${stateWord(state)}`);
  }

  flashOom() {
    const node = this.ui.lifecycle.querySelector("[data-state=oom]");
    node.classList.remove("flash");
    void node.getBoundingClientRect();  // restart the animation
    node.classList.add("flash");
  }

  renderNamespaces(namespaces) {
    // Without a running PID 1 there is no "inside" to compare with the host.
    if (!namespaces.some((ns) => ns.container != null)) namespaces = [];
    const body = this.ui.namespaces;
    body.replaceChildren();
    for (const ns of namespaces) {
      const tr = el("tr");
      tr.dataset.ns = ns.type;
      tr.dataset.shared = String(Boolean(ns.shared));
      const th = el("th", null, ns.type);
      th.scope = "row";
      const badge = el("span", `badge ${ns.shared ? "shared" : "own"}`,
                       t(ns.shared ? "ns.shared" : "ns.own"));
      const cell = el("td");
      cell.append(badge);
      tr.append(th, el("td", "num", ns.container ?? "—"), el("td", "num", ns.host ?? "—"), cell);
      body.append(tr);
    }
    body.parentElement.hidden = namespaces.length === 0;  // the table, headers and all
    this.ui.namespacesEmpty.textContent = t("ns.none");
    this.ui.namespacesEmpty.hidden = namespaces.length > 0;
  }

  // The processes as a tree, as `ps -ef --forest` would show it inside.
  renderProcesses(processes) {
    const body = this.ui.processes;
    body.replaceChildren();
    const pids = new Set(processes.map((p) => p.pid));
    const children = new Map();
    for (const p of processes) {
      const parent = pids.has(p.ppid) && p.ppid !== p.pid ? p.ppid : 0;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(p);
    }
    const walk = (parent, depth) => {
      for (const p of (children.get(parent) || []).sort((a, b) => a.pid - b.pid)) {
        const tr = el("tr");
        tr.dataset.pid = String(p.pid);
        tr.dataset.hostPid = p.host_pid == null ? "" : String(p.host_pid);
        const command = el("td", "command");
        command.style.setProperty("--depth", depth);
        if (depth) command.append(el("span", "branch", "└─ "));
        command.append(el("code", null, p.command || ""));
        command.title = p.command || "";
        tr.append(el("td", "num pid", p.pid), el("td", "num", p.host_pid ?? "—"),
                  el("td", null, p.user ?? ""), command);
        body.append(tr);
        walk(p.pid, depth + 1);
      }
    };
    walk(0, 0);
    body.parentElement.hidden = processes.length === 0;
    this.ui.processesEmpty.textContent = t("proc.none");
    this.ui.processesEmpty.hidden = processes.length > 0;
  }

  renderOverlay(overlay) {
    const layers = overlay.lower || [];
    this.ui.layers.replaceChildren();
    for (const layer of layers) {
      const li = el("li", "layer");
      li.dataset.chainId = layer.chain_id || "";
      const id = el("code", "layer-id", shortId(layer.chain_id));
      id.title = `chain ${layer.chain_id || "?"}\ndiff ${layer.diff_id || "?"}`;
      const createdBy = String(layer.created_by || "").replace(/^\/bin\/sh -c (#\(nop\)\s*)?/, "");
      const by = el("span", "layer-by", createdBy);
      by.title = layer.created_by || "";
      li.append(id, el("span", "layer-size", humanBytes(layer.size) || "—"), by);
      this.ui.layers.append(li);
    }
    this.ui.layersEmpty.textContent = t("overlay.no_layers");
    this.ui.layersEmpty.hidden = layers.length > 0 || !overlay.lower;

    const upper = overlay.upper || {};
    const bytes = upper.bytes || 0;
    const fraction = upper.limit ? Math.min(1, bytes / upper.limit) : 0;
    this.ui.upperFill.style.width = `${(fraction * 100).toFixed(1)}%`;
    this.ui.upperBar.classList.toggle("near-limit", fraction >= 0.9);
    this.ui.upperBar.setAttribute("aria-valuenow", String(bytes));
    this.ui.upperBar.setAttribute("aria-valuemax", String(upper.limit || bytes || 1));
    const text = overlay.upper
      ? t(upper.limit ? "overlay.upper_usage" : "overlay.upper_usage_nolimit",
          {bytes: humanBytes(bytes), files: upper.files ?? 0, limit: humanBytes(upper.limit)})
      : "";
    this.ui.upperText.textContent = text;
    this.ui.upperBar.setAttribute("aria-valuetext", text);
  }

  renderCharts() {
    const id = this.selectedId;
    if (!id) return;
    const points = this.samples.get(id) || [];
    const inside = this.inside && this.inside.id === id ? this.inside : null;
    const limits = (inside && inside.cgroup && inside.cgroup.limits) || {};
    const last = points[points.length - 1] || {};
    const unlimited = t("unlimited");
    const limitText = (value, show) => (value ? t("chart.limit", {value: show(value)}) : unlimited);

    const memoryLimit = limits.memory ?? last.memoryLimit ?? null;
    this.charts.memory.update({
      name: t("chart.memory"),
      values: points.map((p) => p.memory ?? null),
      limit: memoryLimit,
      floor: 4 << 20,
      valueText: last.memory != null ? humanBytes(last.memory) : t("chart.no_data"),
      limitText: limitText(memoryLimit, humanBytes),
    });

    const pidsLimit = limits.pids ?? last.pidsLimit ?? null;
    this.charts.pids.update({
      name: t("chart.pids"),
      values: points.map((p) => p.pids ?? null),
      limit: pidsLimit,
      floor: 8,
      valueText: last.pids != null ? String(last.pids) : t("chart.no_data"),
      limitText: limitText(pidsLimit, String),
    });

    // CPU is a counter: plot its rate (CPUs busy) between readings.
    const rates = points.map((p, i) => {
      const before = points[i - 1];
      if (!before || p.cpu == null || before.cpu == null || p.t - before.t < 0.2) return null;
      return Math.max(0, (p.cpu - before.cpu) / (p.t - before.t));
    }).slice(1);
    const lastRate = rates.length ? rates[rates.length - 1] : null;
    const cpus = limits.cpus ?? null;
    this.charts.cpu.update({
      name: t("chart.cpu"),
      values: rates,
      limit: cpus,
      floor: 0.1,
      valueText: lastRate != null
        ? t("chart.cpu_value", {value: lastRate.toFixed(lastRate < 0.1 ? 3 : 2)})
        : t("chart.no_data"),
      limitText: limitText(cpus, String)
        + (last.cpu != null ? ` · ${t("chart.cpu_total", {value: last.cpu.toFixed(2)})}` : ""),
    });
  }

  openTerminal(how) {
    const id = this.selectedId;
    if (!id) return;
    this.terminals.openContainer(id, how, this.ui.title.textContent);
  }

  relabel() {
    this.renderList();
    if (this.selectedId) this.renderPanel();
  }
}
