// The nurse's page: pre-call check, check a patient in, wait (position,
// estimated wait, what happens: a physician asked, declined, none free), the
// call, the end (a summary and the next step).
//
// Each consultation stands alone: the camera and microphone go to its call and
// come back to the pre-call check after it, for the next patient.
import { $, h, show, announce } from "./dom.js";
import { t, onLanguageChange, formatDuration, setText } from "./i18n.js";
import { startPage } from "./page.js";
import { fetchDirectory, specialtiesOf, specialtyLabel, mountPreCheck, joinCall, rejoinGrant } from "./common.js";
import { CallLock } from "./tabs.js";
import { mountGuests } from "./guests.js";

const OPEN_STATES = new Set(["requested", "offered", "accepted", "active"]);
const REQUESTED_HERE = "tc.nurse.requested"; // sessionStorage: consultations this tab checked in
const OTHER_TAB_DELAY_MS = 1500; // a tab that did not check the patient in lets the one that did go first

/** The consultations this tab (this one, across its reloads) checked in. */
function requestedHere() {
  try {
    return JSON.parse(sessionStorage.getItem(REQUESTED_HERE) || "[]");
  } catch (_) {
    return [];
  }
}

function rememberRequested(id) {
  sessionStorage.setItem(REQUESTED_HERE, JSON.stringify([...requestedHere(), id].slice(-20)));
}

