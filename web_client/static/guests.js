// The guests of a consultation (issue 14): an interpreter, a second specialist or a
// relative, invited by link, admitted by the physician once the nurse confirmed the
// patient's consent.
//
// `Invitations`: the consultation's invitations as the server has them (GET
// .../invitations, then every `invitation.updated`; read again after a socket resume)
// and the REST calls on them. `GuestPanel`: the list in the call's side card, with
// the physician's actions (invite, copy the link, admit / refuse / revoke / remove) or
// the nurse's (the patient consents, decline), and, while recording, whether the
// patient's consent covers each guest present.
import { h, announce } from "./dom.js";
import { t, setText, onLanguageChange, translate, formatTime } from "./i18n.js";
import { GUEST_ROLES } from "./vocabulary.js";

export const INVITE_ROLES = ["interpreter", "specialist", "guest"].filter((r) => GUEST_ROLES.includes(r));
const TTLS_S = [900, 3600, 4 * 3600, 86400];
const DEFAULT_TTL_S = 3600;
// Where an invitation is in its life: a reply read after an event must not take it back.
const RANK = { pending: 0, waiting: 1, admitted: 2, refused: 3, revoked: 3, removed: 3, expired: 3 };
const OPEN = new Set(["pending", "waiting", "admitted"]);

export class InvitationError extends Error {
  constructor(status, code, reason) {
    super(reason || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "";
  }
}

export class Invitations extends EventTarget {
  constructor(signalling, consultationId, tokenNow) {
    super();
    this.signalling = signalling;
    this.consultationId = consultationId;
    this.tokenNow = tokenNow;
    this.items = new Map(); // id -> invitation
    this.onUpdated = (event) => {
      const m = event.detail;
      if (m.consultation_id === this.consultationId && m.invitation) this.merge(m.invitation);
    };
    this.onReady = (event) => {
      if (event.detail.resumed) this.load(); // events may have been missed while the socket was down
    };
    signalling.addEventListener("invitation.updated", this.onUpdated);
    signalling.addEventListener("ready", this.onReady);
  }

  get base() {
    return `/api/consultations/${encodeURIComponent(this.consultationId)}`;
  }

