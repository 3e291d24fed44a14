// The consultation report, written by the physician. As they type, a draft is
// kept on the server (PUT /api/consultations/{id}/report/draft, debounced; the
// socket's report.draft when REST is out of reach): a reload, or the next patient
// ringing, loses nothing. "Save the report" stores the final one (PUT .../report,
// else report.save) and reads it back (GET, else report.get) to show what is
// stored. The report carries the vital signs measured in the consultation and
// the stills attached to it, and lists them.
import { h } from "./dom.js";
import { t, setText, onLanguageChange, translate, formatNumber } from "./i18n.js";
import { formatMeasurement, formatHeartRate } from "./devices.js";
import { stillCaption } from "./stills.js";

const FIELDS = ["reason", "findings", "conclusion", "prescriptions", "follow_up"];
const DRAFT_DELAY_MS = 1000;
const DRAFT_RETRY_MS = 5000;

/** Vital signs as a line of text for the report: "Heart rate 72 /min", "Blood pressure 126/74 mmHg"... */
export function vitalsLines(vitals) {
  const lines = [];
  const v = vitals || {};
  const value = (q) => (typeof v[q] === "number" ? { value: v[q], unit: "" } : v[q]);
  const pulse = value("pulse_rate") || value("heart_rate");
  if (pulse) lines.push(["heart_rate", `${formatHeartRate(pulse.value)}\u00a0/min`]);
  const sys = value("systolic");
  const dia = value("diastolic");
  if (sys && dia) {
    const unit = sys.unit === "kPa" ? "kPa" : "mmHg";
    lines.push(["blood_pressure", `${formatNumber(Math.round(sys.value))}/${formatNumber(Math.round(dia.value))}\u00a0${unit}`]);
  }
  for (const q of ["spo2", "body_temperature"]) {
    const m = value(q);
    if (m) lines.push([q, formatMeasurement(m.value, m.unit || (q === "spo2" ? "%" : "Cel"), q)]);
  }
  return lines;
}

export class ReportForm {
  constructor(signalling, token, consultation, { stills } = {}) {
    this.signalling = signalling;
    this.initialToken = token;
    this.consultation = consultation;
    this.stills = stills || null; // the consultation's StillStore
    this.vitals = {}; // quantity -> {value, unit, measured_at}
    this.detached = new Set(); // still ids the physician took out of the report
    this.status = "empty";
    this.dirty = false; // text typed since the last draft or final the server confirmed
    this.draftTimer = null;
    this.draftChain = Promise.resolve();
    this.closed = false;
    this.releases = [];
  }

  /** The access token now (auth.renew replaces it on the socket). */
  get token() {
    return this.signalling.token || this.initialToken;
  }

  get base() {
    return `/api/consultations/${encodeURIComponent(this.consultation.id)}/report`;
  }

