// Device panels in a call: one per device track (by source label), vitals as
// they arrive, and the remote control of the site's devices over the room
// data channel (physicians only: the grant's `command`).
import { h } from "./dom.js";
import { t, onLanguageChange, language } from "./i18n.js";
import { Phonocardiogram } from "./phonocardiogram.js";
import { DEVICES } from "./vocabulary.js";

const STETHOSCOPE_MODES = ["bell", "diaphragm", "wide"];
const UNITS = { Cel: "°C", "[degF]": "°F", "mm[Hg]": "mmHg", "/min": "/min", "%": "%" };
const NOT_VITALS = new Set(["level_rms", "level_peak"]);

/** A measurement's value for people: one decimal at most, UCUM units written as usual. */
export function formatMeasurement(value, unit) {
  const number = typeof value === "number" ? Number(value.toFixed(1)).toLocaleString(language()) : String(value);
  const shown = UNITS[unit] ?? unit ?? "";
  return `${number} ${shown}`.trim();
}

function statusLine() {
  return h("p", { class: "device-status muted", role: "status" });
}

class Panel {
  constructor(source, { control }) {
    this.source = source;
    this.control = control;
    this.status = statusLine();
    this.element = h("section", { class: `card device ${source}`, dataset: { source },
      "aria-labelledby": `panel-${source}-title` },
    h("h3", { id: `panel-${source}-title`, "data-i18n": `device.${source}` }, t(`device.${source}`)));
  }

  setStatus(text, isError = false) {
    this.status.textContent = text;
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
    this.volume.value = this.control ? 0.8 : 0;
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
        h("div", { class: "rate" }, this.rate, h("span", { class: "unit" }, "bpm"))),
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
    const mode = message.mode ? t(`steth.mode.${message.mode}`) : "";
    this.setStatus(message.on === false ? t("device.off") : [t("device.on"), mode].filter(Boolean).join(" · "));
  }

  measurement(message) {
    if (message.name === "heart_rate") this.rate.textContent = String(Math.round(message.value));
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
    this.initialToken = options.token;
    this.video = h("video", { autoplay: true, muted: true, playsInline: true,
      "aria-label": t(`device.${source}`) });
    this.video.srcObject = new MediaStream([track]);
    this.gallery = h("ul", { class: "gallery", "aria-label": t("still.gallery"), "data-i18n-aria-label": "still.gallery" });
    const controls = h("div", { class: "controls" });
    if (this.control) {
      this.stillButton = h("button", { type: "button", class: "primary", id: `${source}-still`,
        "data-i18n": "still.take", onclick: () => this.takeStill() }, t("still.take"));
      this.power = h("input", { type: "checkbox", id: `${source}-power`, checked: true, role: "switch",
        onchange: () => this.call.command(source, "power", { on: this.power.checked }) });
      controls.append(this.stillButton,
        h("label", { class: "switch" }, this.power, h("span", { "data-i18n": "device.power" }, t("device.power"))));
    }
    this.element.append(h("div", { class: "device-video" }, this.video), controls, this.status, this.gallery);
  }

  takeStill() {
    const id = this.call.command(this.source, "still");
    if (!id) {
      this.setStatus(t("device.channel_closed"), true);
      return;
    }
    this.stillButton.disabled = true;
    this.setStatus(t("still.waiting"));
    setTimeout(() => { this.stillButton.disabled = false; }, 1500);
  }

  deviceStatus(message) {
    if (this.power && typeof message.on === "boolean") this.power.checked = message.on;
    this.setStatus(message.on === false ? t("device.off") : t("device.on"));
  }

  /** The access token now (renewed by auth.renew on the signalling socket). */
  get token() {
    return this.call.signalling?.token || this.initialToken;
  }

  /** A full-resolution still: preview at once, then the file fetched with the access token. */
  async stillReady(message) {
    const image = h("img", { alt: t("still.alt", { device: t(`device.${this.source}`) }),
      src: message.preview || "", class: "thumb" });
    const caption = h("span", { class: "muted" }, message.width && message.height ? `${message.width}×${message.height}` : "");
    const open = h("button", { type: "button", class: "still", disabled: true,
      "aria-label": t("still.open"), dataset: { stillId: message.still_id || "" } }, image, caption);
    const item = h("li", {}, open);
    this.gallery.prepend(item);
    this.setStatus(t("still.received"));
    if (this.stillButton) this.stillButton.disabled = false;
    try {
      const response = await fetch(message.url, { headers: { Authorization: `Bearer ${this.token}` } });
      if (!response.ok) throw new Error(String(response.status));
      const url = URL.createObjectURL(await response.blob());
      image.src = url;
      open.dataset.full = url;
      open.disabled = false;
      await image.decode().catch(() => {});
      item.dataset.width = image.naturalWidth;
      item.dataset.height = image.naturalHeight;
      open.addEventListener("click", () => openStill(url, image.alt, image.naturalWidth, image.naturalHeight));
    } catch (_) {
      item.classList.add("error");
      this.setStatus(t("still.fetch_failed"), true);
    }
  }

  close() {
    this.video.srcObject = null;
  }
}

