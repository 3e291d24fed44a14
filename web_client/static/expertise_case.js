// Télé-expertise, what the requester's and the expert's sides share: the REST client
// (docs/expertise.md), the questionnaire's labels in the page's language, and the case
// on screen: its summary, its answers, its attachments side by side (fit, or 1:1), its
// thread and the expert's structured answer. What each party may do next is added by
// expertise_request.js (the requester) and expertise_inbox.js (the expert).
import { h, announce } from "./dom.js";
import { t, language, formatDateTime, translate, setText } from "./i18n.js";
import { specialtyLabel } from "./common.js";

/** The server's vocabulary (signalling.expertise.case.Recommendation; a test compares them). */
export const RECOMMENDATIONS = Object.freeze(["advice", "treatment", "teleconsultation", "referral", "urgent_care"]);
export const OPEN_STATES = new Set(["submitted", "question"]);
export const FINAL_STATES = new Set(["closed", "cancelled", "escalated"]);
const ACCEPTED_PHOTOS = "image/jpeg,image/png";

export class ApiError extends Error {
  constructor(status, code, reason) {
    super(reason || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.reason = reason || "";
  }
}

const enc = encodeURIComponent;

/** The REST API of docs/expertise.md, with the access token of now (auth.renew replaces it). */
export class ExpertiseApi {
  constructor(tokenNow) {
    this.tokenNow = tokenNow;
  }

