// The guest's page, /join#invite=<token> (issue 14): an interpreter, a second specialist or a
// relative invited into one consultation by its physician.
//
// The invitation token comes in the URL fragment (a browser never sends it to the server
// with the URL). The guest gives a name and the camera and microphone are checked (the
// pre-call check of the other pages; its media path test runs once the guest has an access
// token), then POST /api/invitations/claim: 401 is a link that is not valid, 410 one that is
// used, expired or revoked, each said plainly. Claimed: the fragment leaves the address bar,
// the socket opens with the guest's access token (kept in this tab only, so that a reload
// comes back), the page says it waits to be admitted; `consultation.started` (the physician
// admitted, the nurse confirmed the patient's consent) joins the room as the nurse's and
// the physician's pages do. Removed or refused: the call is left and the page says so;
// the consultation's end: it says that.
import { $, show, announce } from "./dom.js";
import { t, setText, onLanguageChange } from "./i18n.js";
import { startChrome, connectPage } from "./page.js";
import { joinCall, rejoinGrant } from "./common.js";
import { currentToken, forgetToken } from "./auth.js";
import { PreCheck } from "./precheck.js";
import { GUEST_ROLES } from "./vocabulary.js";

const STORED = "tc.invite"; // sessionStorage: {role, name, consultation_id, invitation_id} of this tab's guest
const GONE = new Set(["used", "expired", "revoked"]);
const OVER = new Set(["refused", "revoked", "removed", "expired"]);
const OPEN_CONSULTATION = new Set(["accepted", "active"]);

function inviteFromFragment() {
  if (!location.hash) return null;
  return new URLSearchParams(location.hash.slice(1)).get("invite") || null;
}

/** The invitation this tab claimed before a reload, with its access token; null when none. */
function storedGuest() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(STORED) || "null");
    if (!stored || !GUEST_ROLES.includes(stored.role)) return null;
    const token = currentToken(stored.role);
    return token ? { ...stored, token } : null;
  } catch (_) {
    return null;
  }
}

function forgetGuest(role) {
  sessionStorage.removeItem(STORED);
  if (role) forgetToken(role);
}

function screen(name) {
  show($("#join-problem"), name === "problem");
  show($("#join-lobby"), name === "form" || name === "waiting");
  show($("#join-form-card"), name === "form");
  show($("#join-waiting"), name === "waiting");
  show($("#join-left"), name === "left");
  show($("#ended"), name === "ended");
  show($("#call-slot"), name === "call");
  show($("#precheck-slot"), name === "form" || name === "waiting");
  document.body.dataset.screen = name;
}

/** The link cannot be used: ``kind`` is invalid, used, expired, revoked or signed_out. */
function problem(kind) {
  const box = $("#join-problem");
  box.dataset.kind = kind;
  setText($("#join-problem-title"), `join.problem.${kind}.title`);
  setText($("#join-problem-text"), `join.problem.${kind}.text`);
  screen("problem");
  announce($("#join-problem-title").textContent);
}

