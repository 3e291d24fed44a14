// The stills of one consultation: listed from the server (GET .../stills: a
// reloaded page has them all again), added as the devices take them
// (`still_ready`), labelled by the physician (PATCH .../stills/{id}), fetched
// once each with the access token and shown from a blob URL. One StillStore per
// consultation; release() frees its images when the consultation is left.
//
// The viewer shows a still fit to the screen, with a 1:1 zoom, its label and
// the time it was taken.
import { h } from "./dom.js";
import { t, setText, onLanguageChange, translate } from "./i18n.js";

/** A still's metadata as the server lists it, from a list entry or a `still_ready` message. */
export function stillFrom(data) {
  return {
    still_id: String(data.still_id || ""),
    device: data.device || "",
    width: data.width || null,
    height: data.height || null,
    mime: data.mime || "",
    url: data.url || "",
    taken_at: typeof data.taken_at === "number" ? data.taken_at
      : typeof data.created === "number" ? data.created : null,
    label: typeof data.label === "string" ? data.label : "",
    preview: data.preview || "",
    missing: Boolean(data.missing),
  };
}

export class StillStore extends EventTarget {
  constructor(consultationId, tokenNow) {
    super();
    this.consultationId = consultationId;
    this.tokenNow = tokenNow; // () => the access token now (auth.renew replaces it)
    this.stills = new Map(); // still_id -> still
    this.blobs = new Map(); // still_id -> Promise<blob URL>
    this.released = false;
  }

  get base() {
    return `/api/consultations/${encodeURIComponent(this.consultationId)}/stills`;
  }

  _changed() {
    this.dispatchEvent(new CustomEvent("change", { detail: this.list() }));
  }

  /** The stills, oldest first. */
  list() {
    return [...this.stills.values()].sort((a, b) => (a.taken_at || 0) - (b.taken_at || 0));
  }

  get(id) {
    return this.stills.get(String(id));
  }

  /** Add or update stills (the server's word wins over what a message said). */
  merge(items) {
    let changed = false;
    for (const item of items) {
      const still = stillFrom(item);
      if (!still.still_id) continue;
      const before = this.stills.get(still.still_id);
      const merged = { ...before, ...Object.fromEntries(Object.entries(still).filter(([, v]) => v !== "" && v !== null)) };
      merged.label = still.label || before?.label || "";
      merged.taken_at ??= Date.now() / 1000;
      this.stills.set(still.still_id, merged);
      changed = true;
    }
    if (changed) this._changed();
  }

  /** The stills the server has for this consultation (after a reload, they all come back). */
  async load() {
    try {
      const response = await fetch(this.base, { headers: { Authorization: `Bearer ${this.tokenNow()}` }, cache: "no-store" });
      if (!response.ok) return;
      const body = await response.json();
      if (!this.released) this.merge(body.stills || []);
    } catch (_) { /* the live messages still add them */ }
  }

  /** A blob URL of the full image (fetched once, with the access token). */
  image(id) {
    const still = this.get(id);
    if (!still?.url) return Promise.reject(new Error("no url"));
    if (!this.blobs.has(still.still_id)) {
      const promise = (async () => {
        const response = await fetch(still.url, { headers: { Authorization: `Bearer ${this.tokenNow()}` } });
        if (!response.ok) throw new Error(String(response.status));
        const url = URL.createObjectURL(await response.blob());
        if (this.released) {
          URL.revokeObjectURL(url);
          throw new Error("released");
        }
        return url;
      })();
      promise.catch(() => this.blobs.delete(still.still_id));
      this.blobs.set(still.still_id, promise);
    }
    return this.blobs.get(still.still_id);
  }

