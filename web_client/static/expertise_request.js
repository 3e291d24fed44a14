// Télé-expertise, the requester's side (a nurse or a physician of a site): the site's
// cases with their state and due date; a new case from the specialty's questionnaire
// (rendered from its data), with photos, the stills of a finished consultation
// (/expertise?consultation=<id>), consent, urgency, the specialty's pool or a named
// expert; and, on a case, what the requester may do next.
import { h, announce } from "./dom.js";
import { t, setText } from "./i18n.js";
import { specialtiesOf, specialtyLabel } from "./common.js";
import { bodyMap, isBodyMap } from "./bodymap.js";
import { OPEN_STATES, FINAL_STATES, bindLabel, codeNode, dueNode, stateNode, errorText, confirmAct, photoInput,
  relabel } from "./expertise_case.js";

// -- the list ---------------------------------------------------------------------------
export function renderSentList(rows, { body, empty, table, count, open, selected, now }) {
  body.replaceChildren(...rows.map((r) => h("tr", { dataset: { id: r.id, state: r.state,
    flagged: String(Boolean(r.flagged_at)) }, "aria-current": r.id === selected ? "true" : null },
  h("td", {}, h("button", { type: "button", class: "link open-case", onclick: () => open(r.id) }, r.patient_ref)),
  h("td", {}, specialtyLabel(r.specialty)),
  h("td", {}, stateNode(r.state), r.recommendation ? h("span", { class: "muted" }, " · ",
    codeNode("span", "expertise.rec", r.recommendation)) : null),
  h("td", {}, FINAL_STATES.has(r.state) ? "–" : dueNode(r, now)))));
  empty.hidden = rows.length > 0;
  table.hidden = rows.length === 0;
  count.textContent = String(rows.length);
}

// -- the questionnaire, from its data ---------------------------------------------------------
const RADIOS_UP_TO = 6; // a choice with more options is a list (the body map's 19 places)

function fieldNode(f) {
  const id = `q-${f.id}`;
  const req = Boolean(f.required);
  const labelled = (label) => bindLabel(label, f.label);
  if (f.type === "choice" && f.options.length <= RADIOS_UP_TO || f.type === "boolean") {
    const options = f.type === "boolean" ? ["true", "false"] : f.options;
    const radios = options.map((o) => {
      const rid = `${id}-${o}`;
      const label = f.type === "boolean"
        ? h("label", { for: rid, "data-i18n": o === "true" ? "expertise.yes" : "expertise.no" }, t(o === "true" ? "expertise.yes" : "expertise.no"))
        : codeNode("label", "expertise.opt", o, { for: rid });
      return [h("input", { type: "radio", name: id, id: rid, value: o, required: req }), label];
    });
    return h("fieldset", { class: "field", dataset: { field: f.id, type: f.type } },
      labelled(h("legend", { class: req ? "required" : null })), h("div", { class: "segmented" }, ...radios.flat()));
  }
  if (f.type === "choice") {
    const select = h("select", { id, required: req, "aria-required": req ? "true" : null },
      h("option", { value: "", "data-i18n": "expertise.choose" }, t("expertise.choose")),
      ...f.options.map((o) => codeNode("option", "expertise.opt", o, { value: o })));
    const label = labelled(h("label", { for: id, class: req ? "required" : null }));
    if (!isBodyMap(f.options)) return h("div", { class: "field", dataset: { field: f.id, type: f.type } }, label, select);
    // Places on the body: the list, and the figure beside it (a click on it chooses in the list).
    return h("div", { class: "field bodymap", dataset: { field: f.id, type: f.type } },
      h("div", {}, label, select,
        h("p", { class: "muted hint", "data-i18n": "expertise.bodymap_hint" }, t("expertise.bodymap_hint"))),
      bodyMap(select));
  }
  if (f.type === "multi") {
    return h("fieldset", { class: "field", dataset: { field: f.id, type: f.type } },
      labelled(h("legend", { class: req ? "required" : null })),
      h("div", { class: "checks-row" }, ...f.options.map((o) => h("label", { class: "check" },
        h("input", { type: "checkbox", name: id, id: `${id}-${o}`, value: o }), codeNode("span", "expertise.opt", o)))));
  }
  if (f.type === "number") {
    return h("div", { class: "field narrow", dataset: { field: f.id, type: f.type } },
      labelled(h("label", { for: id, class: req ? "required" : null })),
      h("input", { type: "number", id, step: "any", min: f.min ?? null, max: f.max ?? null, required: req,
        "aria-required": req ? "true" : null, inputmode: "decimal" }));
  }
  if (f.type === "text") {
    const long = (f.max_length || 4000) > 200;
    return h("div", { class: "field", dataset: { field: f.id, type: f.type } },
      labelled(h("label", { for: id, class: req ? "required" : null })),
      h(long ? "textarea" : "input", { id, maxlength: f.max_length || 4000, rows: long ? 3 : null,
        required: req, "aria-required": req ? "true" : null, autocomplete: "off" }));
  }
  if (f.type === "photos") {
    return h("fieldset", { class: "field photos", dataset: { field: f.id, type: f.type } },
      labelled(h("legend", { class: req ? "required" : null })),
      h("p", { class: "muted hint", "data-i18n": "expertise.photo_hint" }, t("expertise.photo_hint")),
      ...f.views.map((view) => {
        const input = photoInput(`photo-${view}`, { required: req });
        const preview = h("img", { class: "thumb", alt: "", hidden: true });
        input.addEventListener("change", () => {
          if (preview.src) URL.revokeObjectURL(preview.src);
          const file = input.files[0];
          preview.hidden = !file;
          if (file) preview.src = URL.createObjectURL(file);
        });
        return h("div", { class: "photo-pick", dataset: { view } },
          codeNode("label", "expertise.view", view, { for: `photo-${view}`, class: req ? "required" : null }),
          input, preview);
      }));
  }
  return null;
}

