// One consultation's media: one RTCPeerConnection to the SFU per page.
//
// The page publishes its camera and microphone (sendonly transceivers) and
// subscribes to the other participants' publications (one recvonly
// transceiver each), learned from `room.event` messages. Every change is a
// new offer sent as `media.offer` on the signalling socket, with the maps
// `publish: {mid: source}` and `subscribe: {mid: publication_id}`; the SFU
// answers. The room data channel (label "room") carries device commands and
// device messages; the SFU wraps what it relays as {from, role, data}.
//
// Events (CustomEvent detail): "track" {publication, track},
// "track-removed" {publication}, "message" {from, role, data},
// "participant" {event: joined|left, identity, role, session}, "participants" {participants},
// "state" {state}, "channel" {state}.
import { gatheringComplete, iceTransportPolicy } from "./precheck.js";
import { Signalling } from "./signalling.js";
import { SOURCE_KINDS } from "./vocabulary.js";

const MAX_RESYNCS = 3; // in a row, without a successful negotiation in between
const MAX_QUEUED_COMMANDS = 8; // device commands kept while the room channel opens

/** {mid: {stream, track}} from the a=msid lines of an SDP. */
export function msidByMid(sdp) {
  const out = {};
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\na=mid:(\S+)/.exec("\n" + section)?.[1];
    const msid = /\na=msid:(\S+)(?: (\S+))?/.exec("\n" + section);
    if (mid && msid) out[mid] = { stream: msid[1], track: msid[2] || "" };
  }
  return out;
}

/** A publication from a room event's data ({publication: {...}}) or a media.offer.ok entry. */
export function publicationFrom(data) {
  const info = data.publication && typeof data.publication === "object" ? data.publication : data;
  const id = info.id ?? info.publication_id;
  const source = info.source || "";
  return {
    id: id === undefined ? undefined : String(id),
    identity: info.identity ?? "",
    role: info.role || "",
    source,
    kind: info.kind || (SOURCE_KINDS[source] === "audio" ? "audio" : "video"),
    codec: info.codec || "",
    replaces: info.replaces || null,
  };
}

/** The participant of a room event's data ({participant: {session_id, identity, role}}). */
export function participantFrom(data) {
  const info = data.participant && typeof data.participant === "object" ? data.participant : data;
  return { identity: info.identity ?? "", role: info.role || "", session: info.session_id || "" };
}

/**
 * The publications of each consultation's room: what the server listed when we
 * joined (hello.ok state, consultation.started, room.token.ok, room.moved), then
 * every room.event (a Call starts from it: events may come before the call exists,
 * and a page that reloads mid-call has seen none).
 */
export class RoomTracker {
  constructor(signalling) {
    this.rooms = new Map(); // consultation id -> Map(publication id -> publication)
    this.nodes = new Map(); // consultation id -> base URL of the media node hosting its room
    signalling.addEventListener("ready", (event) => {
      for (const [id, room] of Object.entries(event.detail.state?.rooms || {})) {
        this.locate(id, room.sfu_url);
        this.seed(id, room.publications);
      }
    });
    for (const type of ["consultation.started", "room.moved"]) {
      signalling.addEventListener(type, (event) => {
        const m = event.detail;
        if (!m.consultation?.id) return;
        this.locate(m.consultation.id, m.sfu_url);
        this.seed(m.consultation.id, m.publications, type === "room.moved");
      });
    }
    signalling.addEventListener("room.event", (event) => {
      const m = event.detail;
      const room = this.rooms.get(m.consultation_id) || new Map();
      this.rooms.set(m.consultation_id, room);
      if (m.event === "publication.added") {
        const pub = publicationFrom(m.data || {});
        if (pub.id) room.set(pub.id, pub);
      } else if (m.event === "publication.removed") {
        room.delete(publicationFrom(m.data || {}).id);
      } else if (m.event === "room.closed") {
        this.rooms.delete(m.consultation_id);
      }
    });
  }

  /** The server's list of a room's publications (``replace``: forget what we knew, the room is new). */
  seed(consultationId, publications, replace = false) {
    if (!Array.isArray(publications)) return;
    const room = replace ? new Map() : this.rooms.get(consultationId) || new Map();
    for (const item of publications) {
      const pub = publicationFrom(item);
      if (pub.id) room.set(pub.id, pub);
    }
    this.rooms.set(consultationId, room);
  }

