// The pre-call device and network check (like doxy.me's): camera with a live
// preview, microphone with a level meter, and the media path to the SFU
// through POST /api/echo (a data channel ping for the round trip, and the
// server's count of media frames received).
import { h } from "./dom.js";
import { t, onLanguageChange, translate } from "./i18n.js";

const ECHO_OPEN_TIMEOUT_MS = 10000;
const PINGS = 5;

/** Which problem a getUserMedia error means. */
export function mediaProblem(error) {
  if (!error) return "ok";
  switch (error.name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "denied";
    case "NotFoundError":
    case "OverconstrainedError":
    case "DevicesNotFoundError":
      return "missing";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "busy";
    default:
      return "error";
  }
}

/** Wait until ICE gathering completes (non-trickle signalling), at most ``ms``. */
export function gatheringComplete(pc, ms = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

export async function iceServers(token) {
  try {
    const response = await fetch("/api/ice-servers", { headers: { Authorization: `Bearer ${token}` } });
    if (response.ok) {
      const body = await response.json();
      return Array.isArray(body) ? body : body.ice_servers || [];
    }
  } catch (_) { /* none */ }
  return [];
}

/** Open camera and microphone, learning separately which one fails. */
export async function openLocalMedia() {
  const result = { stream: null, camera: "ok", microphone: "ok" };
  if (!navigator.mediaDevices?.getUserMedia) {
    result.camera = result.microphone = "insecure";
    return result;
  }
  try {
    result.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true });
    return result;
  } catch (error) {
    if (mediaProblem(error) === "denied") {
      result.camera = result.microphone = "denied";
      return result;
    }
  }
  const tracks = [];
  for (const kind of ["video", "audio"]) {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: true });
      tracks.push(...s.getTracks());
    } catch (error) {
      result[kind === "video" ? "camera" : "microphone"] = mediaProblem(error);
    }
  }
  if (tracks.length) result.stream = new MediaStream(tracks);
  return result;
}

/** A level meter (0..1, RMS) for an audio track, updated ~10 times a second. */
export class LevelMeter {
  constructor(track, meter) {
    this.meter = meter;
    this.context = new AudioContext();
    const source = this.context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    source.connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.peak = 0;
    this.timer = setInterval(() => this.update(), 100);
    // Autoplay policy: resume on the first gesture, unless the meter closed meanwhile.
    this.resumeOnGesture = () => {
      if (this.context.state !== "closed") this.context.resume().catch(() => {});
    };
    document.addEventListener("pointerdown", this.resumeOnGesture, { once: true });
    document.addEventListener("keydown", this.resumeOnGesture, { once: true });
    this.context.resume().catch(() => {});
  }

  update() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const v of this.samples) sum += v * v;
    const rms = Math.sqrt(sum / this.samples.length);
    const level = Math.min(1, rms * 4);
    this.peak = Math.max(this.peak, level);
    this.meter.value = level;
    this.meter.setAttribute("aria-valuetext", `${Math.round(level * 100)} %`);
  }

  close() {
    clearInterval(this.timer);
    document.removeEventListener("pointerdown", this.resumeOnGesture);
    document.removeEventListener("keydown", this.resumeOnGesture);
    this.context.close().catch(() => {});
  }
}

/** ``?ice=relay`` on a page's URL: media only through a TURN relay (to test a site's relay path). */
export function iceTransportPolicy() {
  return new URLSearchParams(location.search).get("ice") === "relay" ? "relay" : "all";
}

/**
 * Data channel round trips and media to the echo endpoint. ``signal`` aborts it (a consultation
 * starts: its media comes first): the verdict is then "interrupted".
 */