/** The answers as the questionnaire's fields hold them (empty ones left out). */
function collectAnswers(q, form) {
  const answers = {};
  for (const f of q.fields) {
    const id = `q-${f.id}`;
    if (f.type === "photos") continue;
    if (f.type === "boolean" || (f.type === "choice" && f.options.length <= RADIOS_UP_TO)) {
      const checked = form.querySelector(`input[name="${id}"]:checked`);
      if (checked) answers[f.id] = f.type === "boolean" ? checked.value === "true" : checked.value;
    } else if (f.type === "multi") {
      const values = [...form.querySelectorAll(`input[name="${id}"]:checked`)].map((i) => i.value);
      if (values.length) answers[f.id] = values;
    } else {
      const el = form.querySelector(`#${id}`);
      const value = el ? el.value.trim() : "";
      if (value === "") continue;
      answers[f.id] = f.type === "number" ? Number(value) : value;
    }
  }
  return answers;
}

/**
 * A new case: patient, specialty (those with a questionnaire), the pool or a named expert,
 * urgency, the questionnaire, photos, the consultation's stills, consent. "Send" creates a
 * draft, uploads the photos, then submits; a photo the server refuses (HEIC...) leaves the
 * draft on screen with the server's reason, to add another photo and send from there.
 */
export class NewCaseForm extends EventTarget {
  constructor(container, { api, directory, names, questionnaires, consultation, signalling }) {
    super();
    this.container = container;
    this.api = api;
    this.directory = directory;
    this.names = names;
    this.questionnaires = questionnaires;
    this.consultation = consultation; // {id, patient_ref, stills: [...]} or null
    this.signalling = signalling;
    this.q = null;
    this.urls = [];
  }