  publications(consultationId) {
    return [...(this.rooms.get(consultationId)?.values() || [])];
  }

  /** Where a room is (``sfu_url`` of consultation.started, room.token.ok, room.moved, hello.ok). */
  locate(consultationId, sfuUrl) {
    if (sfuUrl) this.nodes.set(consultationId, sfuUrl);
  }

  sfuUrl(consultationId) {
    return this.nodes.get(consultationId) || null;
  }
}

/**
 * The socket a call's media requests (media.offer, media.leave, room.publications) go on: the
 * page's own while its room is on the page's origin, else one opened on the room's media node
 * (``{sfu_url}/ws``, same token: ``serve --media-workers``, a room on another host), which
 * answers for the rooms it hosts. Followed again after room.moved.
 */
class MediaSockets {
  constructor(signalling, sfuUrl) {
    this.signalling = signalling;
    this.sfuUrl = sfuUrl; // () -> the room's sfu_url, or null
    this.other = null; // {origin, socket}
  }

  async current() {
    const url = this.sfuUrl?.();
    const origin = url ? new URL(url, location.href).origin : location.origin;
    if (origin === location.origin) {
      this.close();
      return this.signalling;
    }
    if (this.other?.origin !== origin) {
      this.close();
      const socket = new Signalling(this.signalling.token, { url: `${origin.replace(/^http/, "ws")}/ws` });
      this.other = { origin, socket, ready: socket.connect() };
    }
    const other = this.other;
    other.socket.token = this.signalling.token; // renewed on the page's socket
    try {
      await other.ready;
    } catch (error) {
      // Refused (a token it does not take yet, a node going away): the next request opens anew.
      if (this.other === other) this.close();
      throw error;
    }
    await other.socket.whenOpen();
    return other.socket;
  }

  async request(type, body, options) {
    return (await this.current()).request(type, body, options);
  }

  close() {
    this.other?.socket.close();
    this.other = null;
  }
}

