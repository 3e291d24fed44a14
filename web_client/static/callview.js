// The in-call screen shared by the nurse and the physician pages: the other
// party's camera large, our own preview, device panels, who is connected,
// the recording indicator, connection quality per track, and "end" (confirmed).
//
// Everything here lives for one consultation: the camera and microphone it was
// given (it stops them at the end), its listeners on the socket, its language
// listeners, its banner conditions. close() releases all of them.
//
// Who is connected is derived from what is true now, not from the last event:
// a party that dropped and came back on a new page (a reload: no "resumed" ever
// comes for the old session) is connected again as soon as it joins the room or
// its media arrives.
import { h, $, announce } from "./dom.js";
import { t, onLanguageChange, translate, formatNumber, formatPercent, setText } from "./i18n.js";
import { Call } from "./call.js";
import { DeviceBoard } from "./devices.js";
import { DEVICE_SOURCES, ROLES } from "./vocabulary.js";

const QUALITY_INTERVAL_MS = 2000;
const REACQUIRE_DELAYS_MS = [0, 1000, 2000, 4000, 8000];
const HUMAN_ROLES = [ROLES.NURSE, ROLES.PHYSICIAN];

/** The constraints a lost local track of ``kind`` is opened again with. */
function constraintsFor(kind) {
  return kind === "video" ? { video: { width: 1280, height: 720 } } : { audio: true };
}

export class CallView extends EventTarget {
  constructor(container, { signalling, consultation, grant, stream, token, role, iceServers, known, banner, stills }) {
    super();
    this.container = container;
    this.signalling = signalling;
    this.consultation = consultation;
    this.grant = grant || {};
    this.stream = stream || new MediaStream();
    this.initialToken = token;
    this.role = role;
    this.iceServers = iceServers || [];
    this.known = known || [];
    this.banner = banner || null;
    this.stills = stills || null; // the consultation's StillStore
    this.peers = new Map(); // role -> {state, at}: the latest thing known about each party
    this.peerLog = []; // [time, role, state, why]: how it came to be (for people debugging, and the tests)
    this.joinedSession = new Map(); // role -> the SFU session of its latest participant.joined
    this.listeners = [];
    this.releases = []; // functions that undo what this consultation set up
    this.lastQuality = [];
    this.uplink = null; // the cabin agent's latest `uplink` message (devices/agent_uplink.py)
    this.closed = false;
    this.everConnected = false;
    this.reacquiring = new Set();
    // For people debugging and for the tests: when the page joined, when the other party's
    // camera showed its first frame (Date.now() milliseconds).
    this.timeline = { mounted: Date.now(), firstRemoteFrame: null, localTrackRestarts: 0 };
  }

  /** The access token now (auth.renew replaces it on the socket). */
  get token() {
    return this.signalling.token || this.initialToken;
  }

  get otherRole() {
    return this.role === ROLES.NURSE ? ROLES.PHYSICIAN : ROLES.NURSE;
  }

  _listen(type, fn) {
    const wrapped = (event) => fn(event.detail);
    this.signalling.addEventListener(type, wrapped);
    this.listeners.push([type, wrapped]);
  }

  /** The name of the party in ``role`` (from the consultation), else the role's word. */
  partyName(role) {
    const c = this.consultation;
    const name = role === ROLES.PHYSICIAN ? c.physician_name : role === ROLES.NURSE ? c.nurse_name : "";
    return name || t(`role.${role}`);
  }

