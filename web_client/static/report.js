// The consultation report: written by the physician, saved to the
// consultation (PUT /api/consultations/{id}/report; report.save on the socket
// when REST is out of reach) and read back from the server (GET, else
// report.get) to show what is stored.
import { h } from "./dom.js";
import { t } from "./i18n.js";

const FIELDS = ["reason", "findings", "conclusion", "prescriptions", "follow_up"];

export class ReportForm {
  constructor(signalling, token, consultation) {
    this.signalling = signalling;
    this.initialToken = token;
    this.consultation = consultation;
  }

  /** The access token now (auth.renew replaces it on the socket). */
  get token() {
    return this.signalling.token || this.initialToken;
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
    this.status = h("p", { class: "muted", id: "report-status", role: "status" });
    this.form = h("form", { id: "report-form", class: "card report", "aria-labelledby": "report-title" },
      h("h2", { id: "report-title", "data-i18n": "report.title" }, t("report.title")),
      field("reason", 2), field("findings", 4), field("conclusion", 3), field("prescriptions", 3),
      field("follow_up", 2),
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary", id: "report-save", "data-i18n": "report.save" }, t("report.save")),
        this.status));
    this.form.elements.reason.value = this.consultation.reason || "";
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    container.replaceChildren(this.form);
    this.load();
    return this;
  }

  value() {
    const els = this.form.elements;
    return {
      reason: els.reason.value.trim(),
      findings: els.findings.value.trim(),
      conclusion: els.conclusion.value.trim(),
      prescriptions: els.prescriptions.value.split("\n").map((s) => s.trim()).filter(Boolean),
      follow_up: els.follow_up.value.trim(),
    };
  }

  fill(report) {
    for (const name of FIELDS) {
      const value = report?.[name];
      if (value === undefined || value === null) continue;
      this.form.elements[name].value = Array.isArray(value) ? value.join("\n") : String(value);
    }
  }

  /** The stored report: {report, saved_at} (REST first, the socket otherwise). */
  async fetchStored() {
    const id = encodeURIComponent(this.consultation.id);
    try {
      const response = await fetch(`/api/consultations/${id}/report`, {
        headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" });
      if (response.ok) {
        const body = await response.json();
        if (body && typeof body === "object" && "report" in body) return body;
        return { report: body, saved_at: null };
      }
      if (response.status === 404) return { report: null, saved_at: null };
    } catch (_) { /* fall back to the socket */ }
    return this.signalling.request("report.get", { consultation_id: this.consultation.id });
  }

  async put(report) {
    const id = encodeURIComponent(this.consultation.id);
    let response;
    try {
      response = await fetch(`/api/consultations/${id}/report`, {
        method: "PUT", body: JSON.stringify(report),
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" } });
    } catch (_) {
      return this.signalling.request("report.save", { consultation_id: this.consultation.id, report });
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.reason || `HTTP ${response.status}`);
    }
    return response.json();
  }

  async load() {
    try {
      const stored = await this.fetchStored();
      if (stored.report) {
        this.fill(stored.report);
        this.showSaved(stored.saved_at);
      }
    } catch (_) { /* none yet */ }
  }

  showSaved(savedAt) {
    this.form.dataset.saved = savedAt ? String(savedAt) : "yes";
    const when = savedAt ? new Date(savedAt * 1000).toLocaleTimeString() : "";
    this.status.textContent = t("report.saved", { time: when });
    this.status.classList.remove("error");
  }

  async save() {
    const button = this.form.querySelector("#report-save");
    button.disabled = true;
    this.status.textContent = t("report.saving");
    try {
      await this.put(this.value());
      // Read back what the server stored, and show that.
      const stored = await this.fetchStored();
      this.fill(stored.report);
      this.showSaved(stored.saved_at);
    } catch (err) {
      this.status.textContent = t("report.failed", { message: err.message });
      this.status.classList.add("error");
    } finally {
      button.disabled = false;
    }
  }
}
