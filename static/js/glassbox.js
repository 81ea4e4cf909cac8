// The main page: one Socket.IO connection that carries the host's events and
// its terminals. This file wires the pieces together; each piece lives in its
// own module (timeline, terminals, containers panel, texts).
import { applyStatic, initialLang, loadDictionaries, onLangChange, setLang, t } from "./i18n.js";
import { Containers } from "./panel.js";
import { Terminals } from "./terminals.js";
import { Timeline } from "./timeline.js";
import { ImageTree } from "./tree.js";
import { BuildView, treeShower } from "./build.js";
import { HostMap } from "./hostmap.js";
import { Lessons } from "./lessons.js";
import { ClassroomBanner } from "./classroom.js";

const ACK_TIMEOUT_MS = 10000;
const SEEN_KEEP = 50000;  // seqs remembered for de-duplication

const $ = (selector) => document.querySelector(selector);
let online = false;  // while offline the connection indicator says it all

// ------------------------------------------------------------------ notices

const NOTICE_KEEP = 4;

function showNotice(level, message) {
  const box = $("#notice");
  const item = document.createElement("div");
  item.className = `notice notice-${level || "info"}`;
  // The box is a polite live region; an error or a quota interrupts.
  if (level === "error" || level === "quota") item.setAttribute("role", "alert");
  const text = document.createElement("span");
  text.textContent = message;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "notice-close";
  close.textContent = "×";
  close.dataset.i18nAriaLabel = "notice.dismiss";
  close.setAttribute("aria-label", t("notice.dismiss"));
  close.addEventListener("click", () => item.remove());
  item.append(text, close);
  box.append(item);
  while (box.children.length > NOTICE_KEEP) box.firstElementChild.remove();
  if (level === "info") setTimeout(() => item.remove(), 10000);
}

function ackFailed(what, error) {
  if (!online) return;
  showNotice("error", t("error.ack", {what: t(`error.what.${what}`), error}));
}

// ------------------------------------------------------------------ tabs

// The Timeline / Containers / Image tree tabs (WAI-ARIA tabs: arrows move, one tab stop).
function rightTabs(onShow) {
  const tabs = [...document.querySelectorAll("#inspector-tabs [role=tab]")];
  const show = (tab, focus) => {
    for (const other of tabs) {
      const on = other === tab;
      other.setAttribute("aria-selected", String(on));
      other.tabIndex = on ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    onShow(tab.getAttribute("aria-controls"));
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => show(tab, false));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      const next = {ArrowRight: tabs[(i + 1) % tabs.length],
                    ArrowLeft: tabs[(i - 1 + tabs.length) % tabs.length],
                    Home: tabs[0], End: tabs[tabs.length - 1]}[e.key];
      if (next) {
        e.preventDefault();
        show(next, true);
      }
    });
  }
  return show;
}

// ------------------------------------------------------------------ start