  mount() {
    const other = this.otherRole;
    this.remoteVideo = h("video", { id: "remote-video", autoplay: true, playsInline: true,
      "aria-label": t(`call.video_of.${other}`), "data-i18n-aria-label": `call.video_of.${other}` });
    this.remoteVideo.addEventListener("resize", () => {
      if (this.remoteVideo.videoWidth > 0 && !this.timeline.firstRemoteFrame) {
        this.timeline.firstRemoteFrame = Date.now();
        this.element.dataset.remoteVideo = "playing";
      }
    });
    this.remoteAudio = h("audio", { id: "remote-audio", autoplay: true });
    this.placeholder = h("p", { class: "placeholder", id: "remote-placeholder",
      "data-i18n": `call.waiting_video.${other}` }, t(`call.waiting_video.${other}`));
    this.selfVideo = h("video", { id: "self-video", autoplay: true, muted: true, playsInline: true,
      "aria-label": t("call.self"), "data-i18n-aria-label": "call.self" });
    this.selfVideo.srcObject = this.stream;
    this.localStatus = h("p", { class: "local-status", id: "local-media", role: "status", hidden: true });
    this.participantsList = h("ul", { class: "participants", id: "participants" });
    this.endButton = h("button", { type: "button", class: "danger", id: "end-call", "data-i18n": "call.end",
      onclick: () => this.confirmEnd() }, t("call.end"));
    this.devices = h("div", { class: "devices", id: "devices", role: "region",
      "aria-label": t("call.devices"), "data-i18n-aria-label": "call.devices" });
    this.qualityBody = h("tbody");
    this.quality = h("details", { class: "card quality", id: "quality" },
      h("summary", { "data-i18n": "quality.title" }, t("quality.title")),
      h("table", {}, h("thead", {}, h("tr", {},
        ...["quality.track", "quality.bitrate", "quality.loss", "quality.fps", "quality.size", "quality.sent"].map(
          (key) => h("th", { scope: "col", "data-i18n": key }, t(key))))), this.qualityBody));
    this.extra = h("div", { class: "call-extra" });
    // The physician starts and stops the recording, only with the patient's consent.
    this.recordButton = null;
    if (this.role === ROLES.PHYSICIAN && this.consultation.consent_recording) {
      this.recordButton = h("button", { type: "button", id: "record", "aria-pressed": "false",
        "data-i18n": "call.record.start", onclick: () => this.toggleRecording() }, t("call.record.start"));
    }
    this.recordError = h("p", { class: "error", id: "record-error", role: "alert", hidden: true });
    this.patientLine = h("p", { class: "patient-line", id: "call-patient" });
    this.endDialog = this._endDialog();
    this.element = h("section", { class: "call", id: "call", "aria-labelledby": "call-title",
      dataset: { role: this.role } },
    h("div", { class: "call-stage" },
      h("div", { class: "stage" }, this.remoteVideo, this.placeholder, this.remoteAudio,
        h("div", { class: "self" }, this.selfVideo))),
    h("aside", { class: "call-side card" },
      h("h2", { id: "call-title", "data-i18n": "call.title" }, t("call.title")),
      this.patientLine,
      h("h3", { id: "participants-title", "data-i18n": "call.connected" }, t("call.connected")),
      this.participantsList, this.localStatus,
      h("div", { class: "call-actions" }, this.recordButton, this.endButton),
      this.recordError),
    this.devices, this.quality, this.extra, this.endDialog);
    this.participantsList.setAttribute("aria-labelledby", "participants-title");
    this.container.replaceChildren(this.element);
    this.renderPatient();
    this.releases.push(onLanguageChange(() => {
      translate(this.element);
      this.renderPatient();
      this.renderParticipants();
      this.renderQuality();
    }));
    this._watchLocalTracks();
    return this;
  }

  /** Who the consultation is about: the patient's reference, the site, the other party. */
  renderPatient() {
    const c = this.consultation;
    const parts = [];
    if (c.patient_ref) parts.push(t("call.patient", { ref: c.patient_ref }));
    if (c.site_name || c.site) parts.push(c.site_name || c.site);
    this.patientLine.textContent = parts.join(" · ");
    this.patientLine.hidden = parts.length === 0;
  }

  _endDialog() {
    const dialog = h("dialog", { class: "confirm", id: "end-dialog", "aria-labelledby": "end-dialog-title",
      "aria-describedby": "end-dialog-text" });
    const cancel = h("button", { type: "button", id: "end-cancel", "data-i18n": "action.cancel",
      onclick: () => dialog.close("cancel") }, t("action.cancel"));
    const confirm = h("button", { type: "button", class: "danger", id: "end-confirm", "data-i18n": "call.end_confirm",
      onclick: () => {
        dialog.close("end");
        this.end();
      } }, t("call.end_confirm"));
    dialog.append(
      h("h2", { id: "end-dialog-title", "data-i18n": "call.end_title" }, t("call.end_title")),
      h("p", { id: "end-dialog-text", "data-i18n": `call.end_text.${this.role}` }, t(`call.end_text.${this.role}`)),
      h("div", { class: "actions" }, cancel, confirm));
    return dialog;
  }

  /** "End the consultation" ends it for everyone: ask first (the safe choice has the focus). */
  confirmEnd() {
    if (this.endDialog.open) return;
    this.endDialog.showModal();
    this.endDialog.querySelector("#end-cancel").focus();
  }

