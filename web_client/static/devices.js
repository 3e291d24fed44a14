// Device panels in a call: one per device track (by source label), vitals as
// they arrive, and the remote control of the site's devices over the room
// data channel (physicians only: the grant's `command`).
//
// One device is "being examined": its panel is the large one, the others stay
// visible and usable, smaller. The physician picks it (or uses a device: it
// becomes the examined one). The physician's page tells the agent which video
// device that is (`viewing`): on a weak uplink it keeps its video first.
import { h } from "./dom.js";
import { t, onLanguageChange, translate, formatNumber, formatPercent, formatTime, setText, resolveParams } from "./i18n.js";
import { Phonocardiogram } from "./phonocardiogram.js";
import { StillViewer, stillCaption, stillFrom } from "./stills.js";
import { DEVICES } from "./vocabulary.js";

const STETHOSCOPE_MODES = ["bell", "diaphragm", "wide"];
const UNITS = { Cel: "°C", "[degF]": "°F", "mm[Hg]": "mmHg", "/min": "/min", "%": "%", kPa: "kPa" };
const NOT_VITALS = new Set(["level_rms", "level_peak"]);
const STILL_TIMEOUT_MS = 20000; // a still takes 3–7 s; past this, say it did not come
// How many decimals a clinician reads each quantity with.
const DIGITS = { heart_rate: 0, pulse_rate: 0, spo2: 0, systolic: 0, diastolic: 0, mean_arterial_pressure: 0,
  body_temperature: 1, respiratory_rate: 0 };

/** A measurement's value for people: the quantity's usual precision, the locale's digits, usual units. */
export function formatMeasurement(value, unit, name = "") {
  if (typeof value !== "number" || Number.isNaN(value)) return "–";
  const shown = UNITS[unit] ?? unit ?? "";
  if (unit === "%") return formatPercent(value, DIGITS[name] ?? 0);
  const digits = DIGITS[name] ?? 1;
  return `${formatNumber(value, digits)}\u00a0${shown}`.trim();
}

/** A heart rate as every panel writes it: a whole number of beats a minute. */
export function formatHeartRate(value) {
  return typeof value === "number" && !Number.isNaN(value) ? formatNumber(Math.round(value)) : "–";
}

function statusLine() {
  return h("p", { class: "device-status muted", role: "status" });
}

class Panel {
  constructor(source, { control, audible = false }) {
    this.source = source;
    this.control = control;
    this.audible = control || audible; // the stethoscope heard here (not at the cabin: feedback)
    this.status = statusLine();
    this.element = h("section", { class: `card device ${source}`, dataset: { source },
      "aria-labelledby": `panel-${source}-title` },
    h("h3", { id: `panel-${source}-title`, "data-i18n": `device.${source}` }, t(`device.${source}`)));
  }

  /** The panel's status line (kept as a key: a language switch writes it again). */
  setStatus(key, params = {}, isError = false) {
    setText(this.status, key, params);
    this.status.classList.toggle("error", isError);
  }

  deviceStatus(_message) {}

  measurement(_message) {}

  close() {}
}

