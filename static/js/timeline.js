// The timeline: every event as a row, newest at the bottom.
//
// Rows go in at the next animation frame, all that arrived since the last one in
// one insert: a container's start is a burst of events in a dozen messages, and
// laying out a list of thousands of rows once per message would fall behind
// (their data-shown-at, stamped at the insert, is what the latency benchmark reads).
// Filtering never rebuilds rows: a group filter is a class on the list that CSS
// turns into display:none, a text filter a class on each row.
import { GROUPS, groupOf, shortId, subjectId } from "./events.js";
import { describeEvent, t } from "./i18n.js";

const MAX_ROWS = 5000;
// cgroup.sampled comes twice a second per running container; its rows are
// hidden by default, so keep only the recent ones rather than let them push
// the real steps out of the 5000.
const MAX_SAMPLED_ROWS = 300;
// How close to the bottom still counts as "following" the newest events.
const STICK_PX = 48;

function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.`
    + String(d.getMilliseconds()).padStart(3, "0");
}

export class Timeline {
  constructor({list, filters, search, jump, empty}) {
    this.list = list;
    this.search = search;
    this.jump = jump;
    this.empty = empty;
    this.query = "";
    this.stuck = true;
    this.sampledRows = [];
    this.pending = [];
    this.frame = 0;

    for (const box of this.buildFilters(filters)) {
      this.applyGroup(box);
      box.addEventListener("change", () => this.applyGroup(box));
    }
    let searchTimer = 0;
    search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.applyQuery(search.value), 120);
    });
    list.addEventListener("scroll", () => {
      this.stuck = this.atBottom();
      if (this.stuck) this.jump.hidden = true;
    }, {passive: true});
    list.addEventListener("click", (e) => this.toggle(e));
    list.addEventListener("keydown", (e) => this.moveFocus(e));
    jump.addEventListener("click", () => this.scrollToEnd());
  }

  // One chip per group, all on but the cgroup samples. Made here, from the
  // same list that sorts kinds into groups, so the two can't drift apart.
  buildFilters(filters) {
    const chips = filters.querySelector(".chips");
    return GROUPS.map((group) => {
      const label = document.createElement("label");
      label.className = `chip group-${group}`;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.group = group;
      box.checked = group !== "sampled";
      const name = document.createElement("span");
      name.dataset.i18n = `group.${group}`;
      name.textContent = t(`group.${group}`);
      label.append(box, name);
      chips.append(label);
      return box;
    });
  }

  atBottom() {
    const l = this.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < STICK_PX;
  }

  scrollToEnd() {
    this.list.scrollTop = this.list.scrollHeight;
    this.stuck = true;
    this.jump.hidden = true;
  }

  // Called when the timeline tab is shown again: a hidden list can't scroll.
  shown() {
    if (this.stuck) this.scrollToEnd();
  }

  add(events) {
    if (!events.length) return;
    this.pending.push(...events);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    let events = this.pending;
    this.pending = [];
    if (!events.length) return;
    // A long backlog: only its tail would survive the trim anyway.
    if (events.length > MAX_ROWS) events = events.slice(-MAX_ROWS);
    const fragment = document.createDocumentFragment();
    const rows = events.map((event) => this.row(event));
    for (const row of rows) fragment.append(row);
    const shownAt = performance.timeOrigin + performance.now();
    for (const row of rows) row.dataset.shownAt = String(shownAt);
    this.list.append(fragment);
    this.trim(rows);
    this.empty.hidden = true;
    if (this.stuck) {
      this.list.scrollTop = this.list.scrollHeight;
    } else if (rows.some((row) => row.offsetParent !== null)) {
      this.jump.hidden = false;  // something visible arrived below the reader
    }
  }

  trim(rows) {
    for (const row of rows) {
      if (row.dataset.group === "sampled") this.sampledRows.push(row);
    }
    while (this.sampledRows.length > MAX_SAMPLED_ROWS) this.sampledRows.shift().remove();
    const excess = this.list.children.length - MAX_ROWS;
    for (let i = 0; i < excess; i += 1) {
      const first = this.list.firstElementChild;
      if (first.dataset.group === "sampled") this.sampledRows.shift();
      first.remove();
    }
  }

  row(event) {
    const li = document.createElement("li");
    li.className = "event";
    li.dataset.seq = String(event.seq);
    li.dataset.kind = event.kind;
    li.dataset.group = groupOf(event.kind);
    li._event = event;

    const summary = document.createElement("button");
    summary.type = "button";
    summary.className = "event-summary";
    summary.setAttribute("aria-expanded", "false");
    summary.tabIndex = -1;  // the list is one tab stop; arrows move inside it
    summary.title = t("timeline.toggle");

    const time = document.createElement("time");
    time.className = "event-time";
    time.dateTime = new Date(event.time * 1000).toISOString();
    time.textContent = clock(event.time);

    const kind = document.createElement("code");
    kind.className = "event-kind";
    kind.textContent = event.kind;

    const text = document.createElement("span");
    text.className = "event-text";
    text.textContent = describeEvent(event);

    // What the event is about: its name when it has one (a container's), and
    // the short id that `docker ps` would show.
    const subject = document.createElement("span");
    subject.className = "event-subject";
    const full = subjectId(event);
    const name = event.subject && event.subject.name;
    if (name) subject.append(Object.assign(document.createElement("span"), {className: "subject-name", textContent: name}), " ");
    subject.append(Object.assign(document.createElement("code"), {textContent: shortId(full)}));
    subject.title = Array.isArray(full) ? full.join(", ") : String(full);

    summary.append(time, kind, text, subject);
    li.append(summary);
    this.index(li);
    if (this.query && !li._haystack.includes(this.query)) li.classList.add("filtered-out");
    return li;
  }

  // What the text filter searches: kind, sentence, ids and the raw detail.
  index(li) {
    const event = li._event;
    li._haystack = [event.kind, li.querySelector(".event-text").textContent,
                    JSON.stringify(event.subject || {}), JSON.stringify(event.detail || {})]
      .join(" ").toLowerCase();
  }

  applyGroup(box) {
    this.list.classList.toggle(`hide-${box.dataset.group}`, !box.checked);
    if (this.stuck) this.scrollToEnd();
  }

  applyQuery(value) {
    this.query = value.trim().toLowerCase();
    for (const li of this.list.querySelectorAll("li.event")) {
      li.classList.toggle("filtered-out", Boolean(this.query) && !li._haystack.includes(this.query));
    }
    if (this.stuck) this.scrollToEnd();
  }

  toggle(e) {
    const li = e.target.closest("li.event");
    if (!li || e.target.closest(".event-detail")) return;  // let the JSON be selected
    const button = li.querySelector(".event-summary");
    let detail = li.querySelector(".event-detail");
    if (!detail) {
      detail = document.createElement("pre");
      detail.className = "event-detail";
      detail.hidden = true;
      detail.textContent = JSON.stringify(li._event, null, 2);
      li.append(detail);
    }
    detail.hidden = !detail.hidden;
    button.setAttribute("aria-expanded", String(!detail.hidden));
  }

  // Arrow keys walk the shown rows (thousands of rows must not be
  // thousands of tab stops); Enter or Space opens the raw event.
  moveFocus(e) {
    if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(e.key)) return;
    const shown = (li) => li && li.matches("li.event") && li.offsetParent !== null;
    const current = e.target.closest("li.event");
    let next = null;
    if (e.key === "Home" || (!current && e.key === "ArrowDown")) {
      next = this.list.firstElementChild;
      while (next && !shown(next)) next = next.nextElementSibling;
    } else if (e.key === "End" || (!current && e.key === "ArrowUp")) {
      next = this.list.lastElementChild;
      while (next && !shown(next)) next = next.previousElementSibling;
    } else {
      const step = e.key === "ArrowDown" ? "nextElementSibling" : "previousElementSibling";
      next = current[step];
      while (next && !shown(next)) next = next[step];
    }
    if (!next) return;
    e.preventDefault();
    next.querySelector(".event-summary").focus();
  }

  // The language changed: every row's sentence follows.
  relabel() {
    for (const li of this.list.querySelectorAll("li.event")) {
      li.querySelector(".event-text").textContent = describeEvent(li._event);
      li.querySelector(".event-summary").title = t("timeline.toggle");
      this.index(li);
    }
    for (const li of this.list.querySelectorAll("li.separator")) {
      li.textContent = t(li.dataset.i18nKey, li._params);
    }
  }

  clear() {
    this.pending = [];
    this.list.replaceChildren();
    this.sampledRows = [];
    this.jump.hidden = true;
  }

  // A break in the story: the daemon's numbering started over, or events
  // were lost while away. Marked, so the rows around it aren't read as one.
  separator(key, params = {}) {
    const li = document.createElement("li");
    li.className = "separator";
    li.setAttribute("role", "separator");
    li.dataset.i18nKey = key;
    li._params = params;
    li.textContent = t(key, params);
    this.list.append(li);
    if (this.stuck) this.scrollToEnd();
  }
}
