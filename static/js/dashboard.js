// The instructor's dashboard: a row per student — lesson, step, how long they
// have been on it — kept live by the server, and the class's controls.
import { startPage } from "./classroom_page.js";
import { el } from "./dom.js";
import { lang, onLangChange, t } from "./i18n.js";

const $ = (selector) => document.querySelector(selector);
const classroomId = $("#dashboard").dataset.classroom;
const students = new Map();   // id -> row
let lessons = [];
let classroom = null;
// Set once the socket exists: the row buttons' actions.
let sendTo = () => {};
let resetHost = () => {};

function duration(seconds) {
  if (seconds < 60) return t("classroom.seconds", {n: Math.floor(seconds)});
  if (seconds < 3600) return t("classroom.minutes", {n: Math.floor(seconds / 60)});
  return t("classroom.hours", {h: Math.floor(seconds / 3600), m: Math.floor((seconds % 3600) / 60)});
}

function stuckClass(seconds) {
  if (seconds > 600) return "stuck-long";
  if (seconds > 300) return "stuck";
  return "";
}

function renderRow(row) {
  const lesson = row.lesson;
  const now = Date.now() / 1000;
  const tr = el("tr", {"data-student": row.id, class: row.online ? "online" : "offline"});
  tr.append(
    el("th", {scope: "row"},
      el("span", {class: "presence", "aria-hidden": "true"}),
      el("span", {class: "student-name", text: row.name}),
      el("span", {class: "visually-hidden", text: row.online ? t("classroom.online") : t("classroom.offline")})),
    el("td", {class: "student-lesson", text: lesson ? `${lesson.chapter}. ${lesson.title[lang()] || lesson.title.en}` : t("classroom.free_play")}),
    el("td", {class: "student-step"},
      lesson ? t("classroom.step_of", {n: row.step + 1, total: lesson.steps, done: row.done.length}) : "—",
      checkMarks(row)),
    stuckCell(row, now),
    el("td", {class: "num", text: String(row.hints)}),
    el("td", {class: "num student-finished", text: String(row.finished.length)}));
  const hint = el("button", {type: "button", text: t("classroom.send_hint")});
  hint.addEventListener("click", () => sendTo(row, "hint"));
  const message = el("button", {type: "button", text: t("classroom.send_message")});
  message.addEventListener("click", () => sendTo(row, "message"));
  const reset = el("button", {type: "button", class: "danger", text: t("classroom.reset_host")});
  reset.addEventListener("click", () => resetHost(row));
  tr.append(el("td", {class: "actions"}, hint, message, reset));
  return tr;
}

// "Lesson 2: 12 · on a step for over 5 min: 3": where the class is, at a glance.
function summary(rows) {
  const now = Date.now() / 1000;
  const byLesson = new Map();
  for (const row of rows) {
    const key = row.lesson ? `${row.lesson.chapter}. ${row.lesson.title[lang()] || row.lesson.title.en}` : t("classroom.free_play");
    byLesson.set(key, (byLesson.get(key) || 0) + 1);
  }
  const stuck = rows.filter((row) => row.since && now - row.since > 300).length;
  const parts = [...byLesson.entries()].map(([name, count]) => t("classroom.teach.in_lesson", {name, count}));
  parts.push(t("classroom.teach.stuck_count", {count: stuck}));
  return parts.join(" · ");
}

function sorted(rows) {
  const now = Date.now() / 1000;
  if ($("#students-sort").value === "stuck") {
    const waited = (row) => (row.since ? now - row.since : -1);
    return rows.sort((a, b) => waited(b) - waited(a) || a.name.localeCompare(b.name));
  }
  return rows.sort((a, b) => a.name.localeCompare(b.name));
}

// The step's checks as marks, ✓ or ○, each with what it looks for: where a stuck
// student is stuck.
function checkMarks(row) {
  const marks = el("span", {class: "student-checks"});
  for (const check of row.checks || []) {
    const label = check.label[lang()] || check.label.en;
    marks.append(el("span", {class: check.ok ? "mark ok" : "mark", title: label, "aria-hidden": "true",
                             text: check.ok ? "✓" : "○"}),
                 el("span", {class: "visually-hidden", text: `${check.ok ? "✓" : "○"} ${label}`}));
  }
  return marks;
}

function stuckCell(row, now) {
  const cell = el("td");
  fillStuck(cell, row, now);
  return cell;
}

function fillStuck(cell, row, now) {
  cell.className = `student-stuck ${row.since ? stuckClass(now - row.since) : ""}`;
  cell.textContent = row.since ? duration(now - row.since) : (row.lesson ? t("classroom.step_done") : "—");
}