export class StethoscopePanel extends Panel {
  constructor(track, call, options) {
    super("stethoscope", options);
    this.call = call;
    this.audio = h("audio", { autoplay: true, "data-i18n-aria-label": "device.stethoscope" });
    this.audio.srcObject = new MediaStream([track]);
    this.canvas = h("canvas", { class: "pcg", width: 720, height: 160, role: "img",
      "data-i18n-aria-label": "steth.pcg", "aria-label": t("steth.pcg") });
    this.pcg = new Phonocardiogram(this.canvas, track);
    this.rate = h("output", { class: "big-number", id: "heart-rate", "aria-live": "off" }, "–");
    this.volume = h("input", { type: "range", id: "steth-volume", min: 0, max: 1, step: 0.05, value: 0.8,
      "data-i18n-aria-label": "steth.volume", "aria-label": t("steth.volume") });
    this.volume.addEventListener("input", () => { this.audio.volume = Number(this.volume.value); });
    // At the cabin the stethoscope is in the room: silent by default there (no feedback
    // into the nurse's microphone), the trace still drawn.
    this.volume.value = this.audible ? 0.8 : 0;
    this.audio.volume = Number(this.volume.value);
    const controls = h("div", { class: "controls" });
    const volumeLabel = h("label", { for: "steth-volume", "data-i18n": "steth.volume" }, t("steth.volume"));
    controls.append(h("div", { class: "control" }, volumeLabel, this.volume));
    if (this.control) {
      this.modes = h("div", { class: "segmented", role: "radiogroup", id: "steth-mode",
        "aria-label": t("steth.mode"), "data-i18n-aria-label": "steth.mode" });
      for (const mode of STETHOSCOPE_MODES) {
        const id = `steth-mode-${mode}`;
        const input = h("input", { type: "radio", name: "steth-mode", id, value: mode,
          onchange: () => this.call.command("stethoscope", "set_mode", { mode }) });
        this.modes.append(input, h("label", { for: id, "data-i18n": `steth.mode.${mode}` }, t(`steth.mode.${mode}`)));
      }
      this.gain = h("input", { type: "range", id: "steth-gain", min: -12, max: 24, step: 3, value: 0,
        "aria-label": t("steth.gain"), "data-i18n-aria-label": "steth.gain" });
      this.gainValue = h("output", { for: "steth-gain" }, "0 dB");
      this.gain.addEventListener("input", () => { this.gainValue.textContent = `${this.gain.value} dB`; });
      this.gain.addEventListener("change", () => {
        this.call.command("stethoscope", "set_gain", { gain_db: Number(this.gain.value) });
      });
      controls.append(
        h("div", { class: "control" }, h("span", { class: "label", "data-i18n": "steth.mode" }, t("steth.mode")), this.modes),
        h("div", { class: "control" }, h("label", { for: "steth-gain", "data-i18n": "steth.gain" }, t("steth.gain")),
          this.gain, this.gainValue));
    }
    this.element.append(
      h("div", { class: "pcg-wrap" }, this.canvas,
        h("div", { class: "rate" }, this.rate, h("span", { class: "unit" }, "/min"))),
      controls, this.status, this.audio);
  }

  deviceStatus(message) {
    if (this.modes && message.mode) {
      const input = this.modes.querySelector(`input[value="${message.mode}"]`);
      if (input) input.checked = true;
    }
    if (this.gain && typeof message.gain_db === "number") {
      this.gain.value = message.gain_db;
      this.gainValue.textContent = `${message.gain_db} dB`;
    }
    if (message.on === false) this.setStatus("device.off");
    else if (message.mode) this.setStatus("device.on_mode", { mode: { key: `steth.mode.${message.mode}` } });
    else this.setStatus("device.on");
  }

  measurement(message) {
    if (message.name !== "heart_rate") return;
    this.heartRate = message.value;
    this.rate.textContent = formatHeartRate(message.value);
  }

  retranslate() {
    if (this.heartRate !== undefined) this.rate.textContent = formatHeartRate(this.heartRate);
  }

  close() {
    this.pcg.close();
    this.audio.srcObject = null;
  }
}

export class CameraDevicePanel extends Panel {
  constructor(source, track, call, options) {
    super(source, options);
    this.call = call;
    this.stills = options.stills; // the consultation's StillStore
    this.viewer = options.viewer;
    this.video = h("video", { autoplay: true, muted: true, playsInline: true,
      "aria-label": t(`device.${source}`), "data-i18n-aria-label": `device.${source}` });
    this.video.srcObject = new MediaStream([track]);
    this.gallery = h("ul", { class: "gallery", "aria-label": t("still.gallery"), "data-i18n-aria-label": "still.gallery" });
    this.items = new Map(); // still_id -> li
    this.pending = null; // {id, timer}: a still asked for, not arrived yet
    const controls = h("div", { class: "controls" });
    if (this.control) {
      this.stillButton = h("button", { type: "button", class: "primary", id: `${source}-still`,
        "data-i18n": "still.take", onclick: () => this.takeStill() }, t("still.take"));
      this.power = h("input", { type: "checkbox", id: `${source}-power`, checked: true, role: "switch",
        onchange: () => this.call.command(source, "power", { on: this.power.checked }) });
      controls.append(this.stillButton,
        h("label", { class: "switch", for: `${source}-power` }, this.power,
          h("span", { "data-i18n": "device.power" }, t("device.power"))));
    }
    this.element.append(h("div", { class: "device-video" }, this.video), controls, this.status, this.gallery);
    this.onStills = () => this.renderGallery();
    this.stills?.addEventListener("change", this.onStills);
    this.renderGallery();
  }

  /** Ask for a still; the button stays disabled until it arrives (3–7 s), or clearly did not. */
  takeStill() {
    if (this.pending) return;
    const id = this.call.command(this.source, "still");
    if (!id) {
      this.setStatus("device.channel_closed", {}, true);
      return;
    }
    this.stillButton.disabled = true;
    this.stillButton.setAttribute("aria-busy", "true");
    this.setStatus("still.waiting");
    this.pending = { id, timer: setTimeout(() => this.stillDone("still.timeout", true), STILL_TIMEOUT_MS) };
  }