export class Call extends EventTarget {
  constructor(signalling, { consultationId, identity, publish = [], stream = null, iceServers = [], known = [],
    sfuUrl = null }) {
    super();
    this.signalling = signalling;
    this.media = new MediaSockets(signalling, sfuUrl);
    this.consultationId = consultationId;
    this.moving = false; // between a move/restart and leaving the old SFU session
    this.identity = identity;
    this.grantPublish = publish;
    this.stream = stream;
    this.iceServers = iceServers;
    this.publications = new Map(); // id -> publication
    this.subscriptions = new Map(); // publication id -> {publication, transceiver, announced, msid}
    this.participants = new Map(); // identity -> {identity, role, state}
    this.sending = []; // {source, transceiver}
    this.commandSeq = 0;
    this.commands = new Map(); // command id -> {device, action}
    this.queued = []; // commands waiting for the channel to open
    // Command ids unique to this page: answers to a page that reloaded are not taken for ours.
    this.commandPrefix = `c${Math.random().toString(36).slice(2, 8)}-`;
    this.closed = false;
    this.resyncs = 0;
    this.chain = Promise.resolve();
    this.dirty = false;
    this.previousStats = new Map();
    this.onSignal = (event) => this._roomEvent(event.detail);
    signalling.addEventListener("room.event", this.onSignal);
    this.known = known;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Create the peer connection, publish, open the data channel, negotiate. */
  async start() {
    this._buildPeerConnection();
    for (const publication of this.known) this.addPublication(publication);
    await this.negotiate();
  }

  _buildPeerConnection() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle",
      iceTransportPolicy: iceTransportPolicy() });
    this.pc = pc;
    this.channel = pc.createDataChannel("room");
    this.channel.addEventListener("message", (event) => this._channelMessage(event.data));
    this.channel.addEventListener("open", () => {
      // Devices announce themselves when they start; who joins later asks.
      this.send({ type: "status_request" });
      // Commands given while the channel was opening (a control used as soon as its panel shows).
      for (const data of this.queued.splice(0)) this.send(data);
      this._emit("channel", { state: "open" });
    });
    this.channel.addEventListener("close", () => this._emit("channel", { state: "closed" }));
    this.sending = [];
    for (const source of this.grantPublish) {
      const track = source === "camera" ? this.stream?.getVideoTracks()[0]
        : source === "microphone" ? this.stream?.getAudioTracks()[0] : null;
      if (!track) continue;
      const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [this.stream] });
      this.sending.push({ source, transceiver, negotiated: false });
    }
    for (const sub of this.subscriptions.values()) {
      sub.transceiver = pc.addTransceiver(sub.publication.kind, { direction: "recvonly" });
      sub.announced = false;
      sub.negotiated = false;
    }
    pc.addEventListener("connectionstatechange", () => {
      this._emit("state", { state: pc.connectionState });
      if (pc.connectionState === "failed" && !this.closed && this.pc === pc) this.restart();
    });
  }

  /**
   * The room moved to another media node (room.moved: the old node died): everything
   * negotiated there is gone. Start over on a new peer connection with the room's
   * publications as the server lists them now (room.event tells the rest).
   */
  async moved(publications = []) {
    if (this.closed) return;
    const old = this.pc;
    for (const sub of this.subscriptions.values()) {
      if (sub.announced) this._emit("track-removed", { publication: sub.publication });
    }
    this.subscriptions.clear();
    this.publications.clear();
    this.ownPublications = [];
    // Before any await: room events arriving meanwhile (the agent leaving the old node)
    // must neither renegotiate the old connection nor offer the new one before the old
    // session is left (see negotiate()).
    this.moving = true;
    this._buildPeerConnection();
    old?.close();
    try {
      await this.media.request("media.leave", { consultation_id: this.consultationId }).catch(() => {});
      // The list in room.moved predates the other parties' own re-joins: ask the room now
      // (room.event tells what changes after), else start from that list.
      let listed = publications;
      try {
        const reply = await this.media.request("room.publications", { consultation_id: this.consultationId });
        listed = reply.publications || [];
      } catch (_) { /* another node's room, or a dropped socket */ }
      for (const item of listed) this.addPublication(publicationFrom(item));
    } finally {
      this.moving = false;
    }
    await this.negotiate();
  }

  /** A new peer connection (aiortc has no ICE restart): after a failure. */
  async restart() {
    const old = this.pc;
    for (const sub of this.subscriptions.values()) {
      if (sub.announced) this._emit("track-removed", { publication: sub.publication });
    }
    // aiortc has no ICE restart: leave the SFU session, the next offer opens a new one.
    this.moving = true;
    this._buildPeerConnection();
    old.close();
    try {
      await this.media.request("media.leave", { consultation_id: this.consultationId }).catch(() => {});
    } finally {
      this.moving = false;
    }
    await this.negotiate();
  }

  /** Offer what we publish and subscribe to now; serialized, coalesced. */
  negotiate() {
    this.dirty = true;
    this.chain = this.chain.then(async () => {
      // While moving, stay dirty: moved()/restart() negotiate once the old session is left.
      if (!this.dirty || this.closed || this.moving) return;
      this.dirty = false;
      try {
        await this._negotiateOnce();
        this.resyncs = 0;
      } catch (error) {
        this._emit("error", { error });
        // A publication we asked for is gone (the list we started from was stale: a
        // reload, room.moved): start over from the room's list now. Not awaited: it
        // queues its own negotiation behind this one.
        if (error.code === "not_found" && /publication/.test(error.message || "") && !this.closed) {
          this._resync();
        }
        if (error.code === "disconnected" && !this.closed) {
          await this.signalling.whenOpen();
          this.dirty = true;
          this.negotiate();
        }
      }
    });
    return this.chain;
  }

  async _negotiateOnce() {
    const pc = this.pc;
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    // Replaced meanwhile (room.moved, restart): this offer is for a closed connection.
    if (pc !== this.pc || this.closed) return;
    // The SFU wants the sections this offer adds; negotiated ones keep their role.
    const publish = {};
    const adding = [];
    for (const sending of this.sending) {
      if (sending.transceiver.mid && !sending.negotiated) {
        publish[sending.transceiver.mid] = sending.source;
        adding.push(sending);
      }
    }
    const subscribe = {};
    for (const [id, sub] of this.subscriptions) {
      if (sub.transceiver.mid && !sub.negotiated) {
        subscribe[sub.transceiver.mid] = id;
        adding.push(sub);
      }
    }
    let reply;
    try {
      reply = await this.media.request("media.offer", {
        consultation_id: this.consultationId, sdp: pc.localDescription.sdp, publish, subscribe,
      }, { timeoutMs: 20000 });
    } catch (error) {
      // Back to stable so that the next negotiation starts clean.
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      throw error;
    }
    if (pc !== this.pc || this.closed) return;
    if (reply.identity) this.identity = reply.identity;
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    for (const item of adding) item.negotiated = true;
    this.mediaSession = reply.media_session;
    const msids = msidByMid(reply.sdp);
    this.ownPublications = (reply.publications || []).map(publicationFrom).concat(this.ownPublications || []);
    // Every publication of the room now: subscribe to those we did not know (a reload, a late join).
    for (const item of reply.room_publications || []) {
      const pub = publicationFrom(item);
      if (pub.identity !== this.identity && !this.subscriptions.has(pub.id)) this.addPublication(pub);
    }
    for (const sub of this.subscriptions.values()) {
      const mid = sub.transceiver.mid;
      if (mid && msids[mid]) {
        sub.msid = msids[mid];
        // a=msid:<identity> <source>: fills what the room event did not say.
        sub.publication.identity ||= msids[mid].stream;
        sub.publication.source ||= msids[mid].track;
      }
      const receiving = sub.transceiver.currentDirection === "recvonly" || sub.transceiver.currentDirection === "sendrecv";
      if (receiving && !sub.announced) {
        sub.announced = true;
        this._emit("track", { publication: sub.publication, track: sub.transceiver.receiver.track });
      }
    }
  }

  /**
   * After a socket resume (room events may have been missed while it was down): subscribe
   * to the publications the room has and we lack, drop those it no longer has.
   */
  async reconcile() {
    if (this.closed || !this.pc) return;
    let listed;
    try {
      const reply = await this.media.request("room.publications", { consultation_id: this.consultationId });
      listed = (reply.publications || []).map(publicationFrom);
    } catch (_) {
      return; // another node's room, or the socket dropped again: room events go on
    }
    const live = new Set(listed.map((p) => p.id));
    for (const id of [...this.subscriptions.keys()]) if (!live.has(id)) this.removePublication(id);
    for (const pub of listed) this.addPublication(pub);
  }

  /** Drop subscriptions the room no longer has, add those it has, on a new peer connection. */
  async _resync() {
    if (this.closed || this.resyncs >= MAX_RESYNCS) return;
    this.resyncs += 1;
    let listed = [];
    try {
      const reply = await this.media.request("room.publications", { consultation_id: this.consultationId });
      listed = (reply.publications || []).map(publicationFrom);
    } catch (_) { /* keep what the room events said */ }
    const live = new Set(listed.map((p) => p.id));
    for (const [id, sub] of this.subscriptions) {
      if (live.has(id)) continue;
      this.subscriptions.delete(id);
      this.publications.delete(id);
      if (sub.announced) this._emit("track-removed", { publication: sub.publication });
      sub.announced = false;
    }
    await this.restart();
    for (const pub of listed) this.addPublication(pub);
  }

  _roomEvent(message) {
    if (message.consultation_id && message.consultation_id !== this.consultationId) return;
    const data = message.data || {};
    switch (message.event) {
      case "publication.added":
        this.addPublication(publicationFrom(data));
        break;
      case "publication.removed":
        this.removePublication(publicationFrom(data).id);
        break;
      case "participant.joined":
      case "participant.left": {
        const { identity, role, session } = participantFrom(data);
        if (!identity || identity === this.identity) break;
        if (message.event === "participant.joined") {
          this.participants.set(identity, { identity, role: role || identity, state: "connected" });
        } else {
          this.participants.delete(identity);
          for (const [id, pub] of this.publications) if (pub.identity === identity) this.removePublication(id);
        }
        this._emit("participant", { event: message.event.split(".")[1], identity, role: role || identity, session });
        this._emit("participants", { participants: [...this.participants.values()] });
        break;
      }
      default:
        break;
    }
  }

  addPublication(publication) {
    if (!publication.id || this.closed) return;
    if (publication.identity && publication.identity === this.identity) return; // our own
    if (this.subscriptions.has(publication.id)) return;
    this.publications.set(publication.id, publication);
    if (publication.source === "vitals") return; // data channel only
    if (publication.identity && !this.participants.has(publication.identity)) {
      this.participants.set(publication.identity,
        { identity: publication.identity, role: publication.role || publication.identity, state: "connected" });
      this._emit("participants", { participants: [...this.participants.values()] });
    }
    // A new m-line each time: the SFU keeps a negotiated section's role for good.
    const transceiver = this.pc.addTransceiver(publication.kind, { direction: "recvonly" });
    this.subscriptions.set(publication.id, { publication, transceiver, announced: false, negotiated: false, msid: null });
    this.negotiate();
  }

  removePublication(id) {
    if (id === undefined) return;
    this.publications.delete(id);
    const sub = this.subscriptions.get(id);
    if (!sub) return;
    this.subscriptions.delete(id);
    sub.transceiver.direction = "inactive";
    this._emit("track-removed", { publication: sub.publication });
    this.negotiate();
  }

  _channelMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (_) {
      return;
    }
    // Relayed messages are {from, role, data}; accept bare ones too.
    const wrapped = message && typeof message === "object" && "data" in message && "from" in message;
    this._emit("message", wrapped ? message : { from: "", role: "", data: message });
  }

  /** Send ``track`` instead of what ``source`` (camera, microphone) sent: a lost camera opened again. */
  async replaceTrack(source, track) {
    const sending = this.sending.find((s) => s.source === source);
    if (sending) await sending.transceiver.sender.replaceTrack(track);
  }

  /** Send a JSON message on the room channel; false when it is not open. */
  send(data) {
    if (this.channel?.readyState !== "open") return false;
    this.channel.send(JSON.stringify(data));
    return true;
  }

  /**
   * A device command ({device, action, ...}); returns its id. While the channel is still opening
   * the command waits for it (a few of them); null when the call is over or too many wait.
   */
  command(device, action, fields = {}) {
    if (this.closed) return null;
    this.commandSeq += 1;
    const id = `${this.commandPrefix}${this.commandSeq}`;
    const data = { type: "command", id, device, action, ...fields };
    if (!this.send(data)) {
      if (this.queued.length >= MAX_QUEUED_COMMANDS) return null;
      this.queued.push(data);
    }
    this.commands.set(id, { device, action });
    return id;
  }

  /** Per received track: bitrate (kbit/s), loss (%), fps, frames decoded, audio level. */
  async quality() {
    const out = [];
    const now = performance.now();
    for (const [id, sub] of this.subscriptions) {
      if (!sub.announced) continue;
      let inbound = null;
      const report = await sub.transceiver.receiver.getStats();
      report.forEach((s) => { if (s.type === "inbound-rtp") inbound = s; });
      if (!inbound) continue;
      const prev = this.previousStats.get(id);
      const bytes = inbound.bytesReceived || 0;
      const bitrate = prev ? ((bytes - prev.bytes) * 8) / Math.max(1, now - prev.at) : null; // kbit/s
      const lost = inbound.packetsLost || 0;
      const received = inbound.packetsReceived || 0;
      const lossDelta = prev ? Math.max(0, lost - prev.lost) : lost;
      const recvDelta = prev ? Math.max(0, received - prev.received) : received;
      this.previousStats.set(id, { bytes, lost, received, at: now });
      out.push({
        publication: sub.publication,
        kind: inbound.kind,
        bitrate_kbps: bitrate === null ? null : Math.round(bitrate),
        loss_pct: lossDelta + recvDelta > 0 ? (100 * lossDelta) / (lossDelta + recvDelta) : 0,
        fps: inbound.framesPerSecond ?? null,
        frames_decoded: inbound.framesDecoded ?? null,
        width: inbound.frameWidth ?? null,
        height: inbound.frameHeight ?? null,
        jitter_ms: inbound.jitter !== undefined ? Math.round(inbound.jitter * 1000) : null,
      });
    }
    return out;
  }

  async close({ leave = true } = {}) {
    if (this.closed) return;
    this.closed = true;
    this.signalling.removeEventListener("room.event", this.onSignal);
    if (leave) {
      try {
        await this.media.request("media.leave", { consultation_id: this.consultationId }, { timeoutMs: 3000 });
      } catch (_) { /* the consultation may already be over */ }
    }
    this.pc?.close();
    this.media.close();
  }
}