// Every few seconds the times move on: only those cells change (rebuilding the rows
// would take the keyboard focus off a button, or a click in flight).
function tick() {
  const now = Date.now() / 1000;
  for (const tr of document.querySelectorAll("#students tbody tr[data-student]")) {
    const row = students.get(tr.dataset.student);
    if (row) fillStuck(tr.querySelector(".student-stuck"), row, now);
  }
  $("#students-summary").textContent = students.size ? summary([...students.values()]) : "";
  renderClassroom();
}

function fillLessons() {
  const select = $("#assign-lesson");
  const chosen = select.value;
  select.replaceChildren(...lessons.map((lesson) => el("option", {value: lesson.id,
    text: `${lesson.chapter}. ${lesson.title[lang()] || lesson.title.en}`})));
  if (chosen) select.value = chosen;
}

function render() {
  const rows = sorted([...students.values()]);
  $("#students-summary").textContent = rows.length ? summary(rows) : "";
  $("#students").hidden = rows.length === 0;
  $("#students-empty").hidden = rows.length > 0;
  $("#student-count").textContent = `(${rows.length})`;
  $("#students tbody").replaceChildren(...rows.map(renderRow));
  renderClassroom();
}

function renderClassroom() {
  if (!classroom) return;
  const present = $("#present");
  present.setAttribute("aria-pressed", String(Boolean(classroom.presenting)));
  present.textContent = classroom.presenting ? t("classroom.teach.stop_presenting") : t("classroom.teach.present");
  const state = $("#class-state");
  if (classroom.open === false) {
    state.textContent = t("classroom.teach.ended");
    for (const control of document.querySelectorAll(".controls button, .controls input, .actions button")) control.disabled = true;
  } else if (classroom.ends_at) {
    const left = classroom.ends_at - Date.now() / 1000;
    state.textContent = t("classroom.teach.ends_in", {time: duration(Math.max(0, left))});
  }
}

async function main() {
  await startPage();
  const socket = window.io({autoConnect: false});
  const request = (name, payload) => new Promise((resolve) => {
    socket.timeout(10000).emit(name, {classroom: classroomId, ...payload}, (err, answer) => {
      resolve(err ? {error: t("error.timeout")} : (answer || {}));
    });
  });
  const say = (answer) => {
    if (answer && answer.error) window.alert(answer.error);
    return answer;
  };

  sendTo = async (row, kind) => {
    const text = window.prompt(t(kind === "hint" ? "classroom.hint_to" : "classroom.message_to", {name: row.name}));
    if (text) say(await request("classroom.message", {to: row.id, kind, text}));
  };
  resetHost = async (row) => {
    if (window.confirm(t("classroom.reset_confirm", {name: row.name}))) say(await request("classroom.reset", {to: row.id}));
  };

  socket.on("connect", async () => {
    const answer = await request("classroom.watch");
    if (answer.error) return say(answer);
    classroom = answer.classroom;
    lessons = answer.lessons;
    fillLessons();
    students.clear();
    for (const row of answer.students) students.set(row.id, row);
    render();
  });
  socket.on("classroom.student", (row) => {
    students.set(row.id, row);
    render();
  });
  socket.on("classroom.updated", (described) => {
    classroom = {...classroom, ...described};
    render();
  });

  $("#present").addEventListener("click", async () => {
    const answer = say(await request("classroom.present", {on: !classroom.presenting}));
    if (!answer.error) {
      classroom = {...classroom, ...answer};
      render();
    }
  });
  $("#end-class").addEventListener("click", async () => {
    if (!window.confirm(t("classroom.end_confirm"))) return;
    const answer = say(await request("classroom.end"));
    if (!answer.error) {
      classroom = {...classroom, open: false};
      render();
    }
  });
  $("#broadcast").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#broadcast-text");
    if (!input.value.trim()) return;
    const answer = say(await request("classroom.message", {text: input.value, kind: "message"}));
    if (!answer.error) input.value = "";
  });
  $("#assign").addEventListener("submit", async (e) => {
    e.preventDefault();
    say(await request("classroom.assign", {lesson: $("#assign-lesson").value}));
  });
  $("#limits").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const answer = say(await request("classroom.limits", Object.fromEntries(form.entries())));
    if (!answer.error) {
      classroom = {...classroom, ...answer};
      $("#class-state").dataset.saved = "1";
      render();
    }
  });
  onLangChange(() => {
    fillLessons();
    render();
  });
  $("#students-sort").addEventListener("change", render);
  setInterval(tick, 5000);   // the "for how long" column moves on by itself
  window.glassbox = {socket, students, classroom: () => classroom};
  socket.connect();
}

main().catch((error) => {
  console.error(error);
  document.documentElement.classList.remove("i18n-pending");
});
