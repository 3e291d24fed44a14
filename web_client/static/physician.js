// The physician's page: presence, the waiting queue of their specialties, an
// incoming offer that rings, the workstation during a call (the patient's
// video, the device being examined, vitals and the report side by side), the
// report after it.
//
// Each consultation stands alone: its call view, its stills, its report are made
// when it starts and released when the next one starts (the report's draft is on
// the server by then).
import { $, h, show, announce } from "./dom.js";
import { t, onLanguageChange, formatDuration, setText } from "./i18n.js";
import { startPage } from "./page.js";
import { specialtyLabel, mountPreCheck, joinCall, rejoinGrant, fetchDirectory } from "./common.js";
import { Ringer } from "./ring.js";
import { ReportForm } from "./report.js";
import { StillStore } from "./stills.js";
import { mountGuests } from "./guests.js";

const QUEUE_POLL_MS = 5000;
const CHOOSABLE = new Set(["available", "busy", "away"]);

async function main() {
  const session = await startPage("physician");
  if (!session) return;
  const { token, principal, signalling, banner } = session;
  const precheck = mountPreCheck(token, signalling);
  const ringer = new Ringer();
  let queue = [];
  let queueFetchedAt = 0;
  let offer = null; // the offer.received ringing now
  let countdownTimer = null;
  let view = null;
  let current = null; // the consultation on screen (in the call, or just ended)
  let joining = null; // the id of the consultation being joined
  let report = null;
  let stills = null;
  let presence = { status: null, after: null, connected: true };

  const tokenNow = () => signalling.token || token;
  $("#my-specialties").textContent = principal.specialties.map(specialtyLabel).join(", ");
  // A name, not an id: the token's, else the directory's.
  if (!principal.name) {
    fetchDirectory(token).then((directory) => {
      const me = (directory.clinicians || []).find((c) => c.id === principal.sub);
      if (me?.name) $("#who").textContent = me.name;
    }).catch(() => {});
  }

  function screen(name) {
    show($("#lobby"), name === "lobby");
    show($("#call-slot"), name === "call");
    show($("#ended"), name === "ended");
    show($("#report-slot"), (name === "call" || name === "ended") && report !== null);
    document.body.dataset.screen = name;
  }

  // -- presence ----------------------------------------------------------------
  // The server owns it: what it says after a reload, in a call ("in consultation"), after.
  const presenceBox = $("#presence");
  function renderPresence(status, after = presence.after) {
    presence = { ...presence, status: status === undefined ? "offline" : status, after: after || null };
    const s = presence.status;
    for (const input of presenceBox.querySelectorAll("input")) {
      input.checked = input.value === s;
      input.disabled = s === "in_consultation" && input.value === "available";
    }
    presenceBox.dataset.status = s || "";
    const now = $("#presence-now");
    now.dataset.status = s || "";
    if (s === "in_consultation") {
      setText(now, presence.after ? "presence.in_consultation_then" : "presence.in_consultation",
        presence.after ? { after: { key: `presence.${presence.after}` } } : {});
    } else if (s !== null && !CHOOSABLE.has(s)) setText(now, "presence.offline_choose");
    else setText(now, null);
    now.hidden = !now.textContent;
  }
  presenceBox.addEventListener("change", async (event) => {
    const status = event.target.value;
    ringer.context?.resume?.();
    try {
      const reply = await signalling.request("presence.set", { status });
      renderPresence(reply.status, reply.after ?? null);
      announce(t(`presence.${reply.status}`));
    } catch (err) {
      renderPresence(presence.status);
      announce(t("error.generic", { message: err.message }));
    }
  });
  signalling.on("presence.changed", (m) => {
    if (m.physician !== principal.sub) return;
    renderPresence(m.status, m.status === "in_consultation" ? presence.after : null);
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
      setText($("#queue-error"), "physician.queue.unavailable", { message: err.code || err.message });
      $("#queue-error").hidden = false;
    }
  }

  async function pick(id) {
    try {
      const reply = await signalling.request("queue.pick", { consultation_id: id });
      window.teleconsult.rooms?.locate(id, reply.sfu_url);
      await startCall(reply.consultation, reply.grant);
    } catch (err) {
      setText($("#lobby-error"), "queue.pick_failed", { message: err.message });
      $("#lobby-error").hidden = false;
      refreshQueue();
    }
  }

  function renderQueue() {
    const body = $("#queue-body");
    const elapsed = (performance.now() - queueFetchedAt) / 1000;
    const canPick = presence.status === "available" && !offer && !view;
    body.replaceChildren(...queue.map((w) => h("tr", { dataset: { id: w.consultation_id, priority: w.priority,
      declined: w.declined_by_me ? "true" : "false" } },
    h("td", {}, h("span", { class: `priority ${w.priority}` }, t(`priority.${w.priority}`))),
    h("td", {}, specialtyLabel(w.specialty)),
    h("td", {}, w.site_name || w.site),
    h("td", { class: "num" }, formatDuration(w.waiting_s + elapsed)),
    h("td", {}, t(`consultation.state.${w.state}`), w.declined_by_me ? h("span", { class: "muted" }, ` · ${t("queue.declined_by_me")}`) : null),
    h("td", {}, w.state === "requested" ? h("button", { type: "button", class: "pick", disabled: !canPick,
      title: canPick ? "" : t("queue.pick_when_available"),
      "aria-label": t("queue.pick_label", { specialty: specialtyLabel(w.specialty), site: w.site_name || w.site }),
      onclick: () => pick(w.consultation_id) }, t("queue.pick")) : null))));
    $("#queue-empty").hidden = queue.length > 0;
    $("#queue-table").hidden = queue.length === 0;
    $("#queue-count").textContent = String(queue.length);
  }
  setInterval(renderQueue, 1000);
  setInterval(refreshQueue, QUEUE_POLL_MS);
  for (const type of ["consultation.updated", "consultation.ended", "offer.withdrawn", "presence.changed", "queue.changed"]) {
    signalling.addEventListener(type, () => refreshQueue());
  }

  // -- offers ----------------------------------------------------------------------
  const dialog = $("#offer");
  function renderOffer() {
    if (!offer) return;
    const c = offer.consultation;
    setText($("#offer-patient"), c.patient_ref ? "offer.patient" : null, { ref: c.patient_ref || "" });
    $("#offer-priority").textContent = t(`priority.${c.priority}`);
    $("#offer-priority").className = `priority ${c.priority}`;
    $("#offer-specialty").textContent = specialtyLabel(c.specialty);
    $("#offer-site").textContent = c.site_name || c.site;
    setText($("#offer-nurse"), c.nurse_name ? "offer.nurse" : null, { name: c.nurse_name || "" });
    $("#offer-reason").textContent = c.reason || "";
  }

  function showOffer(message) {
    offer = message;
    renderOffer();
    dialog.hidden = false;
    dialog.dataset.consultation = message.consultation.id;
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
    announce(`${t("offer.title")}. ${$("#offer-patient").textContent}`);
    $("#offer-accept").focus();
    renderQueue();
  }

  function hideOffer() {
    offer = null;
    dialog.hidden = true;
    document.body.classList.remove("ringing");
    clearInterval(countdownTimer);
    ringer.stop();
    renderQueue();
  }

  $("#offer-accept").addEventListener("click", async () => {
    if (!offer) return;
    const id = offer.consultation.id;
    hideOffer();
    try {
      const reply = await signalling.request("offer.accept", { consultation_id: id });
      window.teleconsult.rooms?.locate(id, reply.sfu_url);
      await startCall(reply.consultation, reply.grant);
    } catch (err) {
      announce(t("error.generic", { message: err.message }));
      setText($("#lobby-error"), "offer.accept_failed", { message: err.message });
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
  // Escape does not decline: a patient is not turned away by a stray key.
  signalling.on("offer.received", (m) => showOffer(m));
  signalling.on("offer.withdrawn", (m) => {
    if (offer && offer.consultation.id === m.consultation_id) {
      hideOffer();
      announce(t(`offer.withdrawn.${m.reason}`));
    }
  });

  // -- call ------------------------------------------------------------------------
  /** The report (and stills) of ``consultation``: made for it, the previous one's draft sent first. */
  function openReport(consultation) {
    if (report && report.consultation.id === consultation.id) return;
    const previous = report;
    const previousStills = stills;
    report = null;
    // Its draft goes to the server on its own: the new call does not wait for it.
    previous?.close().catch(() => {});
    previousStills?.release();
    stills = new StillStore(consultation.id, tokenNow);
    report = new ReportForm(signalling, token, consultation, { stills }).mount($("#report-slot"));
    window.teleconsult.report = report;
    window.teleconsult.stills = stills;
  }

  async function startCall(consultation, grant) {
    if ((view && view.consultation.id === consultation.id) || joining === consultation.id) return;
    joining = consultation.id;
    try {
      if (view) {
        await view.close();
        view = null;
      }
      current = consultation;
      $("#lobby-error").hidden = true;
      openReport(consultation);
      screen("call");
      view = await joinCall($("#call-slot"), { signalling, token, role: "physician", consultation, grant, precheck,
        banner, stills });
      // Invite an interpreter, a specialist, a relative; admit them, remove them (issue 14).
      mountGuests(view, { signalling, token, seat: "physician" });
      // The vital signs measured go with this consultation's report (the board lives as long as the call).
      const boundReport = report;
      view.board?.addEventListener("vitals", (event) => boundReport.setVitals(event.detail));
      announce(t("call.started"));
    } finally {
      joining = null;
    }
  }

  function renderEnded() {
    const c = current;
    if (!c) return;
    setText($("#ended-text"), `physician.ended.${c.state}`, { reason: c.end_reason || "" });
    const rows = [];
    if (c.patient_ref) rows.push(["ended.patient", c.patient_ref]);
    if (c.site_name || c.site) rows.push(["ended.site", c.site_name || c.site]);
    if (c.started_at && c.ended_at) rows.push(["ended.duration", formatDuration(c.ended_at - c.started_at)]);
    $("#ended-summary").replaceChildren(...rows.map(([key, value]) => h("div", {},
      h("dt", {}, t(key)), h("dd", {}, value))));
    setText($("#ended-next"), "physician.ended.next");
    // A finished consultation can go on as a request to another specialty, its stills offered.
    $("#ended-expertise").hidden = c.state !== "ended" || !c.id;
    if (c.id) $("#ended-expertise").href = `/expertise?as=physician&consultation=${encodeURIComponent(c.id)}`;
  }

  async function finish(consultation) {
    if (view) {
      const closing = view;
      view = null;
      await closing.close();
    }
    current = { ...current, ...consultation };
    $("#ended").dataset.state = consultation.state;
    renderEnded();
    screen("ended");
    precheck.restore();
    announce($("#ended-text").textContent);
  }
  $("#back-to-queue").addEventListener("click", () => {
    screen("lobby");
    refreshQueue();
  });

  // Typed text not on the server yet: say so before the page goes; send it as it goes.
  window.addEventListener("beforeunload", (event) => {
    if (!report?.unsaved()) return;
    report.flushOnUnload();
    event.preventDefault();
    event.returnValue = "";
  });

  signalling.on("consultation.started", (m) => startCall(m.consultation, m.grant));
  signalling.on("consultation.ended", (m) => {
    if (current && m.consultation.id === current.id && document.body.dataset.screen !== "ended") finish(m.consultation);
  });
  signalling.on("ready", async (hello) => {
    const state = hello.state || {};
    if ("presence" in state) renderPresence(state.presence || "offline", state.presence_after ?? null);
    const active = (state.consultations || []).find((c) => c.state === "active" || c.state === "accepted");
    if (active && view && view.consultation.id === active.id) {
      view.setRecording(Boolean(active.recording?.active)); // it may have changed while we were away
    } else if (active) {
      try {
        await startCall(active, await rejoinGrant(signalling, active.id));
      } catch (_) { /* shown in the lobby */ }
    } else if (!active && current && document.body.dataset.screen === "call" && !hello.resumed) {
      const reply = await signalling.request("consultation.get", { consultation_id: current.id }).catch(() => null);
      if (reply && reply.consultation.state !== "active") finish(reply.consultation);
    }
    const ringing = (state.offers || [])[0];
    if (ringing && !offer && !view) showOffer(ringing);
    refreshQueue();
  });
  onLanguageChange(() => {
    renderQueue();
    renderOffer();
    renderEnded();
    $("#my-specialties").textContent = principal.specialties.map(specialtyLabel).join(", ");
  });
  renderPresence(null);
  screen("lobby");
}

main();
