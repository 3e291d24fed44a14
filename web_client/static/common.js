// Pieces both signed-in pages use: the directory, the pre-call check slot,
// and joining a consultation's room.
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { PreCheck, hasLive, openLocalMedia } from "./precheck.js";
import { CallView } from "./callview.js";
import { StillStore } from "./stills.js";

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

/**
 * Camera and microphone for a consultation: the pre-call check's, handed over, or opened
 * afresh when the check has none live (its tracks went to an earlier call, or stopped).
 */
export async function consultationMedia(precheck) {
  await precheck.mediaReady?.catch(() => {});
  let stream = precheck.takeStream();
  if (!hasLive(stream, "video") || !hasLive(stream, "audio")) {
    stream?.getTracks().forEach((track) => track.stop());
    stream = (await openLocalMedia()).stream;
  }
  return stream;
}

/** Join a started consultation: the call screen in ``container``. */
export async function joinCall(container, { signalling, token, role, consultation, grant, precheck, banner, stills }) {
  const stream = await consultationMedia(precheck);
  const iceServers = signalling.hello?.ice_servers || [];
  const known = window.teleconsult.rooms?.publications(consultation.id) || [];
  const store = stills || new StillStore(consultation.id, () => signalling.token || token);
  const view = new CallView(container, { signalling, consultation, grant, stream, token, role, iceServers, known,
    banner, stills: store }).mount();
  if (!stills) view.addEventListener("closed", () => store.release(), { once: true });
  window.teleconsult.view = view;
  const signedOut = () => view.close();
  document.addEventListener("tc-signed-out", signedOut, { once: true });
  view.addEventListener("closed", () => document.removeEventListener("tc-signed-out", signedOut), { once: true });
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
