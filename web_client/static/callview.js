// The in-call screen shared by the nurse and the physician pages: the other
// party's camera large, our own preview, device panels, who is connected,
// the recording indicator, connection quality per track, and "end".
import { h, $, announce } from "./dom.js";
import { t, onLanguageChange } from "./i18n.js";
import { Call } from "./call.js";
import { DeviceBoard } from "./devices.js";
import { DEVICE_SOURCES, ROLES } from "./vocabulary.js";

const QUALITY_INTERVAL_MS = 2000;

export class CallView extends EventTarget {
  constructor(container, { signalling, consultation, grant, stream, token, role, iceServers, known }) {
    super();
    this.container = container;
    this.signalling = signalling;
    this.consultation = consultation;
    this.grant = grant || {};
    this.stream = stream;
    this.initialToken = token;
    this.role = role;
    this.iceServers = iceServers || [];
    this.known = known || [];
    this.peers = new Map(); // role -> state (from peer.connection and room events)
    this.listeners = [];
    this.lastQuality = [];
  }

  /** The access token now (auth.renew replaces it on the socket). */
  get token() {
    return this.signalling.token || this.initialToken;
  }

  _listen(type, fn) {
    const wrapped = (event) => fn(event.detail);
    this.signalling.addEventListener(type, wrapped);
    this.listeners.push([type, wrapped]);
  }

