// The page's banner, derived from what is true now. Each source (the socket, the
// call's media path, the other parties, the session's end) says whether its
// condition holds each time its state changes; the banner shows the most
// important condition that holds, and hides when none does. A condition that
// ended takes its text with it: nothing stays up after the state it describes.
import { t, resolveParams, onLanguageChange } from "./i18n.js";

const NOTICE_MS = 4000;

export class Banner {
  constructor(element) {
    this.element = element;
    this.conditions = new Map(); // name -> {kind, key, params, priority, since}
    this.notice = null; // a short confirmation ("connection restored"), shown when nothing is wrong
    this.noticeTimer = null;
    onLanguageChange(() => this.render());
  }

  /** Condition ``name`` holds (``key`` is its text) or not (``key`` null). */
  set(name, key, { kind = "warn", params = {}, priority = 0 } = {}) {
    const before = this.conditions.get(name);
    if (!key) {
      if (!before) return;
      this.conditions.delete(name);
    } else {
      const same = before && before.key === key && JSON.stringify(before.params) === JSON.stringify(params);
      if (same) return;
      this.conditions.set(name, { kind, key, params, priority, since: before?.since ?? Date.now() });
    }
    this.render();
  }

  clear(name) {
    this.set(name, null);
  }

  /** Whether ``name`` holds now. */
  has(name) {
    return this.conditions.has(name);
  }

  /** A short confirmation shown for a few seconds, under any condition that holds. */
  flash(key, params = {}) {
    clearTimeout(this.noticeTimer);
    this.notice = { kind: "ok", key, params, since: Date.now() };
    this.noticeTimer = setTimeout(() => {
      this.notice = null;
      this.render();
    }, NOTICE_MS);
    this.render();
  }

  /** Everything off (the page is signed out: its own screen says why). */
  reset() {
    this.conditions.clear();
    clearTimeout(this.noticeTimer);
    this.notice = null;
    this.render();
  }

  current() {
    let best = null;
    for (const condition of this.conditions.values()) {
      if (!best || condition.priority > best.priority) best = condition;
    }
    return best || this.notice;
  }

  render() {
    const el = this.element;
    if (!el) return;
    const shown = this.current();
    if (!shown) {
      el.hidden = true;
      el.dataset.kind = "";
      el.dataset.key = "";
      el.textContent = "";
      return;
    }
    el.hidden = false;
    el.dataset.kind = shown.kind;
    el.dataset.key = shown.key;
    el.dataset.since = String(shown.since);
    el.textContent = t(shown.key, resolveParams(shown.params));
  }
}