  /** The still asked for arrived, was refused, or never came: the button works again. */
  stillDone(key, isError = false, params = {}) {
    if (this.pending) clearTimeout(this.pending.timer);
    this.pending = null;
    if (this.stillButton) {
      this.stillButton.disabled = false;
      this.stillButton.removeAttribute("aria-busy");
    }
    if (key) this.setStatus(key, params, isError);
  }

  commandFailed(data) {
    if (this.pending && data.id === this.pending.id) {
      this.stillDone("device.command_failed", true, { error: data.error || "" });
      return true;
    }
    return false;
  }

  deviceStatus(message) {
    if (this.power && typeof message.on === "boolean") this.power.checked = message.on;
    if (!this.pending) this.setStatus(message.on === false ? "device.off" : "device.on");
  }

  /** A still was stored: into the consultation's stills (the server then adds its time and label). */
  stillReady(message) {
    this.stills?.merge([{ ...message, device: message.device || this.source }]);
    // Ours (or one that says not whose): the button works again. Another's (this page before a
    // reload) only joins the gallery.
    if (!this.pending) this.setStatus("still.received");
    else if (!message.id || message.id === this.pending.id) this.stillDone("still.received");
    this.stills?.load();
  }

  renderGallery() {
    if (!this.stills) return;
    for (const still of this.stills.list()) {
      if (still.device !== this.source) continue;
      let li = this.items.get(still.still_id);
      if (!li) {
        li = this.galleryItem(still);
        this.items.set(still.still_id, li);
        this.gallery.prepend(li);
      }
      // In its device's gallery a still is its label, else its time; the image's text says it all.
      const caption = stillCaption(still);
      const short = li.querySelector(".caption");
      if (still.label) setText(short, "still.label_only", { label: still.label });
      else setText(short, still.taken_at ? "still.time_only" : null, { time: { time: still.taken_at } });
      const text = t(caption.key, resolveParams(caption.params));
      li.querySelector("img").alt = text;
      li.querySelector("button").setAttribute("aria-label", t("still.open_named", { still: text }));
    }
  }

  galleryItem(still) {
    const image = h("img", { alt: "", src: still.preview || "", class: "thumb" });
    const caption = h("span", { class: "caption", "aria-hidden": "true" });
    const open = h("button", { type: "button", class: "still", disabled: true, dataset: { stillId: still.still_id } },
      image, caption);
    const item = h("li", { dataset: { stillId: still.still_id } }, open);
    open.addEventListener("click", () => this.viewer?.open(still.still_id));
    this.stills.image(still.still_id).then(async (url) => {
      image.src = url;
      open.dataset.full = url;
      open.disabled = false;
      await image.decode().catch(() => {});
      item.dataset.width = image.naturalWidth;
      item.dataset.height = image.naturalHeight;
    }).catch(() => {
      item.classList.add("error");
      this.setStatus("still.fetch_failed", {}, true);
    });
    return item;
  }

  retranslate() {
    this.renderGallery();
  }

  close() {
    this.stillDone(null);
    this.stills?.removeEventListener("change", this.onStills);
    this.video.srcObject = null;
  }
}

/**
 * Vital signs as a clinician reads them: one heart rate (the monitor's pulse when there is
 * one, else the stethoscope's), blood pressure on one row ("126/74 mmHg"), SpO₂, temperature.
 */
