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

const OPEN = new Set(["requested", "offered", "accepted", "active"]);
const GATE_MS = 3000;

/**
 * Whether the pre-call check may test the media path now: not when the first hello says a
 * consultation is open (a reload while waiting or in a call: the consultation's media comes
 * first, the check runs after it); yes when the socket does not answer within 3 s (the check
 * is what tells why).
 */
function openNow(hello) {
  const state = hello.state || {};
  return (state.consultations || []).some((c) => OPEN.has(c.state)) || (state.offers || []).length > 0;
}

function networkGate(signalling) {
  if (signalling.hello) return Promise.resolve(!openNow(signalling.hello));
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(true), GATE_MS);
    signalling.addEventListener("ready", (event) => {
      clearTimeout(timer);
      resolve(!openNow(event.detail));
    }, { once: true });
  });
}

export function mountPreCheck(token, signalling) {
  const check = new PreCheck(token);
  if (signalling) check.networkGate = networkGate(signalling);
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
  window.teleconsult.rooms?.locate(consultationId, reply.sfu_url);
  window.teleconsult.rooms?.seed(consultationId, reply.publications);
  return reply.grant;
}
