// A student's side of the classroom on the main page: which class they are
// in, their instructor's hints and messages, and — while the instructor
// presents — a window on the instructor's host (the page in watch mode, in
// an iframe over this one).
import { lang, t } from "./i18n.js";

export class ClassroomBanner {
  constructor({banner, overlay, request, socket, showNotice, openLesson}) {
    this.banner = banner;
    this.overlay = overlay;
    this.frame = overlay.querySelector("#watch-frame");
    this.request = request;
    this.showNotice = showNotice;
    this.mine = null;
    overlay.querySelector("#watch-close").addEventListener("click", () => this.closeWatch());
    socket.on("classroom.message", (m) => {
      if (!m || !m.text) return;
      this.showNotice("message", t(m.kind === "hint" ? "classroom.hint_from" : "classroom.message_from", {text: m.text}));
    });
    socket.on("classroom.present", (m) => {
      if (this.mine) this.mine.classroom.presenting = Boolean(m && m.on);
      this.render();
      if (this.mine && this.mine.teacher) return;   // the instructor's own workspace
      if (m && m.on) this.openWatch();
      else this.closeWatch();
    });
    socket.on("classroom.reset", () => {
      this.showNotice("info", t("classroom.was_reset"));
      setTimeout(() => window.location.reload(), 1500);
    });
    socket.on("classroom.ended", () => {
      this.closeWatch();
      this.showNotice("message", t("classroom.ended"));
      setTimeout(() => window.location.reload(), 4000);
    });
    socket.on("classroom.changed", () => this.refresh());
    socket.on("classroom.lesson", (m) => {
      if (!m || !m.lesson || (this.mine && this.mine.teacher)) return;
      this.showNotice("message", t("classroom.lesson_opened", {title: m.title[lang()] || m.title.en}));
      openLesson(m.lesson);
    });
  }

  async refresh() {
    const answer = await this.request("classroom.mine");
    if (answer.error) return;
    this.mine = answer.classroom ? answer : null;
    this.render();
    if (this.mine && this.mine.classroom.presenting && !this.mine.teacher && this.overlay.hidden) this.openWatch();
  }

  relabel() {
    this.render();
  }

  render() {
    const banner = this.banner;
    if (!this.mine) {
      banner.hidden = true;
      return;
    }
    banner.hidden = false;
    const text = document.createElement("span");
    text.textContent = t("classroom.banner", {name: this.mine.classroom.name, me: this.mine.name});
    const parts = [text];
    if (this.mine.classroom.presenting && !this.mine.teacher) {
      const watch = document.createElement("button");
      watch.type = "button";
      watch.id = "watch-open";
      watch.textContent = t("classroom.watch");
      watch.addEventListener("click", () => this.openWatch());
      parts.push(watch);
    }
    banner.replaceChildren(...parts);
  }

  openWatch() {
    if (!this.overlay.hidden) return;
    this.frame.src = "/classroom/watch";
    this.overlay.hidden = false;
  }

  closeWatch() {
    this.overlay.hidden = true;
    this.frame.src = "about:blank";
  }
}
