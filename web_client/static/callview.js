// The in-call screen shared by the nurse, the physician and the guest pages: the
// other party's camera large, our own preview, device panels, who is connected,
// the recording indicator, connection quality per track, and "end" (confirmed).
//
// With guests (issue 14: an interpreter, a specialist, a relative) the stage is a
// grid: the primary party (the patient's side, or the physician for the nurse)
// keeps the large tile, each other person a labelled tile (name and role) with its
// own audio, our preview one more tile. Device tracks stay on the device board.
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
import { DEVICE_SOURCES, GUEST_ROLES, ROLES } from "./vocabulary.js";

const QUALITY_INTERVAL_MS = 2000;
const REACQUIRE_DELAYS_MS = [0, 1000, 2000, 4000, 8000];
const HUMAN_ROLES = [ROLES.NURSE, ROLES.PHYSICIAN];
// A guest's room identity is "<role>-<hex>": its media tells who it is even without a role.
const GUEST_IDENTITY = new RegExp(`^(${GUEST_ROLES.join("|")})-`);

export function isGuestRole(role) {
  return GUEST_ROLES.includes(role);
}

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
    this.tiles = new Map(); // identity -> {element, video, audio, label, role}: the other people's tiles
    this.guests = new Map(); // identity -> invitation (name, role) of the consultation's guests
    // For people debugging and for the tests: when the page joined, when the other party's
    // camera showed its first frame (Date.now() milliseconds).
    this.timeline = { mounted: Date.now(), firstRemoteFrame: null, localTrackRestarts: 0 };
  }

  /** The access token now (auth.renew replaces it on the socket). */
  get token() {
    return this.signalling.token || this.initialToken;
  }

  /** The party on the large tile: the physician for the nurse, the patient's side for everyone else. */
  get otherRole() {
    return this.role === ROLES.NURSE ? ROLES.PHYSICIAN : ROLES.NURSE;
  }

  get isGuest() {
    return isGuestRole(this.role);
  }

  /** Who a participant, publication or event is in the participants list: a guest by its identity
   * (two guests may share a role), everyone else by role. */
  partyKey({ role, identity }) {
    if (isGuestRole(role) || (!role && GUEST_IDENTITY.test(identity || ""))) return identity || role;
    return role || identity;
  }

  /** Whether ``publication`` (camera, microphone) is the primary party's: the large tile. */
  isPrimary(publication) {
    const role = publication.role || "";
    if (this.isGuest) return role === ROLES.NURSE;
    return !isGuestRole(role) && !GUEST_IDENTITY.test(publication.identity || "");
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

  /** A tile's or a list row's words for a person: "name · role" (a guest's name from its invitation). */
  personLabel(role, identity = "") {
    const guest = identity ? this.guests.get(identity) : null;
    const roleWord = role ? t(`role.${role}`) : "";
    const name = guest ? guest.name : isGuestRole(role) ? "" : this.partyName(role);
    if (!name || name === roleWord) return roleWord || identity;
    return t("call.person", { name, role: roleWord });
  }

  /** The consultation's guests (their invitations): names on their tiles and in the list. */
  setGuests(invitations) {
    this.guests = new Map((invitations || []).filter((i) => i.identity).map((i) => [i.identity, i]));
    for (const [identity, tile] of this.tiles) tile.label.textContent = this.personLabel(tile.role, identity);
    this.renderParticipants();
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
    this.primaryLabel = h("p", { class: "tile-label", id: "remote-label" }, this.personLabel(other));
    this.primaryTile = h("div", { class: "tile primary", dataset: { role: other } },
      this.remoteVideo, this.placeholder, this.primaryLabel);
    this.selfVideo = h("video", { id: "self-video", autoplay: true, muted: true, playsInline: true,
      "aria-label": t("call.self"), "data-i18n-aria-label": "call.self" });
    this.selfVideo.srcObject = this.stream;
    this.selfTile = h("div", { class: "self" }, this.selfVideo,
      h("p", { class: "tile-label", "data-i18n": "call.self" }, t("call.self")));
    this.stageElement = h("div", { class: "stage", id: "stage", dataset: { layout: "single", videos: "2" } },
      this.primaryTile, this.remoteAudio, this.selfTile);
    this.localStatus = h("p", { class: "local-status", id: "local-media", role: "status", hidden: true });
    this.participantsList = h("ul", { class: "participants", id: "participants" });
    // A guest leaves; it does not end the consultation for everyone.
    this.endButton = this.isGuest
      ? h("button", { type: "button", id: "leave-call", "data-i18n": "call.leave",
        onclick: () => this.dispatchEvent(new Event("leave")) }, t("call.leave"))
      : h("button", { type: "button", class: "danger", id: "end-call", "data-i18n": "call.end",
        onclick: () => this.confirmEnd() }, t("call.end"));
    // Where the page puts its guests' panel (the physician's invitations, the nurse's consent).
    this.guestSlot = h("div", { class: "guest-slot", id: "guest-slot" });
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
    this.endDialog = this.isGuest ? null : this._endDialog();
    this.element = h("section", { class: "call", id: "call", "aria-labelledby": "call-title",
      dataset: { role: this.role } },
    h("div", { class: "call-stage" }, this.stageElement),
    h("aside", { class: "call-side card" },
      h("h2", { id: "call-title", "data-i18n": "call.title" }, t("call.title")),
      this.patientLine,
      h("h3", { id: "participants-title", "data-i18n": "call.connected" }, t("call.connected")),
      this.participantsList, this.localStatus,
      this.guestSlot,
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
      this.primaryLabel.textContent = this.personLabel(this.otherRole);
      for (const [identity, tile] of this.tiles) tile.label.textContent = this.personLabel(tile.role, identity);
    }));
    this._watchLocalTracks();
    this.layout();
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
    if (!this.endDialog || this.endDialog.open) return;
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
      // The room's media node: its socket takes the media requests when it is another origin.
      sfuUrl: () => window.teleconsult.rooms?.sfuUrl(this.consultation.id) || null,
    });
    this.call = call;
    // A remote specialist listens to the stethoscope like the physician (the cabin's page stays silent).
    this.board = new DeviceBoard(this.devices, call, { control: Boolean(this.grant.command), token: this.token,
      stills: this.stills, audible: this.isGuest });
    this.board.addEventListener("uplink", (event) => this.onUplink(event.detail));
    call.addEventListener("track", (event) => this.onTrack(event.detail));
    call.addEventListener("track-removed", (event) => this.onTrackRemoved(event.detail));
    call.addEventListener("participant", (event) => this.onParticipant(event.detail));
    call.addEventListener("participants", () => this.renderParticipants());
    call.addEventListener("state", (event) => this.onMediaState(event.detail.state));
    this._listen("peer.connection", (m) => {
      if (m.consultation_id !== this.consultation.id) return;
      if (isGuestRole(m.role) && !m.identity) return; // which guest: its tile and its row say
      this.setPeer(this.partyKey(m), m.state, "peer.connection");
      announce(t(`peer.${m.state}`, { role: this.personLabel(m.role, m.identity || "") }));
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
      this.primaryLabel.textContent = this.personLabel(this.otherRole);
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
    const who = this.partyKey({ role, identity });
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
    const roleOf = new Map(); // a guest's key (its identity) -> its role
    const add = (key) => {
      if (!key || seen.has(key)) return;
      seen.add(key);
      const state = this.peerState(key) || "connected";
      const role = roleOf.get(key) || this.guests.get(key)?.role || key;
      const label = role === ROLES.AGENT ? t("role.agent") : isGuestRole(role) ? this.personLabel(role, key)
        : this.partyName(role);
      rows.push({ key, role, label, state });
    };
    for (const p of this.call?.participants.values() || []) {
      const known = p.role && t(`role.${p.role}`) !== `role.${p.role}`;
      const key = known ? this.partyKey(p) : p.identity;
      if (known && isGuestRole(p.role)) roleOf.set(key, p.role);
      add(key);
    }
    for (const key of this.peers.keys()) add(key);
    this.participantsList.replaceChildren(...rows.map((r) => h("li", { dataset: { role: r.role || r.key, state: r.state,
      ...(r.role && r.key !== r.role ? { identity: r.key } : {}) } },
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
    const changed = this.recording !== on;
    this.recording = on;
    if (changed) this.dispatchEvent(new CustomEvent("recording", { detail: { on } }));
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
      this.setPeer(this.partyKey(publication), "connected", `track ${source}`);
    }
    if ((source === "camera" || source === "microphone") && !this.isPrimary(publication)) {
      this.tileTrack(publication, track);
    } else if (source === "camera") {
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
    const tile = this.tiles.get(publication.identity);
    if (tile && (publication.source === "camera" || publication.source === "microphone")) {
      const element = publication.source === "camera" ? tile.video : tile.audio;
      if (element.dataset.publication === publication.id) {
        element.srcObject = null;
        delete element.dataset.publication;
      }
      if (!tile.video.dataset.publication && !tile.audio.dataset.publication) this.removeTile(publication.identity);
      else tile.element.dataset.video = tile.video.dataset.publication ? "on" : "off";
    } else if (publication.source === "camera" && this.remoteVideo.dataset.publication === publication.id) {
      this.remoteVideo.srcObject = null;
      this.placeholder.hidden = false;
    } else if (publication.source !== "microphone") {
      this.board.removeTrack(publication);
    }
    this.renderParticipants();
  }

  // -- the other people's tiles (guests; everyone else on a guest's page) -------------------------

  tileFor(publication) {
    const identity = publication.identity || publication.id;
    let tile = this.tiles.get(identity);
    if (tile) return tile;
    const role = publication.role || GUEST_IDENTITY.exec(identity)?.[1] || "";
    const label = h("p", { class: "tile-label" }, this.personLabel(role, identity));
    const video = h("video", { autoplay: true, playsInline: true, muted: true, "aria-label": label.textContent });
    const audio = h("audio", { autoplay: true });
    const element = h("div", { class: "tile guest", dataset: { identity, role, video: "off" } }, video,
      h("p", { class: "placeholder", "data-i18n": "call.no_video" }, t("call.no_video")), label, audio);
    tile = { element, video, audio, label, role };
    this.tiles.set(identity, tile);
    this.stageElement.insertBefore(element, this.selfTile);
    this.layout();
    return tile;
  }

  tileTrack(publication, track) {
    const tile = this.tileFor(publication);
    if (publication.source === "camera") {
      tile.video.srcObject = new MediaStream([track]);
      tile.video.dataset.publication = publication.id;
      tile.video.setAttribute("aria-label", t("call.video_of_person", { name: tile.label.textContent }));
      tile.element.dataset.video = "on";
    } else {
      tile.audio.srcObject = new MediaStream([track]);
      tile.audio.dataset.publication = publication.id;
    }
  }

  removeTile(identity) {
    const tile = this.tiles.get(identity);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.audio.srcObject = null;
    tile.element.remove();
    this.tiles.delete(identity);
    this.layout();
  }

  /** One large tile and our preview in its corner; with more people a grid (the primary tile first). */
  layout() {
    const videos = 2 + this.tiles.size;
    this.stageElement.dataset.layout = this.tiles.size > 0 ? "grid" : "single";
    this.stageElement.dataset.videos = String(videos);
    this.element.dataset.videos = String(videos);
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
    if (this.endDialog?.open) this.endDialog.close();
    for (const name of ["media", "local-camera", "local-microphone",
      ...[...HUMAN_ROLES, ROLES.AGENT].map((role) => `peer-${role}`), "uplink"]) this.banner?.clear(name);
    this.board?.close();
    await this.call?.close({ leave: false });
    // Our camera and microphone: stopped, so that the next consultation opens them afresh.
    for (const track of this.stream.getTracks()) track.stop();
    this.selfVideo.srcObject = null;
    this.remoteVideo.srcObject = null;
    this.remoteAudio.srcObject = null;
    for (const identity of [...this.tiles.keys()]) this.removeTile(identity);
    this.setRecording(false);
    this.dispatchEvent(new Event("closed"));
  }
}