async function main() {
  startChrome();
  window.teleconsult = {};
  const invite = inviteFromFragment();
  if (invite) forgetGuest(storedGuest()?.role); // a new link: the previous invitation of this tab is over
  const stored = invite ? null : storedGuest();
  if (!invite && !stored) {
    problem("invalid");
    return;
  }

  // The camera and microphone are checked first; the media path needs an access token, so its
  // test waits for the claim (the row says so meanwhile).
  const precheck = new PreCheck(stored?.token || null);
  let claimed;
  precheck.networkGate = stored ? null : new Promise((resolve) => { claimed = resolve; });
  precheck.mount($("#precheck-slot"));
  precheck.running = precheck.run();
  window.teleconsult.precheck = precheck;
  if (!stored) {
    precheck.mediaReady.then(() => {
      if (precheck.result.network === "pending" && !precheck.token) {
        precheck.result.network = "later";
        precheck.render();
      }
    });
  }

  let guest = null; // {token, role, name, consultation_id, invitation}
  let session = null;
  let view = null;
  let joining = false;
  let done = false; // removed, refused, or the consultation is over: nothing comes back

  function renderWaiting() {
    const invitation = guest?.invitation || {};
    let key = "join.waiting.state.both";
    if (invitation.state === "admitted") key = "join.waiting.state.joining";
    else if (invitation.admitted && !invitation.consent) key = "join.waiting.state.consent";
    else if (invitation.consent && !invitation.admitted) key = "join.waiting.state.admit";
    setText($("#join-waiting-state"), key);
    $("#join-waiting").dataset.state = invitation.state || "";
  }

  async function closeView() {
    if (!view) return;
    const closing = view;
    view = null;
    await closing.close();
  }

  /** Out of the call for good: media, check, stored token and socket. False when already out. */
  async function leaveForGood() {
    if (done) return false;
    done = true;
    await closeView();
    precheck.close();
    forgetGuest(guest?.role);
    session?.signalling.close();
    return true;
  }

  /** Removed, refused, revoked: out of the call, and the page says why. */
  async function left(reason) {
    if (!(await leaveForGood())) return;
    $("#join-left").dataset.reason = reason;
    setText($("#join-left-title"), `join.left.${reason}.title`);
    setText($("#join-left-text"), `join.left.${reason}.text`);
    screen("left");
    announce($("#join-left-title").textContent);
  }

  async function ended() {
    if (!(await leaveForGood())) return;
    screen("ended");
    announce($("#ended-text").textContent);
  }

  async function startCall(consultation, grant) {
    if (done || joining || (view && view.consultation.id === consultation.id)) return;
    joining = true;
    try {
      screen("call");
      announce(t("call.started"));
      view = await joinCall($("#call-slot"), { signalling: session.signalling, token: guest.token,
        role: guest.role, consultation, grant, precheck, banner: session.banner });
      // Leaving is this guest's own choice: the consultation goes on for the others.
      view.addEventListener("leave", () => left("self"), { once: true });
    } finally {
      joining = false;
    }
  }

  function setInvitation(invitation) {
    if (!guest || !invitation || (guest.invitation?.id && invitation.id !== guest.invitation.id)) return;
    guest.invitation = { ...guest.invitation, ...invitation };
    if (OVER.has(invitation.state)) {
      left(invitation.state);
      return;
    }
    renderWaiting();
  }

  function connect(claim) {
    guest = claim;
    sessionStorage.setItem(STORED, JSON.stringify({ role: claim.role, name: claim.name,
      consultation_id: claim.consultation_id, invitation_id: claim.invitation?.id || "" }));
    precheck.token = claim.token;
    claimed?.(true);
    const principal = { sub: claim.invitation?.id || claim.role, name: claim.name, role: claim.role };
    // A token the server no longer takes (the invitation is over): the link's own words.
    session = connectPage(claim.role, claim.token, principal, {
      onSignedOut: () => { if (!done) { done = true; closeView(); forgetGuest(claim.role); problem("signed_out"); } },
    });
    const { signalling } = session;
    signalling.on("ready", async (hello) => {
      const state = hello.state || {};
      setInvitation(state.invitation);
      if (done) return;
      const consultation = (state.consultations || []).find((c) => c.id === guest.consultation_id)
        || (state.consultations || [])[0];
      if (consultation && !OPEN_CONSULTATION.has(consultation.state) && consultation.state !== "requested"
        && consultation.state !== "offered") {
        ended();
        return;
      }
      const admitted = consultation && (state.rooms || {})[consultation.id];
      if (admitted && !view && !joining) {
        try {
          await startCall(consultation, await rejoinGrant(signalling, consultation.id));
          return;
        } catch (_) { /* not in the room yet: wait for consultation.started */ }
      }
      if (!view) {
        screen("waiting");
        renderWaiting();
      }
    });
    signalling.on("invitation.updated", (m) => setInvitation(m.invitation));
    signalling.on("consultation.started", (m) => startCall(m.consultation, m.grant));
    signalling.on("consultation.ended", (m) => {
      if (!guest.consultation_id || m.consultation?.id === guest.consultation_id) ended();
    });
    screen("waiting");
    renderWaiting();
  }

  onLanguageChange(() => renderWaiting());

  if (stored) {
    $("#guest-name").value = stored.name || "";
    connect({ token: stored.token, role: stored.role, name: stored.name, consultation_id: stored.consultation_id,
      invitation: { id: stored.invitation_id } });
    return;
  }

  screen("form");
  $("#guest-name").focus();
  const form = $("#join-form");
  const error = $("#join-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const name = $("#guest-name").value.trim();
    if (!name) {
      setText(error, "join.name_required");
      error.hidden = false;
      $("#guest-name").focus();
      return;
    }
    const submit = $("#join-submit");
    submit.disabled = true;
    try {
      await precheck.mediaReady.catch(() => {}); // the camera and microphone checked first
      let response;
      try {
        response = await fetch("/api/invitations/claim", { method: "POST", cache: "no-store",
          headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: invite, name }) });
      } catch (_) {
        setText(error, "join.unreachable");
        error.hidden = false;
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) {
        problem("invalid");
        return;
      }
      if (response.status === 410) {
        problem(GONE.has(body.reason) ? body.reason : "used");
        return;
      }
      if (!response.ok || !body.access_token) {
        setText(error, "join.failed", { message: body.reason || body.error || `HTTP ${response.status}` });
        error.hidden = false;
        return;
      }
      // Claimed: the token has done its work; it leaves the address bar and the history.
      history.replaceState(null, "", location.pathname + location.search);
      const invitation = body.invitation || {};
      connect({ token: body.access_token, role: invitation.role, name: invitation.name || name,
        consultation_id: body.consultation_id, invitation });
      announce(t("join.waiting.title"));
    } finally {
      submit.disabled = false;
    }
  });
}

main();
