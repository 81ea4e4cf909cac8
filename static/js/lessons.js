// The lesson panel: the list of lessons, then one step at a time — its text,
// commands to send to the host terminal, what the checks look for (ticked live
// as the server runs them against the host), the goal tree, hints.
// Without a lesson open the page is free play: nothing is checked.
import { el, svgEl as svg } from "./dom.js";
import { lang, t } from "./i18n.js";

const PALETTE = ["#2f7de1", "#d9822b", "#2e9e5b", "#b04ac8", "#c83a4a", "#178f9b", "#8a6d1f", "#5b5fc7"];
const ALLOWED_TAGS = new Set(["p", "strong", "em", "s", "code", "pre", "ul", "ol", "li", "blockquote", "a",
  "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"]);

export class Lessons {
  constructor({panel, toggle, request, socket, terminals, onError, showInTree}) {
    this.panel = panel;
    this.showInTree = showInTree;
    this.toggle = toggle;
    this.request = request;
    this.terminals = terminals;
    this.onError = onError;
    this.list = panel.querySelector("#lesson-list");
    this.stepView = panel.querySelector("#lesson-step");
    this.lessons = [];
    this.current = null;   // the step payload shown
    this.results = null;   // the last checks of that step
    this.hintsOpen = 0;
    this.asked = 0;       // open/goto requests sent, and the one whose answer is shown
    this.shown = 0;
    this.early = null;
    toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    panel.querySelector("#lesson-hide").addEventListener("click", () => this.setOpen(false));
    socket.on("lesson.checks", (message) => this.onChecks(message || {}));
    this.setOpen(localStorage.getItem("glassbox.lessons") !== "closed");
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    document.querySelector(".workspace").classList.toggle("with-lesson", open);
    try { localStorage.setItem("glassbox.lessons", open ? "open" : "closed"); } catch (_) { /* off */ }
    window.dispatchEvent(new Event("resize"));  // the terminals refit
  }

  // The socket (re)connected: the list, and the lesson the student was in.
  async refresh() {
    const answer = await this.request("lessons");
    if (answer.error) return this.onError("lessons", answer.error);
    this.lessons = answer.lessons;
    if (answer.current) {
      await this.open(answer.current);
    } else {
      this.current = null;   // closed meanwhile (another tab, or the lesson is gone)
      this.results = null;
      this.showList();
    }
  }

  // The instructor asked the class to open a lesson: open it (unless it is open already).
  async assigned(id) {
    this.setOpen(true);
    if (!this.current || this.current.lesson.id !== id) await this.open(id);
  }

  async open(id) {
    this.show(await this.ask("lesson.open", {id}));
  }

  async goto(step) {
    this.show(await this.ask("lesson.goto", {id: this.current.lesson.id, step}));
  }

  // Opening or going to a step starts it again on the server. Only the answer to the
  // latest of these requests is shown, and only checks that came after it was sent —
  // which may arrive before the answer itself (they are kept in `early`).
  async ask(name, payload) {
    const asked = ++this.asked;
    this.early = null;
    const answer = await this.request(name, payload);
    if (asked !== this.asked) return {stale: true};
    this.shown = asked;   // show() runs next, before any other message is handled
    return answer;
  }

  async freePlay() {
    const answer = await this.request("lesson.close");
    if (answer.error) return this.onError("lessons", answer.error);
    this.current = null;
    const again = await this.request("lessons");
    if (!again.error) this.lessons = again.lessons;
    this.showList();
  }

  show(answer) {
    if (answer.stale) return;
    if (answer.error) return this.onError("lessons", answer.error);
    this.current = answer;   // the step began anew: its hints closed, its checks not run yet
    this.results = null;
    this.hintsOpen = answer.hints_shown || 0;
    const early = this.early;
    this.early = null;
    if (early && early.lesson === answer.lesson.id && early.step === answer.step) this.onChecks(early);
    else this.renderStep();
  }

  relabel() {
    if (this.current) this.renderStep();
    else this.showList();
  }

  // ------------------------------------------------------------ the list

  showList() {
    this.stepView.hidden = true;
    this.list.hidden = false;
    const items = this.lessons.map((lesson) => {
      const button = el("button", {type: "button", class: "lesson-item", "data-lesson": lesson.id},
        el("span", {class: "lesson-chapter", text: String(lesson.chapter)}),
        el("span", {class: "lesson-name"},
          el("strong", {text: lesson.title[lang()] || lesson.title.en}),
          el("small", {text: lesson.summary[lang()] || lesson.summary.en})),
        el("span", {class: "lesson-progress", text: lesson.finished ? "✓" : `${lesson.done}/${lesson.steps}`}));
      if (lesson.finished) button.classList.add("finished");
      button.addEventListener("click", () => this.open(lesson.id));
      return el("li", {}, button);
    });
    this.list.replaceChildren(
      el("p", {class: "lesson-intro", text: t("lessons.intro")}),
      el("ol", {class: "lesson-items"}, ...items),
      el("p", {class: "muted", text: t("lessons.free_play")}));
  }