export class VitalsPanel extends Panel {
  constructor(options) {
    super("vitals", options);
    this.latest = new Map(); // quantity -> {value, unit, measured_at, device}
    this.rows = new Map(); // row name -> tr
    this.body = h("tbody");
    this.table = h("table", { class: "vitals" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", "data-i18n": "vitals.name" }, t("vitals.name")),
        h("th", { scope: "col", "data-i18n": "vitals.value" }, t("vitals.value")),
        h("th", { scope: "col", "data-i18n": "vitals.time" }, t("vitals.time")))),
      this.body);
    this.empty = h("p", { class: "muted", "data-i18n": "vitals.none" }, t("vitals.none"));
    this.element.append(this.empty, this.table);
    this.table.hidden = true;
    // It may scroll inside a small screen's workstation: reachable by keyboard then.
    this.element.tabIndex = 0;
  }

  measurement(message) {
    if (typeof message.value !== "number") return;
    this.latest.set(message.name, { value: message.value, unit: message.unit || "",
      measured_at: typeof message.ts === "number" ? message.ts : Date.now() / 1000, device: message.device });
    this.render();
    this.element.dispatchEvent(new CustomEvent("vitals", { bubbles: true, detail: this.snapshot() }));
  }

  /** The rows to show now: [name, value text, time]. */
  lines() {
    const out = [];
    const pulse = this.latest.get("pulse_rate") || this.latest.get("heart_rate");
    if (pulse) out.push(["heart_rate", `${formatHeartRate(pulse.value)}\u00a0/min`, pulse.measured_at]);
    const sys = this.latest.get("systolic");
    const dia = this.latest.get("diastolic");
    if (sys && dia) {
      out.push(["blood_pressure", `${formatNumber(Math.round(sys.value))}/${formatNumber(Math.round(dia.value))}\u00a0${UNITS[sys.unit] || sys.unit}`,
        sys.measured_at]);
    }
    for (const name of ["spo2", "body_temperature", "respiratory_rate"]) {
      const m = this.latest.get(name);
      if (m) out.push([name, formatMeasurement(m.value, m.unit, name), m.measured_at]);
    }
    for (const [name, m] of this.latest) {
      const known = ["pulse_rate", "heart_rate", "systolic", "diastolic", "mean_arterial_pressure", "spo2",
        "body_temperature", "respiratory_rate"];
      if (!known.includes(name)) out.push([name, formatMeasurement(m.value, m.unit, name), m.measured_at]);
    }
    return out;
  }

  render() {
    for (const [name, text, when] of this.lines()) {
      let row = this.rows.get(name);
      if (!row) {
        row = h("tr", { dataset: { name } }, h("th", { scope: "row" }), h("td", { class: "value" }), h("td", { class: "time" }));
        this.rows.set(name, row);
        this.body.append(row);
      }
      const label = t(`vitals.${name}`);
      row.children[0].textContent = label.startsWith("vitals.") ? name : label;
      row.children[1].textContent = text;
      row.children[2].textContent = when ? formatTime(when) : "";
    }
    this.table.hidden = this.rows.size === 0;
    this.empty.hidden = this.rows.size > 0;
  }

  retranslate() {
    this.render();
  }

  /** What goes into the report: {quantity: {value, unit, measured_at}} (the one heart rate). */
  snapshot() {
    const out = {};
    const pulseName = this.latest.has("pulse_rate") ? "pulse_rate" : "heart_rate";
    for (const [name, m] of this.latest) {
      if ((name === "pulse_rate" || name === "heart_rate") && name !== pulseName) continue;
      if (!REPORT_UNITS[name]?.includes(m.unit)) continue;
      out[name] = { value: Number(m.value.toFixed(name === "body_temperature" ? 1 : 0)), unit: m.unit,
        measured_at: m.measured_at };
    }
    return out;
  }
}

/** Quantities a report keeps, with their units (docs/protocol.md, report body). */
export const REPORT_UNITS = {
  heart_rate: ["/min"], pulse_rate: ["/min"], spo2: ["%"], systolic: ["mm[Hg]", "kPa"], diastolic: ["mm[Hg]", "kPa"],
  mean_arterial_pressure: ["mm[Hg]", "kPa"], body_temperature: ["Cel", "[degF]"],
};

/** The devices area of a call: panels as tracks and messages arrive. */
export class DeviceBoard extends EventTarget {
  constructor(container, call, { control, token, stills, audible = false }) {
    super();
    this.container = container;
    this.call = call;
    this.stills = stills || null;
    this.viewer = stills ? new StillViewer(stills, { canLabel: control }) : null;
    this.options = { control, token, stills, viewer: this.viewer, audible };
    this.panels = new Map();
    this.vitals = null;
    this.examined = null;
    this.picker = h("div", { class: "segmented device-picker", role: "radiogroup", id: "device-picker",
      "aria-label": t("device.examined"), "data-i18n-aria-label": "device.examined", hidden: true });
    this.stack = h("div", { class: "device-stack" }, this.picker);
    this.container.append(this.stack);
    this.onMessage = (event) => this.message(event.detail);
    call.addEventListener("message", this.onMessage);
    this.uplink = null; // the agent's latest `uplink` message
    this.onChannel = (event) => {
      if (event.detail?.state === "open") this._sendViewing();
    };
    call.addEventListener("channel", this.onChannel);
    this.stopLanguage = onLanguageChange(() => this._retranslate());
    // Using a device makes it the one being examined (after the click: no layout change under it).
    this.onClick = (event) => {
      const panel = event.target.closest?.(".device[data-source]");
      if (panel && panel.dataset.source !== "vitals") this.examine(panel.dataset.source);
    };
    this.container.addEventListener("click", this.onClick);
    this.stills?.load();
  }

