// Télé-expertise, the expert's side (a physician of the specialty): the inbox by due date
// (overdue and flagged cases marked in words), taking a case of the pool (409: a colleague
// took it first), declining it with a reason, asking in the thread, the structured answer
// (opinion, suspected diagnosis and optional code, recommendation from the server's
// vocabulary, follow-up) and escalation to a live consultation.
import { h } from "./dom.js";
import { t } from "./i18n.js";
import { RECOMMENDATIONS, OPEN_STATES, FINAL_STATES, codeNode, dueNode, stateNode, confirmAct } from "./expertise_case.js";

/** Open cases first, by due date; then the ones that are over, most recent first. */
export function inboxOrder(rows) {
  const open = rows.filter((r) => !FINAL_STATES.has(r.state) && r.state !== "answered");
  const rest = rows.filter((r) => !open.includes(r));
  open.sort((a, b) => a.due_at - b.due_at || a.id.localeCompare(b.id));
  rest.sort((a, b) => (b.updated_at || 0) - (a.updated_at || 0));
  return [...open, ...rest];
}

function holderNode(r, me) {
  if (r.expert === me) return h("span", { "data-i18n": "expertise.holder.mine" }, t("expertise.holder.mine"));
  if (r.in_pool) return h("span", { "data-i18n": "expertise.holder.pool" }, t("expertise.holder.pool"));
  if (r.named_expert === me && !r.expert) return h("span", { "data-i18n": "expertise.holder.named" }, t("expertise.holder.named"));
  return h("span", { class: "muted" }, "–");
}

export function renderInbox(rows, { body, empty, table, count, open, selected, now, names, me }) {
  const ordered = inboxOrder(rows);
  body.replaceChildren(...ordered.map((r) => {
    const overdue = OPEN_STATES.has(r.state) && r.due_at < now;
    return h("tr", { dataset: { id: r.id, state: r.state, flagged: String(Boolean(r.flagged_at)), overdue: String(overdue),
      urgency: r.urgency }, "aria-current": r.id === selected ? "true" : null },
    h("td", {}, FINAL_STATES.has(r.state) ? "–" : dueNode(r, now),
      r.urgency === "urgent" ? h("span", { class: "tag urgent", "data-i18n": "expertise.urgency.urgent" }, t("expertise.urgency.urgent")) : null),
    h("td", {}, h("button", { type: "button", class: "link open-case", onclick: () => open(r.id) }, r.patient_ref)),
    h("td", {}, names.site(r.site)),
    h("td", {}, stateNode(r.state)),
    h("td", {}, holderNode(r, me)));
  }));
  const waiting = ordered.filter((r) => OPEN_STATES.has(r.state)).length;
  empty.hidden = rows.length > 0;
  table.hidden = rows.length === 0;
  count.textContent = String(waiting);
}

function answerForm(c, view) {
  const req = { required: true, "aria-required": "true" };
  const field = (id, key, control, required = false) => h("div", { class: "field" },
    h("label", { for: id, class: required ? "required" : null, "data-i18n": key }, t(key)), control);
  // Each radio with its label, never split over two lines.
  const recommendations = RECOMMENDATIONS.map((r) => h("span", { class: "choice" },
    h("input", { type: "radio", name: "answer-recommendation", id: `answer-rec-${r}`, value: r, required: true }),
    codeNode("label", "expertise.rec", r, { for: `answer-rec-${r}` })));
  const send = h("button", { type: "submit", class: "primary", id: "answer-send", "data-i18n": "expertise.answer_send" }, t("expertise.answer_send"));
  const form = h("form", { id: "answer-form", class: "case-part", novalidate: true, "aria-labelledby": "answer-form-title" },
    h("h3", { id: "answer-form-title", "data-i18n": "expertise.answer_title" }, t("expertise.answer_title")),
    h("p", { class: "muted required-note" }, h("span", { class: "req", "aria-hidden": "true" }, "*"), " ",
      h("span", { "data-i18n": "form.required_note" }, t("form.required_note"))),
    field("answer-opinion", "expertise.opinion", h("textarea", { id: "answer-opinion", rows: 4, maxlength: 4000, ...req }), true),
    field("answer-diagnosis", "expertise.diagnosis", h("input", { id: "answer-diagnosis", maxlength: 4000, autocomplete: "off", ...req }), true),
    field("answer-code", "expertise.diagnosis_code", h("input", { id: "answer-code", maxlength: 128, autocomplete: "off",
      spellcheck: "false", "aria-describedby": "answer-code-hint" })),
    h("p", { class: "muted hint", id: "answer-code-hint", "data-i18n": "expertise.diagnosis_code_hint" }, t("expertise.diagnosis_code_hint")),
    h("fieldset", { class: "field" }, h("legend", { class: "required", "data-i18n": "expertise.recommendation" }, t("expertise.recommendation")),
      h("div", { class: "choices" }, ...recommendations)),
    field("answer-follow-up", "expertise.follow_up", h("textarea", { id: "answer-follow-up", rows: 2, maxlength: 4000 })),
    send);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (id) => form.querySelector(`#${id}`).value.trim();
    if (!form.reportValidity() || !value("answer-opinion") || !value("answer-diagnosis")) return;
    const body = { opinion: value("answer-opinion"), diagnosis: value("answer-diagnosis"),
      recommendation: form.querySelector("input[name=answer-recommendation]:checked").value,
      follow_up: value("answer-follow-up") };
    if (value("answer-code")) body.diagnosis_code = value("answer-code");
    await view.act("answer", body, { doneKey: "expertise.answered", button: send });
  });
  return form;
}

function declineNode(c, view) {
  const reason = h("textarea", { id: "decline-reason", rows: 2, maxlength: 4000, required: true, "aria-required": "true" });
  const button = h("button", { type: "submit", id: "case-decline", "data-i18n": "expertise.decline" }, t("expertise.decline"));
  const form = h("form", { id: "decline-form", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "decline-reason", class: "required", "data-i18n": "expertise.decline_reason" },
      t("expertise.decline_reason")), reason), button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!reason.value.trim()) {
      form.reportValidity();
      return;
    }
    await view.act("decline", { text: reason.value.trim() }, { doneKey: "expertise.declined", button });
  });
  return h("details", { class: "case-part decline" },
    h("summary", { "data-i18n": "expertise.decline_title" }, t("expertise.decline_title")), form);
}

export function expertExtras(c, view, _q, { onTaken }) {
  const out = [];
  if (c.party === "pool" && OPEN_STATES.has(c.state)) {
    const take = h("button", { type: "button", class: "primary", id: "case-take", "data-i18n": "expertise.take" }, t("expertise.take"));
    take.addEventListener("click", async () => {
      const taken = await view.act("take", {}, { doneKey: "expertise.taken", conflictKey: "expertise.error.taken",
        button: take });
      if (!taken) onTaken?.();
    });
    out.push(h("div", { class: "actions case-actions" }, take));
  }
  if (c.party === "expert" && OPEN_STATES.has(c.state)) {
    out.push(answerForm(c, view));
    out.push(declineNode(c, view));
  }
  if (c.party === "expert" && ["submitted", "question", "answered"].includes(c.state)) {
    const escalate = h("button", { type: "button", id: "case-escalate", "data-i18n": "expertise.escalate" }, t("expertise.escalate"));
    escalate.addEventListener("click", async () => {
      if (await confirmAct("expertise.escalate_confirm", "expertise.escalate")) {
        view.act("escalate", {}, { doneKey: "expertise.escalated", button: escalate });
      }
    });
    out.push(h("div", { class: "actions case-actions" }, escalate));
  }
  return out;
}
