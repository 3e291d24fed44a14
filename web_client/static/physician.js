// The physician's page: presence, the waiting queue of their specialties, an
// incoming offer that rings, the call with device panels, the report.
import { $, h, show, announce } from "./dom.js";
import { t, onLanguageChange, formatDuration } from "./i18n.js";
import { startPage } from "./page.js";
import { specialtyLabel, mountPreCheck, joinCall, rejoinGrant } from "./common.js";
import { Ringer } from "./ring.js";
import { ReportForm } from "./report.js";

const QUEUE_POLL_MS = 5000;

async function main() {
  const session = await startPage("physician");
  if (!session) return;
  const { token, principal, signalling } = session;
  const precheck = mountPreCheck(token);
  const ringer = new Ringer();
  let queue = [];
  let queueFetchedAt = 0;
  let offer = null; // the offer.received ringing now
  let countdownTimer = null;
  let view = null;
  let current = null;
  let report = null;

  $("#my-specialties").textContent = principal.specialties.map(specialtyLabel).join(", ");

  function screen(name) {
    show($("#lobby"), name === "lobby");
    show($("#call-slot"), name === "call");
    show($("#ended"), name === "ended");
    show($("#report-slot"), name === "call" || name === "ended");
    document.body.dataset.screen = name;
  }

  // -- presence ----------------------------------------------------------------
  const presence = $("#presence");
  function renderPresence(status) {
    for (const input of presence.querySelectorAll("input")) input.checked = input.value === status;
    presence.dataset.status = status || "";
  }
  presence.addEventListener("change", async (event) => {
    const status = event.target.value;
    ringer.context?.resume?.();
    try {
      const reply = await signalling.request("presence.set", { status });
      renderPresence(reply.status);
      announce(t(`presence.${reply.status}`));
    } catch (err) {
      announce(t("error.generic", { message: err.message }));
    }
  });

  // -- queue ---------------------------------------------------------------------
  async function refreshQueue() {
    if (signalling.state !== "open") return;
    try {
      const reply = await signalling.request("queue.list");
      const mine = new Set(principal.specialties);
      queue = reply.waiting.filter((w) => mine.size === 0 || mine.has(w.specialty));
      queueFetchedAt = performance.now();
      $("#queue-error").hidden = true;
      renderQueue();
    } catch (err) {
      $("#queue-error").textContent = t("physician.queue.unavailable", { message: err.code || err.message });
      $("#queue-error").hidden = false;
    }
  }

  function renderQueue() {
    const body = $("#queue-body");
    const elapsed = (performance.now() - queueFetchedAt) / 1000;
    body.replaceChildren(...queue.map((w) => h("tr", { dataset: { id: w.consultation_id, priority: w.priority } },
      h("td", {}, h("span", { class: `priority ${w.priority}` }, t(`priority.${w.priority}`))),
      h("td", {}, specialtyLabel(w.specialty)),
      h("td", {}, w.site),
      h("td", { class: "num" }, formatDuration(w.waiting_s + elapsed)),
      h("td", {}, t(`consultation.state.${w.state}`)))));
    $("#queue-empty").hidden = queue.length > 0;
    $("#queue-table").hidden = queue.length === 0;
    $("#queue-count").textContent = String(queue.length);
  }
  setInterval(renderQueue, 1000);
  setInterval(refreshQueue, QUEUE_POLL_MS);
  for (const type of ["consultation.updated", "consultation.ended", "offer.withdrawn", "presence.changed"]) {
    signalling.addEventListener(type, () => refreshQueue());
  }

  // -- offers ----------------------------------------------------------------------
  const dialog = $("#offer");
  function showOffer(message) {
    offer = message;
    const c = message.consultation;
    $("#offer-priority").textContent = t(`priority.${c.priority}`);
    $("#offer-priority").className = `priority ${c.priority}`;
    $("#offer-specialty").textContent = specialtyLabel(c.specialty);
    $("#offer-site").textContent = c.site;
    $("#offer-reason").textContent = c.reason || "";
    dialog.hidden = false;
    dialog.dataset.consultation = c.id;
    document.body.classList.add("ringing");
    ringer.start();
    const tick = () => {
      const left = Math.min(message.timeout_s || Infinity, Math.max(0, message.expires_at - signalling.serverNow()));
      $("#offer-countdown").textContent = String(Math.ceil(left));
      $("#offer-progress").value = message.timeout_s ? left / message.timeout_s : 0;
      if (left <= 0) hideOffer();
    };
    clearInterval(countdownTimer);
    countdownTimer = setInterval(tick, 250);
    tick();
    announce(t("offer.title"));
    $("#offer-accept").focus();
  }

  function hideOffer() {
    offer = null;
    dialog.hidden = true;
    document.body.classList.remove("ringing");
    clearInterval(countdownTimer);
    ringer.stop();
  }

  $("#offer-accept").addEventListener("click", async () => {
    if (!offer) return;
    const id = offer.consultation.id;
    hideOffer();
    try {
      const reply = await signalling.request("offer.accept", { consultation_id: id });
      await startCall(reply.consultation, reply.grant);
    } catch (err) {
      announce(t("error.generic", { message: err.message }));
      $("#lobby-error").textContent = t("offer.accept_failed", { message: err.message });
      $("#lobby-error").hidden = false;
    }
  });
  $("#offer-decline").addEventListener("click", async () => {
    if (!offer) return;
    const id = offer.consultation.id;
    hideOffer();
    await signalling.request("offer.decline", { consultation_id: id }).catch(() => {});
    refreshQueue();
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") $("#offer-decline").click();
  });
  signalling.on("offer.received", (m) => showOffer(m));
  signalling.on("offer.withdrawn", (m) => {
    if (offer && offer.consultation.id === m.consultation_id) {
      hideOffer();
      announce(t(`offer.withdrawn.${m.reason}`));
    }
  });

  // -- call ------------------------------------------------------------------------
  async function startCall(consultation, grant) {
    if (view && view.consultation.id === consultation.id) return;
    current = consultation;
    $("#lobby-error").hidden = true;
    screen("call");
    report = new ReportForm(signalling, token, consultation).mount($("#report-slot"));
    view = await joinCall($("#call-slot"), { signalling, token, role: "physician", consultation, grant, precheck });
    window.teleconsult.report = report;
    announce(t("call.started"));
  }

  async function finish(consultation) {
    if (view) {
      await view.close();
      view = null;
    }
    $("#ended-text").textContent = t(`physician.ended.${consultation.state}`,
      { reason: consultation.end_reason || "" });
    $("#ended").dataset.state = consultation.state;
    current = null;
    screen("ended");
    announce($("#ended-text").textContent);
  }
  $("#back-to-queue").addEventListener("click", () => {
    screen("lobby");
    refreshQueue();
  });

  signalling.on("consultation.started", (m) => startCall(m.consultation, m.grant));
  signalling.on("consultation.ended", (m) => {
    if (current && m.consultation.id === current.id) finish(m.consultation);
  });
  signalling.on("ready", async (hello) => {
    const state = hello.state || {};
    if (state.presence) renderPresence(state.presence);
    const active = (state.consultations || []).find((c) => c.state === "active" || c.state === "accepted");
    if (active && view && view.consultation.id === active.id) {
      view.setRecording(Boolean(active.recording?.active)); // it may have changed while we were away
    } else if (active) {
      try {
        await startCall(active, await rejoinGrant(signalling, active.id));
      } catch (_) { /* shown in the lobby */ }
    } else if (!active && current && !hello.resumed) {
      const reply = await signalling.request("consultation.get", { consultation_id: current.id }).catch(() => null);
      if (reply && reply.consultation.state !== "active") finish(reply.consultation);
    }
    const ringing = (state.offers || [])[0];
    if (ringing && !offer && !view) showOffer(ringing);
    refreshQueue();
  });
  onLanguageChange(() => {
    renderQueue();
    $("#my-specialties").textContent = principal.specialties.map(specialtyLabel).join(", ");
  });
  screen("lobby");
}

main();