  async start() {
    const call = new Call(this.signalling, {
      consultationId: this.consultation.id,
      identity: this.grant.identity || this.role,
      publish: (this.grant.publish || ["camera", "microphone"]).filter((s) => s === "camera" || s === "microphone"),
      stream: this.stream,
      iceServers: this.iceServers,
      known: this.known,
    });
    this.call = call;
    this.board = new DeviceBoard(this.devices, call, { control: Boolean(this.grant.command), token: this.token,
      stills: this.stills });
    this.board.addEventListener("uplink", (event) => this.onUplink(event.detail));
    call.addEventListener("track", (event) => this.onTrack(event.detail));
    call.addEventListener("track-removed", (event) => this.onTrackRemoved(event.detail));
    call.addEventListener("participant", (event) => this.onParticipant(event.detail));
    call.addEventListener("participants", () => this.renderParticipants());
    call.addEventListener("state", (event) => this.onMediaState(event.detail.state));
    this._listen("peer.connection", (m) => {
      if (m.consultation_id !== this.consultation.id) return;
      this.setPeer(m.role, m.state, "peer.connection");
      announce(t(`peer.${m.state}`, { role: this.partyName(m.role) }));
    });
    for (const type of ["recording.started", "recording.stopped", "recording.failed"]) {
      this._listen(type, (m) => {
        if (m.consultation_id && m.consultation_id !== this.consultation.id) return;
        this.setRecording(type === "recording.started");
        if (type === "recording.failed") this.showRecordError("call.record.failed");
      });
    }
    // Names and state as the server has them now (the physician's name once accepted...).
    this._listen("consultation.updated", (m) => {
      if (m.consultation?.id !== this.consultation.id) return;
      this.consultation = { ...this.consultation, ...m.consultation };
      this.renderPatient();
      this.renderParticipants();
    });
    // The room moved to another node (the old one died): new room token, new peer connection.
    this._listen("room.moved", (m) => {
      if (m.consultation?.id !== this.consultation.id || !this.call) return;
      this.grant = m.grant || this.grant;
      this.element.dataset.moved = String(Number(this.element.dataset.moved || 0) + 1);
      this.call.moved(m.publications || []).catch(() => {});
    });
    // Back after a dropped socket: room events may have been missed meanwhile.
    this._listen("ready", (hello) => {
      if (hello.resumed) this.call?.reconcile().catch(() => {});
    });
    // A page loaded mid-recording: the consultation object says so.
    this.setRecording(Boolean(this.consultation.recording?.active));
    this.renderParticipants();
    this.qualityTimer = setInterval(() => this.updateQuality(), QUALITY_INTERVAL_MS);
    window.teleconsult.call = call;
    await call.start();
  }

  // -- who is connected -------------------------------------------------------------------

  /** What we know now about the party in ``role``: connected, dropped, left, lost. */
  setPeer(role, state, why = "") {
    if (!role || role === this.role) return;
    // "resumed" stays as the server said it (shown as connected).
    const normal = state === "joined" ? "connected" : state;
    this.peers.set(role, { state: normal, at: Date.now() });
    this.peerLog.push([Date.now(), role, state, why]);
    if (this.peerLog.length > 50) this.peerLog.shift();
    this.renderParticipants();
  }

  onParticipant({ event, role, identity, session }) {
    const who = role || identity;
    if (event === "joined") {
      this.joinedSession.set(who, session || "");
      this.setPeer(who, "connected", "room");
    } else if (event === "left") {
      // The old page of a party that reloaded may leave after its new page joined: not "away".
      const latest = this.joinedSession.get(who);
      if (session && latest && latest !== session) return;
      this.setPeer(who, "left", "room");
    }
  }

  peerState(role) {
    return this.peers.get(role)?.state || null;
  }

  renderParticipants() {
    if (!this.participantsList) return;
    const rows = [{ key: this.role, label: t("call.you", { role: t(`role.${this.role}`) }), state: "connected", self: true }];
    const seen = new Set([this.role]);
    const add = (role) => {
      if (!role || seen.has(role)) return;
      seen.add(role);
      const state = this.peerState(role) || "connected";
      rows.push({ key: role, label: role === ROLES.AGENT ? t("role.agent") : this.partyName(role), state });
    };
    for (const p of this.call?.participants.values() || []) add(p.role && t(`role.${p.role}`) !== `role.${p.role}` ? p.role : p.identity);
    for (const role of this.peers.keys()) add(role);
    this.participantsList.replaceChildren(...rows.map((r) => h("li", { dataset: { role: r.key, state: r.state } },
      h("span", { class: "dot", "aria-hidden": "true" }), h("span", { class: "name" }, r.label),
      h("span", { class: "muted" }, t(`peer.state.${r.state}`)))));
    this.renderPeerBanner();
  }