/** Show a still at full size in a modal dialog (Escape closes). */
export function openStill(url, alt, width, height) {
  let dialog = document.getElementById("still-dialog");
  if (!dialog) {
    dialog = h("dialog", { id: "still-dialog", class: "still-dialog" });
    document.body.append(dialog);
  }
  const img = h("img", { src: url, alt, id: "still-full" });
  const close = h("button", { type: "button", class: "close", "data-i18n": "action.close",
    onclick: () => dialog.close() }, t("action.close"));
  dialog.replaceChildren(h("div", { class: "still-bar" }, h("span", {}, `${alt} — ${width}×${height}`), close),
    h("div", { class: "still-scroll" }, img));
  dialog.showModal();
  close.focus();
}

export class VitalsPanel extends Panel {
  constructor(options) {
    super("vitals", options);
    this.rows = new Map();
    this.body = h("tbody");
    this.table = h("table", { class: "vitals" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", "data-i18n": "vitals.name" }, t("vitals.name")),
        h("th", { scope: "col", "data-i18n": "vitals.value" }, t("vitals.value")),
        h("th", { scope: "col", "data-i18n": "vitals.time" }, t("vitals.time")))),
      this.body);
    this.empty = h("p", { class: "muted", "data-i18n": "vitals.none" }, t("vitals.none"));
    this.element.append(this.empty, this.table);
    this.table.hidden = true;
  }

  measurement(message) {
    const key = `${message.device}:${message.name}`;
    let row = this.rows.get(key);
    if (!row) {
      row = h("tr", { dataset: { name: message.name } }, h("th", { scope: "row" }), h("td", { class: "value" }), h("td"));
      this.rows.set(key, row);
      this.body.append(row);
    }
    const label = t(`vitals.${message.name}`);
    row.children[0].textContent = label.startsWith("vitals.") ? message.name : label;
    row.children[1].textContent = formatMeasurement(message.value, message.unit);
    const when = message.ts ? new Date(message.ts * 1000) : new Date();
    row.children[2].textContent = when.toLocaleTimeString(language());
    this.table.hidden = false;
    this.empty.hidden = true;
  }
}

/** The devices area of a call: panels as tracks and messages arrive. */
export class DeviceBoard {
  constructor(container, call, { control, token }) {
    this.container = container;
    this.call = call;
    this.options = { control, token };
    this.panels = new Map();
    this.vitals = null;
    this.pendingCommands = new Map();
    call.addEventListener("message", (event) => this.message(event.detail));
    onLanguageChange(() => this._retranslate());
  }

  _retranslate() {
    for (const el of this.container.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of this.container.querySelectorAll("[data-i18n-aria-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
    }
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
    this.container.append(panel.element);
    this._order();
  }

  removeTrack(publication) {
    const panel = this.panels.get(publication.source);
    if (!panel) return;
    panel.close();
    panel.element.remove();
    this.panels.delete(publication.source);
  }

  _order() {
    const order = DEVICES;
    const children = [...this.container.children].sort(
      (a, b) => order.indexOf(a.dataset.source) - order.indexOf(b.dataset.source));
    this.container.append(...children);
  }

  _vitalsPanel() {
    if (!this.vitals) {
      this.vitals = new VitalsPanel(this.options);
      this.container.append(this.vitals.element);
      this._order();
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
      case "still_ready":
        if (panel instanceof CameraDevicePanel) panel.stillReady(data);
        break;
      case "command_result":
        if (!data.ok) {
          const target = panel || [...this.panels.values()][0];
          target?.setStatus(t("device.command_failed", { error: data.error || "" }), true);
        } else if (data.status && panel) {
          panel.deviceStatus({ device, ...data.status });
        }
        break;
      default:
        break;
    }
  }

  close() {
    for (const panel of this.panels.values()) panel.close();
    this.panels.clear();
  }
}