  async request(method, path, { json, body, type } = {}) {
    const headers = { Authorization: `Bearer ${this.tokenNow()}` };
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    } else if (type) headers["Content-Type"] = type;
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    } catch (_) {
      throw new ApiError(0, "unreachable", t("expertise.error.unreachable"));
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data?.error || "", data?.reason || "");
    return data;
  }

  list(box) {
    return this.request("GET", `/api/expertise?box=${box}`).then((d) => d.cases || []);
  }

  get(id) {
    return this.request("GET", `/api/expertise/${enc(id)}`);
  }

  create(body) {
    return this.request("POST", "/api/expertise", { json: body });
  }

  act(id, action, body = {}) {
    return this.request("POST", `/api/expertise/${enc(id)}/${action}`, { json: body });
  }

  message(id, text) {
    return this.act(id, "messages", { text });
  }

  /** A photo as the raw body; the server sniffs its type (HEIC is refused with what to do). */
  upload(id, file, view) {
    return this.request("POST", `/api/expertise/${enc(id)}/attachments${view ? `?view=${enc(view)}` : ""}`,
      { body: file, type: file.type || "application/octet-stream" });
  }

  questionnaire(specialty) {
    return this.request("GET", `/api/expertise/questionnaires/${enc(specialty)}`);
  }

  /** The stills of a consultation the caller may see (its site's nurses, its physician). */
  stills(consultationId) {
    return this.request("GET", `/api/consultations/${enc(consultationId)}/stills`).then((d) => d.stills || []);
  }

  /** A blob URL of an image fetched with the token (the caller revokes it). */
  async imageUrl(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${this.tokenNow()}` }, cache: "no-store" });
    if (!response.ok) throw new ApiError(response.status, "", "");
    return URL.createObjectURL(await response.blob());
  }

  attachmentPath(caseId, attachmentId) {
    return `/api/expertise/${enc(caseId)}/attachments/${enc(attachmentId)}`;
  }
}

/** Each specialty's current questionnaire, fetched once (null: the specialty has none). */
export class Questionnaires {
  constructor(api) {
    this.api = api;
    this.cache = new Map();
  }

  get(specialty) {
    if (!this.cache.has(specialty)) {
      const promise = this.api.questionnaire(specialty).catch(() => null);
      this.cache.set(specialty, promise);
    }
    return this.cache.get(specialty);
  }

  /** The questionnaire a case's answers were checked against, when it is still the current one. */
  async of(ref) {
    const [specialty] = String(ref || "").split("@");
    const q = await this.get(specialty);
    return q && q.ref === ref ? q : null;
  }
}

/** Who is who on screen: names, never ids (a nurse the directory does not know is "the site"). */
export function namesOf(directory) {
  const people = new Map((directory.clinicians || []).map((c) => [c.id, c]));
  const sites = new Map((directory.sites || []).map((s) => [s.id, s]));
  return {
    person: (sub) => people.get(sub)?.name || "",
    site: (id) => sites.get(id)?.name || id || "",
    experts: (specialty) => (directory.clinicians || []).filter((c) => (c.specialties || []).includes(specialty)),
  };
}

/** The server's refusal in words: its reason (it names the field) after what failed. */
export function errorText(err, key = "expertise.error.refused") {
  return t(key, { message: err?.reason || err?.message || "" });
}

// -- labels in the page's language --------------------------------------------------
export function labelOf(labels) {
  return (labels && (labels[language()] || labels.en)) || "";
}

/** ``el`` shows the questionnaire's label in the page's language, and again after a switch. */
export function bindLabel(el, labels) {
  el.dataset.labelEn = labels?.en || "";
  el.dataset.labelFr = labels?.fr || labels?.en || "";
  el.textContent = labelOf(labels);
  return el;
}

/** A code's label (``expertise.opt.<code>``), else the code in words. */
export function codeNode(tag, prefix, code, attrs = {}) {
  const key = `${prefix}.${code}`;
  const known = t(key) !== key;
  return h(tag, { ...attrs, "data-i18n": known ? key : null }, known ? t(key) : String(code).replace(/_/g, " "));
}

export function dateNode(tag, unix, attrs = {}) {
  return h(tag, { ...attrs, dataset: { ...(attrs.dataset || {}), dt: String(unix) } }, formatDateTime(unix));
}

/** After a language switch: data-i18n texts, questionnaire labels and dates under ``root``. */
export function relabel(root) {
  translate(root);
  for (const el of root.querySelectorAll("[data-label-en]")) {
    el.textContent = (language() === "fr" ? el.dataset.labelFr : el.dataset.labelEn) || el.dataset.labelEn;
  }
  for (const el of root.querySelectorAll("[data-dt]")) el.textContent = formatDateTime(Number(el.dataset.dt));
}

/** "Due 12 Mar 2025, 14:05" with "Overdue" / "Flagged" marks in words (not colour alone). */
export function dueNode(row, now) {
  const overdue = OPEN_STATES.has(row.state) && row.due_at < now;
  return h("span", { class: "due" }, dateNode("span", row.due_at),
    overdue ? h("span", { class: "tag overdue", "data-i18n": "expertise.overdue" }, t("expertise.overdue")) : null,
    row.flagged_at && OPEN_STATES.has(row.state)
      ? h("span", { class: "tag flagged", "data-i18n": "expertise.flagged" }, t("expertise.flagged")) : null);
}

export function stateNode(state) {
  return codeNode("span", "expertise.state", state, { class: "state-badge", dataset: { state } });
}

// -- the case's parts ---------------------------------------------------------------------
function answerValue(field, value) {
  if (field.type === "boolean") {
    const key = value ? "expertise.yes" : "expertise.no";
    return h("dd", { "data-i18n": key }, t(key));
  }
  if (field.type === "choice") return h("dd", {}, codeNode("span", "expertise.opt", value));
  if (field.type === "multi") {
    const parts = [];
    (value || []).forEach((code, i) => {
      if (i) parts.push(", ");
      parts.push(codeNode("span", "expertise.opt", code));
    });
    return h("dd", {}, ...parts);
  }
  return h("dd", {}, String(value));
}

/** The questionnaire's answers, labelled as the questionnaire says (its own order). */
export function answersNode(q, answers) {
  const fields = q ? q.fields.filter((f) => f.type !== "photos")
    : Object.keys(answers || {}).map((id) => ({ id, type: typeof answers[id] === "boolean" ? "boolean" : "text",
      label: { en: id, fr: id } }));
  const rows = fields.filter((f) => answers && answers[f.id] !== undefined && answers[f.id] !== null)
    .map((f) => h("div", { dataset: { field: f.id } }, bindLabel(h("dt"), f.label), answerValue(f, answers[f.id])));
  return h("dl", { class: "summary answers", id: "case-answers" }, ...rows);
}

function attachmentCaption(att) {
  const parts = [att.kind === "still" ? codeNode("span", "expertise.att", "still") : codeNode("span", "expertise.att", "upload")];
  if (att.view) parts.push(" · ", codeNode("span", "expertise.view", att.view));
  if (att.width && att.height) parts.push(` · ${att.width}×${att.height}`);
  return parts;
}

/**
 * A case's attachments side by side at full resolution: each fits its frame, a click (or
 * Enter) shows it 1:1 with scrolling, again: fit. Images are fetched with the token and
 * freed with the case (release()).
 */
export class AttachmentsPanel {
  constructor(api, caseData) {
    this.api = api;
    this.case = caseData;
    this.urls = [];
    this.released = false;
  }

  render() {
    const list = this.case.attachments || [];
    const figures = list.map((att) => this.figure(att));
    return h("section", { class: "case-part", "aria-labelledby": "attachments-title", id: "case-attachments" },
      h("h3", { id: "attachments-title" }, h("span", { "data-i18n": "expertise.attachments" }, t("expertise.attachments")),
        ` (${list.length})`),
      list.length ? h("p", { class: "muted hint", "data-i18n": "expertise.zoom_hint" }, t("expertise.zoom_hint")) : null,
      list.length ? h("div", { class: "attachments" }, ...figures)
        : h("p", { class: "muted", "data-i18n": "expertise.no_attachments" }, t("expertise.no_attachments")));
  }

  figure(att) {
    const caption = h("figcaption", {}, ...attachmentCaption(att));
    const img = h("img", { alt: "" });
    const zoom = h("button", { type: "button", class: "att-zoom", "aria-pressed": "false",
      "data-i18n-aria-label": "expertise.zoom_actual", "aria-label": t("expertise.zoom_actual") }, img);
    const frame = h("div", { class: "att-frame", dataset: { zoom: "fit" } }, zoom);
    zoom.addEventListener("click", () => {
      const actual = frame.dataset.zoom !== "actual";
      frame.dataset.zoom = actual ? "actual" : "fit";
      zoom.setAttribute("aria-pressed", String(actual));
      zoom.dataset.i18nAriaLabel = actual ? "expertise.zoom_fit" : "expertise.zoom_actual";
      zoom.setAttribute("aria-label", t(zoom.dataset.i18nAriaLabel));
    });
    const figure = h("figure", { class: "attachment", dataset: { id: att.id, kind: att.kind, view: att.view || "",
      width: String(att.width || ""), height: String(att.height || "") } }, frame, caption);
    this.api.imageUrl(this.api.attachmentPath(this.case.id, att.id)).then((url) => {
      if (this.released) {
        URL.revokeObjectURL(url);
        return;
      }
      this.urls.push(url);
      img.src = url;
      img.alt = caption.textContent;
      figure.dataset.loaded = "true";
    }).catch(() => {
      figure.dataset.loaded = "failed";
      frame.append(h("p", { class: "error", "data-i18n": "expertise.att_failed" }, t("expertise.att_failed")));
    });
    return figure;
  }

  release() {
    this.released = true;
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}

function authorLabel(message, names) {
  const name = names.person(message.author);
  const roleKey = message.role === "expert" ? "expertise.role.expert" : "expertise.role.requester";
  return name ? `${name} (${t(roleKey)})` : t(roleKey);
}

export function threadNode(c, names) {
  const items = (c.messages || []).map((m) => h("li", { dataset: { kind: m.kind, role: m.role, id: m.id } },
    h("p", { class: "thread-meta" }, h("strong", {}, authorLabel(m, names)), " · ",
      codeNode("span", "expertise.kind", m.kind), " · ", dateNode("span", m.at)),
    h("p", { class: "thread-text" }, m.text)));
  return h("section", { class: "case-part", "aria-labelledby": "thread-title", id: "case-thread" },
    h("h3", { id: "thread-title", "data-i18n": "expertise.thread" }, t("expertise.thread")),
    items.length ? h("ol", { class: "thread" }, ...items)
      : h("p", { class: "muted", "data-i18n": "expertise.thread_empty" }, t("expertise.thread_empty")));
}

export function answerNode(answer, names) {
  const row = (key, value) => h("div", {}, h("dt", { "data-i18n": key }, t(key)), h("dd", {}, value));
  const by = names.person(answer.by);
  return h("section", { class: "case-part answer-view", "aria-labelledby": "answer-title", id: "answer-view",
    dataset: { recommendation: answer.recommendation } },
  h("h3", { id: "answer-title", "data-i18n": "expertise.answer" }, t("expertise.answer")),
  h("dl", { class: "summary" },
    row("expertise.recommendation", codeNode("strong", "expertise.rec", answer.recommendation, { class: "rec" })),
    row("expertise.opinion", h("span", { class: "pre" }, answer.opinion)),
    row("expertise.diagnosis", answer.diagnosis_code ? `${answer.diagnosis} (${answer.diagnosis_code})` : answer.diagnosis),
    answer.follow_up ? row("expertise.follow_up", h("span", { class: "pre" }, answer.follow_up)) : null,
    row("expertise.answered_by", h("span", {}, by ? `${by}, ` : "", dateNode("span", answer.at)))));
}

/** A confirmation before an act that cannot be undone; the focus on "No" (the safe choice). */
export function confirmAct(textKey, yesKey) {
  return new Promise((resolve) => {
    const no = h("button", { type: "button", id: "confirm-no", "data-i18n": "expertise.confirm_no" }, t("expertise.confirm_no"));
    const yes = h("button", { type: "button", class: "primary", id: "confirm-yes", "data-i18n": yesKey }, t(yesKey));
    const text = h("p", { id: "confirm-text", "data-i18n": textKey }, t(textKey));
    const dialog = h("dialog", { class: "confirm", id: "confirm-dialog", "aria-describedby": "confirm-text",
      "aria-label": t(yesKey) }, text, h("div", { class: "actions" }, no, yes));
    const done = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    no.addEventListener("click", () => done(false));
    yes.addEventListener("click", () => done(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/** A photo control: which view it shows and the file (JPEG or PNG). */
export function photoInput(id, { required = false } = {}) {
  // No aria-required: a file input has no role that takes it (axe: aria-allowed-attr); `required` says it.
  return h("input", { type: "file", id, accept: ACCEPTED_PHOTOS, required, dataset: { required: String(required) } });
}

/**
 * The case on screen, for whichever party the caller is (``case.party``): summary, answers,
 * attachments, thread with its form, the answer; ``extras(case, view)`` adds what that party
 * may do. ``refresh()`` reads it again (an ``expertise.updated`` about it) and keeps what was
 * being typed, and the focus.
 */
export class CaseView extends EventTarget {
  constructor(container, { api, names, questionnaires, extras, serverNow }) {
    super();
    this.container = container;
    this.api = api;
    this.names = names;
    this.questionnaires = questionnaires;
    this.extras = extras;
    this.serverNow = serverNow;
    this.case = null;
    this.panel = null;
    this.loading = null;
  }

  get id() {
    return this.case?.id || null;
  }

  async show(id, { notice = null } = {}) {
    let c;
    try {
      c = await this.api.get(id);
    } catch (err) {
      this.container.replaceChildren(h("section", { class: "card" },
        h("p", { class: "error", role: "alert" }, errorText(err, "expertise.error.load"))));
      return;
    }
    await this.render(c, { notice, fresh: true });
  }

  async refresh() {
    if (!this.case) return;
    let c;
    try {
      c = await this.api.get(this.case.id);
    } catch (err) {
      if (err.status === 404) this.status("expertise.gone");
      return;
    }
    await this.render(c);
  }

  /** The typed values and the focus, by element id, to be put back after a render. */
  _typed() {
    const out = { values: new Map(), focus: document.activeElement?.id || null };
    for (const el of this.container.querySelectorAll("input[id], textarea[id], select[id]")) {
      if (el.type === "file") continue;
      out.values.set(el.id, el.type === "checkbox" || el.type === "radio" ? el.checked : el.value);
    }
    return out;
  }

  _restore(typed) {
    for (const [id, value] of typed.values) {
      const el = this.container.querySelector(`#${CSS.escape(id)}`);
      if (!el) continue;
      if (el.type === "checkbox" || el.type === "radio") el.checked = value;
      else el.value = value;
    }
    if (typed.focus) this.container.querySelector(`#${CSS.escape(typed.focus)}`)?.focus();
  }

  async render(c, { notice = null, fresh = false } = {}) {
    const q = await this.questionnaires.of(c.questionnaire);
    // Read what is typed only now: from here to the new DOM nothing awaits, so no keystroke is lost.
    const typed = fresh ? null : this._typed();
    const sameAttachments = this.panel && this.case?.id === c.id
      && JSON.stringify((this.case.attachments || []).map((a) => a.id)) === JSON.stringify((c.attachments || []).map((a) => a.id));
    this.case = c;
    const names = this.names;
    const row = (key, value) => h("div", {}, h("dt", { "data-i18n": key }, t(key)), h("dd", {}, value));
    const holder = c.expert ? (names.person(c.expert) || t("expertise.role.expert"))
      : c.named_expert && !c.pooled ? t("expertise.named_to", { name: names.person(c.named_expert) || t("expertise.role.expert") })
        : t("expertise.in_pool");
    const summary = h("dl", { class: "summary case-summary" },
      row("expertise.col.state", stateNode(c.state)),
      row("expertise.col.specialty", specialtyLabel(c.specialty)),
      row("expertise.urgency", codeNode("span", "expertise.urgency", c.urgency)),
      row("expertise.col.due", dueNode(c, this.serverNow())),
      row("expertise.col.site", names.site(c.site)),
      row("expertise.requested_by", names.person(c.requested_by) || t("expertise.role.requester")),
      row("expertise.col.holder", holder),
      row("expertise.consent", h("span", { "data-i18n": c.consent ? "expertise.yes" : "expertise.no" },
        t(c.consent ? "expertise.yes" : "expertise.no"))));
    const title = h("h2", { id: "case-title", tabindex: "-1" },
      h("span", { "data-i18n": "expertise.case" }, t("expertise.case")), ` · ${c.patient_ref}`);
    const status = h("p", { id: "case-status", class: "note", role: "status", hidden: true });
    const parts = [title, summary];
    if (notice) {
      parts.push(h("div", { class: "error-box", role: "alert", id: "case-notice" }, ...[].concat(notice)));
    }
    if (c.state === "escalated") {
      parts.push(h("p", { class: "note", id: "escalated-note" }, t("expertise.escalated_note",
        { specialty: specialtyLabel(c.escalated_to || c.specialty) })));
    }
    if (c.answer) parts.push(answerNode(c.answer, names));
    parts.push(h("section", { class: "case-part", "aria-labelledby": "answers-title" },
      q ? bindLabel(h("h3", { id: "answers-title" }), q.title)
        : h("h3", { id: "answers-title", "data-i18n": "expertise.questionnaire" }, t("expertise.questionnaire")),
      answersNode(q, c.answers)));
    if (!sameAttachments) {
      this.panel?.release();
      this.panel = new AttachmentsPanel(this.api, c);
      this.attachmentsNode = this.panel.render();
    }
    parts.push(this.attachmentsNode);
    parts.push(threadNode(c, names));
    const form = this.threadForm(c);
    if (form) parts.push(form);
    parts.push(...(this.extras(c, this, q) || []));
    parts.push(status);
    this.container.replaceChildren(h("section", { class: "card case", id: "case", "aria-labelledby": "case-title",
      dataset: { id: c.id, state: c.state, party: c.party } }, ...parts));
    if (typed) this._restore(typed);
    else title.focus();
    this.dispatchEvent(new CustomEvent("render", { detail: c }));
  }

  /** The thread's form: the expert asks; the requester answers a question, or adds a note. */
  threadForm(c) {
    if (!OPEN_STATES.has(c.state) || !["expert", "requester"].includes(c.party)) return null;
    const expert = c.party === "expert";
    const labelKey = expert ? "expertise.ask_label" : c.state === "question" ? "expertise.reply_label" : "expertise.note_label";
    const buttonKey = expert ? "expertise.ask" : c.state === "question" ? "expertise.reply" : "expertise.note";
    const text = h("textarea", { id: "thread-text", rows: 3, maxlength: 4000, required: true, "aria-required": "true" });
    const send = h("button", { type: "submit", id: "thread-send", "data-i18n": buttonKey }, t(buttonKey));
    const form = h("form", { id: "thread-form", class: "case-part", novalidate: true, dataset: { kind: expert ? "ask" : c.state === "question" ? "reply" : "note" } },
      h("div", { class: "field" }, h("label", { for: "thread-text", class: "required", "data-i18n": labelKey }, t(labelKey)), text),
      send);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!text.value.trim()) {
        form.reportValidity();
        return;
      }
      send.disabled = true;
      try {
        const updated = await this.api.message(c.id, text.value.trim());
        text.value = "";
        await this.render(updated);
        this.status("expertise.sent_message");
        this.changed();
      } catch (err) {
        send.disabled = false;
        this.fail(err);
      }
    });
    return form;
  }

  /** Run an act (``POST .../{action}``), show the case as it is after it, tell the lists. */
  async act(action, body = {}, { doneKey = "expertise.done", failKey = "expertise.error.refused", conflictKey = null,
    button = null } = {}) {
    if (button) button.disabled = true;
    try {
      const updated = await this.api.act(this.case.id, action, body);
      await this.render(updated, { fresh: false });
      this.status(doneKey);
      this.changed();
      return updated;
    } catch (err) {
      if (button) button.disabled = false;
      if (conflictKey && err.status === 409) this.fail({ reason: t(conflictKey) }, "expertise.error.plain");
      else this.fail(err, failKey);
      return null;
    }
  }

  changed() {
    this.dispatchEvent(new CustomEvent("changed", { detail: this.case }));
  }

  status(key, params = {}) {
    const el = this.container.querySelector("#case-status");
    if (!el) return;
    el.classList.remove("error");
    el.setAttribute("role", "status");
    setText(el, key, params);
    el.hidden = false;
    announce(el.textContent);
  }

  fail(err, key = "expertise.error.refused") {
    const el = this.container.querySelector("#case-status");
    if (!el) return;
    el.classList.add("error");
    el.setAttribute("role", "alert");
    el.textContent = errorText(err, key);
    delete el.dataset.i18n;
    el.hidden = false;
  }

  relabel() {
    relabel(this.container);
  }

  close() {
    this.panel?.release();
    this.panel = null;
    this.case = null;
  }
}
