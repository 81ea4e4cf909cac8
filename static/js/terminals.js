// Terminal tabs: the host terminal (opened by itself) and shells or attaches
// into containers. xterm.js draws them with its DOM renderer (the browser tests
// read .xterm-rows); the server owns the sessions and replays their recent
// output when a browser (re)joins one, so a reload or a reconnect restores the
// screen instead of showing a blank one.
import { t } from "./i18n.js";

const THEME = {
  background: "#11161f", foreground: "#d8dee9", cursor: "#f0f3f8",
  selectionBackground: "#3b4a66", black: "#1b2130", brightBlack: "#5b6478",
};
const ORPHAN_LIMIT = 256 * 1024;  // output kept for a terminal we don't know yet
const RED = "\x1b[31m";
const DIM = "\x1b[2m";
const RESET = "\x1b[0m";

let nextKey = 1;

// One tab: its xterm, its pane and where it stands with the server.
// state: opening → open → exited | closed; failed when opening did not work.
class Tab {
  constructor({target, how, title, isHost}) {
    this.key = nextKey++;
    this.id = null;
    this.target = target;
    this.how = how;
    this.title = title;
    this.isHost = isHost;
    this.state = "opening";
    this.listed = false;     // seen in a `terminals` list from the server
    this.everOpen = false;   // shown a live session in this page
    this.replaying = false;  // inside a run of replay chunks
  }
}

export class Terminals {
  constructor({root, socket, request, onError, readOnly = false}) {
    this.root = root;
    this.readOnly = readOnly;  // watching another's host: nothing typed is sent
    this.socket = socket;
    this.request = request;
    this.onError = onError;
    this.tablist = root.querySelector(".term-tabs");
    this.panes = root.querySelector(".term-panes");
    this.tabs = [];
    this.byId = new Map();
    this.orphans = new Map();
    this.dismissed = new Set();
    this.pendingList = null;
    this.active = null;

    // Fit whenever the panes change size (window resize, narrow layout).
    let fitTimer = 0;
    new ResizeObserver(() => {
      clearTimeout(fitTimer);
      fitTimer = setTimeout(() => this.fitAll(), 60);
    }).observe(this.panes);
    this.tablist.addEventListener("click", (e) => this.onTabClick(e));
    this.tablist.addEventListener("keydown", (e) => this.onTabKey(e));
  }

  // ------------------------------------------------------------ public

  hostTab() {
    return this.tabs.find((tab) => tab.isHost) || null;
  }

  get(id) {
    const tab = this.byId.get(id);
    return tab ? tab.term : null;
  }

  list() {
    return this.tabs.map((tab) => ({id: tab.id, title: tab.title, state: tab.state,
                                     host: tab.isHost, active: tab === this.active}));
  }

  // Types into a terminal as if from the keyboard (handy in tests and demos).
  send(id, data) {
    const tab = this.byId.get(id);
    if (tab) this.input(tab, data);
  }

  // The socket (re)connected: rejoin what we had, open the host terminal if
  // there isn't one yet.
  connected() {
    for (const tab of this.tabs) {
      if (tab.state === "exited" || tab.state === "closed") continue;
      if (tab.state === "failed" && !tab.isHost) continue;  // Enter retries it
      if (tab.id) this.open(tab, this.rejoinRequest(tab));
      else if (tab.target) this.open(tab, {target: tab.target, how: tab.how});
    }
    if (!this.hostTab()) this.openHost();
  }

  disconnected() {
    for (const tab of this.tabs) {
      if (tab.state === "open") tab.term.write(`\r\n${DIM}${t("terminals.disconnected")}${RESET}\r\n`);
    }
  }

  openHost() {
    const tab = this.create({target: "host", how: "attach", title: t("terminals.host"), isHost: true});
    this.activate(tab);
    this.open(tab, {target: "host", how: "attach"});
  }

  openContainer(id, how, name) {
    const tab = this.create({target: id, how, title: name || id.slice(0, 12), isHost: false});
    this.activate(tab);
    this.open(tab, {target: id, how});
  }

  // ------------------------------------------------------------ server → us

  output({id, data, replay}) {
    const tab = this.byId.get(id);
    if (!tab) {
      this.keepOrphan(id, {data, replay});
      return;
    }
    this.write(tab, data, replay);
  }