async function main() {
  const failures = await loadDictionaries();
  const lang = initialLang();
  const langSwitch = $("#lang-switch");
  langSwitch.value = lang;

  // A window on the instructor's host while they present: the same page, read-only.
  const watching = document.body.classList.contains("watching");
  const socket = window.io(watching ? {autoConnect: false, auth: {watch: true}} : {autoConnect: false});

  // Every request has an answer within ACK_TIMEOUT_MS: the answer, or {error}.
  const request = (name, payload) => new Promise((resolve) => {
    socket.timeout(ACK_TIMEOUT_MS).emit(name, payload, (err, answer) => {
      if (err) resolve({error: t("error.timeout")});
      else if (!answer || typeof answer !== "object") resolve({error: String(answer)});
      else resolve(answer);
    });
  });

  const timeline = new Timeline({
    list: $("#timeline"), filters: $("#timeline-filters"), search: $("#timeline-search"),
    jump: $("#timeline-jump"), empty: $("#timeline-empty"),
  });
  const terminals = new Terminals({root: $("#terminals"), socket, request, onError: ackFailed,
                                   readOnly: watching});
  const containers = new Containers({
    view: $("#containers-view"), list: $("#containers"), empty: $("#containers-empty"),
    count: $("#containers-count"), panel: $("#panel"), request, terminals,
    isConnected: () => socket.connected, onError: ackFailed,
  });
  const tree = new ImageTree({view: $("#tree-view"), request});
  // Filled in below, once the tabs are wired: a step's layer, shown in the tree tab.
  let showInTree = () => {};
  const build = new BuildView({view: $("#build-view"), request, showInTree: (id) => showInTree(id)});
  const hostmap = new HostMap({view: $("#hostmap-view"), request});
  const lessons = watching ? null : new Lessons({panel: $("#lesson-panel"), toggle: $("#lessons-toggle"),
                                                request, socket, terminals, onError: ackFailed,
                                                showInTree: (id) => showInTree(id)});
  const classroom = watching ? null : new ClassroomBanner({banner: $("#classroom-banner"),
                                                           overlay: $("#watch-overlay"), request, socket,
                                                           showNotice, openLesson: (id) => lessons.assigned(id)});

  // ---------------------------------------------------------------- connection
  let connection = "connecting";
  function setConnection(state) {
    connection = state;
    const box = $("#connection");
    box.dataset.state = state === "connected" ? "connected" : "reconnecting";
    box.querySelector(".label").textContent = t(`connection.${state}`);
  }

  setLang(lang, {persist: false});
  setConnection("connecting");
  document.documentElement.classList.remove("i18n-pending");
  if (failures.includes(lang)) showNotice("error", t("error.i18n", {lang}));
  langSwitch.addEventListener("change", () => setLang(langSwitch.value));
  onLangChange(() => {
    timeline.relabel();
    terminals.relabel();
    containers.relabel();
    tree.relabel();
    build.relabel();
    hostmap.relabel();
    if (lessons) lessons.relabel();
    if (classroom) classroom.relabel();
    setConnection(connection);
  });

  const showTab = rightTabs((panelId) => {
    containers.setVisible(panelId === "containers-view");
    tree.setVisible(panelId === "tree-view");
    build.setVisible(panelId === "build-view");
    hostmap.setVisible(panelId === "hostmap-view");
    if (panelId === "timeline-view") timeline.shown();
  });
  showTab(document.querySelector("#inspector-tabs [aria-selected=true]"), false);
  showInTree = treeShower({openTab: () => showTab($("#tab-tree"), false), tree});

  if (!watching) {
    $("#reset-form").addEventListener("submit", (e) => {
      if (!window.confirm(t("host.reset_confirm"))) e.preventDefault();
    });
  }

  // ---------------------------------------------------------------- events
  // Seqs already shown: the backlog after a reconnect overlaps what we have.
  const seen = new Set();
  let lastSeq = 0;

  function receive(payload) {
    const batch = (Array.isArray(payload) ? payload : [payload]).filter((event) => {
      if (!event || typeof event.seq !== "number" || seen.has(event.seq)) return false;
      seen.add(event.seq);
      return true;
    });
    if (!batch.length) return;
    batch.sort((a, b) => a.seq - b.seq);
    timeline.add(batch);  // first: the screen is what the latency budget measures
    for (const event of batch) lastSeq = Math.max(lastSeq, event.seq);
    if (seen.size > SEEN_KEEP) {
      const drop = seen.size - SEEN_KEEP / 2;
      let i = 0;
      for (const seq of seen) {
        if (i++ >= drop) break;
        seen.delete(seq);
      }
    }
    containers.onEvents(batch);
    tree.onEvents(batch);
    build.onEvents(batch);
    hostmap.onEvents(batch);
  }

  async function subscribe() {
    const since = lastSeq;
    const answer = await request("subscribe", {since});
    if (answer.error) {
      ackFailed("subscribe", answer.error);
      return;
    }
    if (answer.host) $("#host-name").textContent = answer.host;
    // Events the server no longer keeps (only worth saying when coming back).
    if (since > 0 && answer.lost > 0) timeline.separator("timeline.lost", {count: answer.lost});
    if (typeof answer.seq === "number" && answer.seq < lastSeq) {
      // The daemon numbers from 1 again (restarted, or the host was reset):
      // the old rows belong to another story, and their numbers would make
      // every new event look like a repeat.
      seen.clear();
      lastSeq = 0;
      timeline.clear();
      hostmap.clear();
      timeline.separator("timeline.restarted");
      const again = await request("subscribe", {since: 0});
      if (again.error) ackFailed("subscribe", again.error);
    }
  }

  socket.on("connect", () => {
    online = true;
    setConnection("connected");
    subscribe();
    terminals.connected();
    containers.refresh();
    tree.refreshSoon();  // what changed while away
    hostmap.refreshSoon();
    if (lessons) lessons.refresh();
    if (classroom) classroom.refresh();
  });
  socket.on("disconnect", () => {
    online = false;
    setConnection("reconnecting");
    terminals.disconnected();
  });
  socket.io.on("reconnect_attempt", () => setConnection("reconnecting"));
  socket.on("connect_error", () => {
    setConnection("reconnecting");
    // A refusal by the server (not a network error) ends socket.io's own
    // retries; keep trying, slowly, so the page comes back by itself.
    if (!socket.active) setTimeout(() => socket.connect(), 3000);
  });
  socket.on("events", receive);
  socket.on("notice", (notice) => {
    if (notice && notice.message) showNotice(notice.level || "info", notice.message);
  });
  socket.on("terminal.output", (message) => terminals.output(message || {}));
  socket.on("terminal.exit", (message) => terminals.exit(message || {}));
  socket.on("terminals", (items) => terminals.sync(items));

  window.glassbox = {
    socket, terminals, timeline, containers, build, hostmap, lessons, classroom, lastSeq: () => lastSeq,
    // refresh(): asks the server again; signature(): of the tree drawn;
    // draw(answer): draws a `tree` answer and keeps it (live updates wait for
    // the next refresh()), resolving to the render's figures once painted —
    // what `glassbox bench graphs` measures; stats(): the last render's.
    tree: {refresh: () => tree.refresh(), signature: () => tree.signature(),
           draw: (answer) => tree.pin(answer), stats: () => tree.stats, view: tree},
  };
  socket.connect();
}

main().catch((error) => {
  // Whatever broke, say so on the page rather than leave it blank.
  console.error(error);
  document.documentElement.classList.remove("i18n-pending");
  applyStatic(document);
  showNotice("error", `Glassbox could not start: ${error.message || error}`);
});