  mount() {
    const otherRole = this.role === ROLES.NURSE ? ROLES.PHYSICIAN : ROLES.NURSE;
    this.remoteVideo = h("video", { id: "remote-video", autoplay: true, playsInline: true,
      "aria-label": t(`call.video_of.${otherRole}`) });
    this.remoteAudio = h("audio", { id: "remote-audio", autoplay: true });
    this.placeholder = h("p", { class: "placeholder", id: "remote-placeholder" }, t(`call.waiting_video.${otherRole}`));
    this.selfVideo = h("video", { id: "self-video", autoplay: true, muted: true, playsInline: true,
      "aria-label": t("call.self") });
    this.selfVideo.srcObject = this.stream;
    this.participantsList = h("ul", { class: "participants", id: "participants", "aria-live": "polite" });
    this.endButton = h("button", { type: "button", class: "danger", id: "end-call", "data-i18n": "call.end", onclick: () => this.end() },
      t("call.end"));
    this.devices = h("div", { class: "devices", id: "devices", "aria-label": t("call.devices") });
    this.qualityBody = h("tbody");
    this.quality = h("details", { class: "card quality", id: "quality" },
      h("summary", { "data-i18n": "quality.title" }, t("quality.title")),
      h("table", {}, h("thead", {}, h("tr", {},
        ...["quality.track", "quality.bitrate", "quality.loss", "quality.fps", "quality.size"].map(
          (key) => h("th", { scope: "col", "data-i18n": key }, t(key))))), this.qualityBody));
    this.extra = h("div", { class: "call-extra" });
    // The physician starts and stops the recording, only with the patient's consent.
    this.recordButton = null;
    if (this.role === ROLES.PHYSICIAN && this.consultation.consent_recording) {
      this.recordButton = h("button", { type: "button", id: "record", "aria-pressed": "false",
        "data-i18n": "call.record.start", onclick: () => this.toggleRecording() }, t("call.record.start"));
    }
    this.recordError = h("p", { class: "error", id: "record-error", role: "alert", hidden: true });
    this.element = h("section", { class: "call", id: "call", "aria-label": t("call.title") },
      h("div", { class: "call-main" },
        h("div", { class: "stage" }, this.remoteVideo, this.placeholder, this.remoteAudio,
          h("div", { class: "self" }, this.selfVideo)),
        h("aside", { class: "call-side card" },
          h("h2", { "data-i18n": "call.title" }, t("call.title")),
          h("h3", { "data-i18n": "call.connected" }, t("call.connected")), this.participantsList,
          this.recordButton, this.recordError, this.endButton)),
      this.devices, this.extra, this.quality);
    this.container.replaceChildren(this.element);
    onLanguageChange(() => this.renderParticipants());
    return this;
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
    this.board = new DeviceBoard(this.devices, call, { control: Boolean(this.grant.command), token: this.token });
    call.addEventListener("track", (event) => this.onTrack(event.detail));
    call.addEventListener("track-removed", (event) => this.onTrackRemoved(event.detail));
    call.addEventListener("participants", () => this.renderParticipants());
    call.addEventListener("state", (event) => {
      this.element.dataset.media = event.detail.state;
      this.renderParticipants();
    });
    this._listen("peer.connection", (m) => {
      if (m.consultation_id !== this.consultation.id) return;
      this.peers.set(m.role, m.state);
      announce(t(`peer.${m.state}`, { role: t(`role.${m.role}`) }));
      this.renderParticipants();
    });
    for (const type of ["recording.started", "recording.stopped", "recording.failed"]) {
      this._listen(type, (m) => {
        if (m.consultation_id && m.consultation_id !== this.consultation.id) return;
        this.setRecording(type === "recording.started");
        if (type === "recording.failed") this.showRecordError(t("call.record.failed"));
      });
    }
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

  showRecordError(text) {
    this.recordError.textContent = text;
    this.recordError.hidden = !text;
  }

  async toggleRecording() {
    this.recordButton.disabled = true;
    this.showRecordError("");
    try {
      const response = await fetch(`/api/consultations/${encodeURIComponent(this.consultation.id)}/recording`, {
        method: "POST", body: JSON.stringify({ action: this.recording ? "stop" : "start" }),
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.reason || `HTTP ${response.status}`);
      this.setRecording(Boolean(body.recording)); // the socket event confirms it too
    } catch (error) {
      this.showRecordError(t("call.record.refused", { message: error.message }));
    } finally {
      this.recordButton.disabled = false;
    }
  }

  onTrack({ publication, track }) {
    const source = publication.source;
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

  renderParticipants() {
    if (!this.call) return;
    const rows = [{ key: "self", label: t("call.you", { role: t(`role.${this.role}`) }), state: "connected" }];
    const seen = new Set([this.role]);
    for (const p of this.call.participants.values()) {
      const role = p.role && t(`role.${p.role}`) !== `role.${p.role}` ? p.role : p.identity;
      if (seen.has(role)) continue;
      seen.add(role);
      rows.push({ key: role, label: t(`role.${role}`) === `role.${role}` ? role : t(`role.${role}`),
        state: this.peers.get(role) || p.state });
    }
    for (const [role, state] of this.peers) {
      if (seen.has(role)) continue;
      seen.add(role);
      rows.push({ key: role, label: t(`role.${role}`), state });
    }
    this.participantsList.replaceChildren(...rows.map((r) => h("li", { dataset: { role: r.key, state: r.state } },
      h("span", { class: "dot", "aria-hidden": "true" }), h("span", {}, r.label),
      h("span", { class: "muted" }, t(`peer.state.${r.state}`)))));
  }

  async updateQuality() {
    if (!this.call || this.call.closed) return;
    try {
      this.lastQuality = await this.call.quality();
    } catch (_) {
      return;
    }
    this.qualityBody.replaceChildren(...this.lastQuality.map((q) => h("tr", { dataset: { source: q.publication.source } },
      h("th", { scope: "row" }, t(`device.${q.publication.source}`)),
      h("td", {}, q.bitrate_kbps === null ? "–" : `${q.bitrate_kbps} kbit/s`),
      h("td", {}, `${q.loss_pct.toFixed(1)} %`),
      h("td", {}, q.fps === null ? "–" : String(Math.round(q.fps))),
      h("td", {}, q.width ? `${q.width}×${q.height}` : "–"))));
  }

  async end() {
    this.endButton.disabled = true;
    try {
      await this.signalling.request("consultation.end", { consultation_id: this.consultation.id, reason: "completed" });
    } catch (error) {
      this.endButton.disabled = false;
      announce(t("error.generic", { message: error.message }));
    }
  }

  async close() {
    clearInterval(this.qualityTimer);
    for (const [type, fn] of this.listeners) this.signalling.removeEventListener(type, fn);
    this.board?.close();
    await this.call?.close({ leave: false });
    this.setRecording(false);
  }
}