  exit({id, code}) {
    const tab = this.byId.get(id);
    if (!tab) return;
    tab.state = "exited";
    const key = tab.isHost ? "terminals.exited_host" : "terminals.exited";
    tab.term.write(`\r\n${DIM}${t(key, {code: code == null ? "?" : code})}${RESET}\r\n`);
    this.renderTab(tab);
    if (this.readOnly && tab.isHost) {
      // The instructor closed their terminal: show their next one when they open it.
      this.unbind(tab);
      tab.waiting = false;
      setTimeout(() => { if (this.tabs.includes(tab)) this.open(tab, {target: "host", how: "attach"}); }, 2000);
    }
  }

  // The terminals open on this host, as the server sees them: join those we
  // don't show yet (opened in another browser tab), mark those gone.
  sync(items) {
    if (!Array.isArray(items)) return;
    if (this.tabs.some((tab) => tab.state === "opening")) {
      this.pendingList = items;  // an answer may still bind one of these ids
      return;
    }
    this.pendingList = null;
    const listed = new Set();
    for (const item of items) {
      if (!item || !item.id) continue;
      listed.add(item.id);
      let tab = this.byId.get(item.id);
      if (!tab && !this.dismissed.has(item.id)) {
        tab = this.create({target: null, how: null, title: item.title || item.id, isHost: false});
        tab.id = item.id;  // bound by the answer; until then its output waits as an orphan
        if (!this.active) this.activate(tab);
        this.open(tab, {id: item.id});
      }
      if (tab) {
        tab.listed = true;
        if (item.title && item.title !== tab.title) {
          tab.title = item.title;
          this.renderTab(tab);
        }
      }
    }
    for (const tab of this.tabs) {
      if (tab.listed && tab.state === "open" && !listed.has(tab.id)) {
        tab.state = "closed";
        tab.term.write(`\r\n${DIM}${t("terminals.closed")}${RESET}\r\n`);
        this.renderTab(tab);
      }
    }
  }

  // ------------------------------------------------------------ tabs

  create({target, how, title, isHost}) {
    const tab = new Tab({target, how, title, isHost});

    tab.tabEl = document.createElement("div");
    tab.tabEl.className = "term-tab";
    tab.button = document.createElement("button");
    tab.button.type = "button";
    tab.button.className = "term-tab-button";
    tab.button.setAttribute("role", "tab");
    tab.button.id = `term-tab-${tab.key}`;
    tab.button.setAttribute("aria-controls", `term-pane-${tab.key}`);
    tab.tabEl.append(tab.button);
    if (!isHost) {
      tab.closeButton = document.createElement("button");
      tab.closeButton.type = "button";
      tab.closeButton.className = "term-tab-close";
      tab.closeButton.textContent = "×";
      tab.closeButton.tabIndex = -1;
      tab.tabEl.append(tab.closeButton);
    }
    this.tablist.append(tab.tabEl);

    tab.pane = document.createElement("div");
    tab.pane.className = "terminal";
    tab.pane.id = `term-pane-${tab.key}`;
    tab.pane.setAttribute("role", "tabpanel");
    tab.pane.setAttribute("aria-labelledby", tab.button.id);
    this.panes.append(tab.pane);

    tab.term = new window.Terminal({
      cursorBlink: true,
      fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
      fontSize: 14,
      scrollback: 5000,
      theme: THEME,
      disableStdin: this.readOnly,
    });
    tab.fit = new window.FitAddon.FitAddon();
    tab.term.loadAddon(tab.fit);
    tab.term.open(tab.pane);
    tab.term.attachCustomKeyEventHandler((e) => this.specialKeys(tab, e));
    tab.term.onData((data) => this.input(tab, data));
    tab.term.onBinary((data) => this.input(tab, data));
    tab.term.onResize(({cols, rows}) => {
      if (tab.id && tab.state === "open") this.socket.emit("terminal.resize", {id: tab.id, cols, rows});
    });
    this.safeFit(tab);

    this.tabs.push(tab);
    this.renderTab(tab);
    return tab;
  }