  // ------------------------------------------------------------ a step

  renderStep() {
    const step = this.current;
    const text = step.texts[lang()] || step.texts.en;
    const total = step.lesson.steps;
    const done = new Set(step.done);
    this.list.hidden = true;
    this.stepView.hidden = false;

    const back = el("button", {type: "button", class: "link", text: t("lessons.back")});
    back.addEventListener("click", () => this.freePlay());
    const dots = el("ol", {class: "step-dots", "aria-label": t("lessons.steps")});
    for (let i = 0; i < total; i++) {
      const reachable = i <= Math.max(-1, ...step.done) + 1;
      const dot = el("button", {type: "button", text: String(i + 1),
                                "aria-label": t("lessons.step_n", {n: i + 1, total})});
      if (i === step.step) dot.setAttribute("aria-current", "step");
      if (done.has(i)) dot.classList.add("done");
      dot.disabled = !reachable;
      dot.addEventListener("click", () => this.goto(i));
      dots.append(el("li", {}, dot));
    }

    const body = el("div", {class: "step-body"}, ...this.build(text.body, text.commands));

    const checks = el("ul", {class: "checks", "aria-live": "polite"});
    step.checks.forEach((check, i) => {
      const result = this.results && this.results[i];
      const state = result ? (result.ok ? "ok" : "waiting") : "unknown";
      checks.append(el("li", {class: `check check-${state}`},
        el("span", {class: "check-mark", "aria-hidden": "true", text: state === "ok" ? "✓" : "○"}),
        el("span", {text: check.label[lang()] || check.label.en}),
        el("span", {class: "visually-hidden", text: state === "ok" ? t("lessons.check_ok") : t("lessons.check_waiting")})));
    });

    const passed = done.has(step.step);
    const status = el("p", {class: `step-status ${passed ? "passed" : ""}`, role: "status",
                            text: passed ? (step.step + 1 === total ? t("lessons.finished") : t("lessons.passed"))
                                         : t("lessons.waiting")});

    const hints = el("div", {class: "hints"});
    const shown = text.hints.slice(0, this.hintsOpen);
    const hintList = el("ol", {class: "hint-list"});
    for (const hint of shown) hintList.append(el("li", {}, ...this.build(hint, [])));
    if (this.hintsOpen < text.hints.length) {
      const more = el("button", {type: "button", class: "hint-button",
                                 text: this.hintsOpen ? t("lessons.another_hint") : t("lessons.hint")});
      more.addEventListener("click", () => {
        this.hintsOpen += 1;
        this.request("lesson.hint", {shown: this.hintsOpen});
        this.renderStep();
      });
      hints.append(hintList, more);
    } else {
      hints.append(hintList);
    }

    const prev = el("button", {type: "button", text: t("lessons.prev")});
    prev.disabled = step.step === 0;
    prev.addEventListener("click", () => this.goto(step.step - 1));
    const next = el("button", {type: "button", class: "primary", id: "lesson-next",
                               text: step.step + 1 === total ? t("lessons.all") : t("lessons.next")});
    next.disabled = !passed;
    next.addEventListener("click", () => (step.step + 1 === total ? this.freePlay() : this.goto(step.step + 1)));

    const parts = [
      el("nav", {class: "step-nav"}, back, dots),
      el("p", {class: "lesson-title", text: `${step.lesson.chapter}. ${step.lesson.title[lang()] || step.lesson.title.en}`}),
      el("h3", {class: "step-title", text: text.title}),
      body,
      el("section", {class: "step-checks", "aria-label": t("lessons.goal")},
        el("h4", {text: t("lessons.goal")}), checks, status),
    ];
    step.goals.forEach((goal, i) => {
      const result = this.goalResult(i);
      parts.push(this.goalGraph(goal, result && result.goal, result && result.nodes));
    });
    parts.push(hints, el("footer", {class: "step-footer"}, prev, next));
    this.stepView.replaceChildren(...parts);
  }