export async function checkNetwork(token, stream, signal = null) {
  const result = { verdict: "blocked", rtt_ms: null, frames: null, reason: "" };
  const pc = new RTCPeerConnection({ iceServers: await iceServers(token), iceTransportPolicy: iceTransportPolicy() });
  let location = null;
  const aborted = new Promise((_, reject) => {
    const stop = () => {
      pc.close();
      reject(new Error("aborted"));
    };
    if (signal?.aborted) stop();
    else signal?.addEventListener("abort", stop, { once: true });
  });
  aborted.catch(() => {});
  const step = (promise) => Promise.race([promise, aborted]);
  try {
    const channel = pc.createDataChannel("check");
    if (stream) for (const track of stream.getTracks()) pc.addTrack(track.clone(), stream);
    await step(pc.setLocalDescription(await pc.createOffer()));
    await step(gatheringComplete(pc));
    const response = await step(fetch("/api/echo", {
      method: "POST", body: pc.localDescription.sdp,
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
    }));
    if (response.status !== 201) {
      result.reason = `HTTP ${response.status}`;
      return result;
    }
    location = response.headers.get("Location");
    await step(pc.setRemoteDescription({ type: "answer", sdp: await response.text() }));
    await step(new Promise((resolve, reject) => {
      if (channel.readyState === "open") return resolve();
      channel.addEventListener("open", resolve, { once: true });
      setTimeout(() => reject(new Error("timeout")), ECHO_OPEN_TIMEOUT_MS);
    }));
    const rtts = [];
    for (let i = 0; i < PINGS; i += 1) {
      const started = performance.now();
      const reply = await step(new Promise((resolve, reject) => {
        const onMessage = (event) => {
          if (event.data === `pong-${i}`) {
            channel.removeEventListener("message", onMessage);
            resolve(event.data);
          }
        };
        channel.addEventListener("message", onMessage);
        channel.send(`ping-${i}`);
        setTimeout(() => reject(new Error("timeout")), 3000);
      }));
      if (reply) rtts.push(performance.now() - started);
    }
    rtts.sort((a, b) => a - b);
    result.rtt_ms = Math.round(rtts[Math.floor(rtts.length / 2)]);
    result.verdict = "connected";
    if (stream && location) {
      // Give media a moment to flow, then ask what the server received.
      for (let i = 0; i < 10 && !signal?.aborted; i += 1) {
        await new Promise((r) => setTimeout(r, 300));
        const state = await (await fetch(location, { headers: { Authorization: `Bearer ${token}` } }))
          .json().catch(() => null);
        result.frames = state?.frames || null;
        if (result.frames && Object.values(result.frames).some((n) => n > 0)) break;
      }
    }
  } catch (error) {
    if (signal?.aborted) {
      result.verdict = "interrupted";
      result.reason = "aborted";
      return result;
    }
    result.reason = pc.iceConnectionState === "failed" || pc.connectionState !== "connected"
      ? "ice" : String(error.message || error);
  } finally {
    pc.getSenders().forEach((s) => s.track?.stop());
    pc.close();
    if (location) {
      fetch(location, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    }
  }
  return result;
}

/** Whether ``stream`` has a live track of ``kind`` ("video", "audio"). */
export function hasLive(stream, kind) {
  return Boolean(stream?.getTracks().some((track) => track.kind === kind && track.readyState === "live"));
}

/**
 * The check's card: mount(container) then run(). The camera and microphone it opens go to
 * the call (takeStream: the card says so and shows no preview); after the call, restore()
 * opens them again for the preview and the next call. A track that stops (unplugged, taken
 * by another application) turns its row red.
 */
export class PreCheck extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.stream = null;
    this.meter = null;
    this.result = { camera: "pending", microphone: "pending", network: "pending" };
    this.network = null;
    this.handedOver = false;
    this.mediaReady = Promise.resolve();
    this.networkGate = null; // a promise of whether the first run may test the media path
  }

  mount(container) {
    this.video = h("video", { id: "precheck-video", muted: true, autoplay: true, playsInline: true,
      "data-i18n-aria-label": "precheck.preview" });
    this.level = h("meter", { id: "mic-level", min: 0, max: 1, value: 0, "data-i18n-aria-label": "precheck.level" });
    const row = (name, extra) => h("li", { class: "check", dataset: { check: name, state: "pending" } },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "check-name", "data-i18n": `precheck.${name}` }),
      h("span", { class: "verdict", id: `verdict-${name}` }),
      extra);
    this.advice = h("p", { class: "advice", id: "precheck-advice", role: "status" });
    this.again = h("button", { type: "button", id: "precheck-run", "data-i18n": "precheck.again",
      onclick: () => this.run() });
    this.card = h("section", { class: "card precheck", id: "precheck", "aria-labelledby": "precheck-title" },
      h("h2", { id: "precheck-title", "data-i18n": "precheck.title" }),
      h("div", { class: "precheck-body" },
        h("div", { class: "preview" }, this.video),
        h("div", {},
          h("ul", { class: "checks" }, row("camera"), row("microphone", this.level), row("network")),
          this.advice, this.again)));
    container.replaceChildren(this.card);
    translate(this.card);
    onLanguageChange(() => this.render());
    return this.card;
  }

  render() {
    for (const name of ["camera", "microphone", "network"]) {
      const li = this.card.querySelector(`[data-check="${name}"]`);
      const state = this.result[name];
      li.dataset.state = ["ok", "connected", "in_call"].includes(state) ? "ok"
        : state === "pending" || state === "interrupted" || state === "later" ? "pending" : "fail";
      let text = t(`precheck.state.${state}`);
      if (name === "network" && state === "connected" && this.network?.rtt_ms !== null) {
        text = t("precheck.state.connected_rtt", { rtt: this.network.rtt_ms });
      }
      li.querySelector(".verdict").textContent = text;
    }
    const advice = [];
    for (const name of ["camera", "microphone"]) {
      const state = this.result[name];
      if (!["ok", "pending", "in_call"].includes(state)) advice.push(t(`precheck.advice.${name}.${state}`));
    }
    if (this.result.network === "blocked") advice.push(t("precheck.advice.network"));
    this.advice.textContent = advice.join(" ");
    this.advice.hidden = advice.length === 0;
    this.card.dataset.verdict = this.verdict();
    this.card.dataset.media = this.handedOver ? "in_call" : this.stream ? "preview" : "none";
  }

  verdict() {
    const r = this.result;
    if (Object.values(r).includes("pending")) return "pending";
    const ok = (state) => state === "ok" || state === "in_call";
    const path = r.network === "connected" || r.network === "interrupted";
    return ok(r.camera) && ok(r.microphone) && path ? "ok" : "problem";
  }

  /** Open camera and microphone for the preview (and the next call). */
  async openMedia() {
    this.meter?.close();
    this.meter = null;
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
    const media = await openLocalMedia();
    this.stream = media.stream;
    this.handedOver = false;
    this.result.camera = media.camera;
    this.result.microphone = media.microphone;
    this.video.srcObject = this.stream;
    const audio = this.stream?.getAudioTracks()[0];
    if (audio) this.meter = new LevelMeter(audio, this.level);
    for (const track of this.stream?.getTracks() || []) {
      track.addEventListener("ended", () => this.trackEnded(track));
    }
    this.render();
  }

  /** A preview track stopped by itself (unplugged, taken by another application). */
  trackEnded(track) {
    if (this.handedOver || !this.stream?.getTracks().includes(track)) return;
    this.result[track.kind === "video" ? "camera" : "microphone"] = "lost";
    this.render();
  }

  async run() {
    this.again.disabled = true;
    this.result = { camera: "pending", microphone: "pending", network: "pending" };
    this.render();
    this.mediaReady = this.openMedia();
    await this.mediaReady;
    // The first run waits for the page's word (a consultation open: later); a run asked for runs.
    const gate = this.networkGate;
    this.networkGate = null;
    if (gate && !(await gate)) {
      this.result.network = "interrupted";
      this.render();
    } else await this.checkNetwork();
    this.again.disabled = false;
    this.dispatchEvent(new CustomEvent("done", { detail: { ...this.result, network: this.network } }));
    return this.result;
  }

  /** The media path to the server (interrupted when a consultation starts meanwhile). */
  async checkNetwork() {
    this.abort = new AbortController();
    this.result.network = "pending";
    this.render();
    this.network = await checkNetwork(this.token, this.stream, this.abort.signal);
    this.result.network = this.network.verdict;
    this.render();
  }

  /** Hand the camera/microphone stream to the call: the call owns (and stops) its tracks now. */
  takeStream() {
    // The consultation's media comes first: a check still running stops.
    this.abort?.abort();
    this.meter?.close();
    this.meter = null;
    const stream = this.stream;
    this.stream = null;
    this.video.srcObject = null;
    this.handedOver = true;
    for (const name of ["camera", "microphone"]) if (this.result[name] === "ok") this.result[name] = "in_call";
    this.render();
    return stream;
  }

  /** After a call: camera and microphone again, for the preview and the next call. */
  restore() {
    if (!this.handedOver && hasLive(this.stream, "video")) return this.mediaReady;
    this.result.camera = this.result.microphone = "pending";
    this.render();
    this.mediaReady = this.openMedia().catch(() => {});
    if (this.result.network === "interrupted") this.mediaReady.then(() => this.checkNetwork());
    return this.mediaReady;
  }

  close() {
    this.meter?.close();
    this.stream?.getTracks().forEach((track) => track.stop());
  }
}