  /** The banner says the other person is away for as long as they are, no longer. */
  renderPeerBanner() {
    if (!this.banner || this.closed) return;
    for (const role of [...HUMAN_ROLES, ROLES.AGENT]) {
      if (role === this.role) continue;
      const state = this.peerState(role);
      const away = state === "dropped" || state === "left" || state === "lost";
      const key = !away ? null : state === "lost" ? "call.banner.peer_lost" : "call.banner.peer_away";
      this.banner.set(`peer-${role}`, key, { params: { name: this.partyName(role) },
        priority: role === ROLES.AGENT ? 5 : 10 });
    }
  }

  /** The call's own media path: a banner while it is down after having worked. */
  onMediaState(state) {
    this.element.dataset.media = state;
    if (state === "connected") this.everConnected = true;
    const down = state === "disconnected" || state === "failed"
      || (this.everConnected && (state === "new" || state === "connecting"));
    if (!this.closed) this.banner?.set("media", down ? "call.banner.media" : null, { priority: 15 });
    this.renderParticipants();
  }

  // -- our camera and microphone --------------------------------------------------------------

  _watchLocalTracks() {
    for (const track of this.stream.getTracks()) this._watchTrack(track);
  }

  _watchTrack(track) {
    const onEnded = () => this.localTrackEnded(track);
    track.addEventListener("ended", onEnded);
    this.releases.push(() => track.removeEventListener("ended", onEnded));
  }

  /** Our camera or microphone stopped (unplugged, taken by another application): open it again. */
  async localTrackEnded(track) {
    if (this.closed || this.reacquiring.has(track.kind) || !this.stream.getTracks().includes(track)) return;
    const kind = track.kind;
    const device = kind === "video" ? "camera" : "microphone";
    this.reacquiring.add(kind);
    this.showLocal(`call.local.lost.${device}`);
    this.banner?.set(`local-${device}`, `call.local.lost.${device}`, { priority: 12 });
    announce(t(`call.local.lost.${device}`));
    try {
      for (const delay of REACQUIRE_DELAYS_MS) {
        if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
        if (this.closed) return;
        let fresh;
        try {
          fresh = (await navigator.mediaDevices.getUserMedia(constraintsFor(kind))).getTracks()[0];
        } catch (_) {
          continue;
        }
        if (this.closed) {
          fresh.stop();
          return;
        }
        this.stream.removeTrack(track);
        track.stop();
        this.stream.addTrack(fresh);
        this._watchTrack(fresh);
        await this.call?.replaceTrack(device, fresh);
        if (kind === "video") this.selfVideo.srcObject = this.stream;
        this.timeline.localTrackRestarts += 1;
        this.banner?.clear(`local-${device}`);
        this.banner?.flash(`call.local.back.${device}`);
        this.showLocal(`call.local.back.${device}`);
        announce(t(`call.local.back.${device}`));
        return;
      }
      this.showLocal(`call.local.failed.${device}`, true);
      this.banner?.set(`local-${device}`, `call.local.failed.${device}`, { priority: 12 });
    } finally {
      this.reacquiring.delete(kind);
    }
  }

  showLocal(key, isError = false) {
    setText(this.localStatus, key);
    this.localStatus.hidden = !key;
    this.localStatus.classList.toggle("error", isError);
  }

  // -- recording ---------------------------------------------------------------------------------

  setRecording(on) {
    this.recording = on;
    const badge = $("#recording");
    if (badge) badge.hidden = !on;
    if (on) announce(t("call.recording"));
    if (this.recordButton) {
      const key = on ? "call.record.stop" : "call.record.start";
      this.recordButton.dataset.i18n = key;
      this.recordButton.textContent = t(key);
      this.recordButton.setAttribute("aria-pressed", String(on));
    }
  }

  showRecordError(key, params) {
    setText(this.recordError, key, params);
    this.recordError.hidden = !key;
  }