  /** Label a still (the consultation's physician); returns the still as stored. */
  async setLabel(id, label) {
    const response = await fetch(`${this.base}/${encodeURIComponent(id)}`, {
      method: "PATCH", body: JSON.stringify({ label }),
      headers: { Authorization: `Bearer ${this.tokenNow()}`, "Content-Type": "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.reason || `HTTP ${response.status}`);
    this.merge([{ ...this.get(id), ...body, label: body.label ?? label }]);
    return this.get(id);
  }

  /** The consultation is left: free the images. */
  release() {
    this.released = true;
    for (const promise of this.blobs.values()) promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
    this.blobs.clear();
  }
}

/** "Dermatoscope · 14:05:09 · lesion, left forearm": what a still is, in words. */
export function stillCaption(still) {
  return { key: still.label ? "still.caption_label" : "still.caption",
    params: { device: { key: `device.${still.device}` }, time: still.taken_at ? { time: still.taken_at } : "",
      label: still.label } };
}

/**
 * The viewer: the still fit to the screen, "1:1" to see it pixel for pixel (scrolling),
 * its label (editable by the physician) and the time it was taken. Escape closes it.
 */
export class StillViewer {
  constructor(store, { canLabel }) {
    this.store = store;
    this.canLabel = canLabel;
    this.dialog = document.getElementById("still-dialog");
    if (!this.dialog) {
      this.dialog = h("dialog", { id: "still-dialog", class: "still-dialog", "aria-labelledby": "still-title" });
      document.body.append(this.dialog);
    }
    this.stopLanguage = onLanguageChange(() => {
      if (!this.dialog.open) return;
      translate(this.dialog);
      const img = this.dialog.querySelector("#still-full");
      if (img) img.alt = this.dialog.querySelector("#still-title")?.textContent || "";
    });
  }

  async open(id) {
    const still = this.store.get(id);
    if (!still) return;
    const dialog = this.dialog;
    const img = h("img", { id: "still-full", alt: "" });
    const title = h("h2", { id: "still-title" });
    const caption = stillCaption(still);
    setText(title, caption.key, caption.params);
    // At 1:1 it scrolls: reachable by keyboard (arrows) too.
    const scroll = h("div", { class: "still-scroll", tabindex: "0", dataset: { zoom: "fit" } }, img);
    const zoom = h("button", { type: "button", id: "still-zoom", "aria-pressed": "false",
      "data-i18n": "still.zoom_actual" }, t("still.zoom_actual"));
    zoom.addEventListener("click", () => {
      const actual = scroll.dataset.zoom !== "actual";
      scroll.dataset.zoom = actual ? "actual" : "fit";
      zoom.setAttribute("aria-pressed", String(actual));
      setText(zoom, actual ? "still.zoom_fit" : "still.zoom_actual");
    });
    const close = h("button", { type: "button", class: "close", id: "still-close", "data-i18n": "action.close",
      onclick: () => dialog.close() }, t("action.close"));
    const size = h("span", { class: "muted" }, still.width && still.height ? `${still.width}×${still.height}` : "");
    const bar = h("div", { class: "still-bar" }, title, size, zoom, close);
    const parts = [bar];
    if (this.canLabel) {
      const input = h("input", { id: "still-label", type: "text", maxlength: 200, value: still.label || "",
        autocomplete: "off" });
      const status = h("span", { class: "muted", id: "still-label-status", role: "status" });
      const save = h("button", { type: "submit", "data-i18n": "still.label_save" }, t("still.label_save"));
      const form = h("form", { class: "still-label" },
        h("label", { for: "still-label", "data-i18n": "still.label" }, t("still.label")), input, save, status);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        save.disabled = true;
        try {
          const stored = await this.store.setLabel(still.still_id, input.value.trim());
          const c = stillCaption(stored);
          setText(title, c.key, c.params);
          setText(status, "still.label_saved");
        } catch (error) {
          setText(status, "still.label_failed", { message: error.message });
        } finally {
          save.disabled = false;
        }
      });
      parts.push(form);
    }
    parts.push(scroll);
    dialog.replaceChildren(...parts);
    dialog.dataset.still = still.still_id;
    if (!dialog.open) dialog.showModal();
    close.focus();
    try {
      img.src = await this.store.image(still.still_id);
      img.alt = title.textContent;
    } catch (_) {
      setText(size, "still.fetch_failed");
    }
  }

  close() {
    this.stopLanguage();
    if (this.dialog.open) this.dialog.close();
  }
}