async function main() {
  const session = await startPage("nurse");
  if (!session) return;
  const { token, principal, signalling, banner } = session;
  const precheck = mountPreCheck(token, signalling);
  const lock = new CallLock(`tc-call-nurse-${principal.sub}`);
  const form = $("#checkin-form");
  const waiting = $("#waiting");
  const callSlot = $("#call-slot");
  const ended = $("#ended");
  let current = null; // the open consultation
  let view = null;
  let joining = null;
  let position = null;
  const visitStatuses = new Map(); // consultation id -> its last visit.status (one may come before the reply)
  let last = null; // the consultation that just ended, for the summary
  let elsewhere = null; // the consultation another tab of this browser is in

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
  onLanguageChange(() => { renderSpecialties(); render(); renderEnded(); renderElsewhere(); });

  // -- screens ---------------------------------------------------------------
  function screen(name) {
    show($("#checkin"), name === "checkin");
    show(waiting, name === "waiting");
    show(callSlot, name === "call");
    show(ended, name === "ended");
    show($("#elsewhere"), name === "elsewhere");
    show($("#precheck-slot"), name === "checkin" || name === "waiting");
    document.body.dataset.screen = name;
  }

  function render() {
    if (!current) return;
    $("#waiting-state").textContent = t(`nurse.state.${current.state}`);
    $("#waiting-state").dataset.state = current.state;
    if (position) {
      $("#queue-position").textContent = position.position === null || position.position === undefined
        ? "–" : String(position.position);
      const wait = position.estimated_wait_s;
      $("#queue-wait").textContent = wait === null || wait === undefined ? t("nurse.wait_unknown") : formatDuration(wait);
      $("#queue-wait").dataset.unknown = String(wait === null || wait === undefined);
    }
    renderVisitStatus();
  }

  /** What happens with the request: a physician is asked, declined, did not answer, none free. */
  function renderVisitStatus() {
    const note = $("#waiting-note");
    const s = current ? visitStatuses.get(current.id) : null;
    if (!s || !["requested", "offered"].includes(current.state)) {
      note.hidden = true;
      return;
    }
    const name = s.physician_name || t("role.physician");
    let text;
    if (s.status === "waiting") text = t(s.looking ? "nurse.status.searching" : "nurse.status.waiting");
    else if (s.status === "offered") text = t("nurse.status.offered", { name });
    else text = `${t(`nurse.status.${s.status}`, { name })} ${t(s.looking ? "nurse.status.looking" : "nurse.status.queued")}`;
    note.textContent = text;
    note.dataset.status = s.status;
    note.hidden = false;
  }

  function showWaiting(consultation, pos) {
    current = consultation;
    if (pos) position = pos;
    screen("waiting");
    $("#cancel-visit").disabled = !["requested", "offered"].includes(consultation.state);
    render();
  }

  async function startCall(consultation, grant) {
    if ((view && view.consultation.id === consultation.id) || joining === consultation.id) return;
    joining = consultation.id;
    try {
      current = consultation;
      // Another tab of this browser is in this call: say so, do not join with no camera. When
      // several tabs are open, the one that checked the patient in takes the call.
      if (!lock.held && !requestedHere().includes(consultation.id)) {
        await new Promise((resolve) => setTimeout(resolve, OTHER_TAB_DELAY_MS));
      }
      if (!(await lock.acquire())) {
        elsewhere = consultation;
        renderElsewhere();
        screen("elsewhere");
        return;
      }
      screen("call");
      announce(t("call.started"));
      view = await joinCall(callSlot, { signalling, token, role: "nurse", consultation, grant, precheck, banner });
      // Who else is there (guests), and the patient's consent for each one who waits (issue 14).
      mountGuests(view, { signalling, token, seat: "nurse" });
    } finally {
      joining = null;
    }
  }

  // -- another tab ------------------------------------------------------------------
  function renderElsewhere() {
    if (!elsewhere) return;
    $("#elsewhere-text").textContent = t("tabs.elsewhere.text");
  }
  $("#take-over").addEventListener("click", async () => {
    const consultation = elsewhere;
    if (!consultation) return;
    $("#take-over").disabled = true;
    lock.askToLeave();
    await lock.acquire({ wait: true }); // held from now on: startCall goes ahead
    $("#take-over").disabled = false;
    elsewhere = null;
    try {
      await startCall(consultation, await rejoinGrant(signalling, consultation.id));
    } catch (_) { showWaiting(consultation); }
  });
  lock.whenAskedToLeave(async () => {
    if (!view) return;
    const consultation = view.consultation;
    const closing = view;
    view = null;
    await closing.close();
    lock.release();
    elsewhere = consultation;
    $("#elsewhere-text").textContent = t("tabs.moved.text");
    screen("elsewhere");
    precheck.restore();
  });

  // -- the end -------------------------------------------------------------------------
  function renderEnded() {
    const c = last;
    if (!c) return;
    const reason = c.state === "ended" ? (c.end_reason || "completed") : c.state;
    $("#ended-text").textContent = t(`nurse.ended.${c.state}`, { reason });
    const rows = [];
    if (c.patient_ref) rows.push(["ended.patient", c.patient_ref]);
    if (c.physician_name) rows.push(["ended.physician", c.physician_name]);
    if (c.started_at && c.ended_at) rows.push(["ended.duration", formatDuration(c.ended_at - c.started_at)]);
    $("#ended-summary").replaceChildren(...rows.map(([key, value]) => h("div", {},
      h("dt", {}, t(key)), h("dd", {}, value))));
    setText($("#ended-next"), c.state === "ended" ? "nurse.next.ended" : "nurse.next.other");
    // A finished consultation can go on as a request for an expert opinion, its stills offered.
    $("#ended-expertise").hidden = c.state !== "ended" || !c.id;
    if (c.id) $("#ended-expertise").href = `/expertise?as=nurse&consultation=${encodeURIComponent(c.id)}`;
  }

  async function finish(consultation) {
    if (view) {
      const closing = view;
      view = null;
      await closing.close();
    }
    lock.release();
    last = { ...(current || {}), ...consultation };
    current = null;
    position = null;
    visitStatuses.clear();
    ended.dataset.state = consultation.state;
    renderEnded();
    screen("ended");
    // The camera and microphone again, for the next patient.
    precheck.restore();
    announce($("#ended-text").textContent);
    $("#new-checkin").focus();
  }

  // -- check-in ----------------------------------------------------------------
  // One idempotency key per check-in: a retry after "unavailable" or no answer (the request may
  // have been taken) reuses it, so the patient is never queued twice; a changed form is a new one.
  let requestKey = null;
  const newRequestKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  form.addEventListener("input", () => { requestKey = null; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#checkin-error");
    error.hidden = true;
    if (!form.reportValidity()) return;
    const submit = $("#checkin-submit");
    submit.disabled = true;
    requestKey ??= newRequestKey();
    try {
      const reply = await signalling.request("visit.request", {
        request_key: requestKey,
        patient_ref: $("#patient-ref").value.trim(),
        reason: $("#reason").value.trim(),
        specialty: select.value,
        priority: form.querySelector("input[name=priority]:checked").value,
        consent_teleconsultation: $("#consent-tele").checked,
        consent_recording: $("#consent-rec").checked,
      });
      form.reset();
      requestKey = null;
      rememberRequested(reply.consultation.id);
      showWaiting(reply.consultation, { position: reply.position, estimated_wait_s: reply.estimated_wait_s });
      announce(t("nurse.waiting.title"));
    } catch (err) {
      // Refused: not taken, a new key next time. Unknown outcome: the retry must reuse it.
      if (!["unavailable", "timeout", "disconnected"].includes(err.code)) requestKey = null;
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
  signalling.on("visit.status", (m) => {
    visitStatuses.set(m.consultation_id, m);
    if (!current || m.consultation_id !== current.id) return;
    if (m.position !== undefined || m.estimated_wait_s !== undefined) {
      position = { ...(position || {}), position: m.position ?? position?.position ?? null,
        estimated_wait_s: m.estimated_wait_s ?? null };
    }
    render();
    if (m.status !== "offered") announce($("#waiting-note").textContent);
  });
  signalling.on("consultation.updated", (m) => {
    if (!current || m.consultation.id !== current.id) return;
    current = { ...current, ...m.consultation };
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