  // Ctrl+Shift+C copies the selection (and must not open the browser's
  // inspector); Ctrl+Shift+V is left to the browser, whose paste event xterm
  // turns into input. Plain Ctrl+C / Ctrl+V stay the terminal's. Tab belongs
  // to the shell (completion), so F6 is the way out of the terminal.
  specialKeys(tab, e) {
    if (e.type === "keydown" && e.key === "F6") {
      e.preventDefault();
      const next = document.querySelector("#inspector-tabs [aria-selected=true]");
      if (next) next.focus();
      return false;
    }
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === "KeyC") {
      if (tab.term.hasSelection() && navigator.clipboard) {
        navigator.clipboard.writeText(tab.term.getSelection()).catch(() => {});
      }
      e.preventDefault();
      return false;
    }
    if (e.code === "KeyV") return false;
    return true;
  }

  renderTab(tab) {
    tab.button.textContent = tab.title;
    tab.button.classList.toggle("ended", ["exited", "closed", "failed"].includes(tab.state));
    tab.tabEl.dataset.state = tab.state;
    if (tab.closeButton) tab.closeButton.setAttribute("aria-label", t("terminals.close", {title: tab.title}));
  }

  relabel() {
    for (const tab of this.tabs) {
      if (tab.isHost && !tab.id) tab.title = t("terminals.host");
      this.renderTab(tab);
    }
  }

  activate(tab) {
    this.active = tab;
    for (const other of this.tabs) {
      const on = other === tab;
      other.button.setAttribute("aria-selected", String(on));
      other.button.tabIndex = on ? 0 : -1;
      other.tabEl.classList.toggle("active", on);
      other.pane.classList.toggle("active", on);
    }
    this.safeFit(tab);
    tab.term.focus();
  }

  remove(tab) {
    if (tab.id) {
      this.dismissed.add(tab.id);
      this.byId.delete(tab.id);
      this.socket.emit("terminal.leave", {id: tab.id});
    }
    tab.term.dispose();
    tab.tabEl.remove();
    tab.pane.remove();
    this.tabs = this.tabs.filter((other) => other !== tab);
    if (this.active === tab) {
      const next = this.hostTab() || this.tabs[0];
      if (next) this.activate(next);
      else this.active = null;
    }
  }

  onTabClick(e) {
    const el = e.target.closest(".term-tab");
    const tab = el && this.tabs.find((other) => other.tabEl === el);
    if (!tab) return;
    if (e.target.closest(".term-tab-close")) this.remove(tab);
    else this.activate(tab);
  }

  // Arrow keys move between tabs (WAI-ARIA tabs pattern); Delete closes one.
  onTabKey(e) {
    const index = this.tabs.indexOf(this.active);
    if (index < 0) return;
    let next = null;
    if (e.key === "ArrowRight") next = this.tabs[(index + 1) % this.tabs.length];
    else if (e.key === "ArrowLeft") next = this.tabs[(index - 1 + this.tabs.length) % this.tabs.length];
    else if (e.key === "Home") next = this.tabs[0];
    else if (e.key === "End") next = this.tabs[this.tabs.length - 1];
    else if (e.key === "Delete" && !this.active.isHost) {
      this.remove(this.active);
      e.preventDefault();
      return;
    }
    if (next) {
      e.preventDefault();
      this.activate(next);
      next.button.focus();
    }
  }

  // ------------------------------------------------------------ sessions

  // What rejoins the session a tab shows: its id. The host terminal and an
  // attach are one per host or container, so opening them again by target is
  // rejoining too (and works if the server lost the id, e.g. after a restart).
  rejoinRequest(tab) {
    const request = {id: tab.id};
    if (tab.isHost) Object.assign(request, {target: "host", how: "attach"});
    else if (tab.how === "attach" && tab.target) Object.assign(request, {target: tab.target, how: "attach"});
    return request;
  }

  // Opens a new session, or (with `id`) rejoins one: either way the answer
  // binds the tab to the server's terminal id.
  async open(tab, request) {
    if (!this.socket.connected) return;  // `connected()` will open it
    tab.state = "opening";
    this.renderTab(tab);
    this.safeFit(tab);
    const payload = {...request, cols: tab.term.cols, rows: tab.term.rows};
    for (const key of ["id", "target", "how"]) if (payload[key] == null) delete payload[key];
    const answer = await this.request("terminal.open", payload);
    if (!this.tabs.includes(tab)) return;  // closed while we waited
    if (payload.id && (answer.error || answer.id !== payload.id)) {
      this.sessionGone(tab, answer);
    } else if (answer.error && this.readOnly && tab.isHost) {
      // Watching the instructor, whose terminal isn't open yet: wait for it, quietly.
      tab.state = "failed";
      if (!tab.waiting) tab.term.write(`${DIM}${t("terminals.watch_waiting")}${RESET}\r\n`);
      tab.waiting = true;
      this.renderTab(tab);
      setTimeout(() => { if (this.tabs.includes(tab) && tab.state === "failed") this.open(tab, request); }, 3000);
    } else if (answer.error) {
      tab.state = "failed";
      tab.term.write(`\r\n${RED}${t("terminals.open_failed", {error: answer.error})}${RESET}\r\n`
                     + `${DIM}${t("terminals.retry")}${RESET}\r\n`);
      this.renderTab(tab);
      this.onError("terminal", answer.error);
    } else if (this.byId.has(answer.id) && this.byId.get(answer.id) !== tab) {
      this.merge(tab, this.byId.get(answer.id));
    } else {
      this.bind(tab, answer.id, answer.title);
    }
    this.applyPendingList();
  }

  // The session a tab showed can't be rejoined (it ended while we were away,
  // or the server restarted). A host terminal goes on with the host's current
  // one; another tab says it was closed, or, if this page never showed it,
  // quietly goes away.
  sessionGone(tab, answer) {
    const gone = tab.id;
    this.unbind(tab);
    if (tab.isHost) {
      if (!answer.error && answer.id) {
        tab.replaying = false;
        this.bind(tab, answer.id, answer.title);
      } else {
        tab.term.reset();
        this.open(tab, {target: "host", how: "attach"});
      }
      return;
    }
    if (gone) this.dismissed.add(gone);
    if (!tab.everOpen) {
      this.remove(tab);
      return;
    }
    tab.state = "closed";
    tab.term.write(`\r\n${DIM}${t("terminals.closed")}${RESET}\r\n`);
    this.renderTab(tab);
  }

  // The session is already in another tab (joined from a `terminals` list
  // before this answer came): keep that one, drop the duplicate.
  merge(tab, existing) {
    existing.isHost = existing.isHost || tab.isHost;
    existing.target = existing.target || tab.target;
    existing.how = existing.how || tab.how;
    if (existing.isHost && existing.closeButton) {
      existing.closeButton.remove();
      existing.closeButton = null;
    }
    const wasActive = this.active === tab;
    this.tabs = this.tabs.filter((other) => other !== tab);
    tab.term.dispose();
    tab.tabEl.remove();
    tab.pane.remove();
    if (wasActive) this.activate(existing);
  }

  bind(tab, id, title) {
    if (tab.id && tab.id !== id) this.byId.delete(tab.id);
    tab.id = id;
    if (title) tab.title = title;
    tab.state = "open";
    tab.everOpen = true;
    this.byId.set(id, tab);
    tab.pane.dataset.terminalId = id;
    tab.tabEl.dataset.terminalId = id;
    this.renderTab(tab);
    this.flushOrphans(tab);
  }

  unbind(tab) {
    if (tab.id) this.byId.delete(tab.id);
    tab.id = null;
    tab.listed = false;
    delete tab.pane.dataset.terminalId;
    delete tab.tabEl.dataset.terminalId;
  }

  applyPendingList() {
    if (this.pendingList && !this.tabs.some((tab) => tab.state === "opening")) {
      this.sync(this.pendingList);
    }
  }

  input(tab, data) {
    if (tab.state === "open") {
      this.socket.emit("terminal.input", {id: tab.id, data});
      return;
    }
    if (!data.includes("\r")) return;
    if (tab.state === "exited" && tab.isHost) {
      // A new host terminal in the same tab.
      this.unbind(tab);
      tab.term.reset();
      this.open(tab, {target: "host", how: "attach"});
    } else if (tab.state === "failed") {
      tab.term.reset();
      this.open(tab, tab.id ? this.rejoinRequest(tab) : {target: tab.target, how: tab.how});
    }
  }

  // A replay is the session's recent output, sent after (re)joining: it
  // replaces the screen. It may come in several chunks, so only the first of
  // a run clears.
  write(tab, data, replay) {
    if (replay && !tab.replaying) tab.term.reset();
    tab.replaying = Boolean(replay);
    tab.term.write(data);
  }

  keepOrphan(id, chunk) {
    if (this.dismissed.has(id)) return;
    const chunks = this.orphans.get(id) || [];
    chunks.push(chunk);
    let size = chunks.reduce((sum, c) => sum + c.data.length, 0);
    while (size > ORPHAN_LIMIT && chunks.length > 1) size -= chunks.shift().data.length;
    this.orphans.set(id, chunks);
  }

  flushOrphans(tab) {
    const chunks = this.orphans.get(tab.id);
    if (!chunks) return;
    this.orphans.delete(tab.id);
    for (const chunk of chunks) this.write(tab, chunk.data, chunk.replay);
  }

  // A pane with no size (a hidden page, a collapsed layout) can't be measured.
  safeFit(tab) {
    if (!tab.pane.clientWidth || !tab.pane.clientHeight) return;
    try {
      tab.fit.fit();
    } catch (error) {
      console.warn("fitting the terminal", error);
    }
  }

  fitAll() {
    for (const tab of this.tabs) this.safeFit(tab);
  }
}
