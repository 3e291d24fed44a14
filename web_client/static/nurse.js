// The nurse's page: pre-call check, check a patient in, wait (position and
// estimated wait), the call, the end.
import { $, h, show, announce } from "./dom.js";
import { t, onLanguageChange, formatDuration } from "./i18n.js";
import { startPage } from "./page.js";
import { fetchDirectory, specialtiesOf, specialtyLabel, mountPreCheck, joinCall, rejoinGrant } from "./common.js";

const OPEN_STATES = new Set(["requested", "offered", "accepted", "active"]);

async function main() {
  const session = await startPage("nurse");
  if (!session) return;
  const { token, signalling } = session;
  const precheck = mountPreCheck(token);
  const form = $("#checkin-form");
  const waiting = $("#waiting");
  const callSlot = $("#call-slot");
  const ended = $("#ended");
  let current = null; // the open consultation
  let view = null;
  let position = null;

  // -- specialties -----------------------------------------------------------
  const select = $("#specialty");
  let specialties = [];
  const renderSpecialties = () => {
    const chosen = select.value;
    select.replaceChildren(h("option", { value: "" }, t("nurse.specialty.choose")),
      ...specialties.map((s) => h("option", { value: s }, specialtyLabel(s))));
    select.value = chosen;
  };
  fetchDirectory(token).then((directory) => {
    specialties = specialtiesOf(directory);
    renderSpecialties();
  }).catch(() => {
    $("#specialty-error").hidden = false;
  });
  onLanguageChange(() => { renderSpecialties(); render(); });

  // -- screens ---------------------------------------------------------------
  function screen(name) {
    show($("#checkin"), name === "checkin");
    show(waiting, name === "waiting");
    show(callSlot, name === "call");
    show(ended, name === "ended");
    show($("#precheck-slot"), name === "checkin" || name === "waiting");
    document.body.dataset.screen = name;
  }

  function render() {
    if (!current) return;
    $("#waiting-state").textContent = t(`nurse.state.${current.state}`);
    $("#waiting-state").dataset.state = current.state;
    if (position) {
      $("#queue-position").textContent = String(position.position);
      $("#queue-wait").textContent = formatDuration(position.estimated_wait_s);
    }
  }

  function showWaiting(consultation, pos) {
    current = consultation;
    if (pos) position = pos;
    screen("waiting");
    $("#cancel-visit").disabled = !["requested", "offered"].includes(consultation.state);
    render();
  }

  async function startCall(consultation, grant) {
    if (view && view.consultation.id === consultation.id) return;
    current = consultation;
    screen("call");
    announce(t("call.started"));
    view = await joinCall(callSlot, { signalling, token, role: "nurse", consultation, grant, precheck });
  }

  async function finish(consultation) {
    if (view) {
      await view.close();
      view = null;
    }
    current = null;
    position = null;
    const reason = consultation.state === "ended" ? (consultation.end_reason || "completed") : consultation.state;
    $("#ended-text").textContent = t(`nurse.ended.${consultation.state}`, { reason });
    ended.dataset.state = consultation.state;
    screen("ended");
    announce($("#ended-text").textContent);
    $("#new-checkin").focus();
  }

  // -- check-in ----------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#checkin-error");
    error.hidden = true;
    if (!form.reportValidity()) return;
    const submit = $("#checkin-submit");
    submit.disabled = true;
    try {
      const reply = await signalling.request("visit.request", {
        patient_ref: $("#patient-ref").value.trim(),
        reason: $("#reason").value.trim(),
        specialty: select.value,
        priority: form.querySelector("input[name=priority]:checked").value,
        consent_teleconsultation: $("#consent-tele").checked,
        consent_recording: $("#consent-rec").checked,
      });
      form.reset();
      showWaiting(reply.consultation, { position: reply.position, estimated_wait_s: reply.estimated_wait_s });
      announce(t("nurse.waiting.title"));
    } catch (err) {
      error.textContent = t(`error.${err.code}`, { message: err.message }).startsWith("error.")
        ? t("error.generic", { message: err.message }) : t(`error.${err.code}`, { message: err.message });
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  $("#cancel-visit").addEventListener("click", async () => {
    if (!current) return;
    try {
      const reply = await signalling.request("visit.cancel", { consultation_id: current.id });
      await finish(reply.consultation);
    } catch (err) {
      announce(t("error.generic", { message: err.message }));
    }
  });
  $("#new-checkin").addEventListener("click", () => {
    screen("checkin");
    $("#patient-ref").focus();
  });

  // -- server events ------------------------------------------------------------
  signalling.on("visit.position", (m) => {
    if (current && m.consultation_id === current.id) {
      position = m;
      render();
    }
  });
  signalling.on("consultation.updated", (m) => {
    if (!current || m.consultation.id !== current.id) return;
    current = m.consultation;
    if (document.body.dataset.screen === "waiting") showWaiting(current);
  });
  signalling.on("consultation.started", (m) => startCall(m.consultation, m.grant));
  signalling.on("consultation.ended", (m) => {
    if (current && m.consultation.id === current.id) finish(m.consultation);
  });
  signalling.on("ready", async (hello) => {
    // First connection or resume: show what the server says is open now.
    const open = (hello.state?.consultations || []).find((c) => OPEN_STATES.has(c.state));
    if (!open) {
      if (current && !hello.resumed) {
        const reply = await signalling.request("consultation.get", { consultation_id: current.id }).catch(() => null);
        if (reply && !OPEN_STATES.has(reply.consultation.state)) finish(reply.consultation);
      }
      return;
    }
    if (open.state === "active" || open.state === "accepted") {
      if (view && view.consultation.id === open.id) {
        view.setRecording(Boolean(open.recording?.active)); // it may have changed while we were away
        return;
      }
      try {
        await startCall(open, await rejoinGrant(signalling, open.id));
      } catch (_) { showWaiting(open); }
    } else if (!current || current.id === open.id) {
      showWaiting(open);
    }
  });
  screen("checkin");
}

main();