  _retranslate() {
    translate(this.container);
    for (const panel of this.panels.values()) panel.retranslate?.();
    this.vitals?.retranslate();
  }

  addTrack(publication, track) {
    const source = publication.source;
    this.removeTrack(publication);
    let panel;
    if (source === "stethoscope") panel = new StethoscopePanel(track, this.call, this.options);
    else panel = new CameraDevicePanel(source, track, this.call, this.options);
    panel.element.dataset.publication = publication.id;
    panel.element.dataset.identity = publication.identity;
    this.panels.set(source, panel);
    this.stack.append(panel.element);
    this._order();
    if (!this.examined || !this.panels.has(this.examined)) this.examine(source);
    else this.examine(this.examined);
  }

  removeTrack(publication) {
    const panel = this.panels.get(publication.source);
    if (!panel) return;
    panel.close();
    panel.element.remove();
    this.panels.delete(publication.source);
    if (this.examined === publication.source) this.examine(this.panels.keys().next().value || null);
    else this.renderPicker();
  }

  /** ``source`` is the device being examined: its panel large, the others small. */
  examine(source) {
    this.examined = source;
    for (const [name, panel] of this.panels) {
      panel.element.classList.toggle("examined", name === source);
      panel.element.classList.toggle("compact", name !== source);
    }
    this.container.dataset.examined = source || "";
    this.renderPicker();
    this._sendViewing();
  }

  /** Tell the agent which video device the physician looks at (the stethoscope: no change). */
  _sendViewing() {
    const source = this.examined;
    if (!this.options.control || !source || source === "stethoscope" || source === "vitals") return;
    this.call.send({ type: "viewing", device: source });
  }

  renderPicker() {
    const sources = DEVICES.filter((d) => this.panels.has(d));
    this.picker.hidden = sources.length < 2;
    this.picker.replaceChildren(...sources.flatMap((source) => {
      const id = `examine-${source}`;
      const input = h("input", { type: "radio", name: "examined-device", id, value: source,
        checked: source === this.examined, onchange: () => this.examine(source) });
      return [input, h("label", { for: id, "data-i18n": `device.${source}` }, t(`device.${source}`))];
    }));
  }

  _order() {
    const order = DEVICES;
    const panels = [...this.stack.querySelectorAll(":scope > .device")].sort(
      (a, b) => order.indexOf(a.dataset.source) - order.indexOf(b.dataset.source));
    this.stack.append(...panels);
  }

  _vitalsPanel() {
    if (!this.vitals) {
      this.vitals = new VitalsPanel(this.options);
      this.container.append(this.vitals.element);
      this.vitals.element.addEventListener("vitals", (event) => {
        this.dispatchEvent(new CustomEvent("vitals", { detail: event.detail }));
      });
    }
    return this.vitals;
  }

  message({ data }) {
    if (!data || typeof data !== "object") return;
    const device = data.device || this.call.commands.get(data.id)?.device;
    const panel = this.panels.get(device);
    switch (data.type) {
      case "device_status":
        panel?.deviceStatus(data);
        break;
      case "measurement":
        if (data.device === "stethoscope" && panel) panel.measurement(data);
        if (!NOT_VITALS.has(data.name)) this._vitalsPanel().measurement(data);
        break;
      case "uplink":
        this.uplink = data;
        this.dispatchEvent(new CustomEvent("uplink", { detail: data }));
        break;
      case "still_ready":
        if (panel instanceof CameraDevicePanel) panel.stillReady(data);
        else this.stills?.merge([stillFrom(data)]);
        break;
      case "command_result":
        if (!data.ok) {
          if (panel instanceof CameraDevicePanel && panel.commandFailed(data)) break;
          const target = panel || [...this.panels.values()][0];
          target?.setStatus("device.command_failed", { error: data.error || "" }, true);
        } else if (data.status && panel) {
          panel.deviceStatus({ device, ...data.status });
        }
        break;
      default:
        break;
    }
  }

  close() {
    this.call.removeEventListener("message", this.onMessage);
    this.call.removeEventListener("channel", this.onChannel);
    this.container.removeEventListener("click", this.onClick);
    this.stopLanguage();
    this.viewer?.close();
    for (const panel of this.panels.values()) panel.close();
    this.panels.clear();
  }
}
