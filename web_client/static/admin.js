// A small read-only console: physicians online, the waiting queue, the sites.
import { $, h, announce } from "./dom.js";
import { t, formatDuration, formatTime, onLanguageChange } from "./i18n.js";
import { startPage } from "./page.js";
import { fetchDirectory, specialtyLabel } from "./common.js";

async function main() {
  const session = await startPage("admin");
  if (!session) return;
  const { token, signalling } = session;
  fetchDirectory(token).then((d) => {
    $("#sites").replaceChildren(...(d.sites || []).map((s) => h("li", {}, `${s.name} (${s.id}, ${s.kind})`)));
  }).catch(() => {});
  async function refresh() {
    if (signalling.state !== "open") return;
    const presence = await signalling.request("presence.list").catch(() => null);
    if (presence) {
      $("#physicians").replaceChildren(...presence.physicians.map((p) => h("li", { dataset: { status: p.status } },
        `${p.name || p.physician} — ${t(`presence.${p.status}`)}${p.connected === false ? ` (${t("presence.reconnecting")})` : ""}`
        + ` — ${p.specialties.map(specialtyLabel).join(", ")}`)));
    }
    const queue = await signalling.request("queue.list").catch(() => null);
    if (queue) {
      $("#admin-queue").replaceChildren(...queue.waiting.map((w) => h("li",
        { dataset: { id: w.consultation_id, flagged: String(Boolean(w.flagged)) } },
        `${w.flagged ? `⚑ ${t("admin.flagged_mark")} · ` : ""}`
        + `${t(`priority.${w.priority}`)} · ${specialtyLabel(w.specialty)} · ${w.site_name || w.site} · ${formatDuration(w.waiting_s)}`)));
    }
    renderFlagged();
  }
  // Emergencies a site sent above its rate (visit.flagged): someone should look, and cancel what
  // is not one. The queue marks those still waiting; this list keeps what this page was told.
  const flagged = [];
  const flaggedText = (f) => t("admin.flagged_item", { site: f.site, count: f.requests_in_window, time: formatTime(f.at) });
  function renderFlagged() {
    $("#flagged-empty").hidden = flagged.length > 0;
    $("#flagged").replaceChildren(...flagged.map((f) => h("li", { dataset: { id: f.consultation_id } }, flaggedText(f))));
  }
  signalling.on("visit.flagged", (m) => {
    const entry = { ...m, at: Date.now() / 1000 };
    flagged.unshift(entry);
    flagged.splice(50);
    announce(flaggedText(entry));
    refresh();
  });
  signalling.on("ready", refresh);
  onLanguageChange(refresh);
  setInterval(refresh, 5000);
}

main();