  async toggleRecording() {
    this.recordButton.disabled = true;
    this.showRecordError(null);
    try {
      const response = await fetch(`/api/consultations/${encodeURIComponent(this.consultation.id)}/recording`, {
        method: "POST", body: JSON.stringify({ action: this.recording ? "stop" : "start" }),
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.reason || `HTTP ${response.status}`);
      this.setRecording(Boolean(body.recording)); // the socket event confirms it too
    } catch (error) {
      this.showRecordError("call.record.refused", { message: error.message });
    } finally {
      this.recordButton.disabled = false;
    }
  }

  // -- tracks ------------------------------------------------------------------------------------

  onTrack({ publication, track }) {
    const source = publication.source;
    // Media from a party is the surest sign that it is here (a reloaded page has no "resumed").
    if (publication.role || publication.identity) {
      this.setPeer(publication.role || publication.identity, "connected", `track ${source}`);
    }
    if (source === "camera") {
      this.remoteStream ||= new MediaStream();
      this.remoteStream.getVideoTracks().forEach((tr) => this.remoteStream.removeTrack(tr));
      this.remoteStream.addTrack(track);
      this.remoteVideo.srcObject = this.remoteStream;
      this.remoteVideo.dataset.publication = publication.id;
      this.placeholder.hidden = true;
    } else if (source === "microphone") {
      this.remoteAudio.srcObject = new MediaStream([track]);
    } else if (DEVICE_SOURCES.includes(source) || track.kind === "video") {
      this.board.addTrack(publication, track);
    }
    this.renderParticipants();
  }

  onTrackRemoved({ publication }) {
    if (publication.source === "camera" && this.remoteVideo.dataset.publication === publication.id) {
      this.remoteVideo.srcObject = null;
      this.placeholder.hidden = false;
    } else if (publication.source !== "microphone") {
      this.board.removeTrack(publication);
    }
    this.renderParticipants();
  }

  // -- quality -----------------------------------------------------------------------------------

  async updateQuality() {
    if (!this.call || this.call.closed) return;
    try {
      this.lastQuality = await this.call.quality();
    } catch (_) {
      return;
    }
    this.renderQuality();
  }

  renderQuality() {
    this.qualityBody.replaceChildren(...this.lastQuality.map((q) => h("tr", { dataset: { source: q.publication.source } },
      h("th", { scope: "row" }, t(`device.${q.publication.source}`)),
      h("td", { class: "num" }, q.bitrate_kbps === null ? "–" : t("unit.kbps", { value: formatNumber(q.bitrate_kbps) })),
      h("td", { class: "num" }, formatPercent(q.loss_pct)),
      h("td", { class: "num" }, q.fps === null ? "–" : formatNumber(Math.round(q.fps))),
      h("td", { class: "num" }, q.width ? `${q.width}×${q.height}` : "–"),
      h("td", { class: "num", dataset: { reason: this.uplinkTrack(q.publication.source)?.reason || "" } },
        this.uplinkText(q.publication.source)))));
  }

  // -- the cabin's uplink (the agent's `uplink` message) ----------------------------------------

  uplinkTrack(source) {
    return this.uplink?.tracks?.find((track) => track.device === source) || null;
  }

  /** What the agent sends of ``source`` now: its target, or that it is paused. */
  uplinkText(source) {
    const track = this.uplinkTrack(source);
    if (!track) return "–";
    if (track.paused) return t("quality.paused");
    return t("unit.kbps", { value: formatNumber(track.target_kbps) });
  }

  /** A weak uplink at the cabin: the banner says what the agent gave up, the table shows each track. */
  onUplink(state) {
    this.uplink = state;
    const tracks = state?.tracks || [];
    const audioOnly = state?.mode === "audio_only" || state?.mode === "probing";
    // Reduced by the link only: at the start the agent ramps its devices up on any link.
    const reduced = state?.congested === true && tracks.some((track) => track.kind === "video" && track.reason !== "full");
    const key = audioOnly ? "call.banner.uplink_audio_only" : reduced ? "call.banner.uplink_weak" : null;
    if (!this.closed) this.banner?.set("uplink", key, { priority: 4 });
    this.element.dataset.uplink = state?.mode || "";
    this.renderQuality();
  }

  // -- end ---------------------------------------------------------------------------------------

  async end() {
    this.endButton.disabled = true;
    try {
      await this.signalling.request("consultation.end", { consultation_id: this.consultation.id, reason: "completed" });
    } catch (error) {
      this.endButton.disabled = false;
      announce(t("error.generic", { message: error.message }));
    }
  }

  /** The consultation is over for this page: release everything it set up. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.qualityTimer);
    for (const [type, fn] of this.listeners) this.signalling.removeEventListener(type, fn);
    this.listeners = [];
    for (const release of this.releases.splice(0)) release();
    if (this.endDialog.open) this.endDialog.close();
    for (const name of ["media", "local-camera", "local-microphone",
      ...[...HUMAN_ROLES, ROLES.AGENT].map((role) => `peer-${role}`), "uplink"]) this.banner?.clear(name);
    this.board?.close();
    await this.call?.close({ leave: false });
    // Our camera and microphone: stopped, so that the next consultation opens them afresh.
    for (const track of this.stream.getTracks()) track.stop();
    this.selfVideo.srcObject = null;
    this.remoteVideo.srcObject = null;
    this.remoteAudio.srcObject = null;
    this.setRecording(false);
    this.dispatchEvent(new Event("closed"));
  }
}