  // The step's text from the server's tree of the Markdown ({t, c, a} and strings):
  // elements of a fixed set of tags, every string as text. A ```run block gets its button.
  build(nodes, commands) {
    return nodes.map((node) => {
      if (typeof node === "string") return document.createTextNode(node);
      if (!ALLOWED_TAGS.has(node.t)) return document.createTextNode("");
      const element = document.createElement(node.t);
      for (const [key, value] of Object.entries(node.a || {})) {
        if (key === "href" || key === "start") element.setAttribute(key, value);
      }
      if (node.t === "a") element.rel = "noopener";
      element.append(...this.build(node.c || [], commands));
      if (node.t !== "pre" || node.run == null) return element;
      element.classList.add("run");
      const command = commands[node.run];
      const run = el("button", {type: "button", class: "run-button", text: t("lessons.run"),
                                title: t("lessons.run_title")});
      run.addEventListener("click", () => this.sendToTerminal(command));
      return el("div", {class: "run-block"}, element, run);
    });
  }

  goalResult(index) {
    if (!this.results) return null;
    return this.results.filter((r) => r.goal)[index] || null;
  }

  // The goal tree as rows of layer boxes, bottom layer first: the same letter
  // (and colour) in two rows is one shared layer; "@image" is all of that image's layers.
  // A box the student's tree already matches is a link to that layer in the Image tree.
  goalGraph(goal, matched, nodes) {
    const rows = Object.entries(goal.images || {});
    const letterWidth = 30, baseWidth = 70, gap = 4, rowHeight = 30;
    const widthOf = (item) => (item.startsWith("@") ? baseWidth : letterWidth);
    const labelWidth = 8 + 7.2 * Math.max(...rows.map(([tag]) => tag.length), 4);
    const longest = Math.max(...rows.map(([, chain]) => chain.reduce((sum, item) => sum + widthOf(item) + gap, 0)));
    const width = labelWidth + longest + 24;
    // A group, not an image: its matched boxes are links.
    const drawing = svg("svg", {class: "goal-graph", viewBox: `0 0 ${width} ${rows.length * rowHeight + 4}`,
                                width, role: "group", "aria-label": t("lessons.goal_tree")});
    const letters = [...new Set(rows.flatMap(([, chain]) => chain.filter((x) => !x.startsWith("@"))))];
    rows.forEach(([tag, chain], r) => {
      const y = r * rowHeight + 2;
      const label = svg("text", {x: 0, y: y + 17, class: "goal-tag"});
      label.textContent = tag;
      drawing.append(label);
      let x = labelWidth;
      chain.forEach((item, i) => {
        const base = item.startsWith("@");
        const fill = base ? "#9aa3b2" : PALETTE[letters.indexOf(item) % PALETTE.length];
        const node = nodes && nodes[tag] ? nodes[tag][i] : null;
        const box = svg("g", {class: node ? "goal-box linked" : "goal-box"});
        box.append(svg("rect", {x, y, width: widthOf(item), height: 24, rx: 5, fill, class: "goal-layer"}));
        const name = svg("text", {x: x + widthOf(item) / 2, y: y + 16, "text-anchor": "middle", class: "goal-letter"});
        name.textContent = base ? item.slice(1) : item;
        box.append(name);
        if (node) {
          const title = svg("title");
          title.textContent = t("lessons.goal_show");
          box.append(title);
          box.setAttribute("tabindex", "0");
          box.setAttribute("role", "link");
          box.setAttribute("aria-label", `${tag}: ${name.textContent} — ${t("lessons.goal_show")}`);
          box.dataset.node = node;
          const show = () => this.showInTree(node);
          box.addEventListener("click", show);
          box.addEventListener("keydown", (e) => { if (e.key === "Enter") show(); });
        }
        drawing.append(box);
        x += widthOf(item) + gap;
      });
      if (matched && tag in matched) {
        const mark = svg("text", {x: x + 4, y: y + 17, class: matched[tag] ? "goal-ok" : "goal-no"});
        mark.textContent = matched[tag] ? "✓" : "…";
        drawing.append(mark);
      }
    });
    return el("figure", {class: "goal"}, el("figcaption", {text: t("lessons.goal_tree")}), drawing);
  }

  onChecks(message) {
    const step = this.current;
    if (this.asked !== this.shown) {
      this.early = message;   // a step is being opened: these may be its first checks
      return;
    }
    if (!step || message.lesson !== step.lesson.id || message.step !== step.step) return;
    this.results = message.results;
    step.done = message.done;
    const lesson = this.lessons.find((l) => l.id === step.lesson.id);
    if (lesson) {
      lesson.done = message.done.length;
      lesson.finished = message.finished;
    }
    this.renderStep();
  }

  sendToTerminal(command) {
    const tab = this.terminals.hostTab();
    if (!tab) return;
    this.terminals.activate(tab);
    this.terminals.input(tab, command.split("\n").join("\r") + "\r");
  }
}