  mount(container) {
    const field = (name, rows) => {
      const id = `report-${name.replace("_", "-")}`;
      return h("div", { class: "field" },
        h("label", { for: id, "data-i18n": `report.${name}` }, t(`report.${name}`)),
        h("textarea", { id, name, rows, maxlength: 8000 }),
        name === "prescriptions" ? h("p", { class: "hint muted", "data-i18n": "report.prescriptions_hint" },
          t("report.prescriptions_hint")) : null);
    };
    this.statusLine = h("p", { class: "muted", id: "report-status", role: "status" });
    this.patientLine = h("p", { class: "report-patient", id: "report-patient" });
    this.vitalsList = h("ul", { class: "report-vitals", id: "report-vitals" });
    this.vitalsEmpty = h("p", { class: "muted", "data-i18n": "report.vitals_none" }, t("report.vitals_none"));
    this.stillsList = h("ul", { class: "report-stills", id: "report-stills" });
    this.stillsEmpty = h("p", { class: "muted", "data-i18n": "report.stills_none" }, t("report.stills_none"));
    this.form = h("form", { id: "report-form", class: "card report", "aria-labelledby": "report-title",
      dataset: { status: "empty" } },
    h("h2", { id: "report-title", "data-i18n": "report.title" }, t("report.title")),
    this.patientLine,
    field("reason", 2), field("findings", 3), field("conclusion", 2), field("prescriptions", 2),
    field("follow_up", 1),
    h("fieldset", { class: "report-attached" },
      h("legend", { "data-i18n": "report.vitals" }, t("report.vitals")), this.vitalsEmpty, this.vitalsList),
    h("fieldset", { class: "report-attached" },
      h("legend", { "data-i18n": "report.stills" }, t("report.stills")), this.stillsEmpty, this.stillsList),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "report-save", "data-i18n": "report.save" }, t("report.save")),
      this.statusLine));
    this.form.elements.reason.value = this.consultation.reason || "";
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    this.form.addEventListener("input", (event) => {
      if (event.target.closest(".report-attached")) return;
      this.changed();
    });
    container.replaceChildren(this.form);
    this.renderPatient();
    this.renderVitals();
    this.renderStills();
    if (this.stills) {
      const onStills = () => this.renderStills();
      this.stills.addEventListener("change", onStills);
      this.releases.push(() => this.stills.removeEventListener("change", onStills));
    }
    this.releases.push(onLanguageChange(() => {
      translate(this.form);
      this.renderPatient();
      this.renderVitals();
      this.renderStills();
    }));
    this.loaded = this.load();
    return this;
  }

  renderPatient() {
    const c = this.consultation;
    const parts = [];
    if (c.patient_ref) parts.push(t("call.patient", { ref: c.patient_ref }));
    if (c.site_name || c.site) parts.push(c.site_name || c.site);
    this.patientLine.textContent = parts.join(" · ");
    this.patientLine.hidden = parts.length === 0;
  }

  // -- vitals and stills ---------------------------------------------------------------------

  /** The vital signs measured now (the devices' latest): they go with the report. */
  setVitals(vitals) {
    this.vitals = { ...this.vitals, ...vitals };
    this.renderVitals();
  }

  renderVitals() {
    const lines = vitalsLines(this.vitals);
    this.vitalsList.replaceChildren(...lines.map(([name, text]) => h("li", { dataset: { name } },
      h("span", {}, t(`vitals.${name}`)), " ", h("strong", {}, text))));
    this.vitalsEmpty.hidden = lines.length > 0;
  }

  attachedStills() {
    return (this.stills?.list() || []).filter((s) => !this.detached.has(s.still_id) && !s.missing);
  }

  renderStills() {
    const list = this.stills?.list() || [];
    this.stillsList.replaceChildren(...list.map((still) => {
      const id = `report-still-${still.still_id}`;
      const box = h("input", { type: "checkbox", id, checked: !this.detached.has(still.still_id),
        disabled: still.missing, dataset: { stillId: still.still_id } });
      box.addEventListener("change", () => {
        if (box.checked) this.detached.delete(still.still_id);
        else this.detached.add(still.still_id);
        this.changed();
      });
      const caption = stillCaption(still);
      const text = h("span", {});
      setText(text, caption.key, caption.params);
      return h("li", { dataset: { stillId: still.still_id } }, h("label", { for: id, class: "check" }, box, text));
    }));
    this.stillsEmpty.hidden = list.length > 0;
  }

  // -- the form ------------------------------------------------------------------------------

  value() {
    const els = this.form.elements;
    const report = {
      reason: els.reason.value.trim(),
      findings: els.findings.value.trim(),
      conclusion: els.conclusion.value.trim(),
      prescriptions: els.prescriptions.value.split("\n").map((s) => s.trim()).filter(Boolean),
      follow_up: els.follow_up.value.trim(),
    };
    if (Object.keys(this.vitals).length) report.vitals = this.vitals;
    if (this.stills) report.stills = this.attachedStills().map((s) => s.still_id);
    return report;
  }

  fill(report) {
    for (const name of FIELDS) {
      const value = report?.[name];
      if (value === undefined || value === null) continue;
      this.form.elements[name].value = Array.isArray(value) ? value.join("\n") : String(value);
    }
    if (report?.vitals && typeof report.vitals === "object") {
      // Stored values first; live ones measured after the load replace them.
      this.vitals = { ...report.vitals, ...this.vitals };
      this.renderVitals();
    }
    if (Array.isArray(report?.stills)) {
      const kept = new Set(report.stills.map((s) => String(typeof s === "object" ? s.still_id : s)));
      this.stills?.merge(report.stills.filter((s) => typeof s === "object"));
      // Stills the stored report left out stay out; those taken since are in.
      for (const still of this.stills?.list() || []) {
        if (!kept.has(still.still_id) && (still.taken_at || 0) <= (this.savedAt || 0)) this.detached.add(still.still_id);
      }
      this.renderStills();
    }
  }

  /** Whether text typed here is not on the server yet (a reload would lose it). */
  unsaved() {
    return this.dirty;
  }

  changed() {
    this.dirty = true;
    this.form.dataset.dirty = "true";
    clearTimeout(this.draftTimer);
    this.draftTimer = setTimeout(() => this.saveDraft(), DRAFT_DELAY_MS);
  }

  // -- the server -----------------------------------------------------------------------------

  async _fetch(url, options = {}) {
    return fetch(url, { ...options, headers: { Authorization: `Bearer ${this.token}`,
      ...(options.body ? { "Content-Type": "application/json" } : {}), ...(options.headers || {}) } });
  }

  /** The stored report: {status, report, saved_at, ...} (REST first, the socket otherwise). */
  async fetchStored() {
    try {
      const response = await this._fetch(this.base, { cache: "no-store" });
      if (response.ok) {
        const body = await response.json();
        if (body && typeof body === "object" && "report" in body) {
          return { status: body.status || (body.report ? "final" : "empty"), ...body };
        }
        return { status: "final", report: body, saved_at: null };
      }
      if (response.status === 404) return { status: "empty", report: null, saved_at: null };
    } catch (_) { /* fall back to the socket */ }
    const reply = await this.signalling.request("report.get", { consultation_id: this.consultation.id });
    return { status: reply.status || (reply.report ? "final" : "empty"), ...reply };
  }

  async _put(url, report, socketType) {
    let response;
    try {
      response = await this._fetch(url, { method: "PUT", body: JSON.stringify(report) });
    } catch (_) {
      return this.signalling.request(socketType, { consultation_id: this.consultation.id, report });
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.reason || `HTTP ${response.status}`);
    }
    return response.json();
  }

  put(report) {
    return this._put(this.base, report, "report.save");
  }

  /** Keep what is typed as the draft (serialized: drafts arrive in the order typed). */
  saveDraft() {
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    if (!this.dirty) return this.draftChain;
    const report = this.value();
    this.draftChain = this.draftChain.then(async () => {
      try {
        const reply = await this._put(`${this.base}/draft`, report, "report.draft");
        // Typed meanwhile: still dirty, the next draft follows.
        if (JSON.stringify(this.value()) === JSON.stringify(report)) {
          this.dirty = false;
          delete this.form.dataset.dirty;
        }
        this.status = this.status === "final" && !reply.changed ? "final" : "draft";
        this.form.dataset.status = this.status;
        this.form.dataset.draftSaved = String(reply.saved_at || "");
        this.showStatus("report.draft_saved", { time: { time: reply.saved_at || Date.now() / 1000 } });
      } catch (error) {
        this.showStatus("report.draft_failed", { message: error.message }, true);
        if (!this.closed) this.draftTimer = setTimeout(() => this.saveDraft(), DRAFT_RETRY_MS);
      }
    });
    return this.draftChain;
  }

  /** The page is going away: send what is not saved yet, even as the page unloads. */
  flushOnUnload() {
    if (!this.dirty) return;
    try {
      fetch(`${this.base}/draft`, { method: "PUT", keepalive: true, body: JSON.stringify(this.value()),
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" } });
    } catch (_) { /* the beforeunload warning said so */ }
  }

  async load() {
    try {
      const stored = await this.fetchStored();
      this.status = stored.status || "empty";
      this.form.dataset.status = this.status;
      this.savedAt = stored.saved_at || null;
      if (stored.patient_ref || stored.site_name) {
        this.consultation = { ...this.consultation, patient_ref: stored.patient_ref || this.consultation.patient_ref,
          site_name: stored.site_name || this.consultation.site_name };
        this.renderPatient();
      }
      // Typed before the load answered: that text wins (it is newer).
      if (stored.report && !this.dirty) this.fill(stored.report);
      if (this.status === "final") this.showSaved(stored.saved_at);
      else if (this.status === "draft") {
        this.showStatus("report.draft_restored", { time: { time: stored.saved_at || Date.now() / 1000 } });
      }
    } catch (_) { /* none yet */ }
  }

  showStatus(key, params = {}, isError = false) {
    setText(this.statusLine, key, params);
    this.statusLine.classList.toggle("error", isError);
  }

  showSaved(savedAt) {
    this.form.dataset.saved = savedAt ? String(savedAt) : "yes";
    this.showStatus("report.saved", { time: savedAt ? { time: savedAt } : "" });
  }

  async save() {
    const button = this.form.querySelector("#report-save");
    button.disabled = true;
    clearTimeout(this.draftTimer);
    this.showStatus("report.saving");
    try {
      await this.draftChain;
      const report = this.value();
      await this.put(report);
      if (JSON.stringify(this.value()) === JSON.stringify(report)) {
        this.dirty = false;
        delete this.form.dataset.dirty;
      }
      // Read back what the server stored, and show that.
      const stored = await this.fetchStored();
      this.status = stored.status || "final";
      this.form.dataset.status = this.status;
      this.savedAt = stored.saved_at || null;
      if (!this.dirty) this.fill(stored.report);
      this.showSaved(stored.saved_at);
    } catch (err) {
      this.showStatus("report.failed", { message: err.message }, true);
    } finally {
      button.disabled = false;
    }
  }

  /** This report is no longer on screen (the next consultation's replaces it): its draft goes now. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    for (const release of this.releases.splice(0)) release();
    if (this.dirty) await this.saveDraft().catch(() => {});
    clearTimeout(this.draftTimer);
  }
}