  async request(method, path, body) {
    const response = await fetch(`${this.base}${path}`, {
      method, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
      headers: { Authorization: `Bearer ${this.tokenNow()}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    });
    const reply = await response.json().catch(() => ({}));
    if (!response.ok) throw new InvitationError(response.status, reply.error, reply.reason);
    if (reply.invitation) this.merge(reply.invitation);
    return reply;
  }

  async load() {
    try {
      const reply = await this.request("GET", "/invitations");
      for (const invitation of reply.invitations || []) this.merge(invitation);
    } catch (_) { /* the events still come */ }
  }

  /** The server's word about one invitation; its state never goes back (a late reply after an event). */
  merge(invitation) {
    const before = this.items.get(invitation.id);
    const merged = { ...before, ...invitation };
    if (before && (RANK[invitation.state] ?? 0) < (RANK[before.state] ?? 0)) {
      merged.state = before.state;
      merged.admitted = before.admitted || invitation.admitted;
      merged.consent = before.consent || invitation.consent;
    }
    this.items.set(invitation.id, merged);
    this.dispatchEvent(new CustomEvent("change", { detail: merged }));
  }

  /** Open ones first (oldest first), then the ones that are over. */
  list() {
    const open = (i) => (OPEN.has(i.state) ? 0 : 1);
    return [...this.items.values()].sort((a, b) => open(a) - open(b) || (a.created_at || 0) - (b.created_at || 0));
  }

  create(fields) {
    return this.request("POST", "/invitations", fields);
  }

  admit(id) {
    return this.request("POST", `/invitations/${encodeURIComponent(id)}/admit`);
  }

  refuse(id) {
    return this.request("POST", `/invitations/${encodeURIComponent(id)}/refuse`);
  }

  consent(id) {
    return this.request("POST", `/invitations/${encodeURIComponent(id)}/consent`);
  }

  revoke(id) {
    return this.request("DELETE", `/invitations/${encodeURIComponent(id)}`);
  }

  remove(identity) {
    return this.request("DELETE", `/participants/${encodeURIComponent(identity)}`);
  }

  close() {
    this.signalling.removeEventListener("invitation.updated", this.onUpdated);
    this.signalling.removeEventListener("ready", this.onReady);
  }
}

/** An invitation's person in words: "Ana Silva (Interpreter)", or its label before it is claimed. */
export function guestName(invitation) {
  const role = t(`role.${invitation.role}`);
  const who = invitation.name || invitation.label || "";
  return who ? t("guests.person", { name: who, role }) : role;
}

/** What an invitation's row says of its state, for the physician or the nurse. */
function stateText(invitation, seat) {
  const s = invitation.state;
  if (s !== "waiting") return t(`guests.state.${s}`);
  if (invitation.admitted && !invitation.consent) return t("guests.waiting.consent");
  if (invitation.consent && !invitation.admitted) return t(seat === "physician" ? "guests.waiting.admit" : "guests.waiting.physician");
  return t("guests.waiting.both");
}

export class GuestPanel {
  /** ``seat``: "physician" (invites, admits, removes) or "nurse" (the patient's consent). */
  constructor(container, invitations, { seat, view }) {
    this.container = container;
    this.invitations = invitations;
    this.seat = seat;
    this.view = view;
    this.releases = [];
  }

  mount() {
    this.list = h("ul", { class: "guest-list", id: "guest-list", "aria-labelledby": "guests-title" });
    this.error = h("p", { class: "error", id: "guests-error", role: "alert", hidden: true });
    this.empty = h("p", { class: "muted", id: "guests-empty", "data-i18n": `guests.empty.${this.seat}` },
      t(`guests.empty.${this.seat}`));
    const head = h("div", { class: "guests-head" },
      h("h3", { id: "guests-title", "data-i18n": "guests.title" }, t("guests.title")));
    if (this.seat === "physician") {
      // "Invite…" sits with the call's actions: a call without guests keeps its height (the workstation).
      this.dialog = this._inviteDialog();
      this.inviteButton = h("button", { type: "button", id: "invite-open", "data-i18n": "guests.invite",
        onclick: () => this.openInvite() }, t("guests.invite"));
      const actions = this.view?.element?.querySelector(".call-actions");
      if (actions) actions.prepend(this.inviteButton);
      else head.append(this.inviteButton);
      this.releases.push(() => this.inviteButton.remove());
    }
    this.element = h("section", { class: "guests", id: "guests", dataset: { seat: this.seat } },
      head, this.empty, this.list, this.error, this.dialog);
    this.container.replaceChildren(this.element);
    const render = () => this.render();
    this.invitations.addEventListener("change", render);
    this.releases.push(() => this.invitations.removeEventListener("change", render));
    this.view?.addEventListener("recording", render);
    this.releases.push(() => this.view?.removeEventListener("recording", render));
    this.releases.push(onLanguageChange(() => {
      translate(this.element);
      this.render();
    }));
    this.render();
    return this;
  }

  render() {
    const items = this.invitations.list();
    this.view?.setGuests(items);
    this.empty.hidden = items.length > 0;
    // No guest: the list takes no room (the physician's "Invite…" is with the call's actions).
    this.element.dataset.count = String(items.length);
    this.list.replaceChildren(...items.map((invitation) => this._row(invitation)));
  }

  _row(invitation) {
    const name = guestName(invitation);
    const open = OPEN.has(invitation.state);
    const status = h("span", { class: "guest-state" }, stateText(invitation, this.seat));
    const details = [status];
    if (open && invitation.present) details.push(h("span", { class: "guest-present" }, t("guests.present")));
    if (open) {
      details.push(h("span", { class: "guest-consent", dataset: { consent: String(Boolean(invitation.consent)) } },
        t(invitation.consent ? "guests.consent.given" : "guests.consent.awaited")));
    }
    // Recording: whether the patient's consent covers each guest who is in the room.
    if (this.view?.recording && invitation.present && open) {
      details.push(h("span", { class: "guest-recording", dataset: { covered: String(Boolean(invitation.consent)) } },
        t(invitation.consent ? "guests.recording.covered" : "guests.recording.not_covered")));
    }
    const actions = h("span", { class: "guest-actions" }, ...this._actions(invitation, name));
    return h("li", { dataset: { id: invitation.id, state: invitation.state, role: invitation.role,
      identity: invitation.identity || "", present: String(Boolean(invitation.present)) } },
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("span", { class: "guest-main" }, h("span", { class: "name" }, name),
      invitation.name && invitation.label ? h("span", { class: "muted guest-label" }, ` · ${invitation.label}`) : null,
      h("span", { class: "guest-details muted" }, ...details)),
    actions);
  }

  _button(cls, key, name, action, danger = false) {
    return h("button", { type: "button", class: `small ${cls}${danger ? " danger" : ""}`,
      "aria-label": t(`${key}_label`, { name }), onclick: (event) => this._do(event.currentTarget, action) }, t(key));
  }

  _actions(invitation, name) {
    const s = invitation.state;
    const out = [];
    if (this.seat === "physician") {
      if (s === "waiting" && !invitation.admitted) {
        out.push(this._button("admit", "guests.admit", name, () => this.invitations.admit(invitation.id)));
        out.push(this._button("refuse", "guests.refuse", name, () => this.invitations.refuse(invitation.id)));
      }
      if (s === "pending" || s === "waiting") {
        out.push(this._button("revoke", "guests.revoke", name, () => this.invitations.revoke(invitation.id)));
      }
      if (s === "admitted" && invitation.identity) {
        out.push(this._button("remove", "guests.remove", name, () => this.invitations.remove(invitation.identity), true));
      }
    } else if (this.seat === "nurse" && s === "waiting" && !invitation.consent) {
      out.push(this._button("consent", "guests.consent", name, () => this.invitations.consent(invitation.id)));
      out.push(this._button("decline", "guests.decline", name, () => this.invitations.refuse(invitation.id)));
    }
    return out;
  }

  async _do(button, action) {
    button.disabled = true;
    this.error.hidden = true;
    try {
      await action();
    } catch (error) {
      setText(this.error, "guests.failed", { message: error.message });
      this.error.hidden = false;
      announce(this.error.textContent);
      button.disabled = false;
    }
  }

  // -- the physician's invitation dialog -------------------------------------------------------------

  _inviteDialog() {
    const field = (id, key, control) => h("div", { class: "field" },
      h("label", { for: id, "data-i18n": key }, t(key)), control);
    this.roleSelect = h("select", { id: "invite-role", name: "role" },
      ...INVITE_ROLES.map((role) => h("option", { value: role, "data-i18n": `role.${role}` }, t(`role.${role}`))));
    this.labelInput = h("input", { id: "invite-label", name: "label", maxlength: "120", autocomplete: "off",
      "data-i18n-placeholder": "guests.label_hint", placeholder: t("guests.label_hint") });
    this.ttlSelect = h("select", { id: "invite-ttl", name: "ttl_s" },
      ...TTLS_S.map((s) => h("option", { value: String(s), "data-i18n": `guests.ttl.${s}`, selected: s === DEFAULT_TTL_S },
        t(`guests.ttl.${s}`))));
    this.emailInput = h("input", { id: "invite-email", name: "email", type: "email", autocomplete: "off",
      spellcheck: "false" });
    this.inviteError = h("p", { class: "error", id: "invite-error", role: "alert", hidden: true });
    this.createButton = h("button", { type: "submit", class: "primary", id: "invite-create",
      "data-i18n": "guests.create" }, t("guests.create"));
    this.form = h("form", { id: "invite-form", novalidate: true },
      field("invite-role", "guests.role", this.roleSelect),
      field("invite-label", "guests.label", this.labelInput),
      field("invite-ttl", "guests.ttl", this.ttlSelect),
      h("div", { class: "field" }, h("label", { for: "invite-email" },
        h("span", { "data-i18n": "guests.email" }, t("guests.email")), " ",
        h("span", { class: "muted", "data-i18n": "guests.optional" }, t("guests.optional"))), this.emailInput),
      this.inviteError,
      h("div", { class: "actions" },
        h("button", { type: "button", id: "invite-cancel", "data-i18n": "action.cancel",
          onclick: () => this.dialog.close() }, t("action.cancel")),
        this.createButton));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    this.linkInput = h("input", { id: "invite-link", readonly: true, "aria-labelledby": "invite-link-title",
      spellcheck: "false" });
    this.copyStatus = h("span", { id: "invite-copied", role: "status", class: "muted" });
    this.resultText = h("p", { id: "invite-result-text" });
    this.result = h("div", { id: "invite-result", hidden: true },
      h("p", { id: "invite-link-title", class: "label", "data-i18n": "guests.link" }, t("guests.link")),
      h("div", { class: "copy-row" }, this.linkInput,
        h("button", { type: "button", id: "invite-copy", "data-i18n": "guests.copy", onclick: () => this.copy() },
          t("guests.copy"))),
      this.copyStatus, this.resultText,
      h("div", { class: "actions" },
        h("button", { type: "button", id: "invite-another", "data-i18n": "guests.another",
          onclick: () => this.openInvite() }, t("guests.another")),
        h("button", { type: "button", class: "primary", id: "invite-done", "data-i18n": "action.close",
          onclick: () => this.dialog.close() }, t("action.close"))));
    return h("dialog", { class: "confirm invite", id: "invite-dialog", "aria-labelledby": "invite-title" },
      h("h2", { id: "invite-title", "data-i18n": "guests.invite_title" }, t("guests.invite_title")),
      this.form, this.result);
  }

  openInvite() {
    this.form.reset();
    this.ttlSelect.value = String(DEFAULT_TTL_S);
    this.form.hidden = false;
    this.result.hidden = true;
    this.inviteError.hidden = true;
    if (!this.dialog.open) this.dialog.showModal();
    this.roleSelect.focus();
  }

  async create() {
    this.inviteError.hidden = true;
    const email = this.emailInput.value.trim();
    if (email && !this.emailInput.checkValidity()) {
      setText(this.inviteError, "guests.email_invalid");
      this.inviteError.hidden = false;
      this.emailInput.focus();
      return;
    }
    const fields = { role: this.roleSelect.value, label: this.labelInput.value.trim(),
      ttl_s: Number(this.ttlSelect.value) };
    if (email) fields.email = email;
    this.createButton.disabled = true;
    try {
      const reply = await this.invitations.create(fields);
      this.linkInput.value = reply.link;
      this.copyStatus.textContent = "";
      const until = formatTime(reply.expires_at, { seconds: false });
      setText(this.resultText, email ? "guests.created_mailed" : "guests.created",
        { email, until, who: guestName(reply.invitation || fields) });
      this.form.hidden = true;
      this.result.hidden = false;
      this.linkInput.focus();
      this.linkInput.select();
      announce(this.resultText.textContent);
    } catch (error) {
      setText(this.inviteError, "guests.failed", { message: error.message });
      this.inviteError.hidden = false;
    } finally {
      this.createButton.disabled = false;
    }
  }

  /** The link to the clipboard; where the browser refuses (no secure context), selected to copy by hand. */
  async copy() {
    try {
      await navigator.clipboard.writeText(this.linkInput.value);
      setText(this.copyStatus, "guests.copied");
    } catch (_) {
      this.linkInput.focus();
      this.linkInput.select();
      setText(this.copyStatus, "guests.copy_by_hand");
    }
  }

  close() {
    if (this.dialog?.open) this.dialog.close();
    for (const release of this.releases.splice(0)) release();
  }
}

/**
 * The guests' panel of a call (``view``, a CallView) for ``seat``: the invitations read now and
 * followed live; released with the call. Returns the Invitations.
 */
export function mountGuests(view, { signalling, token, seat }) {
  const invitations = new Invitations(signalling, view.consultation.id, () => signalling.token || token);
  const panel = new GuestPanel(view.guestSlot, invitations, { seat, view }).mount();
  view.addEventListener("closed", () => {
    panel.close();
    invitations.close();
  }, { once: true });
  window.teleconsult.invitations = invitations;
  window.teleconsult.guests = panel;
  invitations.load();
  return invitations;
}