  async mount() {
    const candidates = specialtiesOf(this.directory);
    const found = await Promise.all(candidates.map((s) => this.questionnaires.get(s)));
    this.specialties = candidates.filter((_, i) => found[i]);
    const select = h("select", { id: "x-specialty", required: true, "aria-required": "true" },
      h("option", { value: "", "data-i18n": "expertise.choose" }, t("expertise.choose")),
      ...this.specialties.map((s) => h("option", { value: s }, specialtyLabel(s))));
    const expert = h("select", { id: "x-expert" });
    this.questionSlot = h("div", { id: "x-questionnaire" });
    const stills = this.consultation ? this.stillsNode() : null;
    this.error = h("p", { id: "x-error", class: "error", role: "alert", hidden: true });
    this.progress = h("p", { id: "x-progress", class: "muted", role: "status" });
    this.send = h("button", { type: "submit", class: "primary", id: "x-send", "data-i18n": "expertise.send" }, t("expertise.send"));
    this.draft = h("button", { type: "button", id: "x-draft", "data-i18n": "expertise.save_draft" }, t("expertise.save_draft"));
    const patient = h("input", { id: "x-patient-ref", required: true, "aria-required": "true", maxlength: 128,
      autocomplete: "off", spellcheck: "false", value: this.consultation?.patient_ref || "" });
    const form = h("form", { id: "new-case-form", novalidate: true },
      h("p", { class: "muted required-note" }, h("span", { class: "req", "aria-hidden": "true" }, "*"), " ",
        h("span", { "data-i18n": "form.required_note" }, t("form.required_note"))),
      this.consultation ? h("p", { class: "note", id: "x-from-consultation", "data-i18n": "expertise.from_consultation" },
        t("expertise.from_consultation")) : null,
      h("div", { class: "field" }, h("label", { for: "x-patient-ref", class: "required", "data-i18n": "expertise.patient_ref" },
        t("expertise.patient_ref")), patient),
      h("div", { class: "field" }, h("label", { for: "x-specialty", class: "required", "data-i18n": "expertise.col.specialty" },
        t("expertise.col.specialty")), select,
      this.specialties.length ? null : h("p", { class: "error", "data-i18n": "expertise.no_questionnaires" }, t("expertise.no_questionnaires"))),
      h("div", { class: "field" }, h("label", { for: "x-expert", "data-i18n": "expertise.expert" }, t("expertise.expert")), expert),
      h("fieldset", { class: "field" }, h("legend", { class: "required", "data-i18n": "expertise.urgency" }, t("expertise.urgency")),
        h("div", { class: "segmented" },
          h("input", { type: "radio", name: "x-urgency", id: "x-urgency-standard", value: "standard", checked: true }),
          h("label", { for: "x-urgency-standard", "data-i18n": "expertise.urgency.standard_long" }, t("expertise.urgency.standard_long")),
          h("input", { type: "radio", name: "x-urgency", id: "x-urgency-urgent", value: "urgent" }),
          h("label", { for: "x-urgency-urgent", "data-i18n": "expertise.urgency.urgent_long" }, t("expertise.urgency.urgent_long")))),
      this.questionSlot,
      stills,
      h("fieldset", { class: "field" }, h("legend", { class: "required", "data-i18n": "expertise.consent" }, t("expertise.consent")),
        h("label", { class: "check" }, h("input", { type: "checkbox", id: "x-consent", required: true, "aria-required": "true" }),
          h("span", { "data-i18n": "expertise.consent_text" }, t("expertise.consent_text")))),
      this.error,
      h("div", { class: "actions" }, this.send, this.draft, this.progress));
    const renderExperts = () => {
      const chosen = expert.value;
      const specialty = select.value;
      expert.replaceChildren(h("option", { value: "", "data-i18n": "expertise.any_expert" }, t("expertise.any_expert")),
        ...(specialty ? this.names.experts(specialty) : []).map((c) => h("option", { value: c.id }, c.name || c.id)));
      expert.value = [...expert.options].some((o) => o.value === chosen) ? chosen : "";
    };
    select.addEventListener("change", async () => {
      renderExperts();
      await this.showQuestionnaire(select.value);
    });
    renderExperts();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit(true);
    });
    this.draft.addEventListener("click", () => this.submit(false));
    this.form = form;
    this.container.replaceChildren(h("section", { class: "card", id: "new-case-card", "aria-labelledby": "new-case-title" },
      h("h2", { id: "new-case-title", tabindex: "-1", "data-i18n": "expertise.new_title" }, t("expertise.new_title")), form));
    this.container.querySelector("#new-case-title").focus();
    if (this.specialties.length === 1) {
      select.value = this.specialties[0];
      select.dispatchEvent(new Event("change"));
    }
    return this;
  }

  stillsNode() {
    const stills = this.consultation.stills || [];
    const items = stills.map((s) => {
      const img = h("img", { class: "thumb", alt: "" });
      this.api.imageUrl(s.url).then((url) => {
        this.urls.push(url);
        img.src = url;
      }).catch(() => {});
      const caption = codeNode("span", "device", s.device);
      return h("label", { class: "check still-pick" },
        h("input", { type: "checkbox", id: `x-still-${s.still_id}`, value: s.still_id, checked: true, dataset: { still: s.still_id } }),
        img, h("span", {}, caption, s.width && s.height ? ` · ${s.width}×${s.height}` : "", s.label ? ` · ${s.label}` : ""));
    });
    return h("fieldset", { class: "field", id: "x-stills" },
      h("legend", { "data-i18n": "expertise.consultation_stills" }, t("expertise.consultation_stills")),
      items.length ? h("div", { class: "still-picks" }, ...items)
        : h("p", { class: "muted", "data-i18n": "expertise.no_stills" }, t("expertise.no_stills")));
  }

  async showQuestionnaire(specialty) {
    this.q = specialty ? await this.questionnaires.get(specialty) : null;
    if (!this.q) {
      this.questionSlot.replaceChildren();
      return;
    }
    this.questionSlot.replaceChildren(h("fieldset", { class: "questionnaire", dataset: { ref: this.q.ref } },
      bindLabel(h("legend", { class: "q-title" }), this.q.title), ...this.q.fields.map(fieldNode).filter(Boolean)));
  }

  /** The photos chosen, by view. */
  photos() {
    const out = [];
    for (const input of this.form.querySelectorAll(".photo-pick input[type=file]")) {
      if (input.files[0]) out.push({ view: input.closest(".photo-pick").dataset.view, file: input.files[0] });
    }
    return out;
  }

  async submit(send) {
    this.error.hidden = true;
    // A draft needs the answers but not the photos yet; sending needs both (the browser says which).
    for (const input of this.form.querySelectorAll(".photo-pick input[type=file]")) input.required = send && input.dataset.required === "true";
    if (!this.form.reportValidity() || !this.q) return;
    this.send.disabled = this.draft.disabled = true;
    const body = {
      patient_ref: this.form.querySelector("#x-patient-ref").value.trim(),
      specialty: this.form.querySelector("#x-specialty").value,
      urgency: this.form.querySelector("input[name=x-urgency]:checked").value,
      consent: this.form.querySelector("#x-consent").checked,
      answers: collectAnswers(this.q, this.form),
      state: "draft",
    };
    const expert = this.form.querySelector("#x-expert").value;
    if (expert) body.expert = expert;
    if (this.consultation) {
      body.consultation_id = this.consultation.id;
      body.stills = [...this.form.querySelectorAll("#x-stills input:checked")].map((i) => i.value);
    }
    setText(this.progress, "expertise.progress.create");
    let c;
    try {
      c = await this.api.create(body);
    } catch (err) {
      this.error.textContent = errorText(err, "expertise.error.form");
      this.error.hidden = false;
      this.send.disabled = this.draft.disabled = false;
      setText(this.progress, null);
      return;
    }
    const problems = [];
    const photos = this.photos();
    for (const [i, { view, file }] of photos.entries()) {
      setText(this.progress, "expertise.progress.upload", { n: i + 1, total: photos.length });
      try {
        c = await this.api.upload(c.id, file, view);
      } catch (err) {
        problems.push(h("p", {}, codeNode("strong", "expertise.view", view), ` (${file.name}) : `,
          errorText(err, "expertise.error.photo")));
      }
    }
    if (send && !problems.length) {
      setText(this.progress, "expertise.progress.submit");
      try {
        c = await this.api.act(c.id, "submit");
      } catch (err) {
        problems.push(h("p", {}, errorText(err, "expertise.error.submit")));
      }
    }
    if (problems.length) problems.unshift(h("p", { "data-i18n": "expertise.saved_as_draft" }, t("expertise.saved_as_draft")));
    announce(t(c.state === "draft" ? "expertise.saved_as_draft" : "expertise.submitted"));
    this.dispatchEvent(new CustomEvent("created", { detail: { case: c, problems } }));
  }

  relabel() {
    relabel(this.container);
  }

  close() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    for (const img of this.container.querySelectorAll(".photo-pick img")) if (img.src) URL.revokeObjectURL(img.src);
    this.urls = [];
  }
}

