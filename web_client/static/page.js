// What every signed-in page does: translate, sign in, open the signalling
// socket, show its state (banner on a drop, resume by itself), and the
// "session expired" screen when the token is refused.
import { $, announce } from "./dom.js";
import { t, translate, mountLanguageSwitch, onLanguageChange } from "./i18n.js";
import { signIn, showSignInProblem, SignInError, forgetToken, saveToken } from "./auth.js";
import { Signalling } from "./signalling.js";
import { RoomTracker } from "./call.js";
import { Banner } from "./banners.js";

export function startChrome() {
  translate();
  const button = $("#lang-switch");
  if (button) mountLanguageSwitch(button);
}

/** Sign in as ``role`` and connect; returns {token, principal, signalling} or null (problem shown). */
export async function startPage(role) {
  startChrome();
  let session;
  try {
    session = await signIn(role);
  } catch (error) {
    await showSignInProblem(error, role);
    return null;
  }
  return connectPage(role, session.token, session.principal);
}

/**
 * Connect a page whose sign-in is done: the socket, its banner, renewal (the token kept in
 * this tab's sessionStorage under ``role``), the "signed out" screen; ``onSignedOut`` replaces
 * that screen (the guest page says its invitation is no longer valid).
 */
export function connectPage(role, token, principal, { onSignedOut = null } = {}) {
  $("#who").textContent = principal.name || principal.sub;
  $("#who").dataset.sub = principal.sub;
  const signalling = new Signalling(token);
  const banner = new Banner($("#banner"));
  const connState = $("#conn-state");
  let everOpen = false;
  let signedOut = false;
  // The socket's banner follows its state: down (never opened / lost), or nothing.
  const renderState = () => {
    connState.dataset.state = signalling.state;
    connState.textContent = t(`conn.${signalling.state}`);
    const state = signalling.state;
    if (signedOut || state === "open" || state === "idle") banner.clear("socket");
    else if (state === "reconnecting" || state === "closed") {
      banner.set("socket", everOpen ? "conn.banner.lost" : "conn.banner.unreachable", { priority: 30 });
    }
  };
  signalling.addEventListener("connection", (event) => {
    const wasDown = banner.has("socket") && everOpen;
    renderState();
    if (event.detail.state === "open") {
      if (wasDown) {
        banner.flash("conn.banner.back");
        announce(t("conn.banner.back"));
      }
      everOpen = true;
    }
  });
  onLanguageChange(renderState);
  signalling.addEventListener("auth-failed", () => {
    signedOut = true;
    forgetToken(role);
    signalling.close();
    document.dispatchEvent(new CustomEvent("tc-signed-out"));
    // The "session expired" screen says it all: no banner about a session ending or a socket down.
    banner.reset();
    if (onSignedOut) onSignedOut();
    else showSignInProblem(new SignInError("expired"), role);
  });
  // Before the token expires the server mints a fresh one (auth.renew, up to the session's
  // maximum age); only when it refuses does the page warn that the session ends.
  let renewing = false;
  signalling.on("auth.expiring", async (message) => {
    if (renewing) return;
    renewing = true;
    try {
      const reply = await signalling.request("auth.renew");
      signalling.token = reply.token;
      saveToken(role, reply.token);
      banner.clear("expiring");
      signalling.dispatchEvent(new CustomEvent("token-renewed", { detail: { expires_at: reply.token_expires_at } }));
    } catch (error) {
      // A renewal lost with the socket says nothing about the session's end.
      if (!signedOut && error.code !== "disconnected") {
        banner.set("expiring", "signin.expiring", { params: { minutes: Math.max(1, Math.round(message.in_s / 60)) },
          priority: 20 });
      }
    } finally {
      renewing = false;
    }
  });
  renderState();
  // A handle for people debugging the page and for the tests (no patient data is logged).
  const rooms = new RoomTracker(signalling);
  window.teleconsult = { ...(window.teleconsult || {}), role, principal, signalling, rooms, banner };
  signalling.connect().catch(() => {});
  return { token, principal, signalling, rooms, banner };
}

/** Seconds since ``created_at`` (server Unix time), with the server's clock. */
export function waitingSeconds(signalling, since) {
  return Math.max(0, signalling.serverNow() - since);
}
