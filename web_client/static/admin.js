// A small read-only console: physicians online, the waiting queue, the sites.
import { $, h } from "./dom.js";
import { t, formatDuration, onLanguageChange } from "./i18n.js";
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
      $("#admin-queue").replaceChildren(...queue.waiting.map((w) => h("li", {},
        `${t(`priority.${w.priority}`)} · ${specialtyLabel(w.specialty)} · ${w.site_name || w.site} · ${formatDuration(w.waiting_s)}`)));
    }
  }
  signalling.on("ready", refresh);
  onLanguageChange(refresh);
  setInterval(refresh, 5000);
}

main();