// -- what the requester may do on a case ----------------------------------------------------
/** Add a photo (a draft whose photo was refused, or one more for the expert). */
function addPhotoNode(c, view, q) {
  const views = [...new Set((q?.fields || []).flatMap((f) => f.views || []))];
  const select = h("select", { id: "add-photo-view" },
    h("option", { value: "", "data-i18n": "expertise.view_none" }, t("expertise.view_none")),
    ...views.map((v) => codeNode("option", "expertise.view", v, { value: v })));
  const missing = views.find((v) => !(c.attachments || []).some((a) => a.view === v));
  if (missing) select.value = missing;
  const input = photoInput("add-photo-file", { required: true });
  const error = h("p", { id: "add-photo-error", class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", id: "add-photo", "data-i18n": "expertise.add_photo" }, t("expertise.add_photo"));
  const form = h("form", { id: "add-photo-form", class: "case-part add-photo", novalidate: true },
    h("h3", { "data-i18n": "expertise.add_photo_title" }, t("expertise.add_photo_title")),
    h("div", { class: "field" }, h("label", { for: "add-photo-view", "data-i18n": "expertise.view" }, t("expertise.view")), select),
    h("div", { class: "field" }, h("label", { for: "add-photo-file", class: "required", "data-i18n": "expertise.photo_file" },
      t("expertise.photo_file")), input),
    error, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!form.reportValidity()) return;
    button.disabled = true;
    try {
      const updated = await view.api.upload(c.id, input.files[0], select.value || null);
      await view.render(updated, { fresh: false });
      view.status("expertise.photo_added");
      view.changed();
    } catch (err) {
      button.disabled = false;
      error.textContent = errorText(err, "expertise.error.photo");
      error.hidden = false;
    }
  });
  return form;
}

