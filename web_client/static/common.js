// Pieces both signed-in pages use: the directory, the pre-call check slot,
// and joining a consultation's room.
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { PreCheck } from "./precheck.js";
import { CallView } from "./callview.js";

export async function fetchDirectory(token) {
  const response = await fetch("/api/directory", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(`directory: HTTP ${response.status}`);
  return response.json();
}

/** The specialties physicians of the directory have, sorted. */
export function specialtiesOf(directory) {
  const out = new Set();
  for (const c of directory.clinicians || []) for (const s of c.specialties || []) out.add(s);
  return [...out].sort();
}

export function specialtyLabel(s) {
  const label = t(`specialty.${s}`);
  return label.startsWith("specialty.") ? s : label;
}

export function mountPreCheck(token) {
  const check = new PreCheck(token);
  check.mount($("#precheck-slot"));
  check.running = check.run();
  window.teleconsult.precheck = check;
  return check;
}

/** Join a started consultation: the call screen in ``container``. */
export async function joinCall(container, { signalling, token, role, consultation, grant, precheck }) {
  await precheck.running?.catch(() => {});
  const stream = precheck.takeStream();
  const iceServers = signalling.hello?.ice_servers || [];
  const known = window.teleconsult.rooms?.publications(consultation.id) || [];
  const view = new CallView(container, { signalling, consultation, grant, stream, token, role, iceServers, known }).mount();
  window.teleconsult.view = view;
  document.addEventListener("tc-signed-out", () => view.close(), { once: true });
  view.start().catch(() => {});
  return view;
}

/** A room token for our seat when we come back to an active consultation (reload, resume);
 * the room's publications it lists go to the page's RoomTracker, where the call starts from. */
export async function rejoinGrant(signalling, consultationId) {
  const reply = await signalling.request("room.token", { consultation_id: consultationId });
  window.teleconsult.rooms?.seed(consultationId, reply.publications);
  return reply.grant;
}