export function requesterExtras(c, view, q, { principal }) {
  const out = [];
  if (["draft", "submitted", "question"].includes(c.state)) out.push(addPhotoNode(c, view, q));
  const buttons = [];
  if (c.state === "draft") {
    const submit = h("button", { type: "button", class: "primary", id: "case-submit", "data-i18n": "expertise.send" }, t("expertise.send"));
    submit.addEventListener("click", () => view.act("submit", {}, { doneKey: "expertise.submitted", button: submit }));
    buttons.push(submit);
  }
  if (c.state === "answered") {
    const close = h("button", { type: "button", class: "primary", id: "case-close", "data-i18n": "expertise.close" }, t("expertise.close"));
    close.addEventListener("click", () => view.act("close", {}, { doneKey: "expertise.closed", button: close }));
    buttons.push(close);
  }
  if (["submitted", "question", "answered"].includes(c.state)) {
    const escalate = h("button", { type: "button", id: "case-escalate", "data-i18n": "expertise.escalate" }, t("expertise.escalate"));
    escalate.addEventListener("click", async () => {
      if (await confirmAct("expertise.escalate_confirm", "expertise.escalate")) {
        view.act("escalate", {}, { doneKey: "expertise.escalated", button: escalate });
      }
    });
    buttons.push(escalate);
  }
  if (["draft", "submitted", "question"].includes(c.state)) {
    const cancel = h("button", { type: "button", class: "danger", id: "case-cancel", "data-i18n": "expertise.cancel" }, t("expertise.cancel"));
    cancel.addEventListener("click", async () => {
      if (await confirmAct("expertise.cancel_confirm", "expertise.cancel")) {
        view.act("cancel", {}, { doneKey: "expertise.cancelled", button: cancel });
      }
    });
    buttons.push(cancel);
  }
  if (buttons.length) out.push(h("div", { class: "actions case-actions" }, ...buttons));
  if (c.state === "escalated" && principal.role === "nurse") {
    out.push(h("p", {}, h("a", { href: "/nurse", class: "button", id: "escalated-checkin", target: "_blank", rel: "opener",
      "data-i18n": "expertise.escalated_checkin" }, t("expertise.escalated_checkin"))));
  }
  if (OPEN_STATES.has(c.state) && !c.expert) {
    out.push(h("p", { class: "muted", "data-i18n": "expertise.waiting_expert" }, t("expertise.waiting_expert")));
  }
  return out;
}
